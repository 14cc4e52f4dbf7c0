//! CIS-522's linear autoencoder: `Linear(dim, K)` then `Linear(K, dim)`, no nonlinearity.
//! Trained with MSE it can at best reach PCA's reconstruction error with K components.

use ndarray::{Array2, ArrayView2};
use rand::Rng;

use crate::loss::{mse_grad, mse_loss, Reduction};
use crate::nn::{Linear, Module, Param};
use crate::optim::Adam;
use crate::{Error, Float, Result};

/// Linear encoder `enc_lin` and decoder `dec_lin`, as the notebook's `LinearAutoEncoder`.
#[derive(Debug, Clone)]
pub struct LinearAe<F> {
    /// `dim -> K`.
    pub enc_lin: Linear<F>,
    /// `K -> dim`.
    pub dec_lin: Linear<F>,
}

impl<F: Float> LinearAe<F> {
    /// A model for `dim`-pixel images and `k` latent dimensions, PyTorch-initialised.
    pub fn new<R: Rng + ?Sized>(dim: usize, k: usize, rng: &mut R) -> Result<Self> {
        if k == 0 || dim == 0 {
            return Err(Error::InvalidArgument(format!("LinearAe: dim = {dim} and K = {k} must be positive")));
        }
        Ok(LinearAe {
            enc_lin: Linear::new("enc_lin", dim, k, true, rng),
            dec_lin: Linear::new("dec_lin", k, dim, true, rng),
        })
    }

    /// Codes `[n, K]` of images `[n, dim]`.
    pub fn encode(&self, x: ArrayView2<F>) -> Result<Array2<F>> {
        self.enc_lin.infer(x)
    }

    /// Images `[n, dim]` from codes `[n, K]`.
    pub fn decode(&self, h: ArrayView2<F>) -> Result<Array2<F>> {
        self.dec_lin.infer(h)
    }

    /// Reconstructions of `x`.
    pub fn reconstruct(&self, x: ArrayView2<F>) -> Result<Array2<F>> {
        self.decode(self.encode(x)?.view())
    }

    /// Forward, MSE (mean per pixel) against the input itself, backward; returns the loss.
    /// Gradients are zeroed first; the optimizer step is the caller's.
    pub fn loss_and_grad(&mut self, x: ArrayView2<F>) -> Result<F> {
        self.zero_grad();
        let h = self.enc_lin.forward2(x)?;
        let y = self.dec_lin.forward2(h.view())?;
        let loss = mse_loss(y.view(), x, Reduction::Mean)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite("LinearAe training loss".into()));
        }
        let dy = mse_grad(y.view(), x, Reduction::Mean)?;
        let dh = self.dec_lin.backward2(dy.view(), true)?.expect("asked for dx");
        // The input's gradient is never needed: skip that GEMM.
        self.enc_lin.backward2(dh.view(), false)?;
        Ok(loss)
    }

    /// One training step: [`LinearAe::loss_and_grad`] then `opt.step`.
    pub fn train_step(&mut self, x: ArrayView2<F>, opt: &mut Adam<F>) -> Result<F> {
        let loss = self.loss_and_grad(x)?;
        opt.step(self)?;
        Ok(loss)
    }
}

impl<F: Float> Module<F> for LinearAe<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.enc_lin.visit_params(f);
        self.dec_lin.visit_params(f);
    }
}
