//! The approximate posterior q(z|x): a diagonal Gaussian, its parameterisations and the
//! reparameterised sample `z = mu + exp(logvar / 2) * eps` with its backward.
//!
//! The notebooks parameterise q three ways; all become a [`DiagGaussian`]:
//! - CIS-522: `phi = (mu_1..mu_K, log sigma)`, one sigma for every dimension (isotropic);
//! - the strided VAE and AntixK: `(mu, logvar)`;
//! - the Coursera DCGAN VAE: `(mean, log std)`, exponentiated into a standard deviation.

use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, Axis, Zip};
use rand::Rng;

use crate::{Error, Float, Result};

/// `q(z|x) = N(mu, diag(exp(logvar)))`, one row per input: `mu` and `logvar` are `[b, K]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagGaussian<F> {
    /// Means, `[b, K]`.
    pub mu: Array2<F>,
    /// Log variances, `[b, K]`.
    pub logvar: Array2<F>,
}

impl<F: Float> DiagGaussian<F> {
    /// From means and log variances of the same shape `[b, K]`.
    pub fn new(mu: Array2<F>, logvar: Array2<F>) -> Result<Self> {
        if mu.dim() != logvar.dim() {
            return Err(Error::shape(
                "DiagGaussian logvar",
                format!("{:?} (as mu)", mu.shape()),
                logvar.shape(),
            ));
        }
        Ok(DiagGaussian { mu, logvar })
    }

    /// From the CIS-522 isotropic parameters `phi = [mu_1..mu_K, log sigma]`, `[b, K+1]`.
    pub fn from_isotropic(phi: ArrayView2<F>) -> Result<Self> {
        let (b, k1) = phi.dim();
        if k1 < 2 {
            return Err(Error::shape("isotropic phi", "[batch, K+1] with K >= 1", phi.shape()));
        }
        let mu = phi.slice(s![.., ..k1 - 1]).to_owned();
        let two = F::lit(2.0);
        let logvar = Array2::from_shape_fn((b, k1 - 1), |(i, _)| two * phi[[i, k1 - 1]]);
        Ok(DiagGaussian { mu, logvar })
    }

    /// The gradient with respect to `phi` of a function whose gradients with respect to
    /// this posterior's `mu` and `logvar` are `dmu`, `dlogvar` (`logvar_k = 2 log sigma`
    /// for every k, so `d/d log sigma = 2 sum_k d/d logvar_k`).
    pub fn isotropic_grad(dmu: ArrayView2<F>, dlogvar: ArrayView2<F>) -> Array2<F> {
        let (b, k) = dmu.dim();
        let mut dphi = Array2::zeros((b, k + 1));
        dphi.slice_mut(s![.., ..k]).assign(&dmu);
        let two = F::lit(2.0);
        for (i, row) in dlogvar.outer_iter().enumerate() {
            dphi[[i, k]] = two * row.sum();
        }
        dphi
    }

    /// From `[b, 2K]` rows `(mean, log std)` as the Coursera encoder emits them
    /// (`logvar = 2 log std`).
    pub fn from_mean_log_std(enc: ArrayView2<F>) -> Result<Self> {
        let (_, k2) = enc.dim();
        if k2 < 2 || k2 % 2 != 0 {
            return Err(Error::shape("mean / log std", "[batch, 2K]", enc.shape()));
        }
        let k = k2 / 2;
        let two = F::lit(2.0);
        Ok(DiagGaussian {
            mu: enc.slice(s![.., ..k]).to_owned(),
            logvar: enc.slice(s![.., k..]).mapv(|v| two * v),
        })
    }

    /// The gradient with respect to `(mean, log std)` rows, given `dmu`, `dlogvar`.
    pub fn mean_log_std_grad(dmu: ArrayView2<F>, dlogvar: ArrayView2<F>) -> Array2<F> {
        let two = F::lit(2.0);
        ndarray::concatenate(Axis(1), &[dmu, dlogvar.mapv(|v| two * v).view()]).expect("same batch")
    }

    /// Batch size b.
    pub fn batch(&self) -> usize {
        self.mu.nrows()
    }

    /// Latent dimension K.
    pub fn dim(&self) -> usize {
        self.mu.ncols()
    }

    /// Standard deviations `exp(logvar / 2)`, `[b, K]`.
    pub fn std(&self) -> Array2<F> {
        let half = F::lit(0.5);
        self.logvar.mapv(|v| (half * v).exp())
    }

    /// Standard normal noise `[b, n, K]` for `n` samples per input.
    pub fn sample_eps<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> Array3<F> {
        Array3::from_shape_simple_fn((self.batch(), n, self.dim()), || F::sample_normal(rng))
    }

    fn check_eps(&self, eps: &ArrayView3<F>, what: &str) -> Result<()> {
        let (b, _, k) = eps.dim();
        if (b, k) != self.mu.dim() {
            return Err(Error::shape(
                what.to_string(),
                format!("[{}, n, {}]", self.batch(), self.dim()),
                eps.shape(),
            ));
        }
        Ok(())
    }

    /// The reparameterised samples `z[i, j] = mu[i] + std[i] * eps[i, j]`, `[b, n, K]`.
    pub fn rsample(&self, eps: ArrayView3<F>) -> Result<Array3<F>> {
        self.check_eps(&eps, "rsample eps")?;
        let std = self.std();
        let mut z = eps.to_owned();
        for ((mut zi, mu), sd) in z.outer_iter_mut().zip(self.mu.outer_iter()).zip(std.outer_iter()) {
            for mut zij in zi.outer_iter_mut() {
                Zip::from(&mut zij)
                    .and(&mu)
                    .and(&sd)
                    .for_each(|z, &m, &s| *z = m + s * *z);
            }
        }
        Ok(z)
    }

    /// Backward of [`DiagGaussian::rsample`]: given `dz` `[b, n, K]`, *adds*
    /// `sum_j dz[i, j]` to `dmu` and `sum_j dz[i, j] * std[i] * eps[i, j] / 2` to `dlogvar`.
    pub fn rsample_backward(
        &self,
        eps: ArrayView3<F>,
        dz: ArrayView3<F>,
        dmu: &mut Array2<F>,
        dlogvar: &mut Array2<F>,
    ) -> Result<()> {
        self.check_eps(&eps, "rsample_backward eps")?;
        if dz.dim() != eps.dim() {
            return Err(Error::shape(
                "rsample_backward dz",
                format!("{:?} (as eps)", eps.shape()),
                dz.shape(),
            ));
        }
        let half = F::lit(0.5);
        let std = self.std();
        for i in 0..self.batch() {
            for (e, d) in eps
                .index_axis(Axis(0), i)
                .outer_iter()
                .zip(dz.index_axis(Axis(0), i).outer_iter())
            {
                Zip::from(dmu.row_mut(i)).and(&d).for_each(|g, &d| *g += d);
                Zip::from(dlogvar.row_mut(i))
                    .and(&d)
                    .and(&e)
                    .and(std.row(i))
                    .for_each(|g, &d, &e, &s| *g += half * d * s * e);
            }
        }
        Ok(())
    }
}
