//! A named parameter: its value and the gradient that backward accumulates into.

use ndarray::{ArrayD, ArrayView2, Ix2, IxDyn};

use crate::tuning;
use crate::{Error, Float, Result};

/// Whether a pass that touches each of `len` entries once is split over threads
/// ([`tuning::PAR_MIN_LIGHT`], and a pool of more than one thread).
pub(crate) fn split_light_pass(len: usize) -> bool {
    len >= tuning::PAR_MIN_LIGHT && rayon::current_num_threads() > 1
}

/// A learnable tensor with its gradient. `name` is the PyTorch `state_dict` key where a
/// notebook model has one, so weights and reference values carry over by name.
#[derive(Debug, Clone)]
pub struct Param<F> {
    /// `state_dict`-style name, e.g. `enc_lin.weight`.
    pub name: String,
    /// The value.
    pub value: ArrayD<F>,
    /// The gradient, same shape as `value`.
    pub grad: ArrayD<F>,
}

impl<F: Float> Param<F> {
    /// A parameter holding `value`, with a zero gradient.
    pub fn new(name: impl Into<String>, value: ArrayD<F>) -> Self {
        let grad = ArrayD::zeros(value.raw_dim());
        Param {
            name: name.into(),
            value,
            grad,
        }
    }

    /// Sets the gradient to zero (over the thread pool for a large one: a whole model's
    /// gradients are megabytes, zeroed every step).
    pub fn zero_grad(&mut self) {
        match self.grad.as_slice_memory_order_mut() {
            Some(g) if split_light_pass(g.len()) => {
                use rayon::prelude::*;
                g.par_chunks_mut(tuning::PARAM_PAR_CHUNK)
                    .for_each(|c| c.fill(F::zero()));
            }
            _ => self.grad.fill(F::zero()),
        }
    }

    /// Replaces the value, checking the shape (loading weights by name).
    pub fn assign(&mut self, value: ArrayD<F>) -> Result<()> {
        if value.shape() != self.value.shape() {
            return Err(Error::shape(
                format!("parameter {}", self.name),
                format!("{:?}", self.value.shape()),
                value.shape(),
            ));
        }
        self.value = value;
        Ok(())
    }

    /// The value as a matrix view (for weights that are matrices; panics on another rank).
    pub fn value2(&self) -> ArrayView2<'_, F> {
        self.value
            .view()
            .into_dimensionality::<Ix2>()
            .expect("matrix parameter")
    }

    /// A parameter of `shape` drawn from `U(-bound, bound)`, PyTorch's default
    /// initialisation for Linear and Conv weights and biases (bound = 1/sqrt(fan_in)).
    pub(crate) fn uniform<R: rand::Rng + ?Sized>(name: String, shape: &[usize], bound: F, rng: &mut R) -> Self {
        let value = ArrayD::from_shape_simple_fn(IxDyn(shape), || F::sample_uniform(rng, -bound, bound));
        Param::new(name, value)
    }
}

/// The parameters of `model` moved out, in visiting order (names, values and gradients:
/// no copies), so that one pass over the thread pool can cover all of them at once;
/// [`restore_params`] moves them back. Until then `model` holds empty arrays.
pub(crate) fn take_params<F: Float, M: super::Module<F> + ?Sized>(model: &mut M) -> Vec<Param<F>> {
    let mut out = Vec::new();
    model.visit_params(&mut |p| {
        out.push(Param {
            name: std::mem::take(&mut p.name),
            value: std::mem::take(&mut p.value),
            grad: std::mem::take(&mut p.grad),
        })
    });
    out
}

/// Moves parameters taken with [`take_params`] back into `model`, in visiting order.
pub(crate) fn restore_params<F: Float, M: super::Module<F> + ?Sized>(model: &mut M, params: Vec<Param<F>>) {
    let mut it = params.into_iter();
    model.visit_params(&mut |p| *p = it.next().expect("the parameters taken from this model"));
}

/// Whether a pass over all of `params` (each entry touched once) is split over threads.
pub(crate) fn split_params_pass<F>(params: &[Param<F>]) -> bool {
    split_light_pass(params.iter().map(|p| p.value.len()).sum())
}

/// Runs `f` on every chunk of a whole-model pass, over the thread pool when `split`
/// ([`split_params_pass`]), else on the calling thread.
pub(crate) fn for_each_chunk<T: Send>(chunks: Vec<T>, split: bool, f: impl Fn(T) + Sync + Send) {
    if split {
        use rayon::prelude::*;
        chunks.into_par_iter().for_each(f);
    } else {
        chunks.into_iter().for_each(f);
    }
}
