//! Where a [`super::Trainer`]'s steps run. Each model kind that can be trained
//! ([`Trainable`]: [`VaeModel`], [`ConvAe`], [`LinearAe`]) makes an engine for the run:
//! on the CPU, a batch cut into one part per thread where the model's layers allow it
//! (read off the layers: [`VaeModel::couples_batch`]); with the `cuda` feature and a GPU,
//! a VAE's `cuda::VaeTrainer` holding a copy of it.

use std::any::TypeId;

use ndarray::{Array2, ArrayView2, ArrayView4, Axis};
use rand_chacha::ChaCha8Rng;

use super::evaluate::{evaluate_ae, evaluate_vae, EvalConfig, Evaluation};
use super::StepStats;
use crate::data::{binarize_in_place, Dataset};
use crate::data_parallel::DataParallel;
use crate::device::{Device, DeviceRequest};
use crate::models::{ConvAe, Hvae2, LinearAe};
use crate::nn::Module;
use crate::optim::{Adam, AdamConfig};
use crate::vae::{posterior_mean_variance, LossConfig, VaeModel};
use crate::{Error, Float, Result};

/// A model a [`super::Trainer`] can train: the composable VAE and the two autoencoders.
/// (Sealed: the trainer's engines are written for each.)
pub trait Trainable<F: Float>: Module<F> + Send + Sized + 'static + sealed::Engines<F> {}

impl<F: Float> Trainable<F> for VaeModel<F> {}
impl<F: Float> Trainable<F> for ConvAe<F> {}
impl<F: Float> Trainable<F> for LinearAe<F> {}
impl<F: Float> Trainable<F> for Hvae2<F> {}

/// What an engine is made from.
pub struct EngineSetup<'d, F> {
    pub(super) train: &'d Dataset,
    // The GPU engine's (`cuda` feature).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) device: &'d Device,
    pub(super) request: DeviceRequest,
    pub(super) tf32: bool,
    pub(super) binarize: bool,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) loss: LossConfig,
    pub(super) _float: std::marker::PhantomData<F>,
}

pub(crate) mod sealed {
    use super::*;

    /// The steps of one run of a model.
    pub trait Engine<F: Float, M> {
        /// One line on where the steps run.
        fn describe(&self) -> String;
        /// One step on the training images `idx`, then an Adam update; with the collapse
        /// measure (the spread of the codes) when `want_spread`.
        fn step(
            &mut self,
            model: &mut M,
            idx: &[usize],
            loss: &LossConfig,
            opt: &mut Adam<F>,
            rng: &mut ChaCha8Rng,
            want_spread: bool,
        ) -> Result<(StepStats, Option<f64>)>;
        /// The loss or Adam's settings changed (hooks): engines that keep copies follow.
        fn set_config(&mut self, _loss: &LossConfig, _adam: &AdamConfig<F>) -> Result<()> {
            Ok(())
        }
        /// Brings `model` and `opt` up to date (a no-op where the steps run on them).
        fn sync(&mut self, _model: &mut M, _opt: &mut Adam<F>) -> Result<()> {
            Ok(())
        }
    }

    /// The engine and the evaluation of each trainable model.
    pub trait Engines<F: Float>: Sized {
        /// The run's engine.
        fn engine<'d>(&mut self, setup: EngineSetup<'d, F>, opt: &Adam<F>) -> Result<Box<dyn Engine<F, Self> + 'd>>;
        /// Test metrics.
        fn evaluate(&mut self, test: &Dataset, cfg: &EvalConfig, rng: &mut ChaCha8Rng) -> Result<Evaluation<F>>;
        /// Whether the model has the VAE's loss terms.
        fn is_vae() -> bool;
        /// The loss when the trainer is given none: a VAE's recipe (the autoencoders
        /// train on their MSE and ignore it).
        fn default_loss(&self) -> LossConfig {
            LossConfig {
                objective: crate::vae::Objective::Elbo { samples: 1, beta: 1.0 },
                kl: crate::vae::KlEstimator::Closed,
                reduction: crate::loss::Reduction::Mean,
            }
        }
    }
}

use sealed::{Engine, Engines};

/// The data set's pixels as `F`, `[n, pixels]`: a view for `f32`, a converted copy otherwise.
pub(crate) enum Pixels<'d, F> {
    Borrowed(ArrayView2<'d, F>),
    Owned(Array2<F>),
}

impl<'d, F: Float> Pixels<'d, F> {
    pub(crate) fn of(data: &'d Dataset) -> Self {
        let flat = data.flat();
        if TypeId::of::<F>() == TypeId::of::<f32>() {
            // SAFETY: F is f32, so the pointer, shape and strides describe the same memory.
            let view = unsafe { ArrayView2::from_shape_ptr(flat.raw_dim(), flat.as_ptr() as *const F) };
            Pixels::Borrowed(view)
        } else {
            Pixels::Owned(flat.mapv(|v| F::lit(v as f64)))
        }
    }

    pub(crate) fn view(&self) -> ArrayView2<'_, F> {
        match self {
            Pixels::Borrowed(v) => v.view(),
            Pixels::Owned(a) => a.view(),
        }
    }
}

/// Rows of pixels as a batch of `[c, h, w]` images.
fn as_images<'a, F: Float>(x: ArrayView2<'a, F>, shape: &[usize]) -> ArrayView4<'a, F> {
    x.into_shape_with_order((x.nrows(), shape[0], shape[1], shape[2]))
        .expect("rows of whole images")
}

/// The training images and a buffer that a batch's images are gathered into.
struct Batches<'d, F: Float> {
    data: Pixels<'d, F>,
    labels: ndarray::ArrayView1<'d, u8>,
    shape: Vec<usize>,
    xb: Array2<F>,
    binarize: bool,
}

impl<'d, F: Float> Batches<'d, F> {
    fn new(setup: &EngineSetup<'d, F>) -> Self {
        Batches {
            data: Pixels::of(setup.train),
            labels: setup.train.labels.view(),
            shape: setup.train.images.shape()[1..].to_vec(),
            xb: Array2::zeros((0, setup.train.dim())),
            binarize: setup.binarize,
        }
    }

    /// The images `idx`, copied row by row over the threads into the buffer, and
    /// binarized afresh from `rng` if the run asks for it (dynamic binarization).
    fn gather(&mut self, idx: &[usize], rng: &mut ChaCha8Rng) -> ArrayView4<'_, F> {
        let data = self.data.view();
        if self.xb.dim() != (idx.len(), data.ncols()) {
            self.xb = Array2::zeros((idx.len(), data.ncols()));
        }
        use rayon::prelude::*;
        self.xb
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(idx.par_iter())
            .for_each(|(mut row, &i)| row.assign(&data.row(i)));
        if self.binarize {
            binarize_in_place(self.xb.as_slice_mut().expect("contiguous"), rng);
        }
        as_images(self.xb.view(), &self.shape)
    }
}

/// What the CPU is told to say about how a batch is shared.
fn cpu_line(parts: usize) -> String {
    let threads = rayon::current_num_threads();
    if parts > 1 {
        format!("CPU: {threads} threads, each batch cut into {parts} parts (one per thread)")
    } else {
        format!("CPU: {threads} threads, shared within each layer (this model trains on whole batches)")
    }
}

/// A VAE's steps on the CPU.
struct VaeCpu<'d, F: Float> {
    par: DataParallel<VaeModel<F>>,
    batches: Batches<'d, F>,
}

impl<F: Float> Engine<F, VaeModel<F>> for VaeCpu<'_, F> {
    fn describe(&self) -> String {
        cpu_line(self.par.parts())
    }

    fn step(
        &mut self,
        model: &mut VaeModel<F>,
        idx: &[usize],
        loss: &LossConfig,
        opt: &mut Adam<F>,
        rng: &mut ChaCha8Rng,
        want_spread: bool,
    ) -> Result<(StepStats, Option<f64>)> {
        if model.conditional_classes().is_some() {
            let labels: ndarray::Array1<u8> = idx.iter().map(|&i| self.batches.labels[i]).collect();
            crate::vae::Vae::condition_on(model, labels.view())?;
        }
        let x = self.batches.gather(idx, rng);
        let parts = self.par.train_step(model, x, loss, opt, rng)?;
        let stats = StepStats {
            loss: -parts.bound.to_f64_lossless(),
            recon: Some(parts.recon.to_f64_lossless()),
            kl: Some(parts.kl.to_f64_lossless()),
        };
        let spread = if want_spread {
            Some(posterior_mean_variance(parts.posterior.mu.view())?.fold(0.0, |a: f64, &b| a.max(b)))
        } else {
            None
        };
        Ok((stats, spread))
    }
}

impl<F: Float> Engines<F> for VaeModel<F> {
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn engine<'d>(&mut self, setup: EngineSetup<'d, F>, opt: &Adam<F>) -> Result<Box<dyn Engine<F, Self> + 'd>> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(ctx) = setup.device {
            let made = if setup.binarize {
                Err(Error::Device("dynamic binarization has no GPU kernel".into()))
            } else {
                gpu::engine(self, ctx, &setup, opt)
            };
            match made {
                Ok(e) => return Ok(e),
                Err(e) if setup.request == DeviceRequest::Auto => {
                    eprintln!("device: CPU (the GPU cannot train this run: {e})");
                }
                Err(e) => return Err(Error::Device(format!("--device cuda: {e}"))),
            }
        }
        if setup.tf32 {
            eprintln!("--tf32 on applies to the GPU only; the CPU computes in f32");
        }
        Ok(Box::new(VaeCpu {
            par: DataParallel::vae(self),
            batches: Batches::new(&setup),
        }))
    }

    fn evaluate(&mut self, test: &Dataset, cfg: &EvalConfig, rng: &mut ChaCha8Rng) -> Result<Evaluation<F>> {
        evaluate_vae(self, test, cfg, rng)
    }

    fn is_vae() -> bool {
        true
    }

    fn default_loss(&self) -> LossConfig {
        self.recipe()
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use std::any::Any;
    use std::sync::Arc;

    use super::*;
    use crate::cuda::{DeviceImages, Gpu, VaeTrainer};
    use crate::vae::{sample_noise, Vae};

    /// A VAE's steps on the GPU (`f32` only).
    struct VaeGpu {
        trainer: Box<VaeTrainer>,
        images: DeviceImages,
        tf32: bool,
    }

    impl Engine<f32, VaeModel<f32>> for VaeGpu {
        fn describe(&self) -> String {
            let math = if self.tf32 { "TF32 tensor-core" } else { "float32" };
            format!("training on the GPU ({math} products; evaluation on the CPU)")
        }

        fn step(
            &mut self,
            model: &mut VaeModel<f32>,
            idx: &[usize],
            loss: &LossConfig,
            _opt: &mut Adam<f32>,
            rng: &mut ChaCha8Rng,
            want_spread: bool,
        ) -> Result<(StepStats, Option<f64>)> {
            let eps = sample_noise(idx.len(), loss.objective.samples(), model.latent_dim(), rng);
            let s = self.trainer.step_rows(&self.images, idx, eps.view())?;
            let stats = StepStats {
                loss: -(s.bound as f64),
                recon: Some(s.recon as f64),
                kl: Some(s.kl as f64),
            };
            let spread = if want_spread {
                let mu = self.trainer.posterior_mean()?;
                Some(posterior_mean_variance(mu.view())?.fold(0.0, |a: f64, &b| a.max(b)))
            } else {
                None
            };
            Ok((stats, spread))
        }

        fn set_config(&mut self, loss: &LossConfig, adam: &AdamConfig<f32>) -> Result<()> {
            self.trainer.set_config(*loss, *adam)
        }

        fn sync(&mut self, model: &mut VaeModel<f32>, opt: &mut Adam<f32>) -> Result<()> {
            self.trainer.download_into(model, opt)
        }
    }

    /// The GPU engine, when `F` is `f32`.
    pub(super) fn engine<'d, F: Float>(
        model: &mut VaeModel<F>,
        ctx: &Arc<cudarc::driver::CudaContext>,
        setup: &EngineSetup<'d, F>,
        opt: &Adam<F>,
    ) -> Result<Box<dyn Engine<F, VaeModel<F>> + 'd>> {
        let (Some(model), Some(opt)) = (
            (model as &mut dyn Any).downcast_mut::<VaeModel<f32>>(),
            (opt as &dyn Any).downcast_ref::<Adam<f32>>(),
        ) else {
            return Err(Error::Device("the GPU trains f32 models".into()));
        };
        let gpu = Gpu::new(ctx.clone())?;
        gpu.set_tf32(setup.tf32)?;
        let images = gpu.upload_images(setup.train.flat())?;
        let trainer = VaeTrainer::new(Arc::new(gpu), model, setup.loss, opt)?;
        let engine: Box<dyn Engine<f32, VaeModel<f32>>> = Box::new(VaeGpu {
            trainer: Box::new(trainer),
            images,
            tf32: setup.tf32,
        });
        // F is f32 here (the downcasts succeeded): the box is the one asked for.
        let any: Box<dyn Any> = Box::new(engine);
        Ok(*any.downcast::<Box<dyn Engine<F, VaeModel<F>>>>().expect("F is f32"))
    }
}

/// The conv autoencoder's steps (always on the CPU), its batch cut into one part per thread.
struct ConvAeCpu<'d, F: Float> {
    par: DataParallel<ConvAe<F>>,
    batches: Batches<'d, F>,
}

impl<F: Float> Engine<F, ConvAe<F>> for ConvAeCpu<'_, F> {
    fn describe(&self) -> String {
        cpu_line(self.par.parts())
    }

    fn step(
        &mut self,
        model: &mut ConvAe<F>,
        idx: &[usize],
        _loss: &LossConfig,
        opt: &mut Adam<F>,
        rng: &mut ChaCha8Rng,
        want_spread: bool,
    ) -> Result<(StepStats, Option<f64>)> {
        let x = self.batches.gather(idx, rng);
        let loss = self.par.train_step(model, x, opt)?;
        let spread = want_spread.then(|| model.code_spread().map_or(0.0, |s| s.to_f64_lossless()));
        Ok((StepStats::loss_only(loss.to_f64_lossless()), spread))
    }
}

/// A device other than the CPU asked for a model that trains on the CPU only.
fn cpu_only(setup: &EngineSetup<'_, impl Float>, what: &str) -> Result<()> {
    if setup.request == DeviceRequest::Cuda {
        return Err(Error::Device(format!(
            "--device cuda: the {what} trains on the CPU only"
        )));
    }
    Ok(())
}

impl<F: Float> Engines<F> for ConvAe<F> {
    fn engine<'d>(&mut self, setup: EngineSetup<'d, F>, _opt: &Adam<F>) -> Result<Box<dyn Engine<F, Self> + 'd>> {
        cpu_only(&setup, "conv autoencoder")?;
        Ok(Box::new(ConvAeCpu {
            par: DataParallel::conv_ae(self),
            batches: Batches::new(&setup),
        }))
    }

    fn evaluate(&mut self, test: &Dataset, cfg: &EvalConfig, _rng: &mut ChaCha8Rng) -> Result<Evaluation<F>> {
        let shape = test.images.shape()[1..].to_vec();
        evaluate_ae(test, cfg, |x| {
            let h = self.encode(as_images(x, &shape))?;
            let rec = self.decode(h.clone())?;
            let n = rec.shape()[0];
            Ok((rec.into_shape_with_order((n, x.ncols())).expect("rows"), h))
        })
    }

    fn is_vae() -> bool {
        false
    }
}

/// The linear autoencoder's steps: each thread gathers its own rows of the batch.
struct LinearAeCpu<'d, F: Float> {
    data: Pixels<'d, F>,
}

impl<F: Float> Engine<F, LinearAe<F>> for LinearAeCpu<'_, F> {
    fn describe(&self) -> String {
        cpu_line(rayon::current_num_threads())
    }

    fn step(
        &mut self,
        model: &mut LinearAe<F>,
        idx: &[usize],
        _loss: &LossConfig,
        opt: &mut Adam<F>,
        _rng: &mut ChaCha8Rng,
        _want_spread: bool,
    ) -> Result<(StepStats, Option<f64>)> {
        let loss = model.train_step_rows(self.data.view(), idx, opt)?;
        Ok((StepStats::loss_only(loss.to_f64_lossless()), None))
    }
}

impl<F: Float> Engines<F> for LinearAe<F> {
    fn engine<'d>(&mut self, setup: EngineSetup<'d, F>, _opt: &Adam<F>) -> Result<Box<dyn Engine<F, Self> + 'd>> {
        cpu_only(&setup, "linear autoencoder")?;
        if setup.binarize {
            return Err(Error::InvalidArgument(
                "the linear autoencoder trains on the images as they are: no dynamic binarization".into(),
            ));
        }
        Ok(Box::new(LinearAeCpu {
            data: Pixels::of(setup.train),
        }))
    }

    fn evaluate(&mut self, test: &Dataset, cfg: &EvalConfig, _rng: &mut ChaCha8Rng) -> Result<Evaluation<F>> {
        evaluate_ae(test, cfg, |x| {
            let h = self.encode(x)?;
            Ok((self.decode(h.view())?, h))
        })
    }

    fn is_vae() -> bool {
        false
    }
}

/// The two-stochastic-layer VAE's steps (on the CPU; its batch is not cut: Burda et al.'s
/// batches of 20 are too small to share).
struct Hvae2Cpu<'d, F: Float> {
    batches: Batches<'d, F>,
}

impl<F: Float> Engine<F, Hvae2<F>> for Hvae2Cpu<'_, F> {
    fn describe(&self) -> String {
        cpu_line(1)
    }

    fn step(
        &mut self,
        model: &mut Hvae2<F>,
        idx: &[usize],
        loss: &LossConfig,
        opt: &mut Adam<F>,
        rng: &mut ChaCha8Rng,
        _want_spread: bool,
    ) -> Result<(StepStats, Option<f64>)> {
        let x = self.batches.gather(idx, rng);
        let (k, (h1, h2)) = (loss.objective.samples(), model.latent_dims());
        let eps1 = crate::vae::sample_noise(idx.len(), k, h1, rng);
        let eps2 = crate::vae::sample_noise(idx.len(), k, h2, rng);
        let out = crate::pool::on_worker(|| {
            let out = model.loss_and_grad(x, eps1.view(), eps2.view(), loss.objective)?;
            opt.step(model)?;
            Ok::<_, crate::Error>(out)
        })?;
        Ok((StepStats::loss_only(-out.bound.to_f64_lossless()), None))
    }
}

impl<F: Float> Engines<F> for Hvae2<F> {
    fn engine<'d>(&mut self, setup: EngineSetup<'d, F>, _opt: &Adam<F>) -> Result<Box<dyn Engine<F, Self> + 'd>> {
        cpu_only(&setup, "two-stochastic-layer VAE")?;
        Ok(Box::new(Hvae2Cpu {
            batches: Batches::new(&setup),
        }))
    }

    fn evaluate(&mut self, test: &Dataset, cfg: &EvalConfig, rng: &mut ChaCha8Rng) -> Result<Evaluation<F>> {
        super::evaluate::evaluate_hvae2(self, test, cfg, rng)
    }

    fn is_vae() -> bool {
        false
    }
}
