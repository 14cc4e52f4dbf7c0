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

impl Activation {
    /// Whether the derivative is read off the output `y` (Sigmoid: `y (1 - y)`, Tanh:
    /// `1 - y^2`) rather than the input `x` (ReLU, LeakyReLU: the sign of `x`).
    pub fn backward_uses_output(self) -> bool {
        matches!(self, Activation::Sigmoid | Activation::Tanh)
    }
}

/// `dx = act'(x) * dy`, from `saved`: the output `y` when
/// [`Activation::backward_uses_output`], the input `x` otherwise, as PyTorch computes them.
pub fn activation_backward<F: Float>(act: Activation, saved: ArrayViewD<F>, dy: ArrayViewD<F>) -> ArrayD<F> {
    match act {
        Activation::Relu => Zip::from(&saved)
            .and(&dy)
            .map_collect(|&x, &g| if x > F::zero() { g } else { F::zero() }),
        Activation::LeakyRelu(s) => {
            let s = F::lit(s);
            Zip::from(&saved)
                .and(&dy)
                .map_collect(|&x, &g| if x > F::zero() { g } else { s * g })
        }
        Activation::Sigmoid => Zip::from(&saved).and(&dy).map_collect(|&y, &g| g * y * (F::one() - y)),
        Activation::Tanh => Zip::from(&saved).and(&dy).map_collect(|&y, &g| g * (F::one() - y * y)),
    }
}

/// An activation as a layer. In training mode it keeps the one array its derivative
/// needs (the input or the output, see [`Activation::backward_uses_output`]).
#[derive(Debug, Clone)]
pub struct ActivationLayer<F> {
    /// Which activation.
    pub act: Activation,
    saved: Option<ArrayD<F>>,
}

impl<F: Float> ActivationLayer<F> {
    /// A layer applying `act`.
    pub fn new(act: Activation) -> Self {
        ActivationLayer { act, saved: None }
    }
}

impl<F: Float> Module<F> for ActivationLayer<F> {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param<F>)) {}
}

impl<F: Float> Layer<F> for ActivationLayer<F> {
    fn forward(&mut self, x: ArrayD<F>, mode: Mode) -> Result<ArrayD<F>> {
        let y = activation_forward(self.act, x.view());
        if mode.keeps_cache() {
            self.saved = Some(if self.act.backward_uses_output() { y.clone() } else { x });
        }
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let saved = self
            .saved
            .take()
            .ok_or_else(|| Error::InvalidArgument(format!("{:?}: backward before forward", self.act)))?;
        if dy.shape() != saved.shape() {
            return Err(Error::shape(
                format!("{:?} dy", self.act),
                format!("{:?}", saved.shape()),
                dy.shape(),
            ));
        }
        Ok(need_dx.then(|| activation_backward(self.act, saved.view(), dy.view())))
    }
}
