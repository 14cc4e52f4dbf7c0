//! Variational autoencoders on MNIST, Fashion-MNIST, generated colour shapes or your own
//! images (`--data`: a folder, a `.npy` file, a `.npz` archive): the CIS-522 ConvVAE, the
//! Coursera DCGAN VAE and the stride-2 VAE (MNIST-sized images), the MLP VAE and AntixK's
//! VanillaVAE (any size), each trained on its recipe (or on the ELBO with n samples and
//! beta, or on the importance-weighted bound), the MLP VAE optionally conditioned on the
//! labels, then measured on the test set: the ELBO per image with its reconstruction and
//! KL terms, and an IWAE-k log-likelihood estimate. Figures go into `--out`.
//!
//! `cargo run --release --example vae -- --help`

mod common;

use std::path::PathBuf;

use latent::checkpoint;
use latent::device::DeviceRequest;
use latent::figures::{vae_figures, FigureSet};
use latent::models::VanillaVaeParams;
use latent::nn::Module;
use latent::optim::AdamConfig;
use latent::train::{CollapsePolicy, EvalConfig, Trainer};
use latent::vae::{LossConfig, Objective, Vae, VaeModel};
use latent::Error;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The notebooks' recipes: latent size, learning rate, weight decay, batch size.
fn recipe(model: &str) -> latent::Result<(usize, f32, f32, usize)> {
    Ok(match model {
        "conv" => (20, 1e-3, 1e-6, 100),
        "dcgan" => (32, 2e-3, 0.0, 1024),
        "strided" => (32, 1e-3, 0.0, 128),
        "mlp" => (16, 1e-3, 0.0, 100),
        // AntixK's configs/vae.yaml: LR 0.005, batch 64, latent 128.
        "vanilla" => (128, 5e-3, 0.0, 64),
        other => {
            return Err(Error::InvalidArgument(format!(
                "--model {other}: expected conv, dcgan, strided, mlp or vanilla"
            )))
        }
    })
}

/// `(flag, default, help)`; one per line, as a table.
#[rustfmt::skip]
const FLAGS: &[(&str, &str, &str)] = &[
    ("model", "conv", "conv, dcgan or strided (1x28x28 images), mlp or vanilla (any size; vanilla: sides divisible by 32)"),
    ("conditional", "off", "on: condition the mlp model on the labels (one-hot into its encoder and decoder)"),
    ("device", "auto", "auto (the GPU if usable, else the CPU, saying why), cpu, or cuda (an error without a GPU)"),
    ("tf32", "off", "on: GPU products in TF32 on the tensor cores (PyTorch's default for convolutions); off: true f32"),
    ("epochs", "10", "training epochs"),
    ("batch", "recipe", "batch size (conv 100, dcgan 1024, strided 128, mlp 100, vanilla 64)"),
    ("lr", "recipe", "Adam learning rate (conv 1e-3, dcgan 2e-3, strided 1e-3, mlp 1e-3, vanilla 5e-3)"),
    ("weight-decay", "recipe", "Adam L2 weight decay (conv 1e-6, others 0)"),
    ("latent", "recipe", "latent dimensions (conv 20, dcgan 32, strided 32, mlp 16, vanilla 128)"),
    ("beta", "1", "weight of the KL term in the ELBO"),
    ("samples", "1", "samples of z per image (ELBO) or importance samples (IWAE)"),
    ("objective", "elbo", "elbo or iwae"),
    ("iwae-k", "100", "importance samples of the test log-likelihood estimate"),
    ("iwae-images", "1000", "test images of the IWAE estimate (the first ones)"),
    ("train-images", "all", "train on the first N training images only (quick runs)"),
    ("seed", "0", "random seed (initialisation, shuffling, noise)"),
    ("out", "out", "folder for the PNG figures and the final weights"),
    ("checkpoint-every", "1", "write a checkpoint every N epochs to --out/vae_MODEL.ckpt.safetensors (0: never)"),
    ("resume", "", "continue training from this checkpoint (same model, sizes and dataset)"),
];

fn run() -> latent::Result<()> {
    let about = "Train a VAE (CIS-522 ConvVAE, Coursera DCGAN VAE, the stride-2 VAE, the MLP VAE or AntixK's \
                 VanillaVAE) on MNIST, Fashion-MNIST, generated shapes or your own images.";
    let flags = common::Flags::new("vae", about, &[FLAGS, common::DATA_FLAGS].concat()).parse();
    let model_name = flags.raw("model");
    let (latent0, lr0, wd0, batch0) = recipe(&model_name)?;
    let num = |name: &str, default: String| -> latent::Result<f64> {
        let raw = Some(flags.raw(name)).filter(|r| r != "recipe").unwrap_or(default);
        raw.parse::<f64>()
            .map_err(|e| Error::InvalidArgument(format!("--{name} {raw}: {e}")))
    };
    let batch = num("batch", batch0.to_string())? as usize;
    let lr = num("lr", lr0.to_string())? as f32;
    let wd = num("weight-decay", wd0.to_string())? as f32;
    let latent = num("latent", latent0.to_string())? as usize;
    let (samples, beta): (usize, f64) = (flags.get("samples"), flags.get("beta"));
    let out = PathBuf::from(flags.raw("out"));
    let conditional = match flags.raw("conditional").as_str() {
        "on" if model_name == "mlp" => true,
        "on" => {
            return Err(Error::InvalidArgument(format!(
                "--conditional on: the mlp model takes labels, not --model {model_name}"
            )))
        }
        "off" => false,
        other => {
            return Err(Error::InvalidArgument(format!(
                "--conditional {other}: expected on or off"
            )))
        }
    };
    if batch == 0 || latent == 0 || lr.is_nan() || lr <= 0.0 || wd.is_nan() || wd < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "--batch {batch}, --latent {latent} must be >= 1, --lr {lr} > 0, --weight-decay {wd} >= 0"
        )));
    }
    let objective = match flags.raw("objective").as_str() {
        "elbo" => Objective::Elbo { samples, beta },
        "iwae" if flags.given("beta") => {
            return Err(Error::InvalidArgument("--beta applies to the ELBO, not to IWAE".into()))
        }
        "iwae" => Objective::Iwae { samples },
        other => {
            return Err(Error::InvalidArgument(format!(
                "--objective {other}: expected elbo or iwae"
            )))
        }
    };
    objective.validate()?;
    let device: DeviceRequest = flags.get("device");
    let tf32 = match flags.raw("tf32").as_str() {
        "on" => true,
        "off" => false,
        other => return Err(Error::InvalidArgument(format!("--tf32 {other}: expected on or off"))),
    };
    latent::runtime::Runtime::training().apply();
    let common::Data { mut train, test, name } = common::load_data(&flags)?;
    if flags.raw("train-images") != "all" {
        let n: usize = flags.get("train-images");
        if n == 0 {
            return Err(Error::InvalidArgument("--train-images must be >= 1".into()));
        }
        train = train.head(n);
    }
    let image = train.image_shape();
    let classes = train.classes.len();
    eprintln!(
        "loaded {} train + {} test images of {name}, {}x{}x{}, {classes} classes",
        train.len(),
        test.len(),
        image[0],
        image[1],
        image[2]
    );
    if matches!(model_name.as_str(), "conv" | "dcgan") && image != [1, 28, 28] {
        return Err(Error::InvalidArgument(format!(
            "--model {model_name} takes 1x28x28 images (MNIST's), not {}x{}x{}: use --model mlp or vanilla",
            image[0], image[1], image[2]
        )));
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;

    let build = |rng: &mut rand_chacha::ChaCha8Rng| match model_name.as_str() {
        "conv" => VaeModel::<f32>::conv_cis522(latent, rng),
        "dcgan" => VaeModel::<f32>::dcgan_coursera(latent, rng),
        "mlp" if conditional => VaeModel::<f32>::mlp_conditional(image, [400, 200], latent, classes, rng),
        "mlp" => VaeModel::<f32>::mlp(image, [400, 200], latent, rng),
        "vanilla" => VanillaVaeParams {
            image,
            latent,
            ..VanillaVaeParams::default()
        }
        .build(rng),
        _ => VaeModel::<f32>::strided(image, latent, rng),
    };
    // Files and figures: vae_mlp_conditional_* for the conditional model.
    let stem = if conditional {
        format!("{model_name}_conditional")
    } else {
        model_name.clone()
    };
    let label = if conditional {
        format!("conditional {model_name} VAE")
    } else {
        format!("{model_name} VAE")
    };
    let mut trainer = Trainer::new()
        .epochs(flags.get("epochs"))
        .batch(batch)
        .seed(flags.get("seed"))
        .adam(AdamConfig::new(lr).weight_decay(wd))
        .device(device)
        .tf32(tf32)
        .label(label.clone())
        .name(format!(
            "{label}, latent {latent}, {name} ({} training images)",
            train.len()
        ))
        .checkpoint(
            out.join(format!("vae_{stem}.ckpt.safetensors")),
            flags.get("checkpoint-every"),
        )
        // A start whose posterior collapses onto the prior learns only the mean image
        // (the ConvVAE with --seed 1): restart it instead.
        .collapse(Some(CollapsePolicy::default()))
        .evaluation(Some(EvalConfig {
            iwae_k: flags.get("iwae-k"),
            iwae_images: flags.get("iwae-images"),
            ..EvalConfig::default()
        }));
    let resume = flags.raw("resume");
    if !resume.is_empty() {
        trainer = trainer.resume(resume);
    }
    // The recipe's loss with the objective asked for.
    let mut probe = build(&mut rand::SeedableRng::seed_from_u64(0))?;
    let cfg = LossConfig {
        objective,
        ..probe.recipe()
    };
    eprintln!(
        "{label}: {} parameters, latent {latent}, {}, KL {:?}, {:?} over the batch; likelihood: {}",
        probe.num_params(),
        describe(&cfg.objective),
        cfg.kl,
        cfg.reduction,
        probe.likelihood().describe()
    );
    let mut fitted = trainer.loss(cfg).fit(build, &train, Some(&test))?;
    let weights = out.join(format!("vae_{stem}.safetensors"));
    checkpoint::save_weights(&weights, &mut fitted.model)?;
    eprintln!("wrote {} (PyTorch state_dict names)", weights.display());

    let eval = fitted.evaluation.as_ref().expect("a test set was given");
    let epochs = fitted.first_epoch + fitted.history.epochs.len();
    println!();
    println!(
        "{name} {label}, {epochs} epochs, batch {batch}, {}: median {:.2} s/epoch{}",
        describe(&cfg.objective),
        fitted.history.median_epoch_seconds(),
        match fitted.first_epoch {
            0 => String::new(),
            f => format!(" (epochs {}..{epochs} of this run)", f + 1),
        }
    );
    print!("{}", eval.report(fitted.model.likelihood()));
    println!("evaluation took {:.1} s", eval.seconds);

    let set = FigureSet {
        out: &out,
        prefix: &format!("vae_{stem}"),
        title: &label,
    };
    let written = vae_figures(
        &mut fitted.model,
        &test,
        eval,
        &fitted.history,
        &test.class_names(),
        &set,
        &mut fitted.rng,
    )?;
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn describe(o: &Objective) -> String {
    match *o {
        Objective::Elbo { samples, beta } => format!("ELBO with {samples} sample(s), beta = {beta}"),
        Objective::Iwae { samples } => format!("IWAE with {samples} importance samples"),
        Objective::IwaeDreg { samples } => format!("IWAE with {samples} importance samples, DReG encoder gradient"),
    }
}
