//! Training on an NVIDIA GPU (the `cuda` feature): cuBLAS for every product, small NVRTC
//! kernels for the rest, each a forward/backward pair mirroring the CPU code in
//! [`crate::nn`] and [`crate::vae`] (kernels/*.cu hold the CUDA C, one file per family).
//!
//! - [`Gpu`]: context, stream, cuBLAS handle and the compiled kernels;
//! - [`GpuSequential`]: a [`crate::nn::Sequential`]'s layers on the GPU;
//! - [`VaeTrainer`]: a VAE's whole training step on the GPU.
//!
//! Maps are kept channel-major (CNHW), so that each convolution is one GEMM over the
//! batch and each BatchNorm channel one contiguous run; only Flatten/Unflatten reorder.
//! The GPU runs train mode; evaluation runs on the CPU model after
//! [`VaeTrainer::download_into`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use latent::cuda::{Gpu, VaeTrainer};
//! use latent::device::{select, Device, DeviceRequest};
//! use latent::models::VaeModel;
//! use latent::optim::{Adam, AdamConfig};
//! use latent::vae::{sample_noise, Vae};
//! use ndarray::Array2;
//! use rand::SeedableRng;
//!
//! # fn main() -> latent::Result<()> {
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let mut model = VaeModel::<f32>::dcgan_coursera(32, &mut rng)?;
//! let Device::Cuda(ctx) = select(DeviceRequest::Cuda)?.0 else { unreachable!() };
//! let gpu = Arc::new(Gpu::new(ctx)?);
//! let images = Array2::<f32>::zeros((4096, 784)); // rows of pixels in [0, 1]
//! let on_gpu = gpu.upload_images(images.view())?;
//! let mut opt = Adam::new(AdamConfig::new(2e-3));
//! let cfg = model.recipe();
//! let mut trainer = VaeTrainer::new(gpu, &mut model, cfg, &opt)?;
//! let batch: Vec<usize> = (0..1024).collect();
//! let eps = sample_noise(batch.len(), 1, model.latent_dim(), &mut rng);
//! let stats = trainer.step_rows(&on_gpu, &batch, eps.view())?;
//! println!("loss per image {}", -stats.bound);
//! trainer.download_into(&mut model, &mut opt)?; // the CPU model is now the trained one
//! # Ok(())
//! # }
//! ```

mod gpu;
mod layers;
mod sequential;
mod store;
mod vae_trainer;

pub use gpu::{DeviceBuf, DeviceImages, Gpu};
pub use layers::{GpuChain, GpuLayer, Shape, Tensor};
pub use sequential::GpuSequential;
pub use store::{ParamStore, Slot};
pub use vae_trainer::{StepStats, VaeTrainer};
