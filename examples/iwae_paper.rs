//! The protocol of Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*
//! (ICLR 2016), Table 1, as a program: dynamically binarized MNIST, Adam (beta1 0.9,
//! beta2 0.999, eps 1e-4), batch 20, pass i = 0 .. P-1 running 3^i epochs at learning rate
//! 0.001 * 10^(-i/7) (P = 8 is the paper's 3280 epochs), Glorot initialisation; then the
//! test log-likelihood estimated with k = 5000 importance samples on the test set,
//! binarized once from a fixed seed so that every model is scored on the same images.
//!
//! A checkpoint is written after every epoch (so after every pass), and `--resume` goes
//! on from one, on another day: `--passes 4` and later `--passes 6 --resume PATH` is the
//! run `--passes 6` to the bit. Each run appends its result to `--out/iwae_paper.csv`.
//!
//! `cargo run --release --example iwae_paper -- --help`

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use latent::data::{Dataset, DatasetKind, Split};
use latent::models::Hvae2;
use latent::optim::AdamConfig;
use latent::train::{EvalConfig, Trainer};
use latent::vae::{KlEstimator, LossConfig, Objective, VaeModel};
use latent::Error;

/// The seed of the test set's one binarization, the same for every run.
const TEST_BINARIZATION_SEED: u64 = 2015;

/// `(flag, default, help)`; one per line, as a table.
#[rustfmt::skip]
const FLAGS: &[(&str, &str, &str)] = &[
    ("model", "one", "one: one stochastic layer (784-200-200-50); two: two (784-200-200-100-100-100-50); Tanh, Bernoulli on logits"),
    ("objective", "vae", "vae (the k-sample ELBO), iwae, or dreg (IWAE with the doubly reparameterised encoder gradient)"),
    ("k", "1", "samples per image in training"),
    ("passes", "8", "passes of the schedule (pass i: 3^i epochs at 1e-3 * 10^(-i/7)); 8 is the paper's 3280 epochs"),
    ("seed", "0", "random seed (initialisation, shuffling, binarization, noise)"),
    ("resume", "", "continue from this checkpoint (same model, objective, k and seed)"),
    ("eval-k", "5000", "importance samples of the test log-likelihood estimate"),
    ("eval-images", "10000", "test images scored (the first ones)"),
    ("data-dir", "", "folder with the four MNIST IDX .gz files (default: data/mnist)"),
    ("out", "out", "folder for checkpoints, the history and the results CSV"),
    ("plot", "", "instead of training: draw test NLL against passes from these results CSVs (comma-separated; this program's and scripts/torch_iwae_paper.py's) into --out/iwae_paper_curve.png"),
];

/// The paper's Table 1 (test NLL, nats) by `(layers, objective, k)`.
const PAPER: [(&str, &str, usize, f64); 12] = [
    ("one", "vae", 1, 86.76),
    ("one", "vae", 5, 86.47),
    ("one", "vae", 50, 86.35),
    ("one", "iwae", 1, 86.76),
    ("one", "iwae", 5, 85.54),
    ("one", "iwae", 50, 84.78),
    ("two", "vae", 1, 85.33),
    ("two", "vae", 5, 85.01),
    ("two", "vae", 50, 84.78),
    ("two", "iwae", 1, 85.33),
    ("two", "iwae", 5, 83.89),
    ("two", "iwae", 50, 82.90),
];

/// Test NLL against passes, with one standard error, for every run in the CSVs `files`,
/// and the paper's figure for each (at pass 8, the paper's 3280 epochs).
fn plot_curves(files: &str, out: &std::path::Path) -> latent::Result<()> {
    use latent::plot::{error_bars, ErrorSeries};
    use std::collections::BTreeMap;
    let mut runs: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    let mut anchors = BTreeMap::new();
    for file in files.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let path = std::path::Path::new(file);
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| Error::data(path, format!("no column '{name}'")))
        };
        let cols = [
            col("model")?,
            col("objective")?,
            col("k")?,
            col("passes")?,
            col("eval_images")?,
            col("iwae_ll")?,
            col("stderr")?,
        ];
        let source = if file.contains("torch") { "PyTorch" } else { "latent" };
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            let get = |i: usize| f.get(cols[i]).copied().unwrap_or_default();
            let num = |i: usize| {
                get(i)
                    .parse::<f64>()
                    .map_err(|_| Error::data(path, format!("bad number '{}' in '{line}'", get(i))))
            };
            let (model, objective, k) = (get(0), get(1), get(2));
            // One series per run, whatever the number of test images of each point (its
            // error bar says how many).
            let name = format!("{source}: {model} layer, {objective}, k = {k}");
            runs.entry(name).or_default().push((num(3)?, -num(5)?, num(6)?));
            if let Some(p) = PAPER
                .iter()
                .find(|p| (p.0, p.1, p.2.to_string().as_str()) == (model, objective, k))
            {
                anchors.insert(format!("paper: {model} layer, {objective}, k = {k}"), p.3);
            }
        }
    }
    if runs.is_empty() {
        return Err(Error::InvalidArgument(format!("--plot {files}: no results")));
    }
    let mut series: Vec<ErrorSeries> = runs
        .into_iter()
        .map(|(name, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            ErrorSeries { name, points }
        })
        .collect();
    series.extend(anchors.into_iter().map(|(name, nll)| ErrorSeries {
        name,
        points: vec![(8.0, nll, 0.0)],
    }));
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let path = out.join("iwae_paper_curve.png");
    error_bars(
        &path,
        "Burda et al.'s protocol: test NLL (IWAE-5000) after each pass",
        (
            "passes (pass i: 3^i epochs; 8 = the paper's 3280 epochs)",
            "test NLL, nats (± 1 s.e.)",
        ),
        &series,
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Epochs completed before pass `i` begins: `(3^i - 1) / 2`.
fn epochs_before(pass: usize) -> usize {
    (3usize.pow(pass as u32) - 1) / 2
}

fn run() -> latent::Result<()> {
    let about = "Burda et al. (2015), Table 1: VAE and IWAE on dynamically binarized MNIST, scored by IWAE-5000.";
    let flags = common::Flags::new("iwae_paper", about, FLAGS).parse();
    if !flags.raw("plot").is_empty() {
        return plot_curves(&flags.raw("plot"), std::path::Path::new(&flags.raw("out")));
    }
    let (k, passes, seed): (usize, usize, u64) = (flags.get("k"), flags.get("passes"), flags.get("seed"));
    let (model, objective_name) = (flags.raw("model"), flags.raw("objective"));
    if model != "one" && model != "two" {
        return Err(Error::InvalidArgument(format!("--model {model}: expected one or two")));
    }
    let objective = match objective_name.as_str() {
        "vae" => Objective::Elbo { samples: k, beta: 1.0 },
        "iwae" => Objective::Iwae { samples: k },
        "dreg" => Objective::IwaeDreg { samples: k },
        other => {
            return Err(Error::InvalidArgument(format!(
                "--objective {other}: expected vae, iwae or dreg"
            )))
        }
    };
    objective.validate()?;
    if passes == 0 || passes > 10 {
        return Err(Error::InvalidArgument(format!("--passes {passes}: expected 1 to 10")));
    }
    let out = PathBuf::from(flags.raw("out"));
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let data_dir = Some(flags.raw("data-dir")).filter(|d| !d.is_empty()).map(PathBuf::from);
    let train = Dataset::load(DatasetKind::Mnist, data_dir.as_deref(), Split::Train)?;
    let test = Dataset::load(DatasetKind::Mnist, data_dir.as_deref(), Split::Test)?.binarized(TEST_BINARIZATION_SEED);
    let run_name = format!("iwae_paper {model} {objective_name} k={k} seed={seed}");
    let stem = format!("iwae_paper_{model}_{objective_name}_k{k}_s{seed}");
    let eval_k: usize = flags.get("eval-k");
    let mut adam = AdamConfig::new(1e-3f32);
    adam.eps = 1e-4;
    let mut trainer = Trainer::new()
        .epochs(epochs_before(passes))
        .batch(20)
        .seed(seed)
        .adam(adam)
        .loss(LossConfig {
            objective,
            kl: KlEstimator::MonteCarlo,
            reduction: latent::loss::Reduction::Mean,
        })
        .binarize(true)
        .label(format!("{model} layer, {objective_name}, k = {k}"))
        .name(run_name.clone())
        .checkpoint(out.join(format!("{stem}.ckpt.safetensors")), 1)
        // Each pass's end is kept too, for the curve of test log-likelihood against passes.
        .keep_checkpoints_at((1..=passes).map(epochs_before))
        .evaluation(Some(EvalConfig {
            iwae_k: eval_k,
            iwae_images: flags.get("eval-images"),
            chunk: 500,
            iwae_chunk: (20_000 / eval_k.max(1)).clamp(1, 100),
        }))
        // The schedule: pass i at 1e-3 * 10^(-i/7), for 3^i epochs.
        .on_step(|s| {
            let pass = (0..).find(|&i| epochs_before(i + 1) > s.epoch).expect("a pass");
            s.adam.lr = 1e-3 * 10f32.powf(-(pass as f32) / 7.0);
        });
    if !flags.raw("resume").is_empty() {
        trainer = trainer.resume(flags.raw("resume"));
    }
    let started = Instant::now();
    let (history, first_epoch, eval) = if model == "one" {
        let fitted = trainer.fit(VaeModel::<f32>::mlp_burda, &train, Some(&test))?;
        (fitted.history, fitted.first_epoch, fitted.evaluation)
    } else {
        let fitted = trainer.fit(Hvae2::<f32>::burda, &train, Some(&test))?;
        (fitted.history, fitted.first_epoch, fitted.evaluation)
    };
    let hours = started.elapsed().as_secs_f64() / 3600.0;
    history.write_csv(&out.join(format!("{stem}.history.csv")))?;
    let eval = eval.expect("a test set was given");
    let v = eval.vae.as_ref().expect("a VAE");
    let iwae = v.iwae.expect("eval-k >= 1");
    let epochs = first_epoch + history.epochs.len();
    println!();
    println!("{run_name}: {passes} passes ({epochs} epochs), {hours:.2} h in this run");
    println!(
        "test log-likelihood (IWAE-{}, {} images): {:.2} ± {:.2} nats",
        iwae.k, iwae.images, iwae.mean, iwae.stderr
    );
    println!(
        "test ELBO {:.2} (reconstruction {:.2}, KL {:.2}); active units {} of {} (the first stochastic layer)",
        v.bound,
        v.recon,
        v.kl,
        v.active_units,
        eval.codes.ncols()
    );
    println!("evaluation took {:.1} s", eval.seconds);
    let csv = out.join("iwae_paper.csv");
    let new = !csv.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&csv)
        .map_err(|e| Error::io(&csv, e))?;
    let mut line = String::new();
    if new {
        line +=
            "model,objective,k,seed,passes,epochs,hours_this_run,eval_k,eval_images,iwae_ll,stderr,elbo,active_units\n";
    }
    line += &format!(
        "{model},{objective_name},{k},{seed},{passes},{epochs},{hours:.4},{},{},{:.4},{:.4},{:.4},{}\n",
        iwae.k, iwae.images, iwae.mean, iwae.stderr, v.bound, v.active_units
    );
    f.write_all(line.as_bytes()).map_err(|e| Error::io(&csv, e))?;
    println!("appended to {}", csv.display());
    Ok(())
}
