//! The notebooks' models, with PyTorch `state_dict` parameter names.
//!
//! Autoencoders: [`LinearAe`], [`ConvAe`]. Variational autoencoders, presets that
//! assemble a [`VaeModel`] with the notebooks' layers, `state_dict` names and losses:
//! [`VaeModel::conv`] (CIS-522's ConvVAE), [`VaeModel::dcgan`] (the Coursera lab),
//! [`VaeModel::strided`] (the stride-2 notebook), [`VanillaVaeParams::build`] (AntixK's
//! builder), and [`VaeModel::mlp`] (Burda et al.'s one-stochastic-layer MLP VAE).
//! [`Hvae2`]: Burda et al.'s VAE with two stochastic layers, its step written out.

mod conv_ae;
mod conv_vae;
mod dcgan_vae;
mod hvae2;
mod linear_ae;
mod mlp_vae;
mod strided_vae;
mod vanilla_vae;

pub use crate::vae::VaeModel;
pub use conv_ae::ConvAe;
pub use hvae2::{GaussianMlp, Hvae2, Hvae2Loss};
pub use linear_ae::LinearAe;
pub use vanilla_vae::VanillaVaeParams;
