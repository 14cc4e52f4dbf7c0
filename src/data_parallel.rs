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

use rayon::prelude::*;

use crate::nn::param::{for_each_chunk, restore_params, split_params_pass, take_params};
use crate::nn::{Module, Param};
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
        let copies = parts.len().saturating_sub(1);
        if copies > 0 {
            self.sync_params(model, copies)?;
        }
        self.run_synced(model, parts, on_model, on_copy)
    }

    /// [`DataParallel::run`] where the copies of the parts after the first already hold
    /// `model`'s parameters ([`DataParallel::sync_params`]).
    pub(crate) fn run_synced<F: Float, T: Send, N: Module<F> + Send + ?Sized>(
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
        let replicas = &mut self.replicas[..rest.len()];
        let (head, tail) = rayon::join(
            || on_model(model, first.clone()),
            || {
                replicas
                    .par_iter_mut()
                    .zip(rest)
                    .map(|(copy, part)| on_copy(copy.as_mut(), part.clone()))
                    .collect::<Result<Vec<_>>>()
            },
        );
        let mut out = vec![head?];
        out.extend(tail?);
        add_grads(model, replicas);
        Ok(out)
    }

    /// Sets the parameters of the first `copies` copies to `model`'s (values only). The
    /// arrays are moved out of the models, copied in chunks over the thread pool where
    /// they are large ([`crate::nn::param`]'s whole-model passes), and moved back.
    pub(crate) fn sync_params<F: Float, N: Module<F> + ?Sized>(&mut self, model: &mut N, copies: usize) -> Result<()>
    where
        M: Module<F>,
    {
        assert!(copies <= self.replicas.len(), "more parts than copies");
        let src = take_params(model);
        let mut dsts: Vec<_> = self.replicas[..copies]
            .iter_mut()
            .map(|c| take_params(c.as_mut()))
            .collect();
        let checked = dsts.iter().try_for_each(|dst| same_params(&src, dst));
        if checked.is_ok() {
            let mut chunks = Vec::new();
            for dst in &mut dsts {
                for (d, s) in dst.iter_mut().zip(&src) {
                    if !(d.value.is_standard_layout() && s.value.is_standard_layout()) {
                        d.value.assign(&s.value);
                        continue;
                    }
                    let (d, s) = (d.value.as_slice_mut(), s.value.as_slice());
                    let (d, s) = (d.expect("standard layout"), s.expect("standard layout"));
                    chunks.extend(
                        d.chunks_mut(tuning::PARAM_PAR_CHUNK)
                            .zip(s.chunks(tuning::PARAM_PAR_CHUNK)),
                    );
                }
            }
            for_each_chunk(chunks, split_params_pass(&src), |(d, s): (&mut [F], &[F])| {
                d.copy_from_slice(s)
            });
        }
        for (copy, dst) in self.replicas.iter_mut().zip(dsts) {
            restore_params(copy.as_mut(), dst);
        }
        restore_params(model, src);
        checked
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

/// An error naming the first parameter where a copy's list differs from the model's.
fn same_params<F: Float>(model: &[Param<F>], copy: &[Param<F>]) -> Result<()> {
    if let Some((m, _)) = model.iter().zip(copy).find(|(m, c)| m.value.shape() != c.value.shape()) {
        return Err(Error::InvalidArgument(format!(
            "DataParallel: the copy's parameter {} does not match the model's",
            m.name
        )));
    }
    if model.len() != copy.len() {
        return Err(Error::InvalidArgument(format!(
            "DataParallel: the copy has {} parameters, the model {}",
            copy.len(),
            model.len()
        )));
    }
    Ok(())
}

/// `model.grad += copy.grad` for every copy in `copies`, in their order (so each entry's
/// sum is the same whatever the threads), in chunks over the pool where the model is large.
fn add_grads<F: Float, N: Module<F> + ?Sized, M: Module<F> + ?Sized>(model: &mut N, copies: &mut [Box<M>]) {
    let mut sum = take_params(model);
    let parts: Vec<_> = copies.iter_mut().map(|c| take_params(c.as_mut())).collect();
    let split = split_params_pass(&sum);
    let mut chunks = Vec::new();
    for (i, p) in sum.iter_mut().enumerate() {
        let all: Option<Vec<&[F]>> = parts.iter().map(|c| c[i].grad.as_slice()).collect();
        match (p.grad.is_standard_layout(), all) {
            (true, Some(all)) => {
                let g = p.grad.as_slice_mut().expect("standard layout");
                for (j, g) in g.chunks_mut(tuning::PARAM_PAR_CHUNK).enumerate() {
                    let at = j * tuning::PARAM_PAR_CHUNK;
                    let from = all.iter().map(|c| &c[at..at + g.len()]).collect::<Vec<_>>();
                    chunks.push((g, from));
                }
            }
            _ => {
                for c in &parts {
                    p.grad += &c[i].grad;
                }
            }
        }
    }
    for_each_chunk(chunks, split, |(g, from): (&mut [F], Vec<&[F]>)| {
        for c in from {
            g.iter_mut().zip(c).for_each(|(g, &c)| *g += c);
        }
    });
    for (copy, p) in copies.iter_mut().zip(parts) {
        restore_params(copy.as_mut(), p);
    }
    restore_params(model, sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Linear;
    use ndarray::ArrayD;
    use rand::SeedableRng;

    fn linear(out: usize, seed: u64) -> Linear<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut l = Linear::new("l", 700, out, true, &mut rng);
        l.visit_params(&mut |p| p.grad.mapv_inplace(|_| f64::sample_normal(&mut rng)));
        l
    }

    fn values(l: &mut Linear<f64>) -> Vec<ArrayD<f64>> {
        let mut v = Vec::new();
        l.visit_params(&mut |p| v.push(p.value.clone()));
        v
    }

    fn grads(l: &mut Linear<f64>) -> Vec<ArrayD<f64>> {
        let mut v = Vec::new();
        l.visit_params(&mut |p| v.push(p.grad.clone()));
        v
    }

    /// Two copies of a 210,000-entry layer, on two threads: the copies end with the
    /// model's values to the bit, and the model's gradient is its own plus the copies' in
    /// their order, as the serial sum gives it.
    #[test]
    fn copies_take_the_values_and_gradients_add_in_order() {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(|| {
                let mut model = linear(300, 0);
                let mut dp = DataParallel::<Linear<f64>>::from_replicas(vec![
                    Box::new(linear(300, 1)),
                    Box::new(linear(300, 2)),
                ]);
                dp.sync_params(&mut model, 2).unwrap();
                let want = values(&mut model);
                for copy in dp.replicas.iter_mut() {
                    assert_eq!(values(copy), want);
                }
                let mut sum = grads(&mut model);
                for copy in dp.replicas.iter_mut() {
                    for (s, g) in sum.iter_mut().zip(grads(copy)) {
                        *s += &g;
                    }
                }
                add_grads(&mut model, &mut dp.replicas);
                assert_eq!(grads(&mut model), sum);
                assert_eq!(values(&mut model), want);
            });
    }

    /// A copy that is not of the model's shape is an error naming the parameter, and
    /// neither model changes.
    #[test]
    fn a_copy_of_another_shape_is_refused() {
        let mut model = linear(30, 0);
        let mut dp = DataParallel::<Linear<f64>>::from_replicas(vec![Box::new(linear(31, 1))]);
        let (before, theirs) = (values(&mut model), values(&mut dp.replicas[0]));
        let err = dp.sync_params(&mut model, 1).unwrap_err().to_string();
        assert!(err.contains("parameter l.weight does not match"), "{err}");
        assert_eq!(values(&mut model), before);
        assert_eq!(values(&mut dp.replicas[0]), theirs);
    }

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
