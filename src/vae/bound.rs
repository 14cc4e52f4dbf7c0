//! Bounds on log p(x) from per-sample log-weights `log w = log p(x|z) + log p(z) - log q(z|x)`:
//! the ELBO (their mean) and the importance-weighted bound (IWAE, their log-mean-exp).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Zip};

use crate::{Error, Float, Result};

/// Which bound a VAE is trained on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// The ELBO with `samples` draws of z per image and the KL term weighted by `beta`
    /// (`beta = 1` is the ELBO proper, `beta > 1` the beta-VAE).
    Elbo {
        /// Samples of z per image (>= 1).
        samples: usize,
        /// Weight of the KL term.
        beta: f64,
    },
    /// The importance-weighted bound with `samples` importance samples (`samples = 1` is the
    /// ELBO). Tighter as `samples` grows; as an estimate it is the IWAE-k log-likelihood.
    Iwae {
        /// Importance samples per image (>= 1).
        samples: usize,
    },
    /// The importance-weighted bound, its encoder gradient by the doubly reparameterised
    /// estimator (DReG, Tucker, Lawson, Gu & Maddison 2018): the gradient of
    /// `-sum_k w~_k^2 log w_k` with the normalised weights `w~` held fixed and q's own
    /// parameters held fixed inside `log q(z|x)` (z keeps its dependence through the
    /// sample). The same bound as [`Objective::Iwae`] and the same decoder gradient; an
    /// encoder gradient whose variance does not grow with `samples`. It needs a decoder
    /// that treats each sample on its own ([`super::Vae::decoder_is_per_sample`]).
    IwaeDreg {
        /// Importance samples per image (>= 1).
        samples: usize,
    },
}

impl Objective {
    /// Samples of z drawn per image.
    pub fn samples(&self) -> usize {
        match *self {
            Objective::Elbo { samples, .. } | Objective::Iwae { samples } | Objective::IwaeDreg { samples } => samples,
        }
    }

    /// An error unless `samples >= 1` and `beta` is finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        if self.samples() == 0 {
            return Err(Error::InvalidArgument("objective: samples must be at least 1".into()));
        }
        if let Objective::Elbo { beta, .. } = *self {
            if !(beta.is_finite() && beta >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "objective: beta = {beta} must be finite and >= 0"
                )));
            }
        }
        Ok(())
    }
}

/// Each image's bound from its log-weights `[b, k]` (the ELBO: their mean; IWAE: their
/// log-mean-exp) and its gradient with respect to them, `[b, k]` (`1/k`, or the
/// normalised importance weights).
pub fn bound_of_log_weights<F: Float>(log_w: ArrayView2<F>, objective: Objective) -> Result<(Array1<F>, Array2<F>)> {
    let (b, k) = log_w.dim();
    Ok(match objective {
        Objective::Elbo { .. } => (
            log_w.mean_axis(ndarray::Axis(1)).expect("k >= 1"),
            Array2::from_elem((b, k), F::one() / F::lit(k as f64)),
        ),
        Objective::Iwae { .. } | Objective::IwaeDreg { .. } => (
            log_mean_exp(log_w),
            log_mean_exp_backward(log_w, Array1::ones(b).view())?,
        ),
    })
}

/// `log (1/k sum_j exp(log_w[i, j]))` for each row, computed stably by shifting by the row
/// maximum: `[b]`. A row whose weights are all `-inf` gives `-inf`.
pub fn log_mean_exp<F: Float>(log_w: ArrayView2<F>) -> Array1<F> {
    let k = F::lit(log_w.ncols() as f64);
    log_w
        .rows()
        .into_iter()
        .map(|row| {
            let m = row.fold(F::neg_infinity(), |m, &v| m.max(v));
            if m == F::neg_infinity() || !m.is_finite() {
                return m;
            }
            m + (row.fold(F::zero(), |s, &v| s + (v - m).exp()) / k).ln()
        })
        .collect()
}

/// Backward of [`log_mean_exp`] with upstream `dv` `[b]`: `dv[i]` times the normalised
/// importance weights `softmax(log_w[i])`, `[b, k]`.
pub fn log_mean_exp_backward<F: Float>(log_w: ArrayView2<F>, dv: ArrayView1<F>) -> Result<Array2<F>> {
    if dv.len() != log_w.nrows() {
        return Err(Error::shape(
            "log_mean_exp_backward dv",
            format!("[{}]", log_w.nrows()),
            dv.shape(),
        ));
    }
    let mut g = log_w.to_owned();
    Zip::from(g.rows_mut()).and(&dv).for_each(|mut row, &d| {
        let m = row.fold(F::neg_infinity(), |m, &v| m.max(v));
        if !m.is_finite() {
            row.fill(F::zero());
            return;
        }
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|w| d * w / s);
    });
    Ok(g)
}
