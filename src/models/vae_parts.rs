//! Pieces the VAE models share: an encoder chain to flat features, the two Linear heads
//! from features to the posterior's mean and log variance, and a decoder chain from codes
//! to images, each with its backward.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Ix2, Ix4};
use rand::Rng;

use crate::nn::{Layer, Linear, Mode, Module, Param, Sequential};
use crate::vae::DiagGaussian;
use crate::{Float, Result};

/// Images `[b, c, h, w]` through `encoder` (ending in a Flatten or a Linear) to `[b, d]`.
pub(crate) fn encode_chain<F: Float>(encoder: &mut Sequential<F>, x: ArrayView4<F>, mode: Mode) -> Result<Array2<F>> {
    let h = encoder.forward(x.to_owned().into_dyn(), mode)?;
    Ok(h.into_dimensionality::<Ix2>().expect("encoder ends in flat features"))
}

/// Codes `[m, K]` through `decoder` to images `[m, c, h, w]`.
pub(crate) fn decode_chain<F: Float>(decoder: &mut Sequential<F>, z: ArrayView2<F>, mode: Mode) -> Result<Array4<F>> {
    let y = decoder.forward(z.to_owned().into_dyn(), mode)?;
    Ok(y.into_dimensionality::<Ix4>().expect("decoder ends in images"))
}

/// Backward of [`decode_chain`]: the gradient with respect to the codes.
pub(crate) fn decode_chain_backward<F: Float>(decoder: &mut Sequential<F>, dout: Array4<F>) -> Result<Array2<F>> {
    let dz = decoder.backward(dout.into_dyn(), true)?.expect("asked for dz");
    Ok(dz.into_dimensionality::<Ix2>().expect("codes"))
}

/// Two Linear layers from shared features to `mu` and `logvar`.
#[derive(Debug, Clone)]
pub struct GaussianHeads<F> {
    /// Features to means.
    pub mu: Linear<F>,
    /// Features to log variances.
    pub logvar: Linear<F>,
}

impl<F: Float> GaussianHeads<F> {
    /// Heads named `mu_name` and `logvar_name` (their `state_dict` prefixes).
    pub(crate) fn new<R: Rng + ?Sized>(
        (mu_name, logvar_name): (&str, &str),
        features: usize,
        latent: usize,
        rng: &mut R,
    ) -> Self {
        GaussianHeads {
            mu: Linear::new(mu_name, features, latent, true, rng),
            logvar: Linear::new(logvar_name, features, latent, true, rng),
        }
    }

    /// q(z|x) from features `[b, d]` (keeps the features for backward).
    pub(crate) fn forward(&mut self, h: ArrayView2<F>) -> Result<DiagGaussian<F>> {
        DiagGaussian::new(self.mu.forward2(h)?, self.logvar.forward2(h)?)
    }

    /// The gradient with respect to the features, from those with respect to `mu` and `logvar`.
    pub(crate) fn backward(&mut self, dmu: Array2<F>, dlogvar: Array2<F>) -> Result<Array2<F>> {
        let mut dh = self.mu.backward2(dmu.view(), true)?.expect("asked for dx");
        dh += &self.logvar.backward2(dlogvar.view(), true)?.expect("asked for dx");
        Ok(dh)
    }
}

impl<F: Float> Module<F> for GaussianHeads<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.mu.visit_params(f);
        self.logvar.visit_params(f);
    }
}
