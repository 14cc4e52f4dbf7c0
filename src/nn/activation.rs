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

/// Arrays at least this long are processed in parallel.
const PAR_MIN: usize = 1 << 15;

/// `f` over `x`, in parallel for large arrays.
fn map<F: Float>(x: ArrayViewD<F>, f: impl Fn(F) -> F + Sync + Send) -> ArrayD<F> {
    if x.len() >= PAR_MIN {
        Zip::from(&x).par_map_collect(|&v| f(v))
    } else {
        x.mapv(f)
    }
}

/// `g = f(saved, g)` in place over `dy`, in parallel for large arrays.
fn map_grad<F: Float>(saved: ArrayViewD<F>, dy: &mut ArrayD<F>, f: impl Fn(F, F) -> F + Sync + Send) {
    let z = Zip::from(dy).and(&saved);
    if saved.len() >= PAR_MIN {
        z.par_for_each(|g, &s| *g = f(s, *g));
    } else {
        z.for_each(|g, &s| *g = f(s, *g));
    }
}

/// `y = act(x)`.
pub fn activation_forward<F: Float>(act: Activation, x: ArrayViewD<F>) -> ArrayD<F> {
    match act {
        Activation::Relu => map(x, |v| if v > F::zero() { v } else { F::zero() }),
        Activation::LeakyRelu(s) => {
            let s = F::lit(s);
            map(x, move |v| if v > F::zero() { v } else { s * v })
        }
        Activation::Sigmoid => map(x, sigmoid),
        Activation::Tanh => map(x, F::tanh),
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
    let mut dx = dy.to_owned();
    activation_backward_inplace(act, saved, &mut dx);
    dx
}

/// [`activation_backward`] overwriting `dy` with `dx`.
pub fn activation_backward_inplace<F: Float>(act: Activation, saved: ArrayViewD<F>, dy: &mut ArrayD<F>) {
    match act {
        Activation::Relu => map_grad(saved, dy, |x, g| if x > F::zero() { g } else { F::zero() }),
        Activation::LeakyRelu(s) => {
            let s = F::lit(s);
            map_grad(saved, dy, move |x, g| if x > F::zero() { g } else { s * g })
        }
        Activation::Sigmoid => map_grad(saved, dy, |y, g| g * y * (F::one() - y)),
        Activation::Tanh => map_grad(saved, dy, |y, g| g * (F::one() - y * y)),
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
        Ok(need_dx.then(|| {
            let mut dx = dy;
            activation_backward_inplace(self.act, saved.view(), &mut dx);
            dx
        }))
    }
}
