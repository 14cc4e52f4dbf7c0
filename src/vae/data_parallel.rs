//! Data-parallel training steps: a batch cut into one part per thread, each part's
//! forward and backward on its own copy of the model, the parts' gradients summed into
//! the model's in a fixed order, then one optimizer step.
//!
//! Why: a small model's layers are too small to keep two threads busy inside each
//! product (the strided VAE's convolutions have 8 to 32 channels on 4x4 to 14x14 planes),
//! so splitting every layer's work pays a fork and a join per layer for little. Splitting
//! the batch once, at the top, leaves each thread a whole step's work on half the images
//! (the strided VAE's step at batch 128: 7.3 ms split per layer, 5.2 ms split per batch,
//! on two threads; see README, *Speed*).
//!
//! The loss is the same function of the parameters: every image's term depends on that
//! image alone (no BatchNorm in training mode: such models have no
//! [`Vae::replica`] and take whole batches), the noise is drawn for the whole batch
//! before it is cut, and a mean reduction divides each part's gradient by the whole
//! batch's size. Only the order of the sums over images changes.

use ndarray::{concatenate, s, ArrayView3, ArrayView4, Axis};
use rand::Rng;
use rayon::prelude::*;

use super::step::{check_input, loss_and_grad_of_part};
use super::{sample_noise, DiagGaussian, LossConfig, LossParts, Vae};
use crate::loss::Reduction;
use crate::nn::{Module, Param};
use crate::optim::Adam;
use crate::{Error, Float, Result};

/// Images per part below which a batch is not cut further: a part of a few images
/// leaves each layer's products too small to be worth a thread.
const MIN_PART: usize = 8;

/// Copies of a model, one per extra thread, for data-parallel training steps
/// (see the module's documentation). The copies hold no state of their own between
/// steps: each step first sets their parameters to the model's.
pub struct DataParallel<F: Float> {
    replicas: Vec<Box<dyn Vae<F>>>,
}

impl<F: Float> DataParallel<F> {
    /// As many parts as rayon's pool has threads, or one (no copies) where `model` has
    /// no [`Vae::replica`].
    pub fn new(model: &dyn Vae<F>) -> Self {
        Self::with_parts(model, rayon::current_num_threads())
    }

    /// Up to `parts` parts per batch (one per thread is the useful number; more run in
    /// turn), or one where `model` has no [`Vae::replica`].
    pub fn with_parts(model: &dyn Vae<F>, parts: usize) -> Self {
        let replicas = (1..parts.max(1)).map_while(|_| model.replica()).collect();
        DataParallel { replicas }
    }

    /// The most parts a batch is cut into (1: every step runs on the model alone).
    pub fn parts(&self) -> usize {
        self.replicas.len() + 1
    }

    /// The part sizes for a batch of `b`: as equal as can be, the larger ones first,
    /// none below [`MIN_PART`] unless the batch is one part.
    fn split(&self, b: usize) -> Vec<usize> {
        let k = self.parts().min(b / MIN_PART).max(1);
        (0..k).map(|i| b / k + usize::from(i < b % k)).collect()
    }

    /// [`super::loss_and_grad`] on images `x` `[b, c, h, w]` with noise `eps` `[b, n, K]`,
    /// each part of the batch on its own copy of `model`; `model`'s gradients end as the
    /// whole batch's, and the returned parts are the whole batch's.
    pub fn loss_and_grad<M: Vae<F> + ?Sized>(
        &mut self,
        model: &mut M,
        x: ArrayView4<F>,
        eps: ArrayView3<F>,
        cfg: &LossConfig,
    ) -> Result<LossParts<F>> {
        cfg.objective.validate()?;
        check_input(model, &x, &eps)?;
        let b = x.shape()[0];
        let sizes = self.split(b);
        if sizes.len() == 1 {
            return loss_and_grad_of_part(model, x, eps, cfg, b);
        }
        let starts: Vec<usize> = sizes
            .iter()
            .scan(0, |at, &n| Some(std::mem::replace(at, *at + n)))
            .collect();
        let part = |i: usize| {
            let r = starts[i]..starts[i] + sizes[i];
            (x.slice(s![r.clone(), .., .., ..]), eps.slice(s![r, .., ..]))
        };
        let values = param_values(model);
        let replicas = &mut self.replicas[..sizes.len() - 1];
        let (first, rest) = rayon::join(
            || {
                let (xi, ei) = part(0);
                loss_and_grad_of_part(model, xi, ei, cfg, b)
            },
            || {
                replicas
                    .par_iter_mut()
                    .enumerate()
                    .map(|(i, replica)| {
                        set_param_values(replica.as_mut(), &values)?;
                        let (xi, ei) = part(i + 1);
                        loss_and_grad_of_part(replica.as_mut(), xi, ei, cfg, b)
                    })
                    .collect::<Result<Vec<_>>>()
            },
        );
        let mut all = vec![first?];
        all.extend(rest?);
        for replica in replicas.iter_mut() {
            add_grads(model, replica.as_mut());
        }
        Ok(merge(all, &sizes, cfg.reduction))
    }

    /// [`DataParallel::loss_and_grad`] with fresh noise from `rng` (drawn for the whole
    /// batch, as [`super::train_step`] draws it), then one Adam step on `model`.
    pub fn train_step<M: Vae<F> + ?Sized, R: Rng + ?Sized>(
        &mut self,
        model: &mut M,
        x: ArrayView4<F>,
        cfg: &LossConfig,
        opt: &mut Adam<F>,
        rng: &mut R,
    ) -> Result<LossParts<F>> {
        let eps = sample_noise(x.shape()[0], cfg.objective.samples(), model.latent_dim(), rng);
        let parts = self.loss_and_grad(model, x, eps.view(), cfg)?;
        opt.step(model)?;
        Ok(parts)
    }
}

/// The values of `model`'s parameters, in visiting order.
fn param_values<F: Float, M: Module<F> + ?Sized>(model: &mut M) -> Vec<ndarray::ArrayD<F>> {
    let mut values = Vec::new();
    model.visit_params(&mut |p| values.push(p.value.clone()));
    values
}

/// Writes `values` (from [`param_values`] of the model a replica copies) over the
/// replica's parameters, in place.
fn set_param_values<F: Float>(replica: &mut dyn Vae<F>, values: &[ndarray::ArrayD<F>]) -> Result<()> {
    let mut i = 0;
    let mut bad = None;
    replica.visit_params(&mut |p: &mut Param<F>| {
        match values.get(i) {
            Some(v) if v.shape() == p.value.shape() => p.value.assign(v),
            _ => bad = bad.take().or(Some(p.name.clone())),
        }
        i += 1;
    });
    match bad {
        Some(name) => Err(Error::InvalidArgument(format!(
            "DataParallel: the replica's parameter {name} does not match the model's"
        ))),
        None => Ok(()),
    }
}

/// `model.grad += replica.grad`, parameter by parameter.
fn add_grads<F: Float, M: Vae<F> + ?Sized>(model: &mut M, replica: &mut dyn Vae<F>) {
    let mut grads = Vec::new();
    replica.visit_params(&mut |p| grads.push(std::mem::take(&mut p.grad)));
    let mut it = grads.iter();
    model.visit_params(&mut |p| p.grad += it.next().expect("replica has the model's parameters"));
    let mut it = grads.into_iter();
    replica.visit_params(&mut |p| p.grad = it.next().expect("same parameters"));
}

/// The whole batch's loss parts from its parts' (`sizes` images each).
fn merge<F: Float>(parts: Vec<LossParts<F>>, sizes: &[usize], reduction: Reduction) -> LossParts<F> {
    let b = F::lit(sizes.iter().sum::<usize>() as f64);
    let weighted = |f: &dyn Fn(&LossParts<F>) -> F| {
        parts
            .iter()
            .zip(sizes)
            .fold(F::zero(), |acc, (p, &n)| acc + f(p) * F::lit(n as f64))
            / b
    };
    let loss = match reduction {
        Reduction::Mean => weighted(&|p| p.loss),
        Reduction::Sum => parts.iter().fold(F::zero(), |acc, p| acc + p.loss),
    };
    let cat = |f: &dyn Fn(&LossParts<F>) -> ndarray::ArrayViewD<F>| {
        let views: Vec<_> = parts.iter().map(f).collect();
        concatenate(Axis(0), &views).expect("parts of one batch")
    };
    let output = cat(&|p| p.output.view().into_dyn());
    let mu = cat(&|p| p.posterior.mu.view().into_dyn());
    let logvar = cat(&|p| p.posterior.logvar.view().into_dyn());
    LossParts {
        loss,
        bound: weighted(&|p| p.bound),
        recon: weighted(&|p| p.recon),
        kl: weighted(&|p| p.kl),
        output: output.into_dimensionality().expect("images"),
        posterior: DiagGaussian {
            mu: mu.into_dimensionality().expect("matrix"),
            logvar: logvar.into_dimensionality().expect("matrix"),
        },
    }
}
