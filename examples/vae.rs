//! Variational autoencoders on MNIST: the CIS-522 ConvVAE, the Coursera DCGAN VAE and the
//! stride-2 VAE, each trained on its notebook's recipe (or on the ELBO with n samples and
//! beta, or on the importance-weighted bound), then measured on the test set: the ELBO
//! per image with its reconstruction and KL terms, and an IWAE-k log-likelihood estimate.
//! Figures go into `--out`.
//!
//! `cargo run --release --example vae -- --help`

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use latent::checkpoint::{self, CheckpointMeta};
use latent::data::{epoch_batches, Dataset, DatasetKind, Split};
use latent::device::DeviceRequest;
use latent::loss::Reduction;
use latent::models::VaeModel;
use latent::nn::Module;
use latent::optim::{adam_update, Adam, AdamConfig};
use latent::pca::Pca;
use latent::plot::{
    error_bars, gaussian_samples, image_grid, scatter_by_class, ErrorSeries, GaussianSamples, LineChart, Series,
};
use latent::progress::EpochProgress;
use latent::vae::{self, DiagGaussian, Likelihood, LossConfig, Objective, Vae};
use latent::Error;
use ndarray::{s, Array2, Array4, ArrayView2, ArrayView4, Axis};
use rand::{Rng, SeedableRng};

type Rng64 = rand_chacha::ChaCha8Rng;

/// `(epoch, loss)` points.
type Curve = Vec<(f64, f64)>;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The notebooks' recipes: latent size, learning rate, weight decay, batch size.
struct Recipe {
    latent: usize,
    lr: f32,
    weight_decay: f32,
    batch: usize,
}

fn recipe(model: &str) -> latent::Result<Recipe> {
    Ok(match model {
        "conv" => Recipe {
            latent: 20,
            lr: 1e-3,
            weight_decay: 1e-6,
            batch: 100,
        },
        "dcgan" => Recipe {
            latent: 32,
            lr: 2e-3,
            weight_decay: 0.0,
            batch: 1024,
        },
        "strided" => Recipe {
            latent: 32,
            lr: 1e-3,
            weight_decay: 0.0,
            batch: 128,
        },
        other => {
            return Err(Error::InvalidArgument(format!(
                "--model {other}: expected conv, dcgan or strided"
            )))
        }
    })
}

fn run() -> latent::Result<()> {
    let flags = common::Flags::new(
        "vae",
        "Train a VAE (CIS-522 ConvVAE, Coursera DCGAN VAE or the stride-2 VAE) on MNIST or Fashion-MNIST.",
        &[
            ("model", "conv", "conv, dcgan or strided"),
            (
                "device",
                "auto",
                "auto (the GPU if usable, else the CPU, saying why), cpu, or cuda (an error without a GPU)",
            ),
            (
                "tf32",
                "off",
                "on: GPU products in TF32 on the tensor cores (PyTorch's default for convolutions); off: true f32",
            ),
            ("dataset", "mnist", "mnist or fashion"),
            (
                "data-dir",
                "",
                "folder with the four IDX .gz files (default: data/mnist, or Debian's Fashion-MNIST folder)",
            ),
            ("epochs", "10", "training epochs"),
            ("batch", "recipe", "batch size (conv 100, dcgan 1024, strided 128)"),
            (
                "lr",
                "recipe",
                "Adam learning rate (conv 1e-3, dcgan 2e-3, strided 1e-3)",
            ),
            ("weight-decay", "recipe", "Adam L2 weight decay (conv 1e-6, others 0)"),
            ("latent", "recipe", "latent dimensions (conv 20, dcgan 32, strided 32)"),
            ("beta", "1", "weight of the KL term in the ELBO"),
            (
                "samples",
                "1",
                "samples of z per image (ELBO) or importance samples (IWAE)",
            ),
            ("objective", "elbo", "elbo or iwae"),
            (
                "iwae-k",
                "100",
                "importance samples of the test log-likelihood estimate",
            ),
            (
                "iwae-images",
                "1000",
                "test images of the IWAE estimate (the first ones)",
            ),
            (
                "train-images",
                "all",
                "train on the first N training images only (quick runs)",
            ),
            ("seed", "0", "random seed (initialisation, shuffling, noise)"),
            ("out", "out", "folder for the PNG figures and the final weights"),
            (
                "checkpoint-every",
                "1",
                "write a checkpoint every N epochs to --out/vae_MODEL.ckpt.safetensors (0: never)",
            ),
            (
                "resume",
                "",
                "continue training from this checkpoint (same model, sizes and dataset)",
            ),
        ],
    )
    .parse();
    let model_name = flags.raw("model");
    let rec = recipe(&model_name)?;
    let or_recipe = |name: &str, default: String| {
        if flags.raw(name) == "recipe" {
            default
        } else {
            flags.raw(name)
        }
    };
    let parse = |name: &str, raw: String| -> latent::Result<f64> {
        raw.parse::<f64>()
            .map_err(|e| Error::InvalidArgument(format!("--{name} {raw}: {e}")))
    };
    let batch = parse("batch", or_recipe("batch", rec.batch.to_string()))? as usize;
    let lr = parse("lr", or_recipe("lr", rec.lr.to_string()))? as f32;
    let wd = parse("weight-decay", or_recipe("weight-decay", rec.weight_decay.to_string()))? as f32;
    let latent = parse("latent", or_recipe("latent", rec.latent.to_string()))? as usize;
    let epochs: usize = flags.get("epochs");
    let beta: f64 = flags.get("beta");
    let samples: usize = flags.get("samples");
    let iwae_k: usize = flags.get("iwae-k");
    let iwae_images: usize = flags.get("iwae-images");
    let seed: u64 = flags.get("seed");
    let kind: DatasetKind = flags.get("dataset");
    let data_dir = flags.raw("data-dir");
    let data_dir = (!data_dir.is_empty()).then(|| PathBuf::from(data_dir));
    let out = PathBuf::from(flags.raw("out"));
    let checkpoint_every: usize = flags.get("checkpoint-every");
    let resume = flags.raw("resume");
    if batch == 0 || latent == 0 || lr.is_nan() || lr <= 0.0 || wd.is_nan() || wd < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "--batch {batch}, --latent {latent} must be >= 1, --lr {lr} > 0, --weight-decay {wd} >= 0"
        )));
    }
    let objective = match flags.raw("objective").as_str() {
        "elbo" => Objective::Elbo { samples, beta },
        "iwae" => {
            if flags.given("beta") {
                return Err(Error::InvalidArgument("--beta applies to the ELBO, not to IWAE".into()));
            }
            Objective::Iwae { samples }
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "--objective {other}: expected elbo or iwae"
            )))
        }
    };
    objective.validate()?;
    let request: DeviceRequest = flags.get("device");
    let (device, device_line) = latent::device::select(request)?;
    eprintln!("{device_line}");
    let tf32 = match flags.raw("tf32").as_str() {
        "on" => true,
        "off" => false,
        other => return Err(Error::InvalidArgument(format!("--tf32 {other}: expected on or off"))),
    };
    latent::denormals::flush_denormals();
    latent::memory::keep_freed_memory();
    let t = Instant::now();
    let mut train = Dataset::load(kind, data_dir.as_deref(), Split::Train)?;
    let test = Dataset::load(kind, data_dir.as_deref(), Split::Test)?;
    if flags.raw("train-images") != "all" {
        let n: usize = flags.get("train-images");
        if n == 0 {
            return Err(Error::InvalidArgument("--train-images must be >= 1".into()));
        }
        train = train.head(n);
    }
    if batch > train.len() {
        return Err(Error::InvalidArgument(format!(
            "--batch {batch} is larger than the {} training images",
            train.len()
        )));
    }
    eprintln!(
        "loaded {} train + {} test images in {:.2} s (checksums verified)",
        train.len(),
        test.len(),
        t.elapsed().as_secs_f64()
    );

    let mut rng = Rng64::seed_from_u64(seed);
    let build = |rng: &mut Rng64| -> latent::Result<VaeModel<f32>> {
        Ok(match model_name.as_str() {
            "conv" => VaeModel::<f32>::conv_cis522(latent, rng)?,
            "dcgan" => VaeModel::<f32>::dcgan_coursera(latent, rng)?,
            _ => VaeModel::<f32>::strided([1, 28, 28], latent, rng)?,
        })
    };
    let mut model = build(&mut rng)?;
    let cfg = LossConfig {
        objective,
        ..model.recipe()
    };
    eprintln!(
        "{model_name} VAE: {} parameters, latent {latent}, {}, KL {:?}, {:?} over the batch; likelihood: {}",
        model.num_params(),
        describe(&cfg.objective),
        cfg.kl,
        cfg.reduction,
        model.likelihood().describe()
    );

    // Training, from a checkpoint if asked. The recipe can collapse at the start: while
    // sigma_x is near its initial 1 the reconstruction term is weak, the KL term pulls
    // every q(z|x) onto the prior within a few dozen steps, and the encoder's ReLUs then die
    // (CIS-522's ConvVAE with --seed 1: Var_x E_q[z] ~ 1e-10 at step 300, against ~0.6
    // for seeds 0, 2, 3). Such a run ends at the mean image; restart it instead.
    const CHECK_STEP: usize = 300;
    const COLLAPSED_VARIANCE: f64 = 1e-6;
    const ATTEMPTS: usize = 4;
    let description = format!(
        "{model_name} VAE, latent {latent}, {} ({} training images)",
        name(kind),
        train.len()
    );
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let ckpt_path = out.join(format!("vae_{model_name}.ckpt.safetensors"));
    let mut xb = Array2::zeros((0, train.dim()));
    let mut attempt = 1;
    let (curve, epoch_means, times, first_epoch) = 'attempts: loop {
        let mut opt = Adam::new(AdamConfig::new(lr).weight_decay(wd));
        let mut first_epoch = 0;
        if !resume.is_empty() {
            let ck = checkpoint::load_checkpoint(Path::new(&resume))?;
            let meta = ck.meta()?;
            if meta.model != description {
                return Err(Error::InvalidArgument(format!(
                    "--resume {resume}: a checkpoint of '{}', not of '{description}'",
                    meta.model
                )));
            }
            ck.restore_model(&mut model)?;
            ck.restore_optimizer(&mut opt, &mut model)?;
            rng = meta.rng;
            first_epoch = meta.epoch;
            eprintln!("resumed from {resume} after epoch {first_epoch}");
        }
        let mut stepper = Stepper::new(&device, request, tf32, &mut model, cfg, &opt, &train)?;
        let mut last_good: Option<PathBuf> = None;
        let mut curve = Vec::new();
        let mut epoch_means = Vec::new();
        let mut times = Vec::new();
        for epoch in first_epoch..epochs {
            let batches = epoch_batches(train.len(), batch, Some(&mut rng))?;
            let bar = EpochProgress::new(format!("{model_name} VAE epoch {}/{epochs}", epoch + 1), batches.len());
            let check_step = CHECK_STEP.min(batches.len());
            let mut sum = 0.0;
            for (i, idx) in batches.iter().enumerate() {
                let check_now = epoch == 0 && i + 1 == check_step;
                let (bound, mu) = stepper
                    .step(&mut model, (&train, idx, &mut xb), &cfg, &mut opt, &mut rng, check_now)
                    .map_err(|e| {
                        let kept = match &last_good {
                            Some(p) => format!("; the last good checkpoint is {}", p.display()),
                            None => String::new(),
                        };
                        Error::Numerical(format!("training stopped at epoch {}, batch {i}: {e}{kept}", epoch + 1))
                    })?;
                let per_image = -bound as f64;
                sum += per_image;
                curve.push((epoch as f64 + (i + 1) as f64 / batches.len() as f64, per_image));
                bar.step(per_image);
                // A resumed run has trained past the point where a collapse shows.
                if let Some(mu) = mu {
                    let spread = vae::posterior_mean_variance(mu.view())?.fold(0.0, |a: f64, &b| a.max(b));
                    if spread < COLLAPSED_VARIANCE {
                        drop(bar);
                        if attempt == ATTEMPTS {
                            return Err(Error::Numerical(format!(
                                "the posterior collapsed in each of {ATTEMPTS} initialisations (Var_x E_q[z] \
                                 {spread:.1e} at step {check_step}); try another --seed or a smaller --beta"
                            )));
                        }
                        eprintln!(
                            "posterior collapsed at step {check_step}: E_q[z|x] is the same for every image \
                             (largest variance over the batch {spread:.1e}), so the decoder could only learn \
                             the mean image; restarting from a new initialisation (attempt {} of {ATTEMPTS})",
                            attempt + 1
                        );
                        attempt += 1;
                        model = build(&mut rng)?;
                        continue 'attempts;
                    }
                }
            }
            let mean = sum / batches.len() as f64;
            epoch_means.push((epoch as f64 + 1.0, mean));
            times.push(bar.finish(mean).as_secs_f64());
            if checkpoint_every > 0 && ((epoch + 1) % checkpoint_every == 0 || epoch + 1 == epochs) {
                let meta = CheckpointMeta {
                    model: description.clone(),
                    epoch: epoch + 1,
                    rng: rng.clone(),
                };
                stepper.download_into(&mut model, &mut opt)?;
                checkpoint::save_checkpoint(&ckpt_path, &mut model, &opt, &meta)?;
                last_good = Some(ckpt_path.clone());
            }
        }
        stepper.download_into(&mut model, &mut opt)?;
        break (curve, epoch_means, times, first_epoch);
    };
    let weights = out.join(format!("vae_{model_name}.safetensors"));
    checkpoint::save_weights(&weights, &mut model)?;
    eprintln!("wrote {} (PyTorch state_dict names)", weights.display());

    // Test metrics, in evaluation mode.
    let t = Instant::now();
    let test_cfg = LossConfig {
        objective: Objective::Elbo { samples: 1, beta: 1.0 },
        kl: vae::KlEstimator::Closed,
        reduction: Reduction::Mean,
    };
    let metrics = test_metrics(&mut model, &test, &test_cfg, &mut rng)?;
    let n_iwae = iwae_images.min(test.len());
    let iwae = if iwae_k > 0 && n_iwae > 0 {
        let ll = vae::iwae_log_likelihood(
            &mut model,
            test.images.slice(s![..n_iwae, .., .., ..]),
            iwae_k,
            10,
            &mut rng,
        )?;
        let mean = ll.mean().expect("non-empty") as f64;
        let se = ll.mapv(f64::from).std(1.0) / (n_iwae as f64).sqrt();
        Some((mean, se))
    } else {
        None
    };
    let eval_time = t.elapsed().as_secs_f64();

    // Report.
    println!();
    println!(
        "{} {model_name} VAE, {epochs} epochs, batch {batch}, {}: median {:.2} s/epoch{}",
        name(kind),
        describe(&cfg.objective),
        common::median(times.clone()),
        if first_epoch > 0 {
            format!(" (epochs {}..{epochs} of this run)", first_epoch + 1)
        } else {
            String::new()
        }
    );
    let d = test.dim() as f64;
    // The likelihood as trained (the ConvVAE's sigma_x is learned).
    let like = model.likelihood();
    match like {
        Likelihood::Gaussian { log_sig_x, .. } => {
            let lift = d * vae::HALF_LN_2PI;
            println!(
                "test ELBO per image: {:.1} nats with the 0.5 log 2pi terms ({:.1} in the notebook's form without them)",
                metrics.elbo - lift,
                metrics.elbo
            );
            println!(
                "  reconstruction term -E log p(x|z): {:.1} (notebook form {:.1}), KL: {:.2}",
                metrics.recon + lift,
                metrics.recon,
                metrics.kl
            );
            println!("  learned sigma_x: {:.4}", (log_sig_x as f64).exp());
        }
        _ => println!(
            "test loss per image: {:.2} = {} {:.2} + KL {:.2}",
            -metrics.elbo,
            if matches!(like, Likelihood::SquaredError) {
                "SSE"
            } else {
                "BCE"
            },
            metrics.recon,
            metrics.kl
        ),
    }
    println!("  reconstruction MSE per pixel (z ~ q): {:.5}", metrics.mse);
    let active = vae::active_units(metrics.means.view(), vae::ACTIVE_UNIT_THRESHOLD)?;
    println!(
        "  active latent dimensions (Var_x E_q[z_k] > {}): {active} of {latent}",
        vae::ACTIVE_UNIT_THRESHOLD
    );
    if active == 0 {
        println!(
            "WARNING: the posterior has collapsed: q(z|x) is the same for every test image, the decoder \
             answers the mean image and these figures describe no latent structure; rerun with another --seed"
        );
    }
    if let Some((mean, se)) = iwae {
        println!(
            "IWAE-{iwae_k} log-likelihood on the first {n_iwae} test images: {mean:.1} ± {se:.1} nats (standard error){}",
            if matches!(like, Likelihood::Gaussian { .. }) {
                ", a normalised Gaussian density"
            } else {
                ""
            }
        );
    }
    println!("evaluation took {eval_time:.1} s");

    figures(
        &mut model,
        &model_name,
        &out,
        &test,
        &metrics,
        kind,
        (&curve, &epoch_means),
        &mut rng,
    )?;
    Ok(())
}

fn describe(o: &Objective) -> String {
    match *o {
        Objective::Elbo { samples, beta } => format!("ELBO with {samples} sample(s), beta = {beta}"),
        Objective::Iwae { samples } => format!("IWAE with {samples} importance samples"),
    }
}

fn name(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::Mnist => "MNIST",
        DatasetKind::FashionMnist => "Fashion-MNIST",
    }
}

/// Rows of 784 pixels as a `[b, 1, 28, 28]` batch.
fn as_batch(x: ArrayView2<f32>) -> ArrayView4<f32> {
    let side = (x.ncols() as f64).sqrt() as usize;
    x.into_shape_with_order((x.nrows(), 1, side, side))
        .expect("square images")
}

/// Test-set averages per image, and what the figures need.
struct TestMetrics {
    elbo: f64,
    recon: f64,
    kl: f64,
    mse: f64,
    means: Array2<f32>,
    recon_images: Array4<f32>,
}

fn test_metrics(
    model: &mut VaeModel<f32>,
    test: &Dataset,
    cfg: &LossConfig,
    rng: &mut Rng64,
) -> latent::Result<TestMetrics> {
    let (mut elbo, mut recon, mut kl, mut sse) = (0.0, 0.0, 0.0, 0.0);
    let mut means = Vec::new();
    let mut recon_images = None;
    let flat = test.flat();
    for chunk in flat.axis_chunks_iter(Axis(0), 500) {
        let x4 = as_batch(chunk);
        let b = chunk.nrows();
        let eps = vae::sample_noise(b, 1, model.latent_dim(), rng);
        let parts = vae::evaluate(model, x4, eps.view(), cfg)?;
        let w = b as f64;
        elbo += parts.bound as f64 * w;
        recon += parts.recon as f64 * w;
        kl += parts.kl as f64 * w;
        sse += parts
            .output
            .iter()
            .zip(x4.iter())
            .map(|(&r, &x)| ((r - x) as f64).powi(2))
            .sum::<f64>();
        means.push(parts.posterior.mu);
        if recon_images.is_none() {
            recon_images = Some(parts.output);
        }
    }
    let n = test.len() as f64;
    let views: Vec<_> = means.iter().map(|m| m.view()).collect();
    Ok(TestMetrics {
        elbo: elbo / n,
        recon: recon / n,
        kl: kl / n,
        mse: sse / (n * test.dim() as f64),
        means: ndarray::concatenate(Axis(0), &views).expect("same widths"),
        recon_images: recon_images.expect("at least one test image"),
    })
}

fn images(x: &Array4<f32>, n: usize) -> Vec<ArrayView2<'_, f32>> {
    (0..n.min(x.shape()[0])).map(|i| x.slice(s![i, 0, .., ..])).collect()
}

#[allow(clippy::too_many_arguments)]
fn figures(
    model: &mut VaeModel<f32>,
    model_name: &str,
    out: &Path,
    test: &Dataset,
    metrics: &TestMetrics,
    kind: DatasetKind,
    (curve, epoch_means): (&Curve, &Curve),
    rng: &mut Rng64,
) -> latent::Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let path = |what: &str| out.join(format!("vae_{model_name}_{what}.png"));
    let k = model.latent_dim();
    let mut written = Vec::new();

    if !curve.is_empty() {
        LineChart {
            title: format!("{model_name} VAE: training loss per image (-bound)"),
            x_label: "epoch".into(),
            y_label: "loss per image".into(),
            series: vec![
                Series {
                    name: "per batch".into(),
                    points: curve.to_vec(),
                },
                Series {
                    name: "epoch mean".into(),
                    points: epoch_means.to_vec(),
                },
            ],
            ..Default::default()
        }
        .save(&path("loss"))?;
        written.push(path("loss"));
    }

    let originals = test.images.slice(s![..10, .., .., ..]).to_owned();
    image_grid(
        &path("recon"),
        &format!("{model_name} VAE: test images and reconstructions (z ~ q)"),
        &[
            ("original".into(), images(&originals, 10)),
            ("reconstruction".into(), images(&metrics.recon_images, 10)),
        ],
    )?;
    written.push(path("recon"));

    let z = vae::sample_noise::<f32, _>(25, 1, k, rng)
        .into_shape_with_order((25, k))
        .expect("contiguous");
    let prior = vae::decode_images(model, z.view())?;
    let rows: Vec<(String, Vec<ArrayView2<f32>>)> = (0..5)
        .map(|r| {
            (
                String::new(),
                (0..5).map(|c| prior.slice(s![r * 5 + c, 0, .., ..])).collect(),
            )
        })
        .collect();
    image_grid(
        &path("samples"),
        &format!("{model_name} VAE: samples from the prior"),
        &rows,
    )?;
    written.push(path("samples"));

    // Interpolation between the posterior means of pairs of test images.
    let steps = 10;
    let pairs = [(0usize, 1usize), (2, 3), (4, 5)];
    let mut codes = Array2::zeros((pairs.len() * steps, k));
    for (p, &(a, b)) in pairs.iter().enumerate() {
        for t in 0..steps {
            let f = t as f32 / (steps - 1) as f32;
            let row = &metrics.means.row(a) * (1.0 - f) + &metrics.means.row(b) * f;
            codes.row_mut(p * steps + t).assign(&row);
        }
    }
    let interp = vae::decode_images(model, codes.view())?;
    let rows: Vec<(String, Vec<ArrayView2<f32>>)> = pairs
        .iter()
        .enumerate()
        .map(|(p, &(a, b))| {
            (
                format!("{} -> {}", test.labels[a], test.labels[b]),
                (0..steps).map(|t| interp.slice(s![p * steps + t, 0, .., ..])).collect(),
            )
        })
        .collect();
    image_grid(
        &path("interpolation"),
        &format!("{model_name} VAE: decoding the line between two posterior means"),
        &rows,
    )?;
    written.push(path("interpolation"));

    // The latent space: posterior means of the test set, projected on their top two
    // principal components when K > 2.
    let pts: Vec<(f64, f64)> = if k == 2 {
        metrics
            .means
            .rows()
            .into_iter()
            .map(|r| (r[0] as f64, r[1] as f64))
            .collect()
    } else {
        let proj = Pca::params(2)
            .fit(metrics.means.view())?
            .transform(metrics.means.view())?;
        proj.rows().into_iter().map(|r| (r[0] as f64, r[1] as f64)).collect()
    };
    scatter_by_class(
        &path("latent"),
        &format!("{model_name} VAE: posterior means of the test images"),
        if k == 2 {
            ("z1", "z2")
        } else {
            ("principal component 1", "principal component 2")
        },
        &pts,
        test.labels.as_slice().expect("contiguous"),
        &kind.class_names(),
    )?;
    written.push(path("latent"));

    // The notebook's rsample figure: samples of q for four random phi = (mu, log sigma) in
    // two dimensions, with their 2-sigma circles.
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
        &path("rsample"),
        "rsample: 300 samples of q for four random phi, with 2-sigma circles",
        ("z1", "z2"),
        &groups,
    )?;
    written.push(path("rsample"));

    written.extend(elbo_ascent(model, model_name, out, test, rng)?);
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The notebook's "ELBO ascent on phi": for one test image and the trained decoder held
/// fixed, gradient ascent (Adam) of the ELBO on the posterior's parameters alone, from the
/// prior. Plots the ELBO per step against the encoder's, and the optimised q's mean with
/// 2-sigma bars against the encoder's.
fn elbo_ascent(
    model: &mut VaeModel<f32>,
    model_name: &str,
    out: &Path,
    test: &Dataset,
    rng: &mut Rng64,
) -> latent::Result<Vec<PathBuf>> {
    let k = model.latent_dim();
    let x = test.images.slice(s![..1, .., .., ..]);
    let samples = 16;
    let ascent_cfg = LossConfig {
        objective: Objective::Elbo { samples, beta: 1.0 },
        kl: vae::KlEstimator::Closed,
        reduction: Reduction::Mean,
    };
    let encoder_q = model.encode(x, latent::nn::Mode::Eval)?;
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
    let ascent_path = out.join(format!("vae_{model_name}_elbo_ascent.png"));
    LineChart {
        title: format!("{model_name} VAE: ELBO ascent on phi for one test image, decoder fixed"),
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
    let phi_path = out.join(format!("vae_{model_name}_phi.png"));
    error_bars(
        &phi_path,
        &format!("{model_name} VAE: q(z|x) for one test image, ascent vs encoder"),
        ("latent dimension", "z"),
        &series,
    )?;
    Ok(vec![ascent_path, phi_path])
}

/// Where the training steps run: the CPU model itself (each batch cut into one part per
/// thread where the model allows it), or (with the `cuda` feature and a usable GPU) a
/// [`latent::cuda::VaeTrainer`] holding a copy of it.
enum Stepper {
    Cpu(vae::DataParallel<VaeModel<f32>>),
    #[cfg(feature = "cuda")]
    Gpu(Box<latent::cuda::VaeTrainer>, latent::cuda::DeviceImages),
}

/// A batch: the training set, the batch's indices, and a buffer to gather them into.
type Batch<'a> = (&'a Dataset, &'a [usize], &'a mut Array2<f32>);

impl Stepper {
    /// The GPU when `device` is one (the training images are copied up once); a model the
    /// GPU cannot train falls back to the CPU with a line saying why, or is an error under
    /// `--device cuda`.
    #[allow(unused_variables)]
    fn new(
        device: &latent::device::Device,
        request: DeviceRequest,
        tf32: bool,
        model: &mut VaeModel<f32>,
        cfg: LossConfig,
        opt: &Adam<f32>,
        train: &Dataset,
    ) -> latent::Result<Self> {
        #[cfg(feature = "cuda")]
        if let latent::device::Device::Cuda(ctx) = device {
            let made = latent::cuda::Gpu::new(ctx.clone()).and_then(|gpu| {
                gpu.set_tf32(tf32)?;
                let images = gpu.upload_images(train.flat())?;
                let t = latent::cuda::VaeTrainer::new(std::sync::Arc::new(gpu), model, cfg, opt)?;
                Ok((t, images))
            });
            return match made {
                Ok((t, images)) => {
                    let math = if tf32 { "TF32 tensor-core" } else { "float32" };
                    eprintln!("training on the GPU ({math} products; evaluation on the CPU)");
                    Ok(Stepper::Gpu(Box::new(t), images))
                }
                Err(e) if request == DeviceRequest::Auto => {
                    eprintln!("device: CPU (the GPU cannot train this run: {e})");
                    Ok(Stepper::cpu(model))
                }
                Err(e) => Err(Error::Device(format!("--device cuda: {e}"))),
            };
        }
        if tf32 {
            eprintln!("--tf32 on applies to the GPU only; the CPU computes in f32");
        }
        Ok(Stepper::cpu(model))
    }

    /// Steps on the CPU, saying how a batch is shared among the threads.
    fn cpu(model: &VaeModel<f32>) -> Self {
        let par = vae::DataParallel::vae(model);
        let threads = rayon::current_num_threads();
        if par.parts() > 1 {
            eprintln!(
                "CPU: {threads} threads, each batch cut into {} parts (one per thread)",
                par.parts()
            );
        } else {
            eprintln!("CPU: {threads} threads, shared within each layer (this model trains on whole batches)");
        }
        Stepper::Cpu(par)
    }

    /// One training step on a batch, with fresh noise from `rng`; returns the bound per
    /// image and, if `want_mu`, the posterior means `[b, K]`.
    fn step(
        &mut self,
        model: &mut VaeModel<f32>,
        (train, idx, xb): Batch,
        cfg: &LossConfig,
        opt: &mut Adam<f32>,
        rng: &mut Rng64,
        want_mu: bool,
    ) -> latent::Result<(f32, Option<Array2<f32>>)> {
        match self {
            Stepper::Cpu(par) => {
                train.gather_flat(idx, xb);
                let parts = par.train_step(model, as_batch(xb.view()), cfg, opt, rng)?;
                Ok((parts.bound, want_mu.then_some(parts.posterior.mu)))
            }
            #[cfg(feature = "cuda")]
            Stepper::Gpu(t, images) => {
                let eps = vae::sample_noise(idx.len(), cfg.objective.samples(), model.latent_dim(), rng);
                let stats = t.step_rows(images, idx, eps.view())?;
                let mu = if want_mu { Some(t.posterior_mean()?) } else { None };
                Ok((stats.bound, mu))
            }
        }
    }

    /// Brings the CPU model and optimizer up to date (a no-op on the CPU).
    #[allow(unused_variables)]
    fn download_into(&mut self, model: &mut VaeModel<f32>, opt: &mut Adam<f32>) -> latent::Result<()> {
        match self {
            Stepper::Cpu(_) => Ok(()),
            #[cfg(feature = "cuda")]
            Stepper::Gpu(t, _) => t.download_into(model, opt),
        }
    }
}
