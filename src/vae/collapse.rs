//! Posterior collapse, measured: how much the posterior mean `E_q[z|x]` varies over the
//! images. A latent dimension whose mean is the same for every image carries no
//! information about x; when none varies the decoder can only learn the mean image.

use ndarray::{Array1, ArrayView2};

use crate::{Error, Float, Result};

/// The threshold on `Var_x E_q[z_k]` above which Burda, Grosse and Salakhutdinov (2016,
/// "Importance Weighted Autoencoders") count a latent dimension as active.
pub const ACTIVE_UNIT_THRESHOLD: f64 = 0.01;

/// `Var_x E_q[z_k]` for each latent dimension k: the variance over the rows of the posterior
/// means `mu` `[n, K]` (population variance, in f64). Needs at least one row.
pub fn posterior_mean_variance<F: Float>(mu: ArrayView2<F>) -> Result<Array1<f64>> {
    let n = mu.nrows();
    if n == 0 {
        return Err(Error::shape("posterior_mean_variance mu", "[n >= 1, K]", mu.shape()));
    }
    let mut mean = Array1::<f64>::zeros(mu.ncols());
    for row in mu.rows() {
        mean.zip_mut_with(&row, |m, &x| *m += x.to_f64_lossless());
    }
    mean /= n as f64;
    // Two passes: the variance of a nearly constant column stays accurate.
    let mut var = Array1::<f64>::zeros(mu.ncols());
    for row in mu.rows() {
        ndarray::Zip::from(&mut var)
            .and(&row)
            .and(&mean)
            .for_each(|v, &x, &m| *v += (x.to_f64_lossless() - m).powi(2));
    }
    Ok(var / n as f64)
}

/// The number of active latent dimensions: those with `Var_x E_q[z_k] > threshold`
/// ([`ACTIVE_UNIT_THRESHOLD`] in the IWAE paper). Zero means the posterior has collapsed
/// onto one distribution for every image.
pub fn active_units<F: Float>(mu: ArrayView2<F>, threshold: f64) -> Result<usize> {
    Ok(posterior_mean_variance(mu)?.iter().filter(|&&v| v > threshold).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn variance_per_dimension() {
        // Column 0 constant, column 1 takes 1 and 3 (variance 1), column 2 takes 0 and 0.1
        // (variance 0.0025).
        let mu = array![[5.0f64, 1.0, 0.0], [5.0, 3.0, 0.1]];
        let v = posterior_mean_variance(mu.view()).unwrap();
        assert_eq!(v[0], 0.0);
        assert!((v[1] - 1.0).abs() < 1e-15);
        assert!((v[2] - 0.0025).abs() < 1e-15);
        assert_eq!(active_units(mu.view(), ACTIVE_UNIT_THRESHOLD).unwrap(), 1);
        assert_eq!(active_units(mu.view(), 0.001).unwrap(), 2);
    }

    #[test]
    fn empty_batch_is_an_error() {
        let mu = ndarray::Array2::<f32>::zeros((0, 4));
        assert!(posterior_mean_variance(mu.view()).is_err());
    }
}
