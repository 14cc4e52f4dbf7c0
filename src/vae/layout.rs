//! A VAE's architecture written out as data ([`VaeLayout`]), for backends that train the
//! same model elsewhere (the CUDA trainer in `latent::cuda`).

use crate::nn::LayerSpec;

/// How q(z|x) comes out of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosteriorForm {
    /// The encoder's `[b, K + 1]` output is `(mu, log sigma)`, one sigma per image (CIS-522).
    Isotropic,
    /// The encoder's `[b, 2K]` output is `(mu, log std)` (the Coursera DCGAN VAE).
    MeanLogStd,
    /// Two Linear heads from the encoder's `[b, features]` output to `mu` and `logvar`,
    /// whose parameters follow the encoder's (the strided VAE).
    LinearHeads {
        /// The encoder's output width.
        features: usize,
    },
}

/// A VAE as data: parameters are visited in the order `log sigma_x` (if learned), the
/// encoder's, the heads' (if any), the decoder's.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeLayout {
    /// Whether the model's first parameter is a learned scalar `log sigma_x` of a Gaussian likelihood.
    pub learned_log_sig_x: bool,
    /// Images to the posterior's parameters.
    pub encoder: Vec<LayerSpec>,
    /// How those parameters make q(z|x).
    pub posterior: PosteriorForm,
    /// Codes to the likelihood's parameters (means or probabilities), one image each.
    pub decoder: Vec<LayerSpec>,
}
