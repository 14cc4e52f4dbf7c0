//! Data-parallel training steps: a batch cut into one part per thread, each part's
//! forward and backward on its own copy of the model, the parts' gradients summed into
//! the model's in a fixed order, then one optimizer step on the model.
//!
//! Why: the notebooks' models are small enough that splitting each layer's products
//! over the threads pays a fork and a join per layer for little work (the strided VAE's
//! convolutions have 8 to 32 channels on 4x4 to 14x14 planes). Splitting the batch once,
//! at the top, leaves each thread a whole step on its share of the images: on two
//! threads the strided VAE's step at batch 128 took about 0.7 of the time, the conv AE's
//! at batch 250 about 0.8 (`docs/performance-log.md`).
//!
//! The loss is the same function of the parameters as long as every image's term depends
//! on that image alone, so only models without batch-coupled layers (BatchNorm in
//! training mode) are split; their steps differ from one-piece steps only in the order of
//! the sums over images. The typed entry points are
//! [`DataParallel::<VaeModel<F>>`](crate::vae::VaeModel) for the VAEs
//! ([`crate::vae`]'s `loss_and_grad` and `train_step`) and
//! [`DataParallel::<ConvAe<F>>`](crate::models::ConvAe) for the conv autoencoder.

use std::ops::Range;

use ndarray::ArrayD;
use rayon::prelude::*;

use crate::nn::Module;
use crate::tuning;
pub use crate::tuning::MIN_PART;
use crate::{Error, Float, Result};

/// Copies of a model, one per part of a batch after the first (which the model takes
/// itself). The copies keep nothing between steps that matters: each step first sets
/// their parameters to the model's, so a model edited, reloaded or restarted between
/// steps is followed.
pub struct DataParallel<M: ?Sized> {
    replicas: Vec<Box<M>>,
}

impl<M: ?Sized> DataParallel<M> {
    /// A batch cut into up to `replicas.len() + 1` parts.
    pub(crate) fn from_replicas(replicas: Vec<Box<M>>) -> Self {
        DataParallel { replicas }
    }

    /// The most parts a batch is cut into (1: every step runs on the model alone).
    pub fn parts(&self) -> usize {
        self.replicas.len() + 1
    }

    /// The parts of a batch of `b` images: contiguous, as equal as can be (the larger
    /// ones first), none under [`tuning::MIN_PART`] images unless the batch is one part.
    pub fn split(&self, b: usize) -> Vec<Range<usize>> {
        let k = self.parts().min(b / tuning::MIN_PART).max(1);
        let mut start = 0;
        (0..k)
            .map(|i| {
                let n = b / k + usize::from(i < b % k);
                start += n;
                start - n..start
            })
            .collect()
    }

    /// Runs the step of every part of `parts` ([`DataParallel::split`]) in parallel: the
    /// first part's as `on_model(model, part)`, the others' as `on_copy(copy, part)` on
    /// the copies, after setting their parameters to `model`'s. Each step zeroes its
    /// model's gradients and fills them for its part; afterwards `model`'s gradients are
    /// the sum of all parts', added in part order. Returns each part's result, in order.
    /// (Two closures because `model` may be a concrete type and the copies trait objects.)
    pub(crate) fn run<F: Float, T: Send, N: Module<F> + Send + ?Sized>(
        &mut self,
        model: &mut N,
        parts: &[Range<usize>],
        on_model: impl FnOnce(&mut N, Range<usize>) -> Result<T> + Send,
        on_copy: impl Fn(&mut M, Range<usize>) -> Result<T> + Sync,
    ) -> Result<Vec<T>>
    where
        M: Module<F> + Send,
    {
        let Some((first, rest)) = parts.split_first() else {
            return Ok(Vec::new());
        };
        if rest.is_empty() {
            return Ok(vec![on_model(model, first.clone())?]);
        }
        assert!(rest.len() <= self.replicas.len(), "more parts than copies");
        let values = param_values(model);
        let replicas = &mut self.replicas[..rest.len()];
        let (head, tail) = rayon::join(
            || on_model(model, first.clone()),
            || {
                replicas
                    .par_iter_mut()
                    .zip(rest)
                    .map(|(copy, part)| {
                        set_param_values(copy.as_mut(), &values)?;
                        on_copy(copy.as_mut(), part.clone())
                    })
                    .collect::<Result<Vec<_>>>()
            },
        );
        let mut out = vec![head?];
        out.extend(tail?);
        for copy in replicas.iter_mut() {
            add_grads(model, copy.as_mut());
        }
        Ok(out)
    }
}

/// One array from the parts' arrays `f(part)`, stacked along the batch axis in part
/// order (the whole batch's outputs, codes or posterior from its parts').
pub(crate) fn concat_parts<T, A: Clone, D: ndarray::RemoveAxis>(
    parts: &[T],
    f: impl Fn(&T) -> ndarray::ArrayView<'_, A, D>,
) -> ndarray::Array<A, D> {
    let views: Vec<_> = parts.iter().map(f).collect();
    ndarray::concatenate(ndarray::Axis(0), &views).expect("parts of one batch")
}

/// The values of `model`'s parameters, in visiting order.
fn param_values<F: Float, M: Module<F> + ?Sized>(model: &mut M) -> Vec<ArrayD<F>> {
    let mut values = Vec::new();
    model.visit_params(&mut |p| values.push(p.value.clone()));
    values
}

/// Writes `values` ([`param_values`] of the model `copy` was made from) over `copy`'s
/// parameters, in place.
fn set_param_values<F: Float, M: Module<F> + ?Sized>(copy: &mut M, values: &[ArrayD<F>]) -> Result<()> {
    let mut i = 0;
    let mut bad = None;
    copy.visit_params(&mut |p| {
        match values.get(i) {
            Some(v) if v.shape() == p.value.shape() => p.value.assign(v),
            _ if bad.is_none() => bad = Some(p.name.clone()),
            _ => {}
        }
        i += 1;
    });
    if let Some(name) = bad {
        return Err(Error::InvalidArgument(format!(
            "DataParallel: the copy's parameter {name} does not match the model's"
        )));
    }
    if i != values.len() {
        return Err(Error::InvalidArgument(format!(
            "DataParallel: the copy has {i} parameters, the model {}",
            values.len()
        )));
    }
    Ok(())
}

/// `model.grad += copy.grad`, parameter by parameter.
fn add_grads<F: Float, N: Module<F> + ?Sized, M: Module<F> + ?Sized>(model: &mut N, copy: &mut M) {
    let mut grads = Vec::new();
    copy.visit_params(&mut |p| grads.push(std::mem::take(&mut p.grad)));
    let mut it = grads.iter();
    model.visit_params(&mut |p| p.grad += it.next().expect("the copy has the model's parameters"));
    let mut it = grads.into_iter();
    copy.visit_params(&mut |p| p.grad = it.next().expect("same parameters"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_batch_in_order_and_are_never_too_small() {
        let dp = DataParallel::<()>::from_replicas(vec![Box::new(()), Box::new(())]);
        assert_eq!(dp.parts(), 3);
        for b in 1..100 {
            let parts = dp.split(b);
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts.last().unwrap().end, b);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
            assert!(parts.len() == 1 || parts.iter().all(|p| p.len() >= tuning::MIN_PART));
            assert!(parts.iter().all(|p| p.len() + 1 >= parts[0].len()));
            assert_eq!(parts.len(), (b / tuning::MIN_PART).clamp(1, 3));
        }
    }
}
