//! PCA against a linear autoencoder on MNIST (CIS-522 week 8).
//!
//! A linear autoencoder trained with MSE can at best reach the error of PCA with the same
//! number of components, and its decoder then spans PCA's subspace. This example fits
//! both, prints their test errors, the principal angles between the two subspaces and the
//! timings, and writes the figures into `--out`.
//!
//! `cargo run --release --example pca_vs_ae -- --help`

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use latent::data::{epoch_batches, Dataset, DatasetKind, Split};
use latent::models::LinearAe;
use latent::optim::{Adam, AdamConfig};
use latent::pca::{principal_angles, Pca};
use latent::plot::{image_grid, LineChart, Series};
use latent::progress::EpochProgress;
use ndarray::{s, Array2, ArrayView2, Axis};
use rand::SeedableRng;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> latent::Result<()> {
    let flags = common::Flags::new(
        "pca_vs_ae",
        "PCA vs a linear autoencoder (MSE, Adam) on MNIST or Fashion-MNIST.",
        &[
            ("k", "20", "latent dimensions / principal components"),
            ("epochs", "20", "linear AE training epochs"),
            ("batch", "250", "batch size"),
            ("lr", "1e-3", "Adam learning rate"),
            ("weight-decay", "1e-5", "Adam L2 weight decay"),
            ("dataset", "mnist", "mnist or fashion"),
            (
                "data-dir",
                "",
                "folder with the four IDX .gz files (default: data/mnist, or Debian's Fashion-MNIST folder)",
            ),
            ("out", "out", "folder for the PNG figures"),
            ("seed", "0", "random seed (initialisation and shuffling)"),
            ("pca-repeats", "5", "PCA fits to time (the median is reported)"),
        ],
    )
    .parse();
    let k: usize = flags.get("k");
    let epochs: usize = flags.get("epochs");
    let batch: usize = flags.get("batch");
    let lr: f32 = flags.get("lr");
    let wd: f32 = flags.get("weight-decay");
    let kind: DatasetKind = flags.get("dataset");
    let data_dir = flags.raw("data-dir");
    let data_dir = (!data_dir.is_empty()).then(|| PathBuf::from(data_dir));
    let out = PathBuf::from(flags.raw("out"));
    let seed: u64 = flags.get("seed");
    let repeats: usize = flags.get::<usize>("pca-repeats").max(1);

    latent::denormals::flush_denormals();
    let t = Instant::now();
    let train = Dataset::load(kind, data_dir.as_deref(), Split::Train)?;
    let test = Dataset::load(kind, data_dir.as_deref(), Split::Test)?;
    let dim = train.dim();
    if k == 0 || k > dim {
        return Err(latent::Error::InvalidArgument(format!(
            "--k {k} must be between 1 and {dim}"
        )));
    }
    eprintln!(
        "loaded {} train + {} test images of {dim} pixels in {:.2} s (checksums verified)",
        train.len(),
        test.len(),
        t.elapsed().as_secs_f64()
    );

    // PCA: moments + decomposition, timed over several fits.
    let mut fit_times = Vec::new();
    let mut pca = None;
    for _ in 0..repeats {
        let t = Instant::now();
        pca = Some(Pca::params(k).fit(train.flat())?);
        fit_times.push(t.elapsed().as_secs_f64());
    }
    let pca = pca.expect("at least one fit");
    let pca_fit = common::median(fit_times);
    let pca_test = mse(&pca.reconstruct(test.flat())?, test.flat());
    let pca_train = mse(&pca.reconstruct(train.flat())?, train.flat());

    // Linear autoencoder.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut ae = LinearAe::<f32>::new(dim, k, &mut rng)?;
    let mut opt = Adam::new(AdamConfig::new(lr).weight_decay(wd));
    let mut curve = Vec::new();
    let mut epoch_times = Vec::new();
    let mut xb = Array2::zeros((0, dim));
    for epoch in 0..epochs {
        let batches = epoch_batches(train.len(), batch, Some(&mut rng))?;
        let bar = EpochProgress::new(format!("linear AE epoch {}/{epochs}", epoch + 1), batches.len());
        let mut sum = 0.0;
        for (i, idx) in batches.iter().enumerate() {
            train.gather_flat(idx, &mut xb);
            let loss = ae
                .train_step(xb.view(), &mut opt)
                .map_err(|e| latent::Error::InvalidArgument(format!("epoch {}, batch {i}: {e}", epoch + 1)))?;
            sum += loss as f64;
            curve.push((epoch as f64 + (i + 1) as f64 / batches.len() as f64, loss as f64));
            bar.step(loss as f64);
        }
        epoch_times.push(bar.finish(sum / batches.len() as f64).as_secs_f64());
    }
    let ae_test = mse(&reconstruct_chunked(&ae, test.flat())?, test.flat());
    let dec = ae
        .dec_lin
        .weight
        .value
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .expect("matrix")
        .mapv(f64::from);
    let angles = principal_angles(&dec, pca.components())?.mapv(f64::to_degrees);

    let ratio = pca.explained_variance_ratio().sum();
    println!();
    println!(
        "{} K = {k}: PCA explains {:.2}% of the training variance",
        name(kind),
        100.0 * ratio
    );
    println!("{:<34} {:>12} {:>14}", "model", "test MSE", "fit / train");
    println!(
        "{:<34} {:>12.6} {:>12.3} s",
        format!("PCA (median of {repeats} fits)"),
        pca_test,
        pca_fit
    );
    if epochs > 0 {
        println!(
            "{:<34} {:>12.6} {:>12.3} s  ({epochs} epochs, median {:.3} s/epoch)",
            "linear autoencoder",
            ae_test,
            epoch_times.iter().sum::<f64>(),
            common::median(epoch_times.clone())
        );
        println!(
            "linear AE / PCA test MSE: {:.4} ({:+.2}%)",
            ae_test / pca_test,
            100.0 * (ae_test / pca_test - 1.0)
        );
        println!(
            "principal angles, AE decoder span vs PCA top-{k}: largest {:.2} deg, mean {:.2} deg",
            angles.iter().copied().fold(0.0, f64::max),
            angles.mean().unwrap_or(0.0)
        );
    }
    println!("(PCA training-set MSE, the best any linear AE can reach on the training data: {pca_train:.6})");

    std::fs::create_dir_all(&out).map_err(|e| latent::Error::io(&out, e))?;
    if epochs > 0 {
        LineChart {
            title: format!("Linear autoencoder training, K = {k}"),
            x_label: "epoch".into(),
            y_label: "MSE per pixel".into(),
            series: vec![
                Series {
                    name: "linear AE (training batches)".into(),
                    points: curve,
                },
                Series {
                    name: format!("PCA, K = {k} (training set)"),
                    points: vec![(0.0, pca_train), (epochs as f64, pca_train)],
                },
            ],
            log_y: false,
            marker: None,
            legend_lower_right: false,
        }
        .save(&out.join("pca_vs_ae_loss.png"))?;
    }
    let show = 8;
    let imgs = test.flat().slice(s![..show, ..]).to_owned();
    let mut rows = vec![("original".to_string(), as_images(imgs.view()))];
    let ae_rec = ae.reconstruct(imgs.view())?;
    if epochs > 0 {
        rows.push((format!("linear AE ({ae_test:.4})"), as_images(ae_rec.view())));
    }
    let pca_rec = pca.reconstruct(imgs.view())?;
    rows.push((format!("PCA ({pca_test:.4})"), as_images(pca_rec.view())));
    let rows: Vec<_> = rows
        .iter()
        .map(|(l, v)| (l.clone(), v.iter().map(|a| a.view()).collect()))
        .collect();
    image_grid(
        &out.join("pca_vs_ae_recon.png"),
        &format!("Test images and reconstructions, K = {k} (test MSE)"),
        &rows,
    )?;
    // The full eigendecomposition already gave every eigenvalue: no second fit.
    let cum: Vec<(f64, f64)> = pca
        .spectrum()
        .iter()
        .take(200)
        .scan(0.0, |acc, &v| {
            *acc += v / pca.total_variance();
            Some(*acc)
        })
        .enumerate()
        .map(|(i, c)| ((i + 1) as f64, c))
        .collect();
    LineChart {
        title: format!("{}: fraction of variance explained by the top K components", name(kind)),
        x_label: "K".into(),
        y_label: "fraction of variance".into(),
        series: vec![Series {
            name: "cumulative explained variance".into(),
            points: cum,
        }],
        log_y: false,
        marker: Some((k as f64, format!("K = {k}: {:.1}%", 100.0 * ratio))),
        legend_lower_right: true,
    }
    .save(&out.join("pca_vs_ae_spectrum.png"))?;
    println!("figures written to {}", display(&out));
    Ok(())
}

fn name(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::Mnist => "MNIST",
        DatasetKind::FashionMnist => "Fashion-MNIST",
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// Mean squared error per pixel.
fn mse(a: &Array2<f32>, b: ArrayView2<f32>) -> f64 {
    let s: f64 = a.iter().zip(b.iter()).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum();
    s / a.len() as f64
}

fn reconstruct_chunked(ae: &LinearAe<f32>, x: ArrayView2<f32>) -> latent::Result<Array2<f32>> {
    let parts: Vec<Array2<f32>> = x
        .axis_chunks_iter(Axis(0), 1000)
        .map(|c| ae.reconstruct(c))
        .collect::<latent::Result<_>>()?;
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    Ok(ndarray::concatenate(Axis(0), &views).expect("same widths"))
}

/// Rows of 784 pixels as 28x28 images.
fn as_images(x: ArrayView2<f32>) -> Vec<Array2<f32>> {
    let side = (x.ncols() as f64).sqrt() as usize;
    x.axis_iter(Axis(0))
        .map(|r| r.to_owned().into_shape_with_order((side, side)).expect("square images"))
        .collect()
}
