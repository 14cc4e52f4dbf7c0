//! [`DataParallel`] for the VAEs: [`Vae`]'s training step with the batch cut into one
//! part per thread (see [`crate::data_parallel`]). The noise is drawn for the whole batch
//! before it is cut, and a mean reduction divides each part's gradient by the whole
//! batch's size, so the loss is the one-piece step's.

use std::ops::Range;

use ndarray::{s, ArrayView3, ArrayView4};
use rand::Rng;

use super::step::{check_input, loss_and_grad_of_part};
use super::{sample_noise, DiagGaussian, LossConfig, LossParts, Vae, VaeModel};
use crate::data_parallel::{concat_parts, DataParallel};
use crate::loss::Reduction;
use crate::optim::Adam;
use crate::pool::on_worker;
use crate::{Float, Result};

impl<F: Float> DataParallel<VaeModel<F>> {
    /// As many parts as rayon's pool has threads, or one (no copies) where a layer of
    /// `model` couples the images of a batch ([`VaeModel::couples_batch`]: BatchNorm).
    pub fn vae(model: &VaeModel<F>) -> Self {
        Self::vae_in_parts(model, rayon::current_num_threads())
    }

    /// Up to `parts` parts per batch (one per thread is the useful number; more take
    /// turns), or one where a layer of `model` couples the images of a batch or the model
    /// is conditional.
    pub fn vae_in_parts(model: &VaeModel<F>, parts: usize) -> Self {
        // A conditional model's labels belong to the whole batch: it is not cut.
        let whole = model.couples_batch() || model.conditional_classes().is_some();
        let copies = if whole { 0 } else { parts.max(1) - 1 };
        Self::from_replicas((0..copies).map(|_| Box::new(model.clone())).collect())
    }

    /// [`super::loss_and_grad`] on images `x` `[b, c, h, w]` with noise `eps` `[b, n, K]`,
    /// the batch's parts on `model` and its copies in parallel: `model`'s gradients end
    /// as the whole batch's, and the returned parts are the whole batch's.
    pub fn loss_and_grad<M: Vae<F> + ?Sized>(
        &mut self,
        model: &mut M,
        x: ArrayView4<F>,
        eps: ArrayView3<F>,
        cfg: &LossConfig,
    ) -> Result<LossParts<F>> {
        let copies = self.split(x.shape()[0]).len() - 1;
        self.sync_params(model, copies)?;
        self.loss_and_grad_synced(model, x, eps, cfg)
    }

    /// [`DataParallel::loss_and_grad`] with the copies already holding `model`'s
    /// parameters.
    fn loss_and_grad_synced<M: Vae<F> + ?Sized>(
        &mut self,
        model: &mut M,
        x: ArrayView4<F>,
        eps: ArrayView3<F>,
        cfg: &LossConfig,
    ) -> Result<LossParts<F>> {
        cfg.objective.validate()?;
        check_input(model, &x, &eps)?;
        let b = x.shape()[0];
        let parts = self.split(b);
        let slices = |r: Range<usize>| (x.slice(s![r.clone(), .., .., ..]), eps.slice(s![r, .., ..]));
        let results = on_worker(|| {
            self.run_synced(
                model,
                &parts,
                |m, r| {
                    let (xi, ei) = slices(r);
                    loss_and_grad_of_part(m, xi, ei, cfg, b)
                },
                |m, r| {
                    let (xi, ei) = slices(r);
                    loss_and_grad_of_part(m, xi, ei, cfg, b)
                },
            )
        })?;
        Ok(merge(results, &parts, cfg.reduction))
    }

    /// [`DataParallel::loss_and_grad`] with fresh noise from `rng` (drawn for the whole
    /// batch, as [`super::train_step`] draws it), then one Adam step on `model`. The
    /// copies take `model`'s parameters on the pool while this thread draws the noise:
    /// both are serial work of a tenth of a millisecond or more at Burda et al.'s k = 50.
    pub fn train_step<M: Vae<F> + ?Sized, R: Rng + ?Sized>(
        &mut self,
        model: &mut M,
        x: ArrayView4<F>,
        cfg: &LossConfig,
        opt: &mut Adam<F>,
        rng: &mut R,
    ) -> Result<LossParts<F>> {
        let (b, n, k) = (x.shape()[0], cfg.objective.samples(), model.latent_dim());
        let copies = self.split(b).len() - 1;
        let mut synced = Ok(());
        let eps = if copies == 0 {
            sample_noise(b, n, k, rng)
        } else {
            rayon::in_place_scope(|s| {
                s.spawn(|_| synced = self.sync_params(model, copies));
                sample_noise(b, n, k, rng)
            })
        };
        synced?;
        on_worker(|| {
            let parts = self.loss_and_grad_synced(model, x, eps.view(), cfg)?;
            opt.step(model)?;
            Ok(parts)
        })
    }
}

/// The whole batch's loss parts from its parts' (one per range of `ranges`).
fn merge<F: Float>(mut parts: Vec<LossParts<F>>, ranges: &[Range<usize>], reduction: Reduction) -> LossParts<F> {
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    let b = F::lit(ranges.iter().map(|r| r.len()).sum::<usize>() as f64);
    let weighted = |f: &dyn Fn(&LossParts<F>) -> F| {
        parts
            .iter()
            .zip(ranges)
            .fold(F::zero(), |acc, (p, r)| acc + f(p) * F::lit(r.len() as f64))
            / b
    };
    let loss = match reduction {
        Reduction::Mean => weighted(&|p| p.loss),
        Reduction::Sum => parts.iter().fold(F::zero(), |acc, p| acc + p.loss),
    };
    LossParts {
        loss,
        bound: weighted(&|p| p.bound),
        recon: weighted(&|p| p.recon),
        kl: weighted(&|p| p.kl),
        output: concat_parts(&parts, |p| p.output.view()),
        posterior: DiagGaussian {
            mu: concat_parts(&parts, |p| p.posterior.mu.view()),
            logvar: concat_parts(&parts, |p| p.posterior.logvar.view()),
        },
    }
}
