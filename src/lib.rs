//! # latent
//!
//! PCA, autoencoders and variational autoencoders on [`ndarray`], with every forward and
//! backward pass written out by hand, checked against finite differences and against
//! PyTorch's own numbers.
//!
//! - [`data`]: MNIST / Fashion-MNIST from their IDX files, checksummed, shuffled, batched.
//! - [`pca`]: streamed moments, top-K eigenvectors, the whitened encoder/decoder.
//! - [`nn`]: layers as forward/backward pairs; [`loss`]; [`optim`] (Adam).
//! - [`models`]: the notebooks' models, with PyTorch `state_dict` names.
//! - [`vae`]: the ELBO, its estimators and gradients, one VAE training step.
//! - [`device`]: CPU or (feature `cuda`) GPU, with a loud fallback.
//! - [`checkpoint`]: weights and training checkpoints as safetensors, PyTorch names.
//! - [`plot`]: loss curves, image grids, spectra as PNG.
//!
//! Images are NCHW `f32` as in PyTorch; everything numeric is generic over [`Float`] so
//! that gradient checks run in `f64`.

#![warn(missing_docs)]

pub mod checkpoint;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod data_parallel;
pub mod denormals;
pub mod device;
mod error;
mod float;
pub mod gemm;
pub mod loss;
pub mod memory;
pub mod models;
pub mod nn;
pub mod optim;
pub mod pca;
pub mod plot;
pub mod pool;
pub mod progress;
pub mod vae;

pub use error::{Error, Result};
pub use float::Float;
