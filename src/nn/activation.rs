//! Element-wise activations: ReLU, LeakyReLU(slope), Sigmoid, Tanh.

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::{Layer, Mode, Module, Param};
use crate::loss::sigmoid;
use crate::{Error, Float, Result};

/// Which activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x > 0`, `slope * x` otherwise.
    LeakyRelu(f64),
    /// `1 / (1 + e^{-x})`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
}

/// `y = act(x)`.
pub fn activation_forward<F: Float>(act: Activation, x: ArrayViewD<F>) -> ArrayD<F> {
    match act {
        Activation::Relu => x.mapv(|v| if v > F::zero() { v } else { F::zero() }),
        Activation::LeakyRelu(s) => {
            let s = F::lit(s);
            x.mapv(|v| if v > F::zero() { v } else { s * v })
        }
        Activation::Sigmoid => x.mapv(sigmoid),
        Activation::Tanh => x.mapv(F::tanh),
    }
}

/// `dx = act'(x) * dy`, from the input `x` (ReLU, LeakyReLU) or the output `y` (Sigmoid:
/// `y (1 - y)`, Tanh: `1 - y^2`), as PyTorch computes them.
pub fn activation_backward<F: Float>(
    act: Activation,
    x: ArrayViewD<F>,
    y: ArrayViewD<F>,
    dy: ArrayViewD<F>,
) -> ArrayD<F> {
    match act {
        Activation::Relu => Zip::from(&x)
            .and(&dy)
            .map_collect(|&x, &g| if x > F::zero() { g } else { F::zero() }),
        Activation::LeakyRelu(s) => {
            let s = F::lit(s);
            Zip::from(&x)
                .and(&dy)
                .map_collect(|&x, &g| if x > F::zero() { g } else { s * g })
        }
        Activation::Sigmoid => Zip::from(&y).and(&dy).map_collect(|&y, &g| g * y * (F::one() - y)),
        Activation::Tanh => Zip::from(&y).and(&dy).map_collect(|&y, &g| g * (F::one() - y * y)),
    }
}

/// An activation as a layer (keeps its input and output in training mode).
#[derive(Debug, Clone)]
pub struct ActivationLayer<F> {
    /// Which activation.
    pub act: Activation,
    cache: Option<(ArrayD<F>, ArrayD<F>)>,
}

impl<F: Float> ActivationLayer<F> {
    /// A layer applying `act`.
    pub fn new(act: Activation) -> Self {
        ActivationLayer { act, cache: None }
    }
}

impl<F: Float> Module<F> for ActivationLayer<F> {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param<F>)) {}
}

impl<F: Float> Layer<F> for ActivationLayer<F> {
    fn forward(&mut self, x: ArrayD<F>, mode: Mode) -> Result<ArrayD<F>> {
        let y = activation_forward(self.act, x.view());
        if mode == Mode::Train {
            self.cache = Some((x, y.clone()));
        }
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let (x, y) = self
            .cache
            .take()
            .ok_or_else(|| Error::InvalidArgument(format!("{:?}: backward before forward", self.act)))?;
        if dy.shape() != y.shape() {
            return Err(Error::shape(
                format!("{:?} dy", self.act),
                format!("{:?}", y.shape()),
                dy.shape(),
            ));
        }
        Ok(need_dx.then(|| activation_backward(self.act, x.view(), y.view(), dy.view())))
    }
}
