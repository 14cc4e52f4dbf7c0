//! The notebooks' per-pixel learnable bias: `y = x + b` with `b` of one image's shape,
//! broadcast over the batch (initialised to zero, `state_dict` name `{prefix}.bias`).

use ndarray::{ArrayD, Axis, IxDyn};

use super::{Layer, Mode, Module, Param};
use crate::{Error, Float, Result};

/// `y[n] = x[n] + bias` for every sample `n`.
#[derive(Debug, Clone)]
pub struct PixelBias<F> {
    /// One image's shape, e.g. `[1, 28, 28]`.
    pub bias: Param<F>,
}

impl<F: Float> PixelBias<F> {
    /// A zero bias of `shape` (one sample, without the batch axis).
    pub fn new(prefix: &str, shape: &[usize]) -> Self {
        PixelBias {
            bias: Param::new(format!("{prefix}.bias"), ArrayD::zeros(IxDyn(shape))),
        }
    }

    fn check(&self, x: &ArrayD<F>, what: &str) -> Result<()> {
        if x.ndim() == 0 || x.shape()[1..] != *self.bias.value.shape() {
            return Err(Error::shape(
                format!("PixelBias {} {what}", self.bias.name),
                format!("[batch, {:?}]", self.bias.value.shape()),
                x.shape(),
            ));
        }
        Ok(())
    }
}

impl<F: Float> Module<F> for PixelBias<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        f(&mut self.bias);
    }
}

impl<F: Float> Layer<F> for PixelBias<F> {
    fn spec(&self) -> super::LayerSpec {
        super::LayerSpec::PixelBias {
            shape: self.bias.value.shape().to_vec(),
        }
    }

    fn forward(&mut self, mut x: ArrayD<F>, _mode: Mode) -> Result<ArrayD<F>> {
        self.check(&x, "input")?;
        for mut xn in x.axis_iter_mut(Axis(0)) {
            xn += &self.bias.value;
        }
        Ok(x)
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        self.check(&dy, "dy")?;
        for dyn_ in dy.axis_iter(Axis(0)) {
            self.bias.grad += &dyn_;
        }
        Ok(need_dx.then_some(dy))
    }
}
