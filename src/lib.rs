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
//! - [`vae`]: the ELBO, its estimators and gradients, one VAE training step, and
//!   [`vae::VaeModel`], a VAE assembled from parts (the notebooks' models are presets).
//! - [`train`]: [`train::Trainer`], the training loop (progress, history, checkpoints and
//!   resume, collapse restarts, evaluation, hooks).
//! - [`device`]: CPU or (feature `cuda`) GPU, with a loud fallback.
//! - [`checkpoint`]: weights and training checkpoints as safetensors, PyTorch names.
//! - [`plot`]: loss curves, image grids, spectra as PNG; [`figures`]: the figures of any
//!   trained VAE.
//!
//! Images are NCHW `f32` as in PyTorch; everything numeric is generic over [`Float`] so
//! that gradient checks run in `f64`.
//!
//! ## One training step, written out
//!
//! [`vae::loss_and_grad`] runs a VAE's forward (encode, sample `z = mu + sigma * eps`,
//! decode, score) and its whole backward; the loss comes back in its parts, and the
//! gradients sit in the model's parameters for the optimizer. The README trains a VAE of
//! one's own with [`train::Trainer`]; `docs/library.md` has more programs (a
//! finite-difference check, PCA on MNIST, PyTorch weights).
//!
//! ```
//! use latent::models::VaeModel;
//! use latent::nn::Module;
//! use latent::optim::{Adam, AdamConfig};
//! use latent::vae::{self, Vae};
//! use ndarray::Array4;
//! use rand::{Rng, SeedableRng};
//!
//! # fn main() -> latent::Result<()> {
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let mut model = VaeModel::<f32>::strided([1, 28, 28], 8, &mut rng)?;
//! let x = Array4::from_shape_simple_fn((16, 1, 28, 28), || rng.random::<f32>());
//! let cfg = model.recipe(); // squared error + closed-form KL, summed over the batch
//! let eps = vae::sample_noise(16, 1, model.latent_dim(), &mut rng);
//! let step = vae::loss_and_grad(&mut model, x.view(), eps.view(), &cfg)?;
//! // Per image: the negative bound is the reconstruction term plus the KL.
//! assert!((step.recon + step.kl + step.bound).abs() <= 1e-4 * step.recon);
//! let mut grad_norm2 = 0.0;
//! model.visit_params(&mut |p| grad_norm2 += p.grad.mapv(|g| g * g).sum());
//! assert!(grad_norm2 > 0.0);
//! Adam::new(AdamConfig::new(1e-3)).step(&mut model)?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod data_parallel;
pub mod denormals;
pub mod device;
mod error;
pub mod figures;
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
pub mod runtime;
pub mod train;
pub mod tuning;
pub mod vae;

pub use error::{Error, Result};
pub use float::Float;

/// The README's Rust programs, compiled and run by `cargo test` as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The programs of `docs/library.md`, compiled and run by `cargo test` as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/library.md")]
pub struct LibraryDocDoctests;
