//! The stride-2 VAE of the "Variational Autoencoders (VAE)" notebook: Conv2d 3x3 stride 2
//! padding 1 three times (28 -> 14 -> 7 -> 4) with ReLU, `fc_mu` and `fc_logvar` on the
//! 512 features; `fc_decode` back to 32x4x4 and ConvTranspose2d 3x3 stride 2 padding 1
//! with output padding 0, 1, 1 (4 -> 7 -> 14 -> 28), ReLU between and a Sigmoid at the end.
//! Loss: sum of squared errors + closed-form KL, summed over the batch.

use rand::Rng;

use crate::loss::Reduction;
use crate::nn::{
    Activation, ActivationLayer, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Linear, Sequential, Unflatten,
};
use crate::vae::{KlEstimator, Likelihood, LossConfig, Objective, PosteriorHead, VaeModel};
use crate::{Error, Float, Result};

impl<F: Float> VaeModel<F> {
    /// The notebook's `VAE(latent_dim)` for `[c, 28, 28]` images (the notebook: 1 channel,
    /// latent 32), with its `state_dict` names (`encoder.0.weight`, `encoder.2.*`,
    /// `encoder.4.*`, `fc_mu.*`, `fc_logvar.*`, `fc_decode.*`, `decoder.1.*`, `decoder.3.*`,
    /// `decoder.5.*`) and its loss as [`VaeModel::recipe`].
    pub fn strided<R: Rng + ?Sized>(image: [usize; 3], latent: usize, rng: &mut R) -> Result<Self> {
        let [c, h, w] = image;
        if latent == 0 || c == 0 || h != 28 || w != 28 {
            return Err(Error::InvalidArgument(format!(
                "strided VAE: image {image:?} must be [c, 28, 28] and latent ({latent}) >= 1"
            )));
        }
        let down = ConvOptions::default().stride(2).padding(1);
        let up = |op| ConvOptions::default().stride(2).padding(1).output_padding(op);
        let relu = || ActivationLayer::new(Activation::Relu);
        let encoder = Sequential::new()
            .push(Conv2d::new("encoder.0", c, 8, (3, 3), down, rng))
            .push(relu())
            .push(Conv2d::new("encoder.2", 8, 16, (3, 3), down, rng))
            .push(relu())
            .push(Conv2d::new("encoder.4", 16, 32, (3, 3), down, rng))
            .push(relu())
            .push(Flatten::new());
        let head = PosteriorHead::linear(("fc_mu", "fc_logvar"), 512, latent, rng);
        let decoder = Sequential::new()
            .push(Linear::new("fc_decode", latent, 512, true, rng))
            .push(Unflatten::new(&[32, 4, 4]))
            .push(ConvTranspose2d::new("decoder.1", 32, 16, (3, 3), up(0), rng))
            .push(relu())
            .push(ConvTranspose2d::new("decoder.3", 16, 8, (3, 3), up(1), rng))
            .push(relu())
            .push(ConvTranspose2d::new("decoder.5", 8, c, (3, 3), up(1), rng))
            .push(ActivationLayer::new(Activation::Sigmoid));
        Ok(
            VaeModel::new(image, latent, encoder, head, decoder, Likelihood::SquaredError)?.with_recipe(LossConfig {
                objective: Objective::Elbo { samples: 1, beta: 1.0 },
                kl: KlEstimator::Closed,
                reduction: Reduction::Sum,
            }),
        )
    }
}
