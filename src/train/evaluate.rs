//! The end-of-run evaluation on a test set: for a VAE the bound per image split into
//! reconstruction and KL, the reconstruction error, an IWAE-k log-likelihood estimate and
//! the active units; for an autoencoder the reconstruction error and the codes.

use std::fmt::Write as _;
use std::time::Instant;

use ndarray::{s, Array2, Array4, ArrayView2, Axis};
use rand_chacha::ChaCha8Rng;

use super::engine::Pixels;
use crate::data::Dataset;
use crate::loss::Reduction;
use crate::vae::{
    active_units, evaluate, iwae_log_likelihood, log_mean_exp, sample_noise, KlEstimator, Likelihood, LossConfig,
    Objective, Vae, ACTIVE_UNIT_THRESHOLD, HALF_LN_2PI,
};
use crate::{Error, Float, Result};

/// What the evaluation computes.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// Importance samples of the IWAE log-likelihood estimate (0: none).
    pub iwae_k: usize,
    /// Test images of the IWAE estimate (the first ones).
    pub iwae_images: usize,
    /// Images per pass of the bound and the reconstructions.
    pub chunk: usize,
    /// Images per pass of the IWAE estimate (`iwae_chunk * iwae_k` decoder passes are in
    /// memory at once).
    pub iwae_chunk: usize,
}

impl Default for EvalConfig {
    /// IWAE-100 on the first 1000 test images, 500 images per pass.
    fn default() -> Self {
        EvalConfig {
            iwae_k: 100,
            iwae_images: 1000,
            chunk: 500,
            iwae_chunk: 10,
        }
    }
}

/// The IWAE-k estimate of the test log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IwaeEstimate {
    /// Importance samples per image.
    pub k: usize,
    /// Images scored.
    pub images: usize,
    /// Mean log-likelihood per image, nats (a Gaussian likelihood as a normalised density).
    pub mean: f64,
    /// Its standard error over the images.
    pub stderr: f64,
}

/// A VAE's terms on the test set, per image (one sample of z each).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeEvaluation {
    /// The ELBO (beta 1, closed-form KL) in the likelihood's own form (the notebook's
    /// Gaussian has no `0.5 log 2 pi` terms: see [`crate::vae::Likelihood`]).
    pub bound: f64,
    /// `-E_q log p(x|z)`, in the same form.
    pub recon: f64,
    /// `KL(q(z|x) || p(z))`.
    pub kl: f64,
    /// Latent dimensions whose posterior mean varies over the test set by more than
    /// [`ACTIVE_UNIT_THRESHOLD`] (Burda et al.'s active units).
    pub active_units: usize,
    /// The IWAE estimate, if asked for.
    pub iwae: Option<IwaeEstimate>,
}

/// A trained model on the test set.
#[derive(Debug, Clone)]
pub struct Evaluation<F> {
    /// Mean squared reconstruction error per pixel (a VAE's from one sample of q, of the
    /// likelihood's mean: probabilities where the decoder gives logits).
    pub mse: f64,
    /// One code per test image: a VAE's posterior means, an autoencoder's codes, `[n, K]`.
    pub codes: Array2<F>,
    /// The reconstructions of the first pass's images (a VAE's likelihood means), `[m, c, h, w]`.
    pub reconstructions: Array4<F>,
    /// The VAE's terms.
    pub vae: Option<VaeEvaluation>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl<F: Float> Evaluation<F> {
    /// The evaluation as lines of text: a VAE's bound with its terms in the likelihood's
    /// form (a Gaussian's also as a density, with its learned sigma_x), the reconstruction
    /// error, the active units (with a warning when none is) and the IWAE estimate; an
    /// autoencoder's reconstruction error.
    pub fn report(&self, likelihood: Likelihood<F>) -> String {
        let mut s = String::new();
        let Some(v) = &self.vae else {
            let _ = writeln!(s, "test reconstruction MSE per pixel: {:.6}", self.mse);
            return s;
        };
        match likelihood {
            Likelihood::Gaussian { log_sig_x, normalised } => {
                let lift = if normalised { 0.0 } else { self.pixels() * HALF_LN_2PI };
                let _ = writeln!(
                    s,
                    "test ELBO per image: {:.1} nats with the 0.5 log 2pi terms ({:.1} in the notebook's form without them)",
                    v.bound - lift,
                    v.bound
                );
                let _ = writeln!(
                    s,
                    "  reconstruction term -E log p(x|z): {:.1} (notebook form {:.1}), KL: {:.2}",
                    v.recon + lift,
                    v.recon,
                    v.kl
                );
                let _ = writeln!(s, "  learned sigma_x: {:.4}", log_sig_x.to_f64_lossless().exp());
            }
            _ => {
                let what = if likelihood == Likelihood::SquaredError {
                    "SSE"
                } else {
                    "BCE"
                };
                let _ = writeln!(
                    s,
                    "test loss per image: {:.2} = {what} {:.2} + KL {:.2}",
                    -v.bound, v.recon, v.kl
                );
            }
        }
        let _ = writeln!(s, "  reconstruction MSE per pixel (z ~ q): {:.5}", self.mse);
        let _ = writeln!(
            s,
            "  active latent dimensions (Var_x E_q[z_k] > {ACTIVE_UNIT_THRESHOLD}): {} of {}",
            v.active_units,
            self.codes.ncols()
        );
        if v.active_units == 0 {
            let _ = writeln!(
                s,
                "WARNING: the posterior has collapsed: q(z|x) is the same for every test image, the decoder \
                 answers the mean image and these figures describe no latent structure; rerun with another --seed"
            );
        }
        if let Some(iwae) = v.iwae {
            let gaussian = matches!(likelihood, Likelihood::Gaussian { .. });
            let _ = writeln!(
                s,
                "IWAE-{} log-likelihood on the first {} test images: {:.1} ± {:.1} nats (standard error){}",
                iwae.k,
                iwae.images,
                iwae.mean,
                iwae.stderr,
                if gaussian {
                    ", a normalised Gaussian density"
                } else {
                    ""
                }
            );
        }
        s
    }

    /// The largest standard deviation over the test set of any code dimension (near zero:
    /// the codes are the same for every image, a collapsed model).
    pub fn code_spread(&self) -> f64 {
        let codes = self.codes.mapv(|v| v.to_f64_lossless());
        codes.std_axis(Axis(0), 0.0).iter().copied().fold(0.0, f64::max)
    }

    /// Pixels per image.
    fn pixels(&self) -> f64 {
        self.reconstructions.shape()[1..].iter().product::<usize>() as f64
    }
}

fn check(test: &Dataset, cfg: &EvalConfig) -> Result<()> {
    if test.is_empty() || cfg.chunk == 0 || (cfg.iwae_k > 0 && cfg.iwae_chunk == 0) {
        return Err(Error::InvalidArgument(format!(
            "evaluation: {} test images, chunk {} and iwae_chunk {} must be >= 1",
            test.len(),
            cfg.chunk,
            cfg.iwae_chunk
        )));
    }
    Ok(())
}

/// [`Evaluation`] of a VAE: the bound with one sample per image (noise from `rng`, in
/// passes of `cfg.chunk` images), then the IWAE estimate (noise from `rng`).
pub fn evaluate_vae<F: Float, M: Vae<F> + ?Sized>(
    model: &mut M,
    test: &Dataset,
    cfg: &EvalConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Evaluation<F>> {
    check(test, cfg)?;
    let t = Instant::now();
    let elbo = LossConfig {
        objective: Objective::Elbo { samples: 1, beta: 1.0 },
        kl: KlEstimator::Closed,
        reduction: Reduction::Mean,
    };
    let pixels = Pixels::<F>::of(test);
    let shape = test.images.shape()[1..].to_vec();
    let (mut bound, mut recon, mut kl, mut sse) = (0.0, 0.0, 0.0, 0.0);
    let mut means = Vec::new();
    let mut first = None;
    let labels = test.labels.view();
    for (chunk, chunk_labels) in pixels
        .view()
        .axis_chunks_iter(Axis(0), cfg.chunk)
        .zip(labels.axis_chunks_iter(Axis(0), cfg.chunk))
    {
        let b = chunk.nrows();
        let x = chunk
            .into_shape_with_order((b, shape[0], shape[1], shape[2]))
            .expect("whole images");
        model.condition_on(chunk_labels)?;
        let eps = sample_noise(b, 1, model.latent_dim(), rng);
        let parts = evaluate(model, x, eps.view(), &elbo)?;
        let output = model.likelihood().mean_of(parts.output);
        let w = b as f64;
        bound += parts.bound.to_f64_lossless() * w;
        recon += parts.recon.to_f64_lossless() * w;
        kl += parts.kl.to_f64_lossless() * w;
        sse += squared_error(&output, x);
        means.push(parts.posterior.mu);
        if first.is_none() {
            first = Some(output);
        }
    }
    let n = test.len() as f64;
    let codes = stack_rows(&means);
    let n_iwae = cfg.iwae_images.min(test.len());
    let iwae = if cfg.iwae_k > 0 && n_iwae > 0 {
        let x = pixels
            .view()
            .slice_move(s![..n_iwae, ..])
            .into_shape_with_order((n_iwae, shape[0], shape[1], shape[2]))
            .expect("whole images");
        // Chunk by chunk, each with its labels (a conditional model's); the noise is drawn
        // in the same order as in one call over all the images.
        let mut ll = Vec::with_capacity(n_iwae);
        for start in (0..n_iwae).step_by(cfg.iwae_chunk) {
            let end = (start + cfg.iwae_chunk).min(n_iwae);
            model.condition_on(labels.slice(s![start..end]))?;
            let xs = x.slice(s![start..end, .., .., ..]);
            ll.extend(iwae_log_likelihood(model, xs, cfg.iwae_k, cfg.iwae_chunk, rng)?);
        }
        let ll = ndarray::Array1::from(ll);
        Some(IwaeEstimate::of(&ll, cfg.iwae_k))
    } else {
        None
    };
    Ok(Evaluation {
        mse: sse / (n * test.dim() as f64),
        vae: Some(VaeEvaluation {
            bound: bound / n,
            recon: recon / n,
            kl: kl / n,
            active_units: active_units(codes.view(), ACTIVE_UNIT_THRESHOLD)?,
            iwae,
        }),
        codes,
        reconstructions: first.expect("at least one test image"),
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// [`Evaluation`] of an autoencoder, given its reconstruction of rows of pixels
/// (`[m, pixels]`, with the codes `[m, K]`).
pub(super) fn evaluate_ae<F: Float>(
    test: &Dataset,
    cfg: &EvalConfig,
    mut reconstruct: impl FnMut(ArrayView2<F>) -> Result<(Array2<F>, Array2<F>)>,
) -> Result<Evaluation<F>> {
    check(test, cfg)?;
    let t = Instant::now();
    let pixels = Pixels::<F>::of(test);
    let shape = test.images.shape()[1..].to_vec();
    let mut sse = 0.0;
    let mut codes = Vec::new();
    let mut first = None;
    for chunk in pixels.view().axis_chunks_iter(Axis(0), cfg.chunk) {
        let (rec, h) = reconstruct(chunk)?;
        sse += squared_error(&rec, chunk);
        codes.push(h);
        if first.is_none() {
            let m = rec.nrows();
            first = Some(
                rec.into_shape_with_order((m, shape[0], shape[1], shape[2]))
                    .expect("whole images"),
            );
        }
    }
    Ok(Evaluation {
        mse: sse / (test.len() * test.dim()) as f64,
        codes: stack_rows(&codes),
        reconstructions: first.expect("at least one test image"),
        vae: None,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// [`Evaluation`] of the two-stochastic-layer VAE: the ELBO with one sample per image
/// (its reconstruction term `-log p(x|h1)` and the rest as the KL), the IWAE estimate,
/// and, as the codes, the means of q(h1|x) (whose active units are counted).
pub fn evaluate_hvae2<F: Float>(
    model: &mut crate::models::Hvae2<F>,
    test: &Dataset,
    cfg: &EvalConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Evaluation<F>> {
    check(test, cfg)?;
    let t = Instant::now();
    let pixels = Pixels::<F>::of(test);
    let shape = test.images.shape()[1..].to_vec();
    let (h1, h2) = model.latent_dims();
    let (mut bound, mut recon, mut sse) = (0.0, 0.0, 0.0);
    let mut codes = Vec::new();
    let mut first = None;
    for chunk in pixels.view().axis_chunks_iter(Axis(0), cfg.chunk) {
        let b = chunk.nrows();
        let x = as_images(chunk, &shape);
        let (eps1, eps2) = (sample_noise(b, 1, h1, rng), sample_noise(b, 1, h2, rng));
        let (log_w, ll) = model.log_weights_and_likelihood(x, eps1.view(), eps2.view())?;
        bound += log_w.iter().map(|v| v.to_f64_lossless()).sum::<f64>();
        recon -= ll.iter().map(|v| v.to_f64_lossless()).sum::<f64>();
        let (mu, probs) = model.encode_decode(x)?;
        sse += squared_error(&probs, x);
        codes.push(mu);
        if first.is_none() {
            first = Some(probs);
        }
    }
    let n = test.len() as f64;
    let codes = stack_rows(&codes);
    let n_iwae = cfg.iwae_images.min(test.len());
    let iwae = if cfg.iwae_k > 0 && n_iwae > 0 {
        let mut ll = Vec::with_capacity(n_iwae);
        for chunk in pixels
            .view()
            .slice_move(s![..n_iwae, ..])
            .axis_chunks_iter(Axis(0), cfg.iwae_chunk)
        {
            let b = chunk.nrows();
            let (eps1, eps2) = (
                sample_noise(b, cfg.iwae_k, h1, rng),
                sample_noise(b, cfg.iwae_k, h2, rng),
            );
            let log_w = model.log_weights(as_images(chunk, &shape), eps1.view(), eps2.view())?;
            ll.extend(log_mean_exp(log_w.view()));
        }
        Some(IwaeEstimate::of(&ndarray::Array1::from(ll), cfg.iwae_k))
    } else {
        None
    };
    let (bound, recon) = (bound / n, recon / n);
    Ok(Evaluation {
        mse: sse / (n * test.dim() as f64),
        vae: Some(VaeEvaluation {
            bound,
            recon,
            kl: -bound - recon,
            active_units: active_units(codes.view(), ACTIVE_UNIT_THRESHOLD)?,
            iwae,
        }),
        codes,
        reconstructions: first.expect("at least one test image"),
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Rows of pixels as `[c, h, w]` images.
fn as_images<'a, F: Float>(x: ArrayView2<'a, F>, shape: &[usize]) -> ndarray::ArrayView4<'a, F> {
    let n = x.nrows();
    x.into_shape_with_order((n, shape[0], shape[1], shape[2]))
        .expect("whole images")
}

/// `sum (r - x)^2` in f64 over two arrays of the same length.
fn squared_error<'a, F: Float + 'a>(r: impl IntoIterator<Item = &'a F>, x: impl IntoIterator<Item = &'a F>) -> f64 {
    r.into_iter()
        .zip(x)
        .map(|(&r, &x)| (r - x).to_f64_lossless().powi(2))
        .sum()
}

/// The parts' rows, stacked in order.
fn stack_rows<F: Float>(parts: &[Array2<F>]) -> Array2<F> {
    let views: Vec<_> = parts.iter().map(|m| m.view()).collect();
    ndarray::concatenate(Axis(0), &views).expect("same widths")
}

impl IwaeEstimate {
    /// The estimate from each image's IWAE-`k` log-likelihood: their mean and its
    /// standard error.
    fn of<F: Float>(ll: &ndarray::Array1<F>, k: usize) -> Self {
        let n = ll.len();
        IwaeEstimate {
            k,
            images: n,
            mean: ll.mean().expect("non-empty").to_f64_lossless(),
            stderr: ll.mapv(|v| v.to_f64_lossless()).std(1.0) / (n as f64).sqrt(),
        }
    }
}
