//! PCA against a linear autoencoder on MNIST (CIS-522 week 8), or on Fashion-MNIST, the
//! generated colour shapes or your own images (`--data`); the CIS-522 conv AE beside them
//! on MNIST-sized images.
//!
//! A linear autoencoder trained with MSE can at best reach the error of PCA with the same
//! number of components, and its decoder then spans PCA's subspace. This example fits
//! both, prints their test errors, the principal angles between the two subspaces and the
//! timings, and writes the figures into `--out`.
//!
//! `cargo run --release --example pca_vs_ae -- --help`

mod common;

use std::path::PathBuf;
use std::time::Instant;

use latent::figures::{self, Codec};
use latent::models::{ConvAe, LinearAe};
use latent::optim::AdamConfig;
use latent::pca::{principal_angles, Pca, Solver};
use latent::train::{CollapsePolicy, EvalConfig, Trainer};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `(flag, default, help)`; one per line, as a table.
#[rustfmt::skip]
const FLAGS: &[(&str, &str, &str)] = &[
    ("k", "20", "latent dimensions / principal components"),
    ("epochs", "20", "linear AE training epochs"),
    ("conv-epochs", "3", "conv AE training epochs (the notebook's 20 for the README figures; 0 skips it)"),
    ("batch", "250", "batch size"),
    ("lr", "1e-3", "Adam learning rate"),
    ("weight-decay", "1e-5", "Adam L2 weight decay"),
    ("out", "out", "folder for the PNG figures"),
    ("seed", "0", "random seed (initialisation and shuffling)"),
    ("pca-repeats", "5", "PCA fits of each solver to time (the median is reported)"),
    ("checkpoint-every", "1", "write a conv AE checkpoint every N epochs to --out/pca_vs_ae_conv.ckpt.safetensors (0: never)"),
    ("resume", "", "continue the conv AE from this checkpoint (same K and dataset)"),
];

fn run() -> latent::Result<()> {
    let about = "PCA vs a linear autoencoder (MSE, Adam) on MNIST, Fashion-MNIST, generated shapes or your own images.";
    let flags = common::Flags::new("pca_vs_ae", about, &[FLAGS, common::DATA_FLAGS].concat()).parse();
    let (k, epochs, mut conv_epochs): (usize, usize, usize) =
        (flags.get("k"), flags.get("epochs"), flags.get("conv-epochs"));
    let (lr, wd): (f32, f32) = (flags.get("lr"), flags.get("weight-decay"));
    let out = PathBuf::from(flags.raw("out"));
    let seed: u64 = flags.get("seed");
    let repeats: usize = flags.get::<usize>("pca-repeats").max(1);
    // An --out that cannot be made is an error now, not after the training.
    std::fs::create_dir_all(&out).map_err(|e| latent::Error::io(&out, e))?;
    latent::runtime::Runtime::training().apply();
    let t = Instant::now();
    let common::Data { train, test, name } = common::load_data(&flags)?;
    let dim = train.dim();
    if k == 0 || k > dim {
        return Err(latent::Error::InvalidArgument(format!(
            "--k {k} must be between 1 and {dim}"
        )));
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "loaded {} train + {} test images of {name}, {dim} values each, in {secs:.2} s",
        train.len(),
        test.len()
    );
    if train.image_shape() != [1, 28, 28] && conv_epochs > 0 {
        eprintln!("the conv AE takes 1x28x28 images: skipped for these (PCA and the linear AE take any size)");
        conv_epochs = 0;
    }

    // PCA, timed over several fits, with the full eigendecomposition (whose spectrum the
    // figure plots) and the randomized solver (the counterpart of torch.svd_lowrank).
    let shape: [usize; 3] = train.images.shape()[1..].try_into().expect("[c, h, w]");
    let full = Pca::params(k).image_shape(shape[1], shape[2]);
    let randomized = full.solver(Solver::Randomized {
        oversample: 20,
        power_iters: 8,
        seed,
    });
    let (mut fit_times, mut fast_times, mut fits) = (Vec::new(), Vec::new(), None);
    for _ in 0..repeats {
        let t = Instant::now();
        let pca = full.fit(train.flat())?;
        fit_times.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let fast = randomized.fit(train.flat())?;
        fast_times.push(t.elapsed().as_secs_f64());
        fits = Some((pca, fast));
    }
    let (mut pca, fast) = fits.expect("at least one fit");
    let mse = |rec: ndarray::Array2<f32>, x: ndarray::ArrayView2<f32>| {
        rec.iter().zip(x).map(|(&r, &v)| ((r - v) as f64).powi(2)).sum::<f64>() / rec.len() as f64
    };
    let pca_test = mse(pca.reconstruct(test.flat())?, test.flat());
    let fast_test = mse(fast.reconstruct(test.flat())?, test.flat());
    let pca_train = mse(pca.reconstruct(train.flat())?, train.flat());

    // The linear autoencoder, then the CIS-522 conv AE from the same generator, with Adam
    // on MSE. A conv AE whose ReLUs feeding the code all die shows it within the first
    // hundred steps: say so and restart from a fresh initialisation.
    let adam = AdamConfig::new(lr).weight_decay(wd);
    let trainer = || Trainer::new().batch(flags.get("batch")).adam(adam);
    let mut linear = trainer()
        .epochs(epochs)
        .evaluation(Some(EvalConfig {
            chunk: 1000,
            ..EvalConfig::default()
        }))
        .seed(seed)
        .label("linear AE")
        .fit(|rng| LinearAe::<f32>::new(dim, k, rng), &train, Some(&test))?;
    let ae_test = linear.evaluation.as_ref().expect("evaluated").mse;
    let dec = linear.model.dec_lin.weight.value2().mapv(f64::from);
    let angles = principal_angles(&dec, pca.components())?.mapv(f64::to_degrees);
    let mut conv_trainer = trainer()
        .epochs(conv_epochs)
        .rng(linear.rng.clone())
        .label("conv AE")
        .name(format!(
            "CIS-522 conv AE, K {k}, {name} ({} training images)",
            train.len()
        ))
        .checkpoint(
            out.join("pca_vs_ae_conv.ckpt.safetensors"),
            flags.get("checkpoint-every"),
        )
        .collapse(Some(CollapsePolicy {
            check_step: 100,
            threshold: 1e-6,
            attempts: 4,
        }));
    if !flags.raw("resume").is_empty() {
        conv_trainer = conv_trainer.resume(flags.raw("resume"));
    }
    let with_test = (conv_epochs > 0).then_some(&test);
    let mut conv = conv_trainer.fit(|rng| ConvAe::<f32>::cis522(k, rng), &train, with_test)?;
    // The error of always answering the training mean image: what a collapsed model gets.
    let mean_image = pca.mean();
    let mean_image_mse = test
        .flat()
        .rows()
        .into_iter()
        .flat_map(|r| r.into_iter().zip(mean_image))
        .map(|(&x, &m)| (x as f64 - m).powi(2))
        .sum::<f64>()
        / (test.len() * dim) as f64;

    let ratio = pca.explained_variance_ratio().sum();
    println!();
    println!(
        "{name} K = {k}: PCA explains {:.2}% of the training variance",
        100.0 * ratio
    );
    println!("{:<34} {:>12} {:>14}", "model", "test MSE", "fit / train");
    let pca_label = format!("PCA (median of {repeats} fits)");
    println!("{pca_label:<34} {pca_test:>12.6} {:>12.3} s", common::median(fit_times));
    println!(
        "{:<34} {fast_test:>12.6} {:>12.3} s",
        "PCA, randomized solver",
        common::median(fast_times)
    );
    if epochs > 0 {
        let t = linear.history.epoch_seconds();
        println!(
            "{:<34} {ae_test:>12.6} {:>12.3} s  ({epochs} epochs, median {:.3} s/epoch)",
            "linear autoencoder",
            t.iter().sum::<f64>(),
            common::median(t.clone())
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
    if let Some(ev) = &conv.evaluation {
        let t = conv.history.epoch_seconds();
        let spread = ev.code_spread();
        println!(
            "{:<34} {:>12.6} {:>12.3} s  ({conv_epochs} epochs, first {:.1} s, last {:.1} s, median {:.1} s/epoch)",
            "conv autoencoder",
            ev.mse,
            t.iter().sum::<f64>(),
            t.first().copied().unwrap_or(0.0),
            t.last().copied().unwrap_or(0.0),
            common::median(t.clone())
        );
        if ev.mse > 0.9 * mean_image_mse || spread < 1e-6 {
            println!(
                "WARNING: the conv AE ends near the mean image: its test MSE {:.6} is over 90% of the \
                 mean image's ({mean_image_mse:.6}), or its codes barely vary (largest standard deviation {spread:.2e}). \
                 Either the ReLUs feeding the code have died (the collapse the notebook warns about) or it \
                 is still on the plateau that comes before they recover: train longer (--conv-epochs) or \
                 rerun with another --seed.",
                ev.mse
            );
        } else {
            println!("conv AE / PCA test MSE: {:.4}", ev.mse / pca_test);
        }
    }
    println!("(mean-image test MSE, what a collapsed model gets: {mean_image_mse:.6})");
    println!("(PCA training-set MSE, the best any linear AE can reach on the training data: {pca_train:.6})");
    let linear_fig = (epochs > 0).then_some((&mut linear.model as &mut dyn Codec, &linear.history, ae_test));
    let conv_fig = match &conv.evaluation {
        Some(ev) => Some(((&mut conv.model as &mut dyn Codec, &conv.history, ev.mse), ev)),
        None => None,
    };
    let pca_fig = (&mut pca, pca_test, pca_train);
    let classes = test.class_names();
    figures::pca_vs_autoencoders(
        &out,
        &test,
        &classes,
        pca_fig,
        linear_fig,
        conv_fig,
        &name,
        &mut conv.rng,
    )?;
    println!("figures written to {}", out.display());
    Ok(())
}
