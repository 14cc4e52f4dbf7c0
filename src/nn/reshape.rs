//! Flatten and Unflatten: reshapes between `[n, c, h, w]` and `[n, c*h*w]` (no copy of the
//! data beyond making it contiguous; backward reshapes the gradient back).

use ndarray::{ArrayD, IxDyn};

use super::{Layer, Mode, Module, Param};
use crate::{Error, Float, Result};

fn reshape<F: Float>(x: ArrayD<F>, shape: Vec<usize>, what: &str) -> Result<ArrayD<F>> {
    let found = x.shape().to_vec();
    let x = if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    };
    x.into_shape_with_order(IxDyn(&shape))
        .map_err(|_| Error::shape(what.to_string(), format!("{shape:?} elements"), &found))
}

/// `[n, ...] -> [n, prod(...)]`, as `torch.nn.Flatten()`.
#[derive(Debug, Clone, Default)]
pub struct Flatten {
    input_shape: Option<Vec<usize>>,
}

impl Flatten {
    /// A flatten layer.
    pub fn new() -> Self {
        Flatten::default()
    }
}

impl<F: Float> Module<F> for Flatten {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param<F>)) {}
}

impl<F: Float> Layer<F> for Flatten {
    fn spec(&self) -> super::LayerSpec {
        super::LayerSpec::Flatten
    }

    fn forward(&mut self, x: ArrayD<F>, _mode: Mode) -> Result<ArrayD<F>> {
        let shape = x.shape().to_vec();
        let n = *shape
            .first()
            .ok_or_else(|| Error::shape("Flatten input", "[batch, ...]", &shape))?;
        let rest: usize = shape[1..].iter().product();
        self.input_shape = Some(shape);
        reshape(x, vec![n, rest], "Flatten input")
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let shape = self
            .input_shape
            .clone()
            .ok_or_else(|| Error::InvalidArgument("Flatten: backward before forward".into()))?;
        Ok(if need_dx {
            Some(reshape(dy, shape, "Flatten dy")?)
        } else {
            None
        })
    }
}

/// `[n, prod(shape)] -> [n, shape...]`, as `torch.nn.Unflatten(-1, shape)` on a matrix.
#[derive(Debug, Clone)]
pub struct Unflatten {
    /// The per-sample shape to restore.
    pub shape: Vec<usize>,
}

impl Unflatten {
    /// Unflattens each row into `shape`.
    pub fn new(shape: &[usize]) -> Self {
        Unflatten { shape: shape.to_vec() }
    }
}

impl<F: Float> Module<F> for Unflatten {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param<F>)) {}
}

impl<F: Float> Layer<F> for Unflatten {
    fn spec(&self) -> super::LayerSpec {
        super::LayerSpec::Unflatten {
            shape: self.shape.clone(),
        }
    }

    fn forward(&mut self, x: ArrayD<F>, _mode: Mode) -> Result<ArrayD<F>> {
        let n = x.shape().first().copied().unwrap_or(0);
        let mut shape = vec![n];
        shape.extend(&self.shape);
        if x.ndim() != 2 || x.shape()[1] != self.shape.iter().product::<usize>() {
            return Err(Error::shape(
                "Unflatten input",
                format!("[batch, {}]", self.shape.iter().product::<usize>()),
                x.shape(),
            ));
        }
        reshape(x, shape, "Unflatten input")
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let n = dy.shape().first().copied().unwrap_or(0);
        Ok(if need_dx {
            Some(reshape(dy, vec![n, self.shape.iter().product()], "Unflatten dy")?)
        } else {
            None
        })
    }
}
