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

mod gpu;
mod layers;
mod sequential;
mod store;
mod vae_trainer;

pub use gpu::{DeviceBuf, DeviceImages, Gpu};
pub use layers::{GpuChain, GpuLayer, Shape, Tensor};
pub use sequential::GpuSequential;
pub use store::{ParamStore, Slot};
pub use vae_trainer::{adam_update, StepStats, VaeTrainer};
