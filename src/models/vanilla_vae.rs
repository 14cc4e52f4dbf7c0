//! AntixK's `VanillaVAE` (PyTorch-VAE) as a builder: for each hidden width a Conv2d 3x3
//! stride 2 padding 1 + BatchNorm2d + LeakyReLU(0.01) block; `fc_mu`, `fc_var`;
//! `decoder_input`, the mirrored ConvTranspose2d 3x3 stride 2 padding 1 output padding 1
//! blocks, and a final block (ConvTranspose2d, BatchNorm2d, LeakyReLU, Conv2d 3x3 to the
//! image channels, Tanh). The defaults: widths [32, 64, 128, 256, 512] on 3x64x64 images.

use rand::Rng;

use crate::loss::Reduction;
use crate::nn::{
    Activation, ActivationLayer, BatchNorm2d, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Linear, Sequential,
    Unflatten,
};
use crate::vae::{KlEstimator, Likelihood, LossConfig, Objective, PosteriorHead, VaeModel};
use crate::{Error, Float, Result};

/// Configuration of AntixK's `VanillaVAE`, built as a [`VaeModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct VanillaVaeParams {
    /// One image's shape `[c, h, w]`; `h` and `w` must be divisible by `2^hidden.len()`.
    pub image: [usize; 3],
    /// Latent dimension.
    pub latent: usize,
    /// Channel widths of the encoder blocks (the decoder mirrors them).
    pub hidden: Vec<usize>,
}

impl Default for VanillaVaeParams {
    /// AntixK's defaults on CelebA-sized images: 3x64x64, latent 128, widths 32..512.
    fn default() -> Self {
        VanillaVaeParams {
            image: [3, 64, 64],
            latent: 128,
            hidden: vec![32, 64, 128, 256, 512],
        }
    }
}

impl VanillaVaeParams {
    /// Builds the model with PyTorch's default initialisation and AntixK's `state_dict`
    /// names (`encoder.0.0.weight`, `encoder.0.1.running_mean`, `fc_mu.*`, `fc_var.*`,
    /// `decoder_input.*`, `decoder.0.0.*`, `final_layer.0.*`, `final_layer.1.*`,
    /// `final_layer.3.*`). It is scored with squared error (AntixK trains on
    /// `mse_loss(recons, input)` + a weighted KL), averaged over the batch.
    pub fn build<F: Float, R: Rng + ?Sized>(&self, rng: &mut R) -> Result<VaeModel<F>> {
        let params = self;

        let [c, h, w] = params.image;
        let depth = params.hidden.len();
        let f = 1usize.checked_shl(depth as u32).unwrap_or(0);
        if depth == 0
            || params.latent == 0
            || c == 0
            || params.hidden.contains(&0)
            || f == 0
            || h % f != 0
            || w % f != 0
            || h == 0
            || w == 0
        {
            return Err(Error::InvalidArgument(format!(
                "VanillaVae: image {:?} must have sides divisible by 2^{depth}, latent {} and widths {:?} must be >= 1",
                params.image, params.latent, params.hidden
            )));
        }
        let (hb, wb) = (h / f, w / f);
        let last = *params.hidden.last().expect("depth >= 1");
        let flat = last * hb * wb;
        let down = ConvOptions::default().stride(2).padding(1);
        let up = ConvOptions::default().stride(2).padding(1).output_padding(1);
        // Each BatchNorm applies the LeakyReLU that follows it in AntixK's model in the same
        // pass.
        let bn_lrelu = |name: &str, ch| BatchNorm2d::new(name, ch).with_rectifier(Activation::LeakyRelu(0.01));
        let mut encoder = Sequential::new();
        let mut in_ch = c;
        for (i, &hd) in params.hidden.iter().enumerate() {
            encoder = encoder
                .push(Conv2d::new(&format!("encoder.{i}.0"), in_ch, hd, (3, 3), down, rng))
                .push(bn_lrelu(&format!("encoder.{i}.1"), hd)?);
            in_ch = hd;
        }
        encoder = encoder.push(Flatten::new());
        let head = PosteriorHead::linear(("fc_mu", "fc_var"), flat, params.latent, rng);
        let mut decoder = Sequential::new()
            .push(Linear::new("decoder_input", params.latent, flat, true, rng))
            .push(Unflatten::new(&[last, hb, wb]));
        let rev: Vec<usize> = params.hidden.iter().rev().copied().collect();
        for (i, pair) in rev.windows(2).enumerate() {
            decoder = decoder
                .push(ConvTranspose2d::new(
                    &format!("decoder.{i}.0"),
                    pair[0],
                    pair[1],
                    (3, 3),
                    up,
                    rng,
                ))
                .push(bn_lrelu(&format!("decoder.{i}.1"), pair[1])?);
        }
        let first = params.hidden[0];
        decoder = decoder
            .push(ConvTranspose2d::new("final_layer.0", first, first, (3, 3), up, rng))
            .push(bn_lrelu("final_layer.1", first)?)
            .push(Conv2d::new(
                "final_layer.3",
                first,
                c,
                (3, 3),
                ConvOptions::default().padding(1),
                rng,
            ))
            .push(ActivationLayer::new(Activation::Tanh));
        let model = VaeModel::new(
            params.image,
            params.latent,
            encoder,
            head,
            decoder,
            Likelihood::SquaredError,
        )?;
        Ok(model.with_recipe(LossConfig {
            objective: Objective::Elbo { samples: 1, beta: 1.0 },
            kl: KlEstimator::Closed,
            reduction: Reduction::Mean,
        }))
    }
}
