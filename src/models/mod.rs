//! The notebooks' models, with PyTorch `state_dict` parameter names.
//!
//! Autoencoders: [`LinearAe`], [`ConvAe`]. Variational autoencoders, presets that
//! assemble a [`VaeModel`] with the notebooks' layers, `state_dict` names and losses:
//! [`VaeModel::conv`] (CIS-522's ConvVAE), [`VaeModel::dcgan`] (the Coursera lab),
//! [`VaeModel::strided`] (the stride-2 notebook), [`VanillaVaeParams::build`] (AntixK's
//! builder), and [`VaeModel::mlp`] (Burda et al.'s one-stochastic-layer MLP VAE).

mod conv_ae;
mod conv_vae;
mod dcgan_vae;
mod linear_ae;
mod mlp_vae;
mod strided_vae;
mod vanilla_vae;

pub use crate::vae::VaeModel;
pub use conv_ae::ConvAe;
pub use linear_ae::LinearAe;
pub use vanilla_vae::VanillaVaeParams;
