//! CIS-522's ConvVAE: the conv autoencoder with a `K + 1` head `phi = (mu, log sigma)`
//! (an isotropic Gaussian posterior) and a learned scalar pixel noise `log_sig_x`.
//! Trained on the notebook's `-(log_p_x - kl_q_p)`: the Gaussian log-likelihood without
//! the `0.5 log 2 pi` terms and the Monte-Carlo KL, averaged over the batch.

use ndarray::{Array0, Array2, Array4, ArrayView2, ArrayView4, ArrayViewMutD};
use rand::Rng;

use super::vae_parts::{decode_chain, decode_chain_backward, encode_chain};
use crate::loss::Reduction;
use crate::nn::{
    Activation, ActivationLayer, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Layer, Linear, Mode, Module, Param,
    PixelBias, Sequential, Unflatten,
};
use crate::vae::{DiagGaussian, KlEstimator, Likelihood, LossConfig, Objective, PosteriorForm, Vae, VaeLayout};
use crate::{Error, Float, Result};

/// The notebook's `ConvVAE` with its `state_dict` names (`log_sig_x`, `q_bias.bias`,
/// `q_conv_1.weight`, ..., `q_fc_phi.*`, `p_fc_upsample.*`, `p_deconv_1.*`, `p_deconv_2.*`,
/// `p_bias.bias`).
pub struct ConvVae<F> {
    /// Image to `phi = (mu, log sigma)`, `[b, K + 1]`.
    pub encoder: Sequential<F>,
    /// Code to the mean image.
    pub decoder: Sequential<F>,
    /// `log sigma_x`, one scalar for every pixel (init 0).
    pub log_sig_x: Param<F>,
    image: [usize; 3],
    k: usize,
    phi: Option<Array2<F>>,
}

impl<F: Float> Clone for ConvVae<F> {
    fn clone(&self) -> Self {
        ConvVae {
            encoder: self.encoder.clone(),
            decoder: self.decoder.clone(),
            log_sig_x: self.log_sig_x.clone(),
            image: self.image,
            k: self.k,
            phi: self.phi.clone(),
        }
    }
}

impl<F: Float> ConvVae<F> {
    /// A VAE for `image = [c, h, w]` images and `k` latent dimensions, with `filters`
    /// channels of `kernel x kernel` (the notebook: 32 and 5).
    pub fn new<R: Rng + ?Sized>(
        image: [usize; 3],
        k: usize,
        filters: usize,
        kernel: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let [c, h, w] = image;
        if k == 0 || filters == 0 || kernel == 0 || h < 2 * kernel - 1 || w < 2 * kernel - 1 {
            return Err(Error::InvalidArgument(format!(
                "ConvVae: image {image:?}, K = {k}, {filters} filters of {kernel}x{kernel} do not fit"
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
        Ok(ConvVae {
            encoder,
            decoder,
            log_sig_x: Param::new("log_sig_x", Array0::zeros(()).into_dyn()),
            image,
            k,
            phi: None,
        })
    }

    /// The notebook's configuration for MNIST: 1x28x28 images, 32 filters of 5x5.
    pub fn cis522<R: Rng + ?Sized>(k: usize, rng: &mut R) -> Result<Self> {
        Self::new([1, 28, 28], k, 32, 5, rng)
    }

    /// `phi = (mu, log sigma)` `[b, K + 1]` of the last forward pass through the encoder
    /// (after a [`crate::vae::DataParallel`] step: of the first part of the batch; the
    /// whole batch's posterior is in the step's returned `LossParts`).
    pub fn last_phi(&self) -> Option<&Array2<F>> {
        self.phi.as_ref()
    }

    /// The learned pixel noise `sigma_x`.
    pub fn sigma_x(&self) -> F {
        self.log_sig_x.value.first().copied().unwrap_or_else(F::zero).exp()
    }
}

impl<F: Float> Module<F> for ConvVae<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        // PyTorch lists a module's own parameters before its children's.
        f(&mut self.log_sig_x);
        self.encoder.visit_params(f);
        self.decoder.visit_params(f);
    }

    fn visit_buffers(&mut self, _f: &mut dyn FnMut(&str, ArrayViewMutD<F>)) {}
}

impl<F: Float> Vae<F> for ConvVae<F> {
    fn image_shape(&self) -> [usize; 3] {
        self.image
    }

    fn latent_dim(&self) -> usize {
        self.k
    }

    fn encode(&mut self, x: ArrayView4<F>, mode: Mode) -> Result<DiagGaussian<F>> {
        let phi = encode_chain(&mut self.encoder, x, mode)?;
        let q = DiagGaussian::from_isotropic(phi.view())?;
        self.phi = Some(phi);
        Ok(q)
    }

    fn encode_backward(&mut self, dmu: Array2<F>, dlogvar: Array2<F>) -> Result<()> {
        let dphi = DiagGaussian::isotropic_grad(dmu.view(), dlogvar.view());
        self.encoder.backward(dphi.into_dyn(), false)?;
        Ok(())
    }

    fn decode(&mut self, z: ArrayView2<F>, mode: Mode) -> Result<Array4<F>> {
        decode_chain(&mut self.decoder, z, mode)
    }

    fn decode_backward(&mut self, dout: Array4<F>) -> Result<Array2<F>> {
        decode_chain_backward(&mut self.decoder, dout)
    }

    fn likelihood(&self) -> Likelihood<F> {
        Likelihood::Gaussian {
            log_sig_x: *self.log_sig_x.value.first().expect("scalar"),
            normalised: false,
        }
    }

    fn likelihood_backward(&mut self, dlog_sig_x: F) {
        if let Some(g) = self.log_sig_x.grad.first_mut() {
            *g += dlog_sig_x;
        }
    }

    fn layout(&self) -> Option<VaeLayout> {
        Some(VaeLayout {
            learned_log_sig_x: true,
            encoder: self.encoder.spec().flattened(),
            posterior: PosteriorForm::Isotropic,
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
            kl: KlEstimator::MonteCarlo,
            reduction: Reduction::Mean,
        }
    }
}
