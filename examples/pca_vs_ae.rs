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

use latent::checkpoint::{self, CheckpointMeta};
use latent::data::{epoch_batches, Dataset, DatasetKind, Split};
use latent::data_parallel::DataParallel;
use latent::models::{ConvAe, LinearAe};
use latent::optim::{Adam, AdamConfig};
use latent::pca::{principal_angles, Pca, Solver};
use latent::plot::{image_grid, scatter_by_class, LineChart, Series};
use latent::progress::EpochProgress;
use latent::Float;
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
            (
                "conv-epochs",
                "3",
                "conv AE training epochs (the notebook's 20 for the README figures; 0 skips it)",
            ),
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
            (
                "pca-repeats",
                "5",
                "PCA fits of each solver to time (the median is reported)",
            ),
            (
                "checkpoint-every",
                "1",
                "write a conv AE checkpoint every N epochs to --out/pca_vs_ae_conv.ckpt.safetensors (0: never)",
            ),
            (
                "resume",
                "",
                "continue the conv AE from this checkpoint (same K and dataset)",
            ),
        ],
    )
    .parse();
    let k: usize = flags.get("k");
    let epochs: usize = flags.get("epochs");
    let conv_epochs: usize = flags.get("conv-epochs");
    let batch: usize = flags.get("batch");
    let lr: f32 = flags.get("lr");
    let wd: f32 = flags.get("weight-decay");
    let kind: DatasetKind = flags.get("dataset");
    let data_dir = flags.raw("data-dir");
    let data_dir = (!data_dir.is_empty()).then(|| PathBuf::from(data_dir));
    let out = PathBuf::from(flags.raw("out"));
    let seed: u64 = flags.get("seed");
    let repeats: usize = flags.get::<usize>("pca-repeats").max(1);
    let checkpoint_every: usize = flags.get("checkpoint-every");
    let resume = flags.raw("resume");
    // An --out that cannot be made is an error now, not after the training.
    std::fs::create_dir_all(&out).map_err(|e| latent::Error::io(&out, e))?;

    latent::denormals::flush_denormals();
    latent::memory::keep_freed_memory();
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

    // PCA: moments + decomposition, timed over several fits, with the full
    // eigendecomposition (whose spectrum the figure plots) and with the randomized solver
    // (the counterpart of torch.svd_lowrank).
    let (height, width) = (train.images.shape()[2], train.images.shape()[3]);
    let full = Pca::params(k).image_shape(height, width);
    let randomized = full.solver(Solver::Randomized {
        oversample: 20,
        power_iters: 8,
        seed,
    });
    let (mut fit_times, mut fast_times) = (Vec::new(), Vec::new());
    let (mut pca, mut fast) = (None, None);
    for _ in 0..repeats {
        let t = Instant::now();
        pca = Some(full.fit(train.flat())?);
        fit_times.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        fast = Some(randomized.fit(train.flat())?);
        fast_times.push(t.elapsed().as_secs_f64());
    }
    let (pca, fast) = (pca.expect("at least one fit"), fast.expect("at least one fit"));
    let (pca_fit, fast_fit) = (common::median(fit_times), common::median(fast_times));
    let pca_test = mse(&pca.reconstruct(test.flat())?, test.flat());
    let fast_test = mse(&fast.reconstruct(test.flat())?, test.flat());
    let pca_train = mse(&pca.reconstruct(train.flat())?, train.flat());

    // Linear autoencoder.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut ae = LinearAe::<f32>::new(dim, k, &mut rng)?;
    let mut opt = Adam::new(AdamConfig::new(lr).weight_decay(wd));
    let (curve, epoch_times) = train_epochs("linear AE", epochs, train.len(), batch, &mut rng, |idx| {
        ae.train_step_rows(train.flat(), idx, &mut opt)
    })?;
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

    // Convolutional autoencoder (CIS-522 architecture), same recipe.
    let side = (dim as f64).sqrt() as usize;
    // A collapsed start (every ReLU feeding the code dead, so the code is constant) shows
    // within the first hundred steps; rather than train it for minutes, say so and restart
    // from a fresh PyTorch-default initialisation.
    const CHECK_STEP: usize = 100;
    let conv_ckpt = out.join("pca_vs_ae_conv.ckpt.safetensors");
    let description = format!(
        "CIS-522 conv AE, K {k}, {} ({} training images)",
        name(kind),
        train.len()
    );
    let mut attempt = 0;
    let (mut conv, conv_curve, conv_times) = loop {
        let mut conv = ConvAe::<f32>::cis522(k, &mut rng)?;
        let mut conv_opt = Adam::new(AdamConfig::new(lr).weight_decay(wd));
        let mut first = 0;
        if !resume.is_empty() {
            let ck = checkpoint::load_checkpoint(Path::new(&resume))?;
            let meta = ck.meta()?;
            if meta.model != description {
                return Err(latent::Error::InvalidArgument(format!(
                    "--resume {resume}: a checkpoint of '{}', not of '{description}'",
                    meta.model
                )));
            }
            ck.restore_model(&mut conv)?;
            ck.restore_optimizer(&mut conv_opt, &mut conv)?;
            rng = meta.rng;
            first = meta.epoch;
            eprintln!("resumed the conv AE from {resume} after epoch {first}");
        }
        let mut steps = 0;
        let mut collapsed = false;
        let mut curve = Vec::new();
        let mut times = Vec::new();
        let mut xb = Array2::zeros((0, dim));
        // Each batch cut into one part per thread, each on its own copy of the model.
        let mut par = DataParallel::conv_ae(&conv);
        let mut run = || -> latent::Result<()> {
            for epoch in first..conv_epochs {
                let t = train_one_epoch(
                    "conv AE",
                    epoch,
                    conv_epochs,
                    train.len(),
                    batch,
                    &mut rng,
                    &mut curve,
                    |idx| {
                        train.gather_flat(idx, &mut xb);
                        let x4 = xb
                            .view()
                            .into_shape_with_order((idx.len(), 1, side, side))
                            .expect("square images");
                        let loss = par.train_step(&mut conv, x4, &mut conv_opt)?;
                        steps += 1;
                        // A resumed model has trained past the point where a collapse shows.
                        if first == 0 && steps == CHECK_STEP && conv.code_spread().is_some_and(|s| s < 1e-6) {
                            collapsed = true;
                            return Err(latent::Error::Numerical("collapsed".into()));
                        }
                        Ok(loss)
                    },
                )?;
                times.push(t);
                if checkpoint_every > 0 && ((epoch + 1) % checkpoint_every == 0 || epoch + 1 == conv_epochs) {
                    let meta = CheckpointMeta {
                        model: description.clone(),
                        epoch: epoch + 1,
                        rng: rng.clone(),
                    };
                    checkpoint::save_checkpoint(&conv_ckpt, &mut conv, &conv_opt, &meta)?;
                }
            }
            Ok(())
        };
        match run() {
            Ok(()) => break (conv, curve, times),
            Err(_) if collapsed && attempt < 3 => {
                attempt += 1;
                eprintln!(
                    "conv AE collapsed at step {CHECK_STEP}: its code is constant over the batch (all ReLUs \
                     feeding it are dead), the failure the notebook warns about; restarting from a new \
                     initialisation (attempt {} of 4)",
                    attempt + 1
                );
            }
            Err(e) => return Err(e),
        }
    };
    let conv_eval = if conv_epochs > 0 {
        Some(evaluate_conv(&mut conv, &test, side)?)
    } else {
        None
    };
    // The error of always answering the training mean image: what a collapsed model gets.
    let mean_image = pca.mean();
    let mean_image_mse = test
        .flat()
        .rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .zip(mean_image)
                .map(|(&x, &m)| (x as f64 - m).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / (test.len() * dim) as f64;

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
    println!(
        "{:<34} {:>12.6} {:>12.3} s",
        "PCA, randomized solver", fast_test, fast_fit
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
    if let Some(ev) = &conv_eval {
        println!(
            "{:<34} {:>12.6} {:>12.3} s  ({conv_epochs} epochs, first {:.1} s, last {:.1} s, median {:.1} s/epoch)",
            "conv autoencoder",
            ev.test_mse,
            conv_times.iter().sum::<f64>(),
            conv_times[0],
            conv_times[conv_times.len() - 1],
            common::median(conv_times.clone())
        );
        if ev.test_mse > 0.9 * mean_image_mse || ev.code_spread < 1e-6 {
            println!(
                "WARNING: the conv AE ends near the mean image: its test MSE {:.6} is over 90% of the \
                 mean image's ({:.6}), or its codes barely vary (largest standard deviation {:.2e}). \
                 Either the ReLUs feeding the code have died (the collapse the notebook warns about) or it \
                 is still on the plateau that comes before they recover (the default recipe with --seed 0 \
                 leaves it in its third epoch): train longer (--conv-epochs) or rerun with another --seed.",
                ev.test_mse, mean_image_mse, ev.code_spread
            );
        } else {
            println!("conv AE / PCA test MSE: {:.4}", ev.test_mse / pca_test);
        }
    }
    println!("(mean-image test MSE, what a collapsed model gets: {mean_image_mse:.6})");
    println!("(PCA training-set MSE, the best any linear AE can reach on the training data: {pca_train:.6})");

    if epochs > 0 || conv_epochs > 0 {
        let mut series = vec![Series {
            name: "linear AE (training batches)".into(),
            points: curve,
        }];
        if conv_epochs > 0 {
            series.push(Series {
                name: "conv AE (training batches)".into(),
                points: conv_curve,
            });
        }
        series.push(Series {
            name: format!("PCA, K = {k} (training set)"),
            points: vec![(0.0, pca_train), (epochs.max(conv_epochs) as f64, pca_train)],
        });
        LineChart {
            title: format!("Autoencoder training, K = {k}"),
            x_label: "epoch".into(),
            y_label: "MSE per pixel (log scale)".into(),
            series,
            // The conv AE ends three times below PCA's line and starts ten times above it.
            log_y: true,
            marker: None,
            legend_lower_right: false,
        }
        .save(&out.join("pca_vs_ae_loss.png"))?;
    }
    let show = 8;
    let imgs = test.flat().slice(s![..show, ..]).to_owned();
    let pca_rec = pca.reconstruct(imgs.view())?;
    let mut rows = vec![
        ("original".to_string(), as_images(imgs.view())),
        (format!("PCA ({pca_test:.4})"), as_images(pca_rec.view())),
    ];
    if epochs > 0 {
        let ae_rec = ae.reconstruct(imgs.view())?;
        rows.push((format!("linear AE ({ae_test:.4})"), as_images(ae_rec.view())));
    }
    if let Some(ev) = &conv_eval {
        let x4 = imgs
            .view()
            .into_shape_with_order((show, 1, side, side))
            .expect("square images");
        let rec = conv.reconstruct(x4)?;
        let rec = rec
            .view()
            .into_shape_with_order((show, dim))
            .expect("contiguous")
            .to_owned();
        rows.push((format!("conv AE ({:.4})", ev.test_mse), as_images(rec.view())));
    }
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
    // Interpolation between two test images of different digits: in pixel space, and
    // through the codes of each autoencoder.
    let a = 0;
    let b = (1..test.len()).find(|&i| test.labels[i] != test.labels[a]).unwrap_or(1);
    let steps = 11;
    let pair = ndarray::stack(Axis(0), &[test.flat().row(a), test.flat().row(b)]).expect("same widths");
    let blend = |h: &Array2<f32>| -> Array2<f32> {
        Array2::from_shape_fn((steps, h.ncols()), |(i, j)| {
            let t = i as f32 / (steps - 1) as f32;
            (1.0 - t) * h[[0, j]] + t * h[[1, j]]
        })
    };
    let mut rows = vec![("pixels".to_string(), as_images(blend(&pair).view()))];
    if epochs > 0 {
        let h = ae.encode(pair.view())?;
        rows.push((
            "linear AE codes".to_string(),
            as_images(ae.decode(blend(&h).view())?.view()),
        ));
    }
    if conv_epochs > 0 {
        let h = conv.encode(pair.view().into_shape_with_order((2, 1, side, side)).expect("square"))?;
        let imgs = conv.decode(blend(&h))?;
        rows.push((
            "conv AE codes".to_string(),
            as_images(imgs.view().into_shape_with_order((steps, dim)).expect("contiguous")),
        ));
    }
    let rows: Vec<_> = rows
        .iter()
        .map(|(l, v)| (l.clone(), v.iter().map(|a| a.view()).collect()))
        .collect();
    image_grid(
        &out.join("pca_vs_ae_interpolation.png"),
        &format!("Interpolating test image {a} into test image {b} (11 steps)"),
        &rows,
    )?;
    if let Some(ev) = &conv_eval {
        // The conv AE's test codes on their own top two principal components.
        let pc = Pca::params(2.min(k)).fit(ev.codes.view())?;
        let proj = pc.transform(ev.codes.view())?;
        let points: Vec<(f64, f64)> = proj
            .rows()
            .into_iter()
            .map(|r| (r[0] as f64, if r.len() > 1 { r[1] as f64 } else { 0.0 }))
            .collect();
        scatter_by_class(
            &out.join("pca_vs_ae_latent.png"),
            &format!("Conv AE test codes (K = {k}) on their top two principal components"),
            ("PC 1", "PC 2"),
            &points,
            test.labels.as_slice().expect("contiguous"),
            &kind.class_names(),
        )?;
        // Images decoded from z ~ N(0, I): an autoencoder is no generative model.
        let z = Array2::from_shape_simple_fn((25, k), || f32::sample_normal(&mut rng));
        let imgs = conv.decode(z)?;
        let imgs = as_images(imgs.view().into_shape_with_order((25, dim)).expect("contiguous"));
        let rows: Vec<_> = imgs
            .chunks(5)
            .map(|c| (String::new(), c.iter().map(|a| a.view()).collect()))
            .collect();
        image_grid(
            &out.join("pca_vs_ae_samples.png"),
            "Conv AE decoder on z ~ N(0, I)",
            &rows,
        )?;
    }
    println!("figures written to {}", display(&out));
    Ok(())
}

/// A loss curve: `(epoch, loss)` points.
type Curve = Vec<(f64, f64)>;

/// Trains for `epochs` epochs of shuffled batches, calling `step` with each batch's
/// indices; returns the per-batch loss curve (x in epochs) and each epoch's time.
fn train_epochs(
    label: &str,
    epochs: usize,
    n: usize,
    batch: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
    mut step: impl FnMut(&[usize]) -> latent::Result<f32>,
) -> latent::Result<(Curve, Vec<f64>)> {
    let mut curve = Vec::new();
    let mut times = Vec::new();
    for epoch in 0..epochs {
        times.push(train_one_epoch(
            label, epoch, epochs, n, batch, rng, &mut curve, &mut step,
        )?);
    }
    Ok((curve, times))
}

/// Epoch `epoch` (from 0) of `epochs`: shuffled batches through `step`, each batch's loss
/// appended to `curve`; returns the epoch's time in seconds. An error names the epoch and
/// the batch.
#[allow(clippy::too_many_arguments)]
fn train_one_epoch(
    label: &str,
    epoch: usize,
    epochs: usize,
    n: usize,
    batch: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
    curve: &mut Curve,
    mut step: impl FnMut(&[usize]) -> latent::Result<f32>,
) -> latent::Result<f64> {
    let batches = epoch_batches(n, batch, Some(&mut *rng))?;
    let bar = EpochProgress::new(format!("{label} epoch {}/{epochs}", epoch + 1), batches.len());
    let mut sum = 0.0;
    for (i, idx) in batches.iter().enumerate() {
        let loss = step(idx)
            .map_err(|e| latent::Error::InvalidArgument(format!("{label}: epoch {}, batch {i}: {e}", epoch + 1)))?;
        sum += loss as f64;
        curve.push((epoch as f64 + (i + 1) as f64 / batches.len() as f64, loss as f64));
        bar.step(loss as f64);
    }
    Ok(bar.finish(sum / batches.len() as f64).as_secs_f64())
}

/// The conv AE on the test set.
struct ConvEval {
    test_mse: f64,
    codes: Array2<f32>,
    /// Largest standard deviation of a code dimension over the test set (0 when collapsed).
    code_spread: f64,
}

fn evaluate_conv(conv: &mut ConvAe<f32>, test: &Dataset, side: usize) -> latent::Result<ConvEval> {
    let mut codes = Vec::new();
    let mut sse = 0.0f64;
    for chunk in test.flat().axis_chunks_iter(Axis(0), 500) {
        let x4 = chunk
            .into_shape_with_order((chunk.nrows(), 1, side, side))
            .expect("square images");
        let h = conv.encode(x4)?;
        let rec = conv.decode(h.clone())?;
        sse += rec
            .iter()
            .zip(x4.iter())
            .map(|(&r, &x)| ((r - x) as f64).powi(2))
            .sum::<f64>();
        codes.push(h);
    }
    let views: Vec<_> = codes.iter().map(|c| c.view()).collect();
    let codes = ndarray::concatenate(Axis(0), &views).expect("same widths");
    let code_spread = codes
        .mapv(f64::from)
        .std_axis(Axis(0), 0.0)
        .iter()
        .copied()
        .fold(0.0, f64::max);
    Ok(ConvEval {
        test_mse: sse / (test.len() * test.dim()) as f64,
        codes,
        code_spread,
    })
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
