//! One VAE training step, written out: encode, sample, decode, score, and the backward
//! pass through each of those, for any model that implements [`Vae`].

use ndarray::{Array1, Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis};
use rand::Rng;

use super::{
    bound_of_log_weights, kl_diag, kl_diag_backward, log_likelihood, log_likelihood_backward, log_mean_exp, log_ratio,
    log_ratio_backward, DiagGaussian, Likelihood, Objective,
};
use crate::loss::Reduction;
use crate::nn::{Mode, Module};
use crate::optim::Adam;
use crate::pool::on_worker;
use crate::{Error, Float, Result};

/// A variational autoencoder's maths: an encoder to a diagonal Gaussian q(z|x), a decoder
/// from z to the parameters of p(x|z), and the likelihood that scores them. The forward
/// calls in [`Mode::Train`] keep what the matching backward needs.
///
/// [`super::VaeModel`] implements it for any encoder, head, decoder and likelihood; the
/// training policy (the loss, the optimizer, the batch) and what backends need (may a
/// batch be split? the GPU's plan) are not part of it.
pub trait Vae<F: Float>: Module<F> + Send {
    /// One image's shape `[c, h, w]`.
    fn image_shape(&self) -> [usize; 3];

    /// Latent dimension K.
    fn latent_dim(&self) -> usize;

    /// q(z|x) for images `[b, c, h, w]`.
    fn encode(&mut self, x: ArrayView4<F>, mode: Mode) -> Result<DiagGaussian<F>>;

    /// Backward of [`Vae::encode`], given the gradients with respect to `mu` and `logvar`;
    /// accumulates into the encoder's parameter gradients.
    fn encode_backward(&mut self, dmu: Array2<F>, dlogvar: Array2<F>) -> Result<()>;

    /// The decoder's output for codes `[m, K]`: means (or probabilities, or logits), `[m, c, h, w]`.
    fn decode(&mut self, z: ArrayView2<F>, mode: Mode) -> Result<Array4<F>>;

    /// Backward of [`Vae::decode`]; returns the gradient with respect to z, `[m, K]`.
    fn decode_backward(&mut self, dout: Array4<F>) -> Result<Array2<F>>;

    /// How images are scored against the decoder's output.
    fn likelihood(&self) -> Likelihood<F>;

    /// Accumulates the gradient with respect to a learned `log sigma_x`, if the model has one.
    fn likelihood_backward(&mut self, _dlog_sig_x: F) {}

    /// The labels of the images the next forward is given (`[b]`), for a model that is
    /// conditioned on them ([`super::VaeModel::conditional`]); the decoder repeats each
    /// label over that image's samples. Others ignore it.
    fn condition_on(&mut self, _labels: ArrayView1<u8>) -> Result<()> {
        Ok(())
    }

    /// The number of classes a conditional model takes, `None` for others.
    fn classes(&self) -> Option<usize> {
        None
    }

    /// Whether the decoder's output for one code depends on that code alone (no layer
    /// couples the codes of a batch), so that the gradient with respect to each code is
    /// linear in its own output's upstream gradient. The DReG estimator needs it; `false`
    /// (the default) where a model does not say.
    fn decoder_is_per_sample(&self) -> bool {
        false
    }
}

/// How the KL term of the ELBO is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlEstimator {
    /// `KL(q || N(0, I))` in closed form.
    Closed,
    /// The Monte-Carlo estimate `mean_j [log q(z_j) - log p(z_j)]` over the drawn samples
    /// (CIS-522), with its gradient through the reparameterised samples.
    MonteCarlo,
}

/// The loss a VAE is trained on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// ELBO (with samples and beta) or IWAE.
    pub objective: Objective,
    /// Closed-form or Monte-Carlo KL (the ELBO only; IWAE always uses the sampled log ratio).
    pub kl: KlEstimator,
    /// Whether the per-image losses are averaged or summed over the batch.
    pub reduction: Reduction,
}

impl LossConfig {
    /// The ELBO with `samples` draws of z per image and the KL weighted by `beta`, the KL
    /// in closed form, averaged over the batch.
    pub fn elbo(samples: usize, beta: f64) -> Self {
        LossConfig {
            objective: Objective::Elbo { samples, beta },
            kl: KlEstimator::Closed,
            reduction: Reduction::Mean,
        }
    }

    /// The importance-weighted bound with `k` samples per image, averaged over the batch.
    pub fn iwae(k: usize) -> Self {
        LossConfig {
            objective: Objective::Iwae { samples: k },
            kl: KlEstimator::MonteCarlo,
            reduction: Reduction::Mean,
        }
    }
}

/// The parts of a VAE loss on one batch, averaged per image.
#[derive(Debug, Clone)]
pub struct LossParts<F> {
    /// The minimised loss, `-bound` reduced over the batch as [`LossConfig::reduction`].
    pub loss: F,
    /// The bound on log p(x) per image (ELBO or IWAE), mean over the batch.
    pub bound: F,
    /// The reconstruction term `-E_q log p(x|z)` per image.
    pub recon: F,
    /// The KL term per image (closed form, or the Monte-Carlo estimate).
    pub kl: F,
    /// The decoder's output for the first sample of each image, `[b, c, h, w]`.
    pub output: Array4<F>,
    /// The posterior q(z|x) of each image.
    pub posterior: DiagGaussian<F>,
}

struct Forward<F> {
    q: DiagGaussian<F>,
    eps: Array3<F>,
    z: Array3<F>,
    out: Array4<F>,
    x2: Array2<F>,
    ll: Array2<F>,
    kl: Option<Array1<F>>,
    ratio: Option<Array2<F>>,
}

pub(super) fn check_input<F: Float, M: Vae<F> + ?Sized>(
    model: &M,
    x: &ArrayView4<F>,
    eps: &ArrayView3<F>,
) -> Result<()> {
    if x.shape()[1..] != model.image_shape() || x.shape()[0] == 0 {
        return Err(Error::shape(
            "VAE input images",
            format!("[batch >= 1, {:?}]", model.image_shape()),
            x.shape(),
        ));
    }
    let (b, n, k) = eps.dim();
    if b != x.shape()[0] || k != model.latent_dim() || n == 0 {
        return Err(Error::shape(
            "VAE noise eps",
            format!("[{}, samples >= 1, {}]", x.shape()[0], model.latent_dim()),
            eps.shape(),
        ));
    }
    if !crate::float::all_finite_array(x.view()) {
        return Err(Error::NonFinite("VAE input images".into()));
    }
    Ok(())
}

fn forward<F: Float, M: Vae<F> + ?Sized>(
    model: &mut M,
    x: ArrayView4<F>,
    eps: ArrayView3<F>,
    cfg: &LossConfig,
    mode: Mode,
) -> Result<Forward<F>> {
    cfg.objective.validate()?;
    check_input(model, &x, &eps)?;
    if matches!(cfg.objective, Objective::IwaeDreg { .. }) && !model.decoder_is_per_sample() {
        return Err(Error::InvalidArgument(
            "the DReG estimator needs a decoder that treats each code on its own (no BatchNorm in train mode)".into(),
        ));
    }
    let q = model.encode(x, mode)?;
    forward_from(model, x, q, eps, cfg, mode)
}

/// Everything after the encoder: sample, decode, score.
fn forward_from<F: Float, M: Vae<F> + ?Sized>(
    model: &mut M,
    x: ArrayView4<F>,
    q: DiagGaussian<F>,
    eps: ArrayView3<F>,
    cfg: &LossConfig,
    mode: Mode,
) -> Result<Forward<F>> {
    let (b, n, k) = eps.dim();
    let z = q.rsample(eps)?;
    let z2 = z.view().into_shape_with_order((b * n, k)).expect("contiguous");
    let out = model.decode(z2, mode)?;
    let d = out.len() / (b * n).max(1);
    let out3 = out.view().into_shape_with_order((b, n, d)).expect("contiguous");
    let x2 = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((b, d))
        .map_err(|_| Error::shape("VAE decoder output", format!("{d} pixels per image"), x.shape()))?;
    let ll = log_likelihood(model.likelihood(), x2.view(), out3)?;
    let (kl, ratio) = match (cfg.objective, cfg.kl) {
        (Objective::Elbo { .. }, KlEstimator::Closed) => (Some(kl_diag(&q)), None),
        _ => (None, Some(log_ratio(&q, eps, z.view())?)),
    };
    Ok(Forward {
        q,
        eps: eps.to_owned(),
        z,
        out,
        x2,
        ll,
        kl,
        ratio,
    })
}

/// Per-image bound values `[b]` and the gradient of their sum with respect to `ll` and to
/// the log ratio (or closed-form KL), each `[b, n]` (or `[b]`).
fn bound_and_weights<F: Float>(fw: &Forward<F>, objective: Objective) -> Result<(Array1<F>, Array2<F>, Array2<F>)> {
    let (b, n) = fw.ll.dim();
    let inv_n = F::one() / F::lit(n as f64);
    match objective {
        Objective::Elbo { beta, .. } => {
            let beta = F::lit(beta);
            let mean_ll = fw.ll.mean_axis(Axis(1)).expect("n >= 1");
            let bound = match (&fw.kl, &fw.ratio) {
                (Some(kl), _) => &mean_ll - &kl.mapv(|v| beta * v),
                (None, Some(r)) => &mean_ll - &r.mean_axis(Axis(1)).expect("n >= 1").mapv(|v| beta * v),
                _ => unreachable!("forward computes one KL form"),
            };
            let w = Array2::from_elem((b, n), inv_n);
            let w_kl = Array2::from_elem((b, n), -beta * inv_n);
            Ok((bound, w, w_kl))
        }
        Objective::Iwae { .. } | Objective::IwaeDreg { .. } => {
            let log_w = &fw.ll - fw.ratio.as_ref().expect("IWAE uses the log ratio");
            let (bound, w) = bound_of_log_weights(log_w.view(), objective)?;
            let w_kl = w.mapv(|v| -v);
            Ok((bound, w, w_kl))
        }
    }
}

fn parts<F: Float>(fw: &Forward<F>, bound: &Array1<F>, cfg: &LossConfig) -> LossParts<F> {
    let b = fw.ll.nrows();
    let mean_bound = bound.mean().expect("b >= 1");
    let loss = match cfg.reduction {
        Reduction::Mean => -mean_bound,
        Reduction::Sum => -bound.sum(),
    };
    let recon = -fw.ll.mean().expect("non-empty");
    let kl = match (&fw.kl, &fw.ratio) {
        (Some(kl), _) => kl.mean().expect("b >= 1"),
        (None, Some(r)) => r.mean().expect("non-empty"),
        _ => F::zero(),
    };
    let n = fw.ll.ncols();
    let first: Vec<usize> = (0..b).map(|i| i * n).collect();
    LossParts {
        loss,
        bound: mean_bound,
        recon,
        kl,
        output: fw.out.select(Axis(0), &first),
        posterior: fw.q.clone(),
    }
}

/// The loss of `model` on images `x` `[b, c, h, w]` with noise `eps` `[b, n, K]`
/// (`n` = the objective's samples), in training mode, followed by the whole backward pass:
/// parameter gradients are zeroed, then filled. The returned loss is checked to be finite.
pub fn loss_and_grad<F: Float, M: Vae<F> + ?Sized>(
    model: &mut M,
    x: ArrayView4<F>,
    eps: ArrayView3<F>,
    cfg: &LossConfig,
) -> Result<LossParts<F>> {
    on_worker(|| loss_and_grad_of_part(model, x, eps, cfg, x.shape()[0]))
}

/// [`loss_and_grad`] on `x`, one part of a batch of `batch` images: a mean reduction
/// divides by `batch`, so that the parts' gradients add up to the whole batch's (the
/// returned parts are still this part's own: its loss and per-image means).
pub(super) fn loss_and_grad_of_part<F: Float, M: Vae<F> + ?Sized>(
    model: &mut M,
    x: ArrayView4<F>,
    eps: ArrayView3<F>,
    cfg: &LossConfig,
    batch: usize,
) -> Result<LossParts<F>> {
    model.zero_grad();
    let fw = forward(model, x, eps, cfg, Mode::Train)?;
    let (parts, dmu, dlogvar) = backward_to_posterior(model, &fw, cfg, batch)?;
    model.encode_backward(dmu, dlogvar)?;
    Ok(parts)
}

/// The loss for images `x` under a given posterior `q` (not the encoder's), and its
/// gradient with respect to q's `mu` and `logvar`, through a fixed decoder
/// ([`Mode::Frozen`]: BatchNorm on running statistics). This is the notebook's "ELBO
/// ascent on phi". The model's parameter gradients are zeroed, then hold the decoder's.
pub fn posterior_loss_and_grad<F: Float, M: Vae<F> + ?Sized>(
    model: &mut M,
    x: ArrayView4<F>,
    q: &DiagGaussian<F>,
    eps: ArrayView3<F>,
    cfg: &LossConfig,
) -> Result<(LossParts<F>, Array2<F>, Array2<F>)> {
    cfg.objective.validate()?;
    check_input(model, &x, &eps)?;
    if q.mu.dim() != (x.shape()[0], model.latent_dim()) {
        return Err(Error::shape(
            "posterior_loss_and_grad q",
            format!("[{}, {}]", x.shape()[0], model.latent_dim()),
            q.mu.shape(),
        ));
    }
    on_worker(|| {
        model.zero_grad();
        let fw = forward_from(model, x, q.clone(), eps, cfg, Mode::Frozen)?;
        backward_to_posterior(model, &fw, cfg, x.shape()[0])
    })
}

/// The backward pass from the loss to the posterior's `mu` and `logvar`: the bound's
/// weights, the likelihood, the decoder, the KL term, the reparameterisation. A mean
/// reduction is over `batch` images (`fw`'s own, or the whole batch it is a part of).
fn backward_to_posterior<F: Float, M: Vae<F> + ?Sized>(
    model: &mut M,
    fw: &Forward<F>,
    cfg: &LossConfig,
    batch: usize,
) -> Result<(LossParts<F>, Array2<F>, Array2<F>)> {
    let (bound, w_ll, w_ratio) = bound_and_weights(fw, cfg.objective)?;
    let parts = parts(fw, &bound, cfg);
    if !parts.loss.is_finite() {
        return Err(Error::NonFinite(format!(
            "VAE loss (reconstruction {}, KL {})",
            parts.recon, parts.kl
        )));
    }
    // d loss / d bound_i = -scale.
    let (b, n, k) = fw.eps.dim();
    let scale = match cfg.reduction {
        Reduction::Mean => F::one() / F::lit(batch as f64),
        Reduction::Sum => F::one(),
    };
    let dll = w_ll.mapv(|w| -scale * w);
    let out3 = fw
        .out
        .view()
        .into_shape_with_order((b, n, fw.x2.ncols()))
        .expect("contiguous");
    let (dout, dlog_sig) = log_likelihood_backward(model.likelihood(), fw.x2.view(), out3, dll.view())?;
    model.likelihood_backward(dlog_sig);
    let dout = dout.into_shape_with_order(fw.out.raw_dim()).expect("same size");
    let dz2 = model.decode_backward(dout)?;
    let mut dz = dz2
        .into_shape_with_order((b, n, k))
        .map_err(|_| Error::shape("decoder dz", format!("[{}, {k}]", b * n), &[]))?;
    let mut dmu = Array2::zeros((b, k));
    let mut dlogvar = Array2::zeros((b, k));
    match (&fw.kl, &fw.ratio) {
        (Some(_), _) => {
            // The KL term enters the loss as +scale * beta * KL_i.
            let Objective::Elbo { beta, .. } = cfg.objective else {
                unreachable!("closed KL only with the ELBO")
            };
            let dkl = Array1::from_elem(b, scale * F::lit(beta));
            kl_diag_backward(&fw.q, dkl.view(), &mut dmu, &mut dlogvar)?;
        }
        (None, Some(_)) if matches!(cfg.objective, Objective::IwaeDreg { .. }) => {
            dz = dreg_dz(fw, dz, w_ll.view(), scale);
        }
        (None, Some(_)) => {
            let dr = w_ratio.mapv(|w| -scale * w);
            dz += &log_ratio_backward(fw.z.view(), dr.view(), &mut dlogvar)?;
        }
        _ => unreachable!("forward computes one KL form"),
    }
    fw.q.rsample_backward(fw.eps.view(), dz.view(), &mut dmu, &mut dlogvar)?;
    Ok((parts, dmu, dlogvar))
}

/// The DReG gradient with respect to the samples z `[b, n, K]`, from the IWAE one through
/// the decoder `dz_iwae` (the likelihood's, weighted by `w~`): the encoder's loss is
/// `-scale sum_k w~_k^2 log w_k` with `log q`'s parameters fixed, so each sample's
/// gradient is `-scale w~^2 (d ll/dz - z + eps / sigma)`. The decoder's part is the IWAE
/// one times `w~` again (linear per sample); the prior's and q's parts are written out.
fn dreg_dz<F: Float>(fw: &Forward<F>, dz_iwae: Array3<F>, w: ArrayView2<F>, scale: F) -> Array3<F> {
    let std = fw.q.std();
    let mut dz = dz_iwae;
    for (i, mut zi) in dz.outer_iter_mut().enumerate() {
        for (j, mut zij) in zi.outer_iter_mut().enumerate() {
            let wij = w[[i, j]];
            let w2 = scale * wij * wij;
            for (c, d) in zij.iter_mut().enumerate() {
                let (z, e, s) = (fw.z[[i, j, c]], fw.eps[[i, j, c]], std[[i, c]]);
                *d = *d * wij + w2 * (z - e / s);
            }
        }
    }
    dz
}

/// [`loss_and_grad`] with fresh noise from `rng`, then one Adam step.
pub fn train_step<F: Float, M: Vae<F> + ?Sized, R: Rng + ?Sized>(
    model: &mut M,
    x: ArrayView4<F>,
    cfg: &LossConfig,
    opt: &mut Adam<F>,
    rng: &mut R,
) -> Result<LossParts<F>> {
    let eps = sample_noise(x.shape()[0], cfg.objective.samples(), model.latent_dim(), rng);
    on_worker(|| {
        let parts = loss_and_grad(model, x, eps.view(), cfg)?;
        opt.step(model)?;
        Ok(parts)
    })
}

/// Standard normal noise `[b, n, K]`.
pub fn sample_noise<F: Float, R: Rng + ?Sized>(b: usize, n: usize, k: usize, rng: &mut R) -> Array3<F> {
    Array3::from_shape_simple_fn((b, n, k), || F::sample_normal(rng))
}

/// The loss parts in evaluation mode (BatchNorm on running statistics), without gradients.
pub fn evaluate<F: Float, M: Vae<F> + ?Sized>(
    model: &mut M,
    x: ArrayView4<F>,
    eps: ArrayView3<F>,
    cfg: &LossConfig,
) -> Result<LossParts<F>> {
    on_worker(|| {
        let fw = forward(model, x, eps, cfg, Mode::Eval)?;
        let (bound, _, _) = bound_and_weights(&fw, cfg.objective)?;
        Ok(parts(&fw, &bound, cfg))
    })
}

/// The IWAE-k estimate of `log p(x)` for each image `[b]`, in evaluation mode, with the
/// model's likelihood made a normalised density (the Gaussian gains its `0.5 log 2 pi`
/// terms) so that the numbers are log-likelihoods in nats. Images are processed `chunk`
/// at a time (so `chunk * k` decoder passes are in memory at once).
pub fn iwae_log_likelihood<F: Float, M: Vae<F> + ?Sized, R: Rng + ?Sized>(
    model: &mut M,
    x: ArrayView4<F>,
    k: usize,
    chunk: usize,
    rng: &mut R,
) -> Result<Array1<F>> {
    if k == 0 || chunk == 0 {
        return Err(Error::InvalidArgument(
            "iwae_log_likelihood: k and chunk must be >= 1".into(),
        ));
    }
    let mut out = Vec::with_capacity(x.shape()[0]);
    for start in (0..x.shape()[0]).step_by(chunk) {
        let xs = x.slice_axis(Axis(0), (start..(start + chunk).min(x.shape()[0])).into());
        let b = xs.shape()[0];
        check_input(model, &xs, &Array3::<F>::zeros((b, 1, model.latent_dim())).view())?;
        let q = model.encode(xs, Mode::Eval)?;
        let eps = q.sample_eps(k, rng);
        let z = q.rsample(eps.view())?;
        let dec = model.decode(
            z.view().into_shape_with_order((b * k, q.dim())).expect("contiguous"),
            Mode::Eval,
        )?;
        let d = dec.len() / (b * k);
        let dec3 = dec.into_shape_with_order((b, k, d)).expect("contiguous");
        let x2 = xs
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((b, d))
            .expect("same size");
        let like = match model.likelihood() {
            Likelihood::Gaussian { log_sig_x, .. } => Likelihood::Gaussian {
                log_sig_x,
                normalised: true,
            },
            other => other,
        };
        let log_w = &log_likelihood(like, x2.view(), dec3.view())? - &log_ratio(&q, eps.view(), z.view())?;
        out.extend(log_mean_exp(log_w.view()));
    }
    Ok(Array1::from(out))
}

/// The images the decoder gives for codes `z` `[m, K]` in evaluation mode: the mean of
/// p(x|z) ([`Likelihood::mean_of`]: probabilities, not logits).
pub fn decode_images<F: Float, M: Vae<F> + ?Sized>(model: &mut M, z: ArrayView2<F>) -> Result<Array4<F>> {
    if z.ncols() != model.latent_dim() {
        return Err(Error::shape(
            "VAE codes",
            format!("[m, {}]", model.latent_dim()),
            z.shape(),
        ));
    }
    let out = on_worker(|| model.decode(z, Mode::Eval))?;
    Ok(model.likelihood().mean_of(out))
}

/// Reshapes `[b, K]` noise for one sample per image into `[b, 1, K]`.
pub fn one_sample<F: Float>(eps: ArrayView2<'_, F>) -> ArrayView3<'_, F> {
    eps.insert_axis(Axis(1))
}
