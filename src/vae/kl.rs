//! KL(q || p) from the posterior to the prior p(z) = N(0, I): the closed form, the
//! CIS-522 Monte-Carlo estimate, and the per-sample log ratio `log q(z) - log p(z)` that
//! the Monte-Carlo ELBO and the importance-weighted bound are built from.
//!
//! The `0.5 log 2 pi` terms of q and p cancel in every quantity here.

use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis, Zip};

use super::DiagGaussian;
use crate::{Error, Float, Result};

/// Closed-form `KL(N(mu, e^logvar) || N(0, I)) = 1/2 sum_k (mu^2 + e^logvar - 1 - logvar)`
/// for each row: `[b]`. `e^logvar - 1` is computed as `expm1`, so that the KL of a
/// posterior a hair away from the prior is that hair, not rounding noise.
pub fn kl_diag<F: Float>(q: &DiagGaussian<F>) -> Array1<F> {
    let half = F::lit(0.5);
    let mut kl = Array1::zeros(q.batch());
    Zip::from(&mut kl)
        .and(q.mu.rows())
        .and(q.logvar.rows())
        .for_each(|kl, mu, lv| {
            *kl = half
                * Zip::from(&mu)
                    .and(&lv)
                    .fold(F::zero(), |acc, &m, &v| acc + m * m + (v.exp_m1() - v));
        });
    kl
}

/// Closed-form KL of the CIS-522 isotropic posterior, `phi = (mu, log sigma)` `[b, K+1]`:
/// `1/2 (|mu|^2 + K (sigma^2 - 1 - 2 log sigma))` for each row, `[b]`.
pub fn kl_isotropic<F: Float>(phi: ArrayView2<F>) -> Result<Array1<F>> {
    let (_, k1) = phi.dim();
    if k1 < 2 {
        return Err(Error::shape("kl_isotropic phi", "[batch, K+1], K >= 1", phi.shape()));
    }
    let half = F::lit(0.5);
    let k = F::lit((k1 - 1) as f64);
    Ok(phi
        .rows()
        .into_iter()
        .map(|row| {
            let two_ls = row[k1 - 1] + row[k1 - 1];
            let mu2 = row.slice(s![..k1 - 1]).fold(F::zero(), |a, &m| a + m * m);
            half * (mu2 + k * (two_ls.exp_m1() - two_ls))
        })
        .collect())
}

/// Backward of [`kl_diag`] with upstream `dkl` `[b]`: *adds* `dkl * mu` to `dmu` and
/// `dkl * (e^logvar - 1) / 2` to `dlogvar`.
///
/// ```
/// use latent::vae::{kl_diag, kl_diag_backward, DiagGaussian};
/// use ndarray::{array, Array2};
///
/// // Two posteriors over K = 2: the prior itself, and one moved off it.
/// let q = DiagGaussian::new(array![[0.0, 0.0], [1.0, -2.0]], array![[0.0, 0.0], [0.5, -1.0]])?;
/// let kl = kl_diag(&q);
/// assert_eq!(kl[0], 0.0);
/// let want = 0.5 * (1.0 + 4.0 + (0.5_f64.exp() - 1.0 - 0.5) + ((-1.0_f64).exp() - 1.0 + 1.0));
/// assert!((kl[1] - want).abs() < 1e-12);
///
/// let (mut dmu, mut dlogvar) = (Array2::zeros((2, 2)), Array2::zeros((2, 2)));
/// kl_diag_backward(&q, array![1.0, 1.0].view(), &mut dmu, &mut dlogvar)?;
/// assert_eq!(dmu, q.mu); // dKL/dmu = mu
/// assert!((dlogvar[[1, 0]] - 0.5 * 0.5_f64.exp_m1()).abs() < 1e-15); // (e^logvar - 1) / 2
/// # Ok::<(), latent::Error>(())
/// ```
pub fn kl_diag_backward<F: Float>(
    q: &DiagGaussian<F>,
    dkl: ArrayView1<F>,
    dmu: &mut Array2<F>,
    dlogvar: &mut Array2<F>,
) -> Result<()> {
    if dkl.len() != q.batch() {
        return Err(Error::shape(
            "kl_diag_backward dkl",
            format!("[{}]", q.batch()),
            dkl.shape(),
        ));
    }
    let half = F::lit(0.5);
    for (i, &d) in dkl.iter().enumerate() {
        Zip::from(dmu.row_mut(i)).and(q.mu.row(i)).for_each(|g, &m| *g += d * m);
        Zip::from(dlogvar.row_mut(i))
            .and(q.logvar.row(i))
            .for_each(|g, &v| *g += d * half * v.exp_m1());
    }
    Ok(())
}

fn check_phi_zs<F: Float>(phi: &ArrayView2<F>, zs: &ArrayView3<F>) -> Result<()> {
    let (b, k1) = phi.dim();
    if k1 < 2 {
        return Err(Error::shape("kl_mc_isotropic phi", "[batch, K+1], K >= 1", phi.shape()));
    }
    if zs.dim().0 != b || zs.dim().2 != k1 - 1 || zs.dim().1 == 0 {
        return Err(Error::shape(
            "kl_mc_isotropic zs",
            format!("[{b}, n >= 1, {}]", k1 - 1),
            zs.shape(),
        ));
    }
    Ok(())
}

/// The CIS-522 Monte-Carlo KL: with `phi = (mu, log sigma)` `[b, K+1]` and samples `zs`
/// `[b, n, K]` of q, the mean over batch and samples of
/// `sum_k [(-(z - mu)^2 / (2 sigma^2) - log sigma) - (-z^2 / 2)]`.
pub fn kl_mc_isotropic<F: Float>(phi: ArrayView2<F>, zs: ArrayView3<F>) -> Result<F> {
    check_phi_zs(&phi, &zs)?;
    let (b, n, k) = zs.dim();
    let half = F::lit(0.5);
    let mut total = F::zero();
    for (z_i, phi_i) in zs.outer_iter().zip(phi.outer_iter()) {
        let log_sig = phi_i[k];
        let inv_var = (-(log_sig + log_sig)).exp();
        let mu = phi_i.slice(s![..k]);
        for z in z_i.outer_iter() {
            total += Zip::from(&z).and(&mu).fold(F::zero(), |acc, &z, &m| {
                acc - half * (z - m) * (z - m) * inv_var - log_sig + half * z * z
            });
        }
    }
    Ok(total / F::lit((b * n) as f64))
}

/// Partial derivatives of [`kl_mc_isotropic`] times `dvalue`, holding the other argument
/// fixed: `(d/dphi, d/dzs)`. When `zs` was drawn by reparameterisation from `phi`, pass
/// `d/dzs` through [`DiagGaussian::rsample_backward`] and add to get the total gradient.
pub fn kl_mc_isotropic_backward<F: Float>(
    phi: ArrayView2<F>,
    zs: ArrayView3<F>,
    dvalue: F,
) -> Result<(Array2<F>, Array3<F>)> {
    check_phi_zs(&phi, &zs)?;
    let (b, n, k) = zs.dim();
    let c = dvalue / F::lit((b * n) as f64);
    let mut dphi = Array2::zeros((b, k + 1));
    let mut dzs = Array3::zeros((b, n, k));
    for i in 0..b {
        let log_sig = phi[[i, k]];
        let inv_var = (-(log_sig + log_sig)).exp();
        for j in 0..n {
            for l in 0..k {
                let (z, m) = (zs[[i, j, l]], phi[[i, l]]);
                let r = (z - m) * inv_var;
                // d/dz of -(z-m)^2/(2 s^2) + z^2/2; d/dm and d/dlog s of the same.
                dzs[[i, j, l]] = c * (z - r);
                dphi[[i, l]] += c * r;
                dphi[[i, k]] += c * ((z - m) * r - F::one());
            }
        }
    }
    Ok((dphi, dzs))
}

/// `log q(z) - log p(z)` at the reparameterised samples `z = mu + std * eps`, `[b, n]`:
/// `sum_k (-logvar_k / 2 - eps_k^2 / 2 + z_k^2 / 2)`. Its Monte-Carlo mean is KL(q || p).
pub fn log_ratio<F: Float>(q: &DiagGaussian<F>, eps: ArrayView3<F>, z: ArrayView3<F>) -> Result<Array2<F>> {
    let (b, n, k) = eps.dim();
    if (b, k) != q.mu.dim() || z.dim() != eps.dim() {
        return Err(Error::shape(
            "log_ratio eps / z",
            format!("[{}, n, {}] both", q.batch(), q.dim()),
            eps.shape(),
        ));
    }
    let half = F::lit(0.5);
    let mut out = Array2::zeros((b, n));
    for i in 0..b {
        let lv_sum = q.logvar.row(i).sum();
        for j in 0..n {
            let e = eps.slice(s![i, j, ..]);
            let zz = z.slice(s![i, j, ..]);
            out[[i, j]] = -half * lv_sum
                + Zip::from(&e)
                    .and(&zz)
                    .fold(F::zero(), |acc, &e, &z| acc + half * (z * z - e * e));
        }
    }
    Ok(out)
}

/// Backward of [`log_ratio`] with upstream `dr` `[b, n]`. With `eps` held fixed, `log q`
/// at its own sample does not depend on `mu` and depends on `logvar` only through
/// `-logvar / 2`; `log p` depends on `z`. So this *adds* `-sum_j dr / 2` to `dlogvar` and
/// returns `d/dz = dr * z` `[b, n, K]`, to be passed through
/// [`DiagGaussian::rsample_backward`].
pub fn log_ratio_backward<F: Float>(z: ArrayView3<F>, dr: ArrayView2<F>, dlogvar: &mut Array2<F>) -> Result<Array3<F>> {
    let (b, n, _) = z.dim();
    if dr.dim() != (b, n) || dlogvar.nrows() != b {
        return Err(Error::shape("log_ratio_backward dr", format!("[{b}, {n}]"), dr.shape()));
    }
    let half = F::lit(0.5);
    for (mut g, d) in dlogvar.outer_iter_mut().zip(dr.outer_iter()) {
        let s = half * d.sum();
        g.mapv_inplace(|v| v - s);
    }
    let mut dz = z.to_owned();
    Zip::from(dz.lanes_mut(Axis(2)))
        .and(&dr)
        .for_each(|mut lane, &d| lane.mapv_inplace(|z| z * d));
    Ok(dz)
}
