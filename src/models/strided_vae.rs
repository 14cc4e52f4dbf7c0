//! The stride-2 VAE of the "Variational Autoencoders (VAE)" notebook: Conv2d 3x3 stride 2
//! padding 1 three times (28 -> 14 -> 7 -> 4) with ReLU, `fc_mu` and `fc_logvar` on the
//! 512 features; `fc_decode` back to 32x4x4 and ConvTranspose2d 3x3 stride 2 padding 1
//! with output padding 0, 1, 1 (4 -> 7 -> 14 -> 28), ReLU between and a Sigmoid at the end.
//! Loss: sum of squared errors + closed-form KL, summed over the batch.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, ArrayViewMutD};
use rand::Rng;

use super::vae_parts::{decode_chain, decode_chain_backward, encode_chain, GaussianHeads};
use crate::loss::Reduction;
use crate::nn::{
    Activation, ActivationLayer, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Layer, Linear, Mode, Module, Param,
    Sequential, Unflatten,
};
use crate::vae::{DiagGaussian, KlEstimator, Likelihood, LossConfig, Objective, PosteriorForm, Vae, VaeLayout};
use crate::{Error, Float, Result};

/// The notebook's `VAE(latent_dim)` with its `state_dict` names (`encoder.0.weight`,
/// `encoder.2.*`, `encoder.4.*`, `fc_mu.*`, `fc_logvar.*`, `fc_decode.*`, `decoder.1.*`,
/// `decoder.3.*`, `decoder.5.*`).
pub struct StridedVae<F> {
    /// Image to 512 features.
    pub encoder: Sequential<F>,
    /// `fc_mu` and `fc_logvar`: features to the posterior's mean and log variance.
    pub heads: GaussianHeads<F>,
    /// Code to pixel means in [0, 1]: `fc_decode`, then the transposed convolutions.
    pub decoder: Sequential<F>,
    image: [usize; 3],
    latent: usize,
}

impl<F: Float> Clone for StridedVae<F> {
    fn clone(&self) -> Self {
        StridedVae {
            encoder: self.encoder.clone(),
            heads: self.heads.clone(),
            decoder: self.decoder.clone(),
            image: self.image,
            latent: self.latent,
        }
    }
}

impl<F: Float> StridedVae<F> {
    /// A VAE for `[c, 28, 28]` images with `latent` dimensions (the notebook: 1 channel, 32).
    pub fn new<R: Rng + ?Sized>(image: [usize; 3], latent: usize, rng: &mut R) -> Result<Self> {
        let [c, h, w] = image;
        if latent == 0 || c == 0 || h != 28 || w != 28 {
            return Err(Error::InvalidArgument(format!(
                "StridedVae: image {image:?} must be [c, 28, 28] and latent ({latent}) >= 1"
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
        let heads = GaussianHeads::new(("fc_mu", "fc_logvar"), 512, latent, rng);
        let decoder = Sequential::new()
            .push(Linear::new("fc_decode", latent, 512, true, rng))
            .push(Unflatten::new(&[32, 4, 4]))
            .push(ConvTranspose2d::new("decoder.1", 32, 16, (3, 3), up(0), rng))
            .push(relu())
            .push(ConvTranspose2d::new("decoder.3", 16, 8, (3, 3), up(1), rng))
            .push(relu())
            .push(ConvTranspose2d::new("decoder.5", 8, c, (3, 3), up(1), rng))
            .push(ActivationLayer::new(Activation::Sigmoid));
        Ok(StridedVae {
            encoder,
            heads,
            decoder,
            image,
            latent,
        })
    }
}

impl<F: Float> Module<F> for StridedVae<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.encoder.visit_params(f);
        self.heads.visit_params(f);
        self.decoder.visit_params(f);
    }

    fn visit_buffers(&mut self, _f: &mut dyn FnMut(&str, ArrayViewMutD<F>)) {}
}

impl<F: Float> Vae<F> for StridedVae<F> {
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

    fn likelihood(&self) -> Likelihood<F> {
        Likelihood::SquaredError
    }

    fn layout(&self) -> Option<VaeLayout> {
        Some(VaeLayout {
            learned_log_sig_x: false,
            encoder: self.encoder.spec().flattened(),
            posterior: PosteriorForm::LinearHeads {
                features: self.heads.mu.in_features(),
            },
            decoder: self.decoder.spec().flattened(),
        })
    }

    /// Every image's loss depends on that image alone (no BatchNorm): a copy can take
    /// part of a batch.
    fn replica(&self) -> Option<Box<dyn Vae<F>>> {
        Some(Box::new(self.clone()))
    }

    fn recipe(&self) -> LossConfig {
        LossConfig {
            objective: Objective::Elbo { samples: 1, beta: 1.0 },
            kl: KlEstimator::Closed,
            reduction: Reduction::Sum,
        }
    }
}
