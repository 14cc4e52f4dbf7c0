//! CIS-522's ConvVAE: the conv autoencoder with a `K + 1` head `phi = (mu, log sigma)`
//! (an isotropic Gaussian posterior) and a learned scalar pixel noise `log_sig_x`.
//! Trained on the notebook's `-(log_p_x - kl_q_p)`: the Gaussian log-likelihood without
//! the `0.5 log 2 pi` terms and the Monte-Carlo KL, averaged over the batch.

use rand::Rng;

use crate::loss::Reduction;
use crate::nn::{
    Activation, ActivationLayer, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Linear, PixelBias, Sequential,
    Unflatten,
};
use crate::vae::{KlEstimator, LossConfig, Objective, PixelLikelihood, PosteriorHead, VaeModel};
use crate::{Error, Float, Result};

impl<F: Float> VaeModel<F> {
    /// The notebook's `ConvVAE` for `image = [c, h, w]` images and `k` latent dimensions,
    /// with `filters` channels of `kernel x kernel` (the notebook: 32 and 5), its
    /// `state_dict` names (`log_sig_x`, `q_bias.bias`, `q_conv_1.weight`, ...,
    /// `q_fc_phi.*`, `p_fc_upsample.*`, `p_deconv_1.*`, `p_deconv_2.*`, `p_bias.bias`) and
    /// its loss as [`VaeModel::recipe`]. `sigma_x` starts at 1.
    pub fn conv<R: Rng + ?Sized>(
        image: [usize; 3],
        k: usize,
        filters: usize,
        kernel: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let [c, h, w] = image;
        if k == 0 || filters == 0 || kernel == 0 || h < 2 * kernel - 1 || w < 2 * kernel - 1 {
            return Err(Error::InvalidArgument(format!(
                "ConvVAE: image {image:?}, K = {k}, {filters} filters of {kernel}x{kernel} do not fit"
            )));
        }
        let (h2, w2) = (h - 2 * (kernel - 1), w - 2 * (kernel - 1));
        let flat = filters * h2 * w2;
        let opts = ConvOptions::default();
        let relu = || ActivationLayer::new(Activation::Relu);
        let kk = (kernel, kernel);
        let encoder = Sequential::new()
            .push(PixelBias::new("q_bias", &image))
            .push(Conv2d::new("q_conv_1", c, filters, kk, opts, rng))
            .push(relu())
            .push(Conv2d::new("q_conv_2", filters, filters, kk, opts, rng))
            .push(relu())
            .push(Flatten::new())
            .push(Linear::new("q_fc_phi", flat, k + 1, true, rng));
        let decoder = Sequential::new()
            .push(Linear::new("p_fc_upsample", k, flat, true, rng))
            .push(relu())
            .push(Unflatten::new(&[filters, h2, w2]))
            .push(ConvTranspose2d::new("p_deconv_1", filters, filters, kk, opts, rng))
            .push(relu())
            .push(ConvTranspose2d::new("p_deconv_2", filters, c, kk, opts, rng))
            .push(PixelBias::new("p_bias", &image));
        let likelihood = PixelLikelihood::learned_gaussian("log_sig_x", F::zero(), false);
        Ok(
            VaeModel::new(image, k, encoder, PosteriorHead::Isotropic, decoder, likelihood)?.with_recipe(LossConfig {
                objective: Objective::Elbo { samples: 1, beta: 1.0 },
                kl: KlEstimator::MonteCarlo,
                reduction: Reduction::Mean,
            }),
        )
    }

    /// The CIS-522 ConvVAE's configuration for MNIST: 1x28x28 images, 32 filters of 5x5.
    pub fn conv_cis522<R: Rng + ?Sized>(k: usize, rng: &mut R) -> Result<Self> {
        Self::conv([1, 28, 28], k, 32, 5, rng)
    }
}
