//! The notebooks' models, with PyTorch `state_dict` parameter names.
//!
//! Autoencoders: [`LinearAe`], [`ConvAe`]. Variational autoencoders (each implements
//! [`crate::vae::Vae`]): [`ConvVae`] (CIS-522), [`DcganVae`] (Coursera), [`StridedVae`]
//! (the stride-2 notebook), [`VanillaVae`] (AntixK's builder).

mod conv_ae;
mod conv_vae;
mod dcgan_vae;
mod linear_ae;
mod strided_vae;
mod vae_parts;
mod vanilla_vae;

pub use conv_ae::ConvAe;
pub use conv_vae::ConvVae;
pub use dcgan_vae::DcganVae;
pub use linear_ae::LinearAe;
pub use strided_vae::StridedVae;
pub use vae_parts::GaussianHeads;
pub use vanilla_vae::{VanillaVae, VanillaVaeParams};
