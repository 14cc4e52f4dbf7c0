//! [`Trainer`]: the training loop every experiment needs, as a library value. Epochs of
//! seeded shuffled batches, Adam, and, each switchable: a progress bar (plain lines when
//! stderr is not a terminal), the history of every epoch ([`History`], writable as CSV),
//! a checkpoint every N epochs and a resume that continues bit for bit, the non-finite
//! guard ([`NonFinitePolicy`]), collapse detection with restarts ([`CollapsePolicy`]),
//! the end-of-run evaluation ([`EvalConfig`]) and hooks before each step and after each
//! epoch ([`StepControl`], [`EpochControl`]: a KL warm-up, a learning-rate schedule,
//! logging, early stopping).
//!
//! It trains the composable [`crate::vae::VaeModel`] (on the CPU, its batches cut across
//! threads where its layers allow; on the GPU with the `cuda` feature) and the two
//! autoencoders on their MSE, through the same loop ([`Trainable`]).
//!
//! ```
//! use latent::data::Dataset;
//! use latent::train::Trainer;
//! use latent::vae::VaeModel;
//! use ndarray::{Array1, Array4};
//!
//! # fn main() -> latent::Result<()> {
//! let images = Array4::from_shape_fn((64, 1, 28, 28), |(i, _, r, c)| ((i + r * c) % 7) as f32 / 7.0);
//! let train = Dataset::from_arrays(images, Array1::zeros(64))?;
//! let fitted = Trainer::<f32>::new()
//!     .epochs(2)
//!     .batch(16)
//!     .progress(false)
//!     .fit(|rng| VaeModel::strided([1, 28, 28], 4, rng), &train, None)?;
//! assert_eq!(fitted.history.epochs.len(), 2);
//! # Ok(())
//! # }
//! ```

mod engine;
mod evaluate;
mod history;
mod hooks;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use engine::{EngineSetup, Trainable};
pub use evaluate::{evaluate_vae, EvalConfig, Evaluation, IwaeEstimate, VaeEvaluation};
pub use history::{EpochRecord, History};
pub use hooks::{EpochControl, StepControl};

use crate::checkpoint::{self, CheckpointMeta};
use crate::data::{epoch_batches, Dataset};
use crate::device::DeviceRequest;
use crate::optim::{Adam, AdamConfig};
use crate::progress::EpochProgress;
use crate::runtime::Runtime;
use crate::vae::{LossConfig, Objective};
use crate::{Error, Float, Result};

/// One step's numbers, per image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The training loss per image: `-bound` for a VAE (whatever the batch reduction),
    /// the MSE per pixel for an autoencoder.
    pub loss: f64,
    /// The reconstruction term (VAEs).
    pub recon: Option<f64>,
    /// The KL term (VAEs).
    pub kl: Option<f64>,
}

impl StepStats {
    /// A step of a model without the VAE's two terms (the autoencoders, the two-layer VAE).
    fn loss_only(loss: f64) -> Self {
        StepStats {
            loss,
            recon: None,
            kl: None,
        }
    }
}

/// What a non-finite loss or gradient does to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonFinitePolicy {
    /// Stop with an error naming the epoch, the batch and the last checkpoint written;
    /// the model stays as the last good step left it (nothing is updated by a bad step).
    Stop,
    /// Skip the batch (nothing is updated) and go on, up to this many times in the run;
    /// each epoch's record counts its skips.
    SkipBatch(usize),
}

/// Posterior collapse (a VAE's codes, or an autoencoder's, the same for every image) seen
/// early, and restarted from a new initialisation: a collapsed run only learns the mean
/// image. Checked once, on the run's first epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CollapsePolicy {
    /// The step (1-based) after which the codes' spread over the batch is measured (the
    /// epoch's last if it has fewer steps).
    pub check_step: usize,
    /// Below this spread (the largest variance over the batch of a posterior mean; the
    /// largest standard deviation of an autoencoder's code) the run has collapsed.
    pub threshold: f64,
    /// Initialisations tried before giving up with an error.
    pub attempts: usize,
}

impl Default for CollapsePolicy {
    /// Step 300, variance 1e-6, four initialisations: CIS-522's ConvVAE with seed 1
    /// reaches `Var_x E_q[z] ~ 1e-10` by step 300, against ~0.6 for seeds 0, 2, 3.
    fn default() -> Self {
        CollapsePolicy {
            check_step: 300,
            threshold: 1e-6,
            attempts: 4,
        }
    }
}

type StepHook<'h, F> = Box<dyn FnMut(&mut StepControl<'_, F>) + 'h>;
type EpochHook<'h, F> = Box<dyn FnMut(&mut EpochControl<'_, F>) + 'h>;

/// The training loop; see the module docs. Built with [`Trainer::new`] and its setters,
/// run with [`Trainer::fit`].
pub struct Trainer<'h, F: Float> {
    epochs: usize,
    batch: usize,
    rng: ChaCha8Rng,
    adam: AdamConfig<F>,
    loss: Option<LossConfig>,
    device: DeviceRequest,
    tf32: bool,
    progress: bool,
    label: String,
    name: Option<String>,
    checkpoint: Option<(PathBuf, usize)>,
    keep_at: Vec<usize>,
    resume: Option<PathBuf>,
    non_finite: NonFinitePolicy,
    collapse: Option<CollapsePolicy>,
    evaluation: Option<EvalConfig>,
    runtime: Runtime,
    binarize: bool,
    step_hooks: Vec<StepHook<'h, F>>,
    epoch_hooks: Vec<EpochHook<'h, F>>,
}

impl<F: Float> Default for Trainer<'_, F> {
    fn default() -> Self {
        Self::new()
    }
}

/// A trained model and what its run recorded.
pub struct Fitted<F: Float, M> {
    /// The model after the last epoch.
    pub model: M,
    /// Adam with its moments (to save a checkpoint of one's own, or to go on).
    pub optimizer: Adam<F>,
    /// The epochs trained by this call.
    pub history: History,
    /// The test metrics, if a test set was given and the evaluation is on.
    pub evaluation: Option<Evaluation<F>>,
    /// The random generator after the run (and its evaluation), to go on drawing from.
    pub rng: ChaCha8Rng,
    /// Epochs completed before this call (a resumed run's checkpoint).
    pub first_epoch: usize,
    /// Initialisations tried (more than one after a collapse).
    pub attempts: usize,
    /// Whether a hook stopped the run before its last epoch.
    pub stopped_early: bool,
}

impl<'h, F: Float> Trainer<'h, F> {
    /// 10 epochs of batches of 128, seed 0, Adam at 1e-3, on the CPU, with progress,
    /// the non-finite guard stopping the run, collapse detection off, the default
    /// evaluation when a test set is given, and [`Runtime::training`] applied when a run
    /// starts. The loss is the model's own (a preset's
    /// notebook loss, [`crate::vae::VaeModel::recipe`]) unless [`Trainer::loss`] is set.
    pub fn new() -> Self {
        Trainer {
            epochs: 10,
            batch: 128,
            rng: ChaCha8Rng::seed_from_u64(0),
            adam: AdamConfig::new(F::lit(1e-3)),
            loss: None,
            device: DeviceRequest::Cpu,
            tf32: false,
            progress: true,
            label: "training".into(),
            name: None,
            checkpoint: None,
            keep_at: Vec::new(),
            resume: None,
            non_finite: NonFinitePolicy::Stop,
            collapse: None,
            evaluation: Some(EvalConfig::default()),
            runtime: Runtime::training(),
            binarize: false,
            step_hooks: Vec::new(),
            epoch_hooks: Vec::new(),
        }
    }

    /// Epochs to train (a resumed run trains up to this many in all).
    pub fn epochs(mut self, epochs: usize) -> Self {
        self.epochs = epochs;
        self
    }

    /// Images per batch (the last batch of an epoch may be shorter).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// Seeds the run's random generator (initialisation, shuffling, noise).
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self
    }

    /// Continues from a generator's state instead (a second model trained after a first
    /// in one program, from [`Fitted::rng`]).
    pub fn rng(mut self, rng: ChaCha8Rng) -> Self {
        self.rng = rng;
        self
    }

    /// Adam's hyper-parameters.
    pub fn adam(mut self, adam: AdamConfig<F>) -> Self {
        self.adam = adam;
        self
    }

    /// The VAE loss: objective (ELBO with samples and beta, or IWAE), KL estimator,
    /// reduction. The autoencoders train on their MSE and ignore it.
    pub fn loss(mut self, loss: LossConfig) -> Self {
        self.loss = Some(loss);
        self
    }

    /// Where the steps run: [`DeviceRequest::Auto`] takes the GPU when one is usable
    /// (`cuda` feature) and says why when it falls back to the CPU.
    pub fn device(mut self, device: DeviceRequest) -> Self {
        self.device = device;
        self
    }

    /// GPU products in TF32 on the tensor cores (PyTorch's default for convolutions).
    pub fn tf32(mut self, on: bool) -> Self {
        self.tf32 = on;
        self
    }

    /// A progress bar per epoch on a terminal, a line per epoch otherwise; `false`: silent.
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// The progress lines' label (`strided VAE` gives `strided VAE epoch 3/10`).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// What is trained, stored in checkpoints and checked on resume (default: the label).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A checkpoint at `path` every `every` epochs and after the last (atomically: a
    /// failed write leaves the previous one).
    pub fn checkpoint(mut self, path: impl Into<PathBuf>, every: usize) -> Self {
        self.checkpoint = (every > 0).then(|| (path.into(), every));
        self
    }

    /// Also keeps the checkpoints written after these epochs (counted from the start of
    /// the run, 1-based), each copied beside the rolling one as `<stem>.epoch<N>.<ext>`,
    /// so that a long run leaves points to evaluate or to branch from. Needs
    /// [`Trainer::checkpoint`]; an epoch not on its `every` grid is written all the same.
    pub fn keep_checkpoints_at(mut self, epochs: impl IntoIterator<Item = usize>) -> Self {
        self.keep_at = epochs.into_iter().collect();
        self
    }

    /// Resumes from a checkpoint of the same run (same name, model and data): the model,
    /// Adam's state and the generator are restored, and training goes on from its epoch
    /// exactly as the uninterrupted run would.
    pub fn resume(mut self, path: impl Into<PathBuf>) -> Self {
        self.resume = Some(path.into());
        self
    }

    /// What a non-finite loss or gradient does.
    pub fn non_finite(mut self, policy: NonFinitePolicy) -> Self {
        self.non_finite = policy;
        self
    }

    /// Collapse detection and restarts (`None`: off, the default).
    pub fn collapse(mut self, policy: Option<CollapsePolicy>) -> Self {
        self.collapse = policy;
        self
    }

    /// The end-of-run evaluation on the test set (`None`: skip it).
    pub fn evaluation(mut self, cfg: Option<EvalConfig>) -> Self {
        self.evaluation = cfg;
        self
    }

    /// The process-wide settings applied when the run starts (default:
    /// [`Runtime::training`], everything on; [`Runtime::untouched`] leaves the process as
    /// it is).
    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    /// Dynamic binarization: each batch's pixels are drawn afresh from Bernoulli(intensity)
    /// at every presentation, from the run's generator (Burda et al.'s protocol). The
    /// steps run on the CPU then.
    pub fn binarize(mut self, on: bool) -> Self {
        self.binarize = on;
        self
    }

    /// A hook called before every step.
    pub fn on_step(mut self, hook: impl FnMut(&mut StepControl<'_, F>) + 'h) -> Self {
        self.step_hooks.push(Box::new(hook));
        self
    }

    /// A hook called after every epoch.
    pub fn on_epoch(mut self, hook: impl FnMut(&mut EpochControl<'_, F>) + 'h) -> Self {
        self.epoch_hooks.push(Box::new(hook));
        self
    }

    fn say(&self, line: &str) {
        if self.progress {
            eprintln!("{line}");
        }
    }

    /// Trains the model that `build` makes from the run's generator on `train`, then
    /// evaluates it on `test` if given. `build` is called again for each restart after a
    /// collapse. A failure of a step stops the run with an error that names the epoch,
    /// the batch and the last checkpoint written; the files already written are kept.
    pub fn fit<M: Trainable<F>>(
        &mut self,
        mut build: impl FnMut(&mut ChaCha8Rng) -> Result<M>,
        train: &Dataset,
        test: Option<&Dataset>,
    ) -> Result<Fitted<F, M>> {
        if self.batch == 0 || self.batch > train.len() {
            return Err(Error::InvalidArgument(format!(
                "batch {} must be between 1 and the {} training images",
                self.batch,
                train.len()
            )));
        }
        if !self.keep_at.is_empty() && self.checkpoint.is_none() {
            return Err(Error::InvalidArgument(
                "keep_checkpoints_at needs a checkpoint path (Trainer::checkpoint)".into(),
            ));
        }
        self.runtime.apply();
        let (device, line) = crate::device::select(self.device)?;
        if self.device != DeviceRequest::Cpu {
            self.say(&line);
        }
        let name = self.name.clone().unwrap_or_else(|| self.label.clone());
        let mut rng = self.rng.clone();
        let mut model = build(&mut rng)?;
        let mut attempt = 1;
        'attempts: loop {
            let mut opt = Adam::new(self.adam);
            let mut loss = self.loss.unwrap_or_else(|| model.default_loss());
            let mut first_epoch = 0;
            if let Some(path) = &self.resume {
                first_epoch = restore(path, &name, &mut model, &mut opt, &mut rng)?;
                self.say(&format!("resumed from {} after epoch {first_epoch}", path.display()));
            }
            let setup = EngineSetup {
                train,
                device: &device,
                request: self.device,
                tf32: self.tf32,
                binarize: self.binarize,
                loss,
                _float: std::marker::PhantomData,
            };
            let mut engine = model.engine(setup, &opt)?;
            self.say(&engine.describe());
            let mut history = History::default();
            let mut last_checkpoint: Option<PathBuf> = None;
            let mut skipped_total = 0;
            let mut last = None;
            let mut stopped_early = false;
            'epochs: for epoch in first_epoch..self.epochs {
                let batches = epoch_batches(train.len(), self.batch, Some(&mut rng))?;
                let label = format!("{} epoch {}/{}", self.label, epoch + 1, self.epochs);
                let bar = self.progress.then(|| EpochProgress::new(label, batches.len()));
                let start = Instant::now();
                let (mut sum, mut recon, mut kl, mut done, mut skipped) = (0.0, 0.0, 0.0, 0usize, 0usize);
                for (i, idx) in batches.iter().enumerate() {
                    if !self.step_hooks.is_empty() {
                        let mut ctl = StepControl {
                            epoch,
                            step_in_epoch: i,
                            steps_per_epoch: batches.len(),
                            step: epoch * batches.len() + i,
                            loss: &mut loss,
                            adam: &mut opt.config,
                            last,
                            stop: false,
                        };
                        for hook in &mut self.step_hooks {
                            hook(&mut ctl);
                        }
                        if ctl.stop {
                            stopped_early = true;
                            break 'epochs;
                        }
                        engine.set_config(&loss, &opt.config)?;
                    }
                    let check_now = self
                        .collapse
                        .filter(|_| epoch == 0)
                        .is_some_and(|c| i + 1 == c.check_step.min(batches.len()));
                    let (stats, spread) = match engine.step(&mut model, idx, &loss, &mut opt, &mut rng, check_now) {
                        Ok(s) => s,
                        Err(Error::NonFinite(what)) if skip_allowed(self.non_finite, skipped_total) => {
                            skipped += 1;
                            skipped_total += 1;
                            self.say(&format!(
                                "epoch {}, batch {i}: non-finite {what}; batch skipped ({skipped_total} in this run)",
                                epoch + 1
                            ));
                            continue;
                        }
                        Err(e) => {
                            let kept = match &last_checkpoint {
                                Some(p) => format!("; the last good checkpoint is {}", p.display()),
                                None => String::new(),
                            };
                            return Err(Error::Numerical(format!(
                                "training stopped at epoch {}, batch {i}: {e}{kept}",
                                epoch + 1
                            )));
                        }
                    };
                    last = Some(stats);
                    sum += stats.loss;
                    recon += stats.recon.unwrap_or(0.0);
                    kl += stats.kl.unwrap_or(0.0);
                    done += 1;
                    history
                        .steps
                        .push((epoch as f64 + (i + 1) as f64 / batches.len() as f64, stats.loss));
                    if let Some(bar) = &bar {
                        bar.step(stats.loss);
                    }
                    if let (Some(spread), Some(policy)) = (spread, self.collapse) {
                        if spread < policy.threshold {
                            drop(bar);
                            if attempt >= policy.attempts {
                                return Err(Error::Numerical(format!(
                                    "the codes collapsed in each of {} initialisations (spread {spread:.1e} at \
                                     step {}); try another seed or a smaller beta",
                                    policy.attempts,
                                    i + 1
                                )));
                            }
                            self.say(&format!(
                                "collapse at step {}: the codes are the same for every image (largest spread over \
                                 the batch {spread:.1e}), so the decoder could only learn the mean image; \
                                 restarting from a new initialisation (attempt {} of {})",
                                i + 1,
                                attempt + 1,
                                policy.attempts
                            ));
                            attempt += 1;
                            model = build(&mut rng)?;
                            continue 'attempts;
                        }
                    }
                }
                let mean = sum / done.max(1) as f64;
                let seconds = match bar {
                    Some(bar) => bar.finish(mean).as_secs_f64(),
                    None => start.elapsed().as_secs_f64(),
                };
                let vae = M::is_vae();
                history.epochs.push(EpochRecord {
                    epoch: epoch + 1,
                    loss: mean,
                    recon: vae.then(|| recon / done.max(1) as f64),
                    kl: vae.then(|| kl / done.max(1) as f64),
                    seconds,
                    lr: opt.config.lr.to_f64_lossless(),
                    beta: match (vae, loss.objective) {
                        (true, Objective::Elbo { beta, .. }) => Some(beta),
                        _ => None,
                    },
                    skipped,
                });
                let mut stop = false;
                if !self.epoch_hooks.is_empty() {
                    let mut ctl = EpochControl {
                        record: history.epochs.last().expect("pushed"),
                        loss: &mut loss,
                        adam: &mut opt.config,
                        stop: false,
                    };
                    for hook in &mut self.epoch_hooks {
                        hook(&mut ctl);
                    }
                    stop = ctl.stop;
                    engine.set_config(&loss, &opt.config)?;
                }
                if let Some((path, every)) = &self.checkpoint {
                    let keep = self.keep_at.contains(&(epoch + 1));
                    if (epoch + 1) % every == 0 || epoch + 1 == self.epochs || stop || keep {
                        engine.sync(&mut model, &mut opt)?;
                        let meta = CheckpointMeta {
                            model: name.clone(),
                            epoch: epoch + 1,
                            rng: rng.clone(),
                        };
                        checkpoint::save_checkpoint(path, &mut model, &opt, &meta)?;
                        last_checkpoint = Some(path.clone());
                        if keep {
                            let kept = kept_checkpoint_path(path, epoch + 1);
                            std::fs::copy(path, &kept).map_err(|e| Error::io(&kept, e))?;
                        }
                    }
                }
                if stop {
                    stopped_early = epoch + 1 < self.epochs;
                    break;
                }
            }
            engine.sync(&mut model, &mut opt)?;
            drop(engine);
            let evaluation = match (test, &self.evaluation) {
                (Some(test), Some(cfg)) => Some(model.evaluate(test, cfg, &mut rng)?),
                _ => None,
            };
            return Ok(Fitted {
                model,
                optimizer: opt,
                history,
                evaluation,
                rng,
                first_epoch,
                attempts: attempt,
                stopped_early,
            });
        }
    }
}

fn skip_allowed(policy: NonFinitePolicy, skipped: usize) -> bool {
    matches!(policy, NonFinitePolicy::SkipBatch(max) if skipped < max)
}

/// Where [`Trainer::keep_checkpoints_at`] keeps the checkpoint of `epoch`:
/// `run.ckpt.safetensors` becomes `run.ckpt.epoch40.safetensors`.
pub fn kept_checkpoint_path(path: &Path, epoch: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.epoch{epoch}.{}", ext.to_string_lossy()),
        None => format!("{stem}.epoch{epoch}"),
    };
    path.with_file_name(name)
}

/// Restores model, optimizer and generator from the checkpoint at `path` of the run
/// `name`; returns the epochs it had completed.
fn restore<F: Float, M: Trainable<F>>(
    path: &Path,
    name: &str,
    model: &mut M,
    opt: &mut Adam<F>,
    rng: &mut ChaCha8Rng,
) -> Result<usize> {
    let ck = checkpoint::load_checkpoint(path)?;
    let meta = ck.meta()?;
    if meta.model != name {
        return Err(Error::InvalidArgument(format!(
            "--resume {}: a checkpoint of '{}', not of '{name}'",
            path.display(),
            meta.model
        )));
    }
    ck.restore_model(model)?;
    ck.restore_optimizer(opt, model)?;
    *rng = meta.rng;
    Ok(meta.epoch)
}
