//! The figures of a trained VAE, as PNG files: any model that implements [`Vae`] can be
//! handed to them, with its test set's [`Evaluation`] and its run's [`History`].
//!
//! [`vae_figures`] writes them all (the loss curve, reconstructions, samples from the
//! prior, interpolations between posterior means, the latent space by class, the
//! notebook's rsample figure and the ELBO ascent on phi); each is also its own function.
//!
//! Models are compared through their codes ([`Codec`]: PCA, the autoencoders, a VAE's
//! posterior mean): [`reconstruction_grid`], [`code_interpolation`], [`codes_by_class`],
//! [`decoded_noise`]; beside them [`training_curves`] and PCA's [`explained_variance`];
//! [`pca_vs_autoencoders`] is the set of the `pca_vs_ae` example.

mod codec;
mod compare;

pub use codec::Codec;
pub use compare::{
    code_interpolation, codes_by_class, decoded_noise, explained_variance, pca_vs_autoencoders, reconstruction_grid,
    training_curves, Labelled, Trained,
};

use std::path::{Path, PathBuf};

use ndarray::{s, Array2, Array4, ArrayView3};
use rand::Rng;

use crate::data::Dataset;
use crate::loss::Reduction;
use crate::optim::{adam_update, AdamConfig};
use crate::plot::{error_bars, gaussian_samples, image_grid, ErrorSeries, GaussianSamples, LineChart, Series};
use crate::train::{Evaluation, History};
use crate::vae::{self, DiagGaussian, KlEstimator, LossConfig, Objective, Vae};
use crate::{Error, Result};

/// Where the figures go and how they are named: `out/PREFIX_WHAT.png`, titled
/// `TITLE: ...`.
#[derive(Debug, Clone)]
pub struct FigureSet<'a> {
    /// The folder (made if missing).
    pub out: &'a Path,
    /// The files' prefix, e.g. `vae_strided`.
    pub prefix: &'a str,
    /// The titles' subject, e.g. `strided VAE`.
    pub title: &'a str,
}

impl FigureSet<'_> {
    fn path(&self, what: &str) -> PathBuf {
        self.out.join(format!("{}_{what}.png", self.prefix))
    }
}

/// The first `n` images of `x`.
fn images(x: &Array4<f32>, n: usize) -> Vec<ArrayView3<'_, f32>> {
    (0..n.min(x.shape()[0])).map(|i| x.slice(s![i, .., .., ..])).collect()
}

/// Every figure of this module; returns the files written.
pub fn vae_figures<M: Vae<f32> + ?Sized, R: Rng + ?Sized>(
    model: &mut M,
    test: &Dataset,
    eval: &Evaluation<f32>,
    history: &History,
    class_names: &[&str],
    set: &FigureSet,
    rng: &mut R,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(set.out).map_err(|e| Error::io(set.out, e))?;
    let mut written = Vec::new();
    if !history.steps.is_empty() {
        written.push(loss_curve(history, set)?);
    }
    written.push(reconstructions(test, eval, set)?);
    if model.classes().is_some() {
        // Its decoder needs a label for every code: samples by class instead of the
        // figures of unlabelled codes.
        written.push(class_samples(model, class_names, set, rng)?);
        written.push(latent_space(test, eval, class_names, set)?);
        return Ok(written);
    }
    written.push(prior_samples(model, set, rng)?);
    written.push(interpolation(model, test, eval, set)?);
    written.push(latent_space(test, eval, class_names, set)?);
    written.push(rsample_demo(set, rng)?);
    written.extend(elbo_ascent(model, test, set, rng)?);
    Ok(written)
}

/// A conditional VAE's samples from the prior, one row of 8 per class: the same eight
/// codes decoded with each label.
pub fn class_samples<M: Vae<f32> + ?Sized, R: Rng + ?Sized>(
    model: &mut M,
    class_names: &[&str],
    set: &FigureSet,
    rng: &mut R,
) -> Result<PathBuf> {
    let path = set.path("class_samples");
    let classes = model
        .classes()
        .ok_or_else(|| Error::InvalidArgument("class_samples: the model is not conditional".into()))?;
    let (per_row, k) = (8, model.latent_dim());
    let z = vae::sample_noise::<f32, _>(per_row, 1, k, rng)
        .into_shape_with_order((per_row, k))
        .expect("contiguous");
    let mut decoded = Vec::with_capacity(classes);
    for class in 0..classes {
        model.condition_on(ndarray::Array1::from_elem(per_row, class as u8).view())?;
        decoded.push(vae::decode_images(model, z.view())?);
    }
    let rows: Vec<(String, Vec<ArrayView3<f32>>)> = decoded
        .iter()
        .enumerate()
        .map(|(class, images_of)| {
            let name = class_names
                .get(class)
                .map_or_else(|| class.to_string(), |n| n.to_string());
            (name, images(images_of, per_row))
        })
        .collect();
    image_grid(
        &path,
        &format!("{}: samples from the prior, one row per class", set.title),
        &rows,
    )?;
    Ok(path)
}

/// The training loss per image after every step, with the epochs' means.
pub fn loss_curve(history: &History, set: &FigureSet) -> Result<PathBuf> {
    let path = set.path("loss");
    LineChart {
        title: format!("{}: training loss per image (-bound)", set.title),
        x_label: "epoch".into(),
        y_label: "loss per image".into(),
        series: vec![
            Series {
                name: "per batch".into(),
                points: history.steps.clone(),
            },
            Series {
                name: "epoch mean".into(),
                points: history.epoch_means(),
            },
        ],
        ..Default::default()
    }
    .save(&path)?;
    Ok(path)
}

/// Ten test images above their reconstructions.
pub fn reconstructions(test: &Dataset, eval: &Evaluation<f32>, set: &FigureSet) -> Result<PathBuf> {
    let path = set.path("recon");
    let n = 10.min(test.len());
    let originals = test.images.slice(s![..n, .., .., ..]).to_owned();
    image_grid(
        &path,
        &format!("{}: test images and reconstructions (z ~ q)", set.title),
        &[
            ("original".into(), images(&originals, n)),
            ("reconstruction".into(), images(&eval.reconstructions, n)),
        ],
    )?;
    Ok(path)
}

/// 25 decoded draws from the prior N(0, I).
pub fn prior_samples<M: Vae<f32> + ?Sized, R: Rng + ?Sized>(
    model: &mut M,
    set: &FigureSet,
    rng: &mut R,
) -> Result<PathBuf> {
    let path = set.path("samples");
    let k = model.latent_dim();
    let z = vae::sample_noise::<f32, _>(25, 1, k, rng)
        .into_shape_with_order((25, k))
        .expect("contiguous");
    let prior = vae::decode_images(model, z.view())?;
    let rows: Vec<(String, Vec<ArrayView3<f32>>)> = (0..5)
        .map(|r| {
            (
                String::new(),
                (0..5).map(|c| prior.slice(s![r * 5 + c, .., .., ..])).collect(),
            )
        })
        .collect();
    image_grid(&path, &format!("{}: samples from the prior", set.title), &rows)?;
    Ok(path)
}

/// Decodings of the line between the posterior means of test images 0 and 1, 2 and 3,
/// 4 and 5.
pub fn interpolation<M: Vae<f32> + ?Sized>(
    model: &mut M,
    test: &Dataset,
    eval: &Evaluation<f32>,
    set: &FigureSet,
) -> Result<PathBuf> {
    let path = set.path("interpolation");
    let k = model.latent_dim();
    let steps = 10;
    let pairs: Vec<(usize, usize)> = [(0usize, 1usize), (2, 3), (4, 5)]
        .into_iter()
        .filter(|&(_, b)| b < eval.codes.nrows())
        .collect();
    let mut codes = Array2::zeros((pairs.len() * steps, k));
    for (p, &(a, b)) in pairs.iter().enumerate() {
        for t in 0..steps {
            let f = t as f32 / (steps - 1) as f32;
            let row = &eval.codes.row(a) * (1.0 - f) + &eval.codes.row(b) * f;
            codes.row_mut(p * steps + t).assign(&row);
        }
    }
    let interp = vae::decode_images(model, codes.view())?;
    let rows: Vec<(String, Vec<ArrayView3<f32>>)> = pairs
        .iter()
        .enumerate()
        .map(|(p, &(a, b))| {
            (
                format!("{} -> {}", test.labels[a], test.labels[b]),
                (0..steps)
                    .map(|t| interp.slice(s![p * steps + t, .., .., ..]))
                    .collect(),
            )
        })
        .collect();
    image_grid(
        &path,
        &format!("{}: decoding the line between two posterior means", set.title),
        &rows,
    )?;
    Ok(path)
}

/// The posterior means of the test images by class (projected on their top two
/// principal components when K > 2).
pub fn latent_space(test: &Dataset, eval: &Evaluation<f32>, class_names: &[&str], set: &FigureSet) -> Result<PathBuf> {
    let path = set.path("latent");
    let labels = test.labels.as_slice().expect("contiguous");
    let title = format!("{}: posterior means of the test images", set.title);
    codes_by_class(&path, &title, eval.codes.view(), labels, class_names)?;
    Ok(path)
}

/// The notebook's rsample figure: 300 samples of q for four random `phi = (mu, log
/// sigma)` in two dimensions, with their 2-sigma circles.
pub fn rsample_demo<R: Rng + ?Sized>(set: &FigureSet, rng: &mut R) -> Result<PathBuf> {
    let path = set.path("rsample");
    let mut groups = Vec::new();
    for _ in 0..4 {
        let phi = Array2::from_shape_fn((1, 3), |(_, j)| {
            if j < 2 {
                rng.random_range(-2.0f32..2.0)
            } else {
                rng.random_range(-1.5f32..-0.3)
            }
        });
        let q = DiagGaussian::from_isotropic(phi.view())?;
        let zs = q.rsample(q.sample_eps(300, rng).view())?;
        let sd = 2.0 * q.std()[[0, 0]] as f64;
        groups.push(GaussianSamples {
            centre: (phi[[0, 0]] as f64, phi[[0, 1]] as f64),
            radius: (sd, sd),
            points: zs
                .slice(s![0, .., ..])
                .rows()
                .into_iter()
                .map(|r| (r[0] as f64, r[1] as f64))
                .collect(),
        });
    }
    gaussian_samples(
        &path,
        "rsample: 300 samples of q for four random phi, with 2-sigma circles",
        ("z1", "z2"),
        &groups,
    )?;
    Ok(path)
}

/// The notebook's "ELBO ascent on phi": for the first test image and the trained decoder
/// held fixed, gradient ascent (Adam) of the ELBO on the posterior's parameters alone,
/// from the prior. Plots the ELBO per step against the encoder's, and the optimised q's
/// mean with 2-sigma bars against the encoder's.
pub fn elbo_ascent<M: Vae<f32> + ?Sized, R: Rng + ?Sized>(
    model: &mut M,
    test: &Dataset,
    set: &FigureSet,
    rng: &mut R,
) -> Result<Vec<PathBuf>> {
    let k = model.latent_dim();
    let x = test.images.slice(s![..1, .., .., ..]);
    let samples = 16;
    let ascent_cfg = LossConfig {
        objective: Objective::Elbo { samples, beta: 1.0 },
        kl: KlEstimator::Closed,
        reduction: Reduction::Mean,
    };
    let encoder_q = model.encode(x, crate::nn::Mode::Eval)?;
    let mut phi = [
        Array2::<f32>::zeros((1, k)).into_dyn(),
        Array2::<f32>::zeros((1, k)).into_dyn(),
    ];
    let mut moments = [phi[0].clone(), phi[0].clone(), phi[0].clone(), phi[0].clone()];
    let adam = AdamConfig::new(0.05f32);
    let steps = 300;
    let mut curve = Vec::with_capacity(steps);
    for t in 1..=steps {
        let q = DiagGaussian::new(
            phi[0].clone().into_dimensionality().expect("matrix"),
            phi[1].clone().into_dimensionality().expect("matrix"),
        )?;
        let eps = vae::sample_noise(1, samples, k, rng);
        let (parts, dmu, dlv) = vae::posterior_loss_and_grad(model, x, &q, eps.view(), &ascent_cfg)?;
        curve.push((t as f64, parts.bound as f64));
        let (m, rest) = moments.split_at_mut(2);
        adam_update(&adam, t as u64, &mut phi[0], &dmu.into_dyn(), &mut m[0], &mut rest[0]);
        adam_update(&adam, t as u64, &mut phi[1], &dlv.into_dyn(), &mut m[1], &mut rest[1]);
    }
    model.zero_grad();
    // The encoder's ELBO on the same image, with many samples for a steady reference.
    let eps = vae::sample_noise(1, 256, k, rng);
    let reference = LossConfig {
        objective: Objective::Elbo {
            samples: 256,
            beta: 1.0,
        },
        ..ascent_cfg
    };
    let enc_elbo = vae::evaluate(model, x, eps.view(), &reference)?.bound as f64;
    let ascent_path = set.path("elbo_ascent");
    LineChart {
        title: format!("{}: ELBO ascent on phi for one test image, decoder fixed", set.title),
        x_label: "Adam step on (mu, logvar)".into(),
        y_label: "ELBO (16-sample estimate)".into(),
        series: vec![
            Series {
                name: "free phi, from the prior".into(),
                points: curve,
            },
            Series {
                name: "encoder's phi".into(),
                points: vec![(1.0, enc_elbo), (steps as f64, enc_elbo)],
            },
        ],
        legend_lower_right: true,
        ..Default::default()
    }
    .save(&ascent_path)?;
    let two_sd = |lv: f32| 2.0 * (0.5 * lv as f64).exp();
    let show = k.min(20);
    let series = vec![
        ErrorSeries {
            name: "q after ascent (mean ± 2 sigma)".into(),
            points: (0..show)
                .map(|j| (j as f64, phi[0][[0, j]] as f64, two_sd(phi[1][[0, j]])))
                .collect(),
        },
        ErrorSeries {
            name: "encoder (mean ± 2 sigma)".into(),
            points: (0..show)
                .map(|j| (j as f64, encoder_q.mu[[0, j]] as f64, two_sd(encoder_q.logvar[[0, j]])))
                .collect(),
        },
    ];
    let phi_path = set.path("phi");
    error_bars(
        &phi_path,
        &format!("{}: q(z|x) for one test image, ascent vs encoder", set.title),
        ("latent dimension", "z"),
        &series,
    )?;
    Ok(vec![ascent_path, phi_path])
}
