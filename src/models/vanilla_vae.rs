//! AntixK's `VanillaVAE` (PyTorch-VAE) as a builder: for each hidden width a Conv2d 3x3
//! stride 2 padding 1 + BatchNorm2d + LeakyReLU(0.01) block; `fc_mu`, `fc_var`;
//! `decoder_input`, the mirrored ConvTranspose2d 3x3 stride 2 padding 1 output padding 1
//! blocks, and a final block (ConvTranspose2d, BatchNorm2d, LeakyReLU, Conv2d 3x3 to the
//! image channels, Tanh). The defaults: widths [32, 64, 128, 256, 512] on 3x64x64 images.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, ArrayViewMutD};
use rand::Rng;

use super::vae_parts::{decode_chain, decode_chain_backward, encode_chain, GaussianHeads};
use crate::loss::Reduction;
use crate::nn::{
    Activation, ActivationLayer, BatchNorm2d, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Layer, Linear, Mode,
    Module, Param, Sequential, Unflatten,
};
use crate::vae::{DiagGaussian, KlEstimator, Likelihood, LossConfig, Objective, Vae};
use crate::{Error, Float, Result};

/// Configuration of a [`VanillaVae`].
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
    /// Builds the model with PyTorch's default initialisation.
    pub fn build<F: Float, R: Rng + ?Sized>(&self, rng: &mut R) -> Result<VanillaVae<F>> {
        VanillaVae::new(self, rng)
    }
}

/// The built model, with AntixK's `state_dict` names (`encoder.0.0.weight`,
/// `encoder.0.1.running_mean`, `fc_mu.*`, `fc_var.*`, `decoder_input.*`, `decoder.0.0.*`,
/// `final_layer.0.*`, `final_layer.1.*`, `final_layer.3.*`).
pub struct VanillaVae<F> {
    /// Image to features.
    pub encoder: Sequential<F>,
    /// `fc_mu` and `fc_var`: features to the posterior's mean and log variance.
    pub heads: GaussianHeads<F>,
    /// Code to image in [-1, 1]: `decoder_input`, the blocks, the final layer.
    pub decoder: Sequential<F>,
    image: [usize; 3],
    latent: usize,
}

impl<F: Float> VanillaVae<F> {
    /// Builds the model described by `params`.
    pub fn new<R: Rng + ?Sized>(params: &VanillaVaeParams, rng: &mut R) -> Result<Self> {
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
        let heads = GaussianHeads::new(("fc_mu", "fc_var"), flat, params.latent, rng);
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
        Ok(VanillaVae {
            encoder,
            heads,
            decoder,
            image: params.image,
            latent: params.latent,
        })
    }
}

impl<F: Float> Module<F> for VanillaVae<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.encoder.visit_params(f);
        self.heads.visit_params(f);
        self.decoder.visit_params(f);
    }

    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, ArrayViewMutD<F>)) {
        self.encoder.visit_buffers(f);
        self.decoder.visit_buffers(f);
    }

    fn visit_counters(&mut self, f: &mut dyn FnMut(&str, &mut u64)) {
        self.encoder.visit_counters(f);
        self.decoder.visit_counters(f);
    }
}

impl<F: Float> Vae<F> for VanillaVae<F> {
    fn image_shape(&self) -> [usize; 3] {
        self.image
    }

    fn latent_dim(&self) -> usize {
        self.latent
    }

    fn encode(&mut self, x: ArrayView4<F>, mode: Mode) -> Result<DiagGaussian<F>> {
        let h = encode_chain(&mut self.encoder, x, mode)?;
        self.heads.forward(h.view())
    }

    fn encode_backward(&mut self, dmu: Array2<F>, dlogvar: Array2<F>) -> Result<()> {
        let dh = self.heads.backward(dmu, dlogvar)?;
        self.encoder.backward(dh.into_dyn(), false)?;
        Ok(())
    }

    fn decode(&mut self, z: ArrayView2<F>, mode: Mode) -> Result<Array4<F>> {
        decode_chain(&mut self.decoder, z, mode)
    }

    fn decode_backward(&mut self, dout: Array4<F>) -> Result<Array2<F>> {
        decode_chain_backward(&mut self.decoder, dout)
    }

    /// Squared error: AntixK trains on `mse_loss(recons, input)` + a weighted KL.
    fn likelihood(&self) -> Likelihood<F> {
        Likelihood::SquaredError
    }

    fn recipe(&self) -> LossConfig {
        LossConfig {
            objective: Objective::Elbo { samples: 1, beta: 1.0 },
            kl: KlEstimator::Closed,
            reduction: Reduction::Mean,
        }
    }
}
