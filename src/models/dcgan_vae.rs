//! The Coursera lab's DCGAN-style VAE. Encoder: three Conv2d 4x4 stride 2, the first two
//! followed by BatchNorm2d and LeakyReLU(0.2); its `2 z` outputs are the mean and the log
//! standard deviation. Decoder: ConvTranspose2d + BatchNorm2d + ReLU three times, then a
//! ConvTranspose2d and a Sigmoid. Loss: BCE (sum) + closed-form KL (sum) over the batch.

use rand::Rng;

use crate::loss::Reduction;
use crate::nn::{
    Activation, ActivationLayer, BatchNorm2d, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Sequential, Unflatten,
};
use crate::vae::{KlEstimator, Likelihood, LossConfig, Objective, PosteriorHead, VaeModel};
use crate::{Error, Float, Result};

/// Output side of a `k`x`k`, stride-`s` convolution without padding.
fn conv_out(n: usize, k: usize, s: usize) -> Option<usize> {
    n.checked_sub(k).map(|r| r / s + 1)
}

impl<F: Float> VaeModel<F> {
    /// The lab's `VAE(z_dim, im_chan)` for `image = [c, 28, 28]` images with `z_dim`
    /// latent dimensions, encoder width `enc_hidden` (the lab: 16) and decoder width
    /// `dec_hidden` (the lab: 64), with its `state_dict` names (`encode.disc.0.0.weight`,
    /// `encode.disc.0.1.running_mean`, ..., `decode.gen.3.0.bias`) and its loss as
    /// [`VaeModel::recipe`].
    pub fn dcgan<R: Rng + ?Sized>(
        image: [usize; 3],
        z_dim: usize,
        enc_hidden: usize,
        dec_hidden: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let [c, h, w] = image;
        // The encoder must end at 1x1 and the decoder (3, s2; 4, s1; 3, s2; 4, s2 from 1x1)
        // must come back to the image size: 28x28, as in the lab.
        let enc_side = |n| {
            conv_out(n, 4, 2)
                .and_then(|n| conv_out(n, 4, 2))
                .and_then(|n| conv_out(n, 4, 2))
        };
        if z_dim == 0 || enc_hidden == 0 || dec_hidden == 0 || c == 0 || h != 28 || w != 28 || enc_side(h) != Some(1) {
            return Err(Error::InvalidArgument(format!(
                "DcganVae: image {image:?} (must be [c, 28, 28]), z = {z_dim}, widths {enc_hidden}/{dec_hidden}"
            )));
        }
        let s2 = ConvOptions::default().stride(2);
        let s1 = ConvOptions::default();
        // Each BatchNorm applies the activation that follows it in the notebook (LeakyReLU
        // in the encoder, ReLU in the decoder) in the same pass.
        let lrelu = Activation::LeakyRelu(0.2);
        let (e1, e2) = (enc_hidden, 2 * enc_hidden);
        let encoder = Sequential::new()
            .push(Conv2d::new("encode.disc.0.0", c, e1, (4, 4), s2, rng))
            .push(BatchNorm2d::new("encode.disc.0.1", e1).with_rectifier(lrelu)?)
            .push(Conv2d::new("encode.disc.1.0", e1, e2, (4, 4), s2, rng))
            .push(BatchNorm2d::new("encode.disc.1.1", e2).with_rectifier(lrelu)?)
            .push(Conv2d::new("encode.disc.2.0", e2, 2 * z_dim, (4, 4), s2, rng))
            .push(Flatten::new());
        let (d4, d2, d1) = (4 * dec_hidden, 2 * dec_hidden, dec_hidden);
        let decoder = Sequential::new()
            .push(Unflatten::new(&[z_dim, 1, 1]))
            .push(ConvTranspose2d::new("decode.gen.0.0", z_dim, d4, (3, 3), s2, rng))
            .push(BatchNorm2d::new("decode.gen.0.1", d4).with_rectifier(Activation::Relu)?)
            .push(ConvTranspose2d::new("decode.gen.1.0", d4, d2, (4, 4), s1, rng))
            .push(BatchNorm2d::new("decode.gen.1.1", d2).with_rectifier(Activation::Relu)?)
            .push(ConvTranspose2d::new("decode.gen.2.0", d2, d1, (3, 3), s2, rng))
            .push(BatchNorm2d::new("decode.gen.2.1", d1).with_rectifier(Activation::Relu)?)
            .push(ConvTranspose2d::new("decode.gen.3.0", d1, c, (4, 4), s2, rng))
            .push(ActivationLayer::new(Activation::Sigmoid));
        let model = VaeModel::new(
            image,
            z_dim,
            encoder,
            PosteriorHead::MeanLogStd,
            decoder,
            Likelihood::Bernoulli,
        )?;
        Ok(model.with_recipe(LossConfig {
            objective: Objective::Elbo { samples: 1, beta: 1.0 },
            kl: KlEstimator::Closed,
            reduction: Reduction::Sum,
        }))
    }

    /// The Coursera lab's configuration for MNIST: z = 32, widths 16 and 64.
    pub fn dcgan_coursera<R: Rng + ?Sized>(z_dim: usize, rng: &mut R) -> Result<Self> {
        Self::dcgan([1, 28, 28], z_dim, 16, 64, rng)
    }
}
