//! The decoder's likelihood p(x|z): log-likelihood of each image under each sample's
//! decoded mean, `[b, n]`, and its backward.

use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis, Zip};

use crate::loss::{bce_elem, bce_elem_grad, bce_logits_elem, sigmoid};
use crate::nn::reduce::sum_map2;
use crate::{Error, Float, Result};

/// `0.5 * ln(2 pi)`.
pub const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

/// How an image is scored against the decoder's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Likelihood<F> {
    /// `N(x; mean, sigma_x^2 I)` with a scalar `log sigma_x` (learned by the CIS-522 ConvVAE).
    /// `normalised: false` is the notebook's form, `-sum((x - mean)^2 / (2 sigma^2) + log
    /// sigma)`, without the `0.5 log 2 pi` per pixel; `true` adds it, giving a density.
    Gaussian {
        /// `log sigma_x`.
        log_sig_x: F,
        /// Include the `-0.5 log 2 pi` term per pixel.
        normalised: bool,
    },
    /// `-sum((x - mean)^2)`: the sum of squared errors of the strided VAE (a Gaussian of
    /// variance 1/2, up to a constant).
    SquaredError,
    /// Bernoulli on probabilities: `-BCE(mean, x)` summed over pixels, logs clamped at -100
    /// as PyTorch's `binary_cross_entropy` (the Coursera lab).
    Bernoulli,
    /// Bernoulli on logits: `-BCEWithLogits(mean, x)`, stable for any logit.
    BernoulliLogits,
}

impl<F: Float> Likelihood<F> {
    /// The mean of p(x|z) from the decoder's output: the output itself, but for
    /// [`Likelihood::BernoulliLogits`], whose logits go through the sigmoid.
    pub fn mean_of<D: ndarray::Dimension>(&self, out: ndarray::Array<F, D>) -> ndarray::Array<F, D> {
        match self {
            Likelihood::BernoulliLogits => out.mapv_into(sigmoid),
            _ => out,
        }
    }

    /// A short description for printed output, e.g. which Gaussian form is reported.
    pub fn describe(&self) -> String {
        match self {
            Likelihood::Gaussian { normalised: false, .. } => {
                "Gaussian, notebook form (without the 0.5 log 2pi term per pixel)".into()
            }
            Likelihood::Gaussian { normalised: true, .. } => "Gaussian, normalised density".into(),
            Likelihood::SquaredError => "sum of squared errors".into(),
            Likelihood::Bernoulli => "Bernoulli (BCE on probabilities)".into(),
            Likelihood::BernoulliLogits => "Bernoulli (BCE on logits)".into(),
        }
    }
}

fn check(x: &ArrayView2<impl Float>, mean: &ArrayView3<impl Float>, what: &str) -> Result<()> {
    let (b, _, d) = mean.dim();
    if x.dim() != (b, d) {
        return Err(Error::shape(
            format!("{what} x"),
            format!("[{b}, {d}] (batch and pixels of the decoded means)"),
            x.shape(),
        ));
    }
    Ok(())
}

/// `log p(x_i | z_ij)` for images `x` `[b, d]` and decoded means `[b, n, d]`: `[b, n]`.
pub fn log_likelihood<F: Float>(like: Likelihood<F>, x: ArrayView2<F>, mean: ArrayView3<F>) -> Result<Array2<F>> {
    check(&x, &mean, "log_likelihood")?;
    let (b, n, d) = mean.dim();
    let mut out = Array2::zeros((b, n));
    // The match outside the loops, so that each per-pixel term is inlined into its own
    // loop and vectorises (the BCE's logs included, through `Float::ln_lanes`).
    let rows = |term: &dyn Fn(ArrayView1<F>, ArrayView1<F>) -> F, out: &mut Array2<F>| {
        for ((xi, mi), mut oi) in x.outer_iter().zip(mean.outer_iter()).zip(out.outer_iter_mut()) {
            for (m, o) in mi.outer_iter().zip(oi.iter_mut()) {
                *o = term(xi, m);
            }
        }
    };
    match like {
        Likelihood::Gaussian { log_sig_x, normalised } => {
            let inv_2var = F::lit(0.5) * (-(log_sig_x + log_sig_x)).exp();
            let c = (log_sig_x + if normalised { F::lit(HALF_LN_2PI) } else { F::zero() }) * F::lit(d as f64);
            rows(
                &|x, m| -(row_sum(x, m, |x, m| (x - m) * (x - m)) * inv_2var) - c,
                &mut out,
            )
        }
        Likelihood::SquaredError => rows(&|x, m| -row_sum(x, m, |x, m| (x - m) * (x - m)), &mut out),
        Likelihood::Bernoulli => rows(&|x, p| -row_sum(x, p, |x, p| bce_elem(p, x)), &mut out),
        Likelihood::BernoulliLogits => rows(&|x, z| -row_sum(x, z, |x, z| bce_logits_elem(z, x)), &mut out),
    }
    Ok(out)
}

/// `sum_k f(x[k], m[k])`, in lane sums when both rows are contiguous.
#[inline(always)]
fn row_sum<F: Float>(x: ArrayView1<F>, m: ArrayView1<F>, f: impl Fn(F, F) -> F) -> F {
    match (x.as_slice(), m.as_slice()) {
        (Some(a), Some(b)) => sum_map2(a, b, f),
        _ => Zip::from(&x).and(&m).fold(F::zero(), |acc, &x, &m| acc + f(x, m)),
    }
}

/// Backward of [`log_likelihood`] with upstream `dll` `[b, n]`: the gradient with respect
/// to the means `[b, n, d]`, and with respect to `log sigma_x` (zero unless Gaussian).
pub fn log_likelihood_backward<F: Float>(
    like: Likelihood<F>,
    x: ArrayView2<F>,
    mean: ArrayView3<F>,
    dll: ArrayView2<F>,
) -> Result<(Array3<F>, F)> {
    check(&x, &mean, "log_likelihood_backward")?;
    let (b, n, d) = mean.dim();
    if dll.dim() != (b, n) {
        return Err(Error::shape(
            "log_likelihood_backward dll",
            format!("[{b}, {n}]"),
            dll.shape(),
        ));
    }
    let two = F::lit(2.0);
    let mut dmean = Array3::zeros((b, n, d));
    let mut dlog_sig = F::zero();
    for i in 0..b {
        let xi = x.row(i);
        for j in 0..n {
            let g = dll[[i, j]];
            let m = mean.index_axis(Axis(0), i);
            let m = m.row(j);
            let mut dm = dmean.index_axis_mut(Axis(0), i);
            let dm = dm.row_mut(j);
            let z = Zip::from(dm).and(&xi).and(&m);
            match like {
                Likelihood::Gaussian { log_sig_x, .. } => {
                    let inv_var = (-(log_sig_x + log_sig_x)).exp();
                    let mut sse = F::zero();
                    z.for_each(|o, &x, &m| {
                        *o = g * (x - m) * inv_var;
                        sse += (x - m) * (x - m);
                    });
                    // d/d log s of -(sse / 2) e^{-2 log s} - d log s.
                    dlog_sig += g * (sse * inv_var - F::lit(d as f64));
                }
                Likelihood::SquaredError => z.for_each(|o, &x, &m| *o = g * two * (x - m)),
                Likelihood::Bernoulli => z.for_each(|o, &x, &p| *o = -g * bce_elem_grad(p, x)),
                Likelihood::BernoulliLogits => z.for_each(|o, &x, &l| *o = -g * (sigmoid(l) - x)),
            }
        }
    }
    Ok((dmean, dlog_sig))
}

/// The CIS-522 `log_p_x`: the notebook-form Gaussian log-likelihood summed over pixels,
/// averaged over batch and samples. `x` `[b, d]`, `mu_xs` `[b, n, d]`.
pub fn log_p_x_gaussian<F: Float>(x: ArrayView2<F>, mu_xs: ArrayView3<F>, log_sig_x: F) -> Result<F> {
    let like = Likelihood::Gaussian {
        log_sig_x,
        normalised: false,
    };
    let ll = log_likelihood(like, x, mu_xs)?;
    Ok(ll.mean().unwrap_or_else(F::zero))
}

/// Backward of [`log_p_x_gaussian`] with upstream `dvalue`: `(d/dmu_xs, d/dlog_sig_x)`.
pub fn log_p_x_gaussian_backward<F: Float>(
    x: ArrayView2<F>,
    mu_xs: ArrayView3<F>,
    log_sig_x: F,
    dvalue: F,
) -> Result<(Array3<F>, F)> {
    let (b, n, _) = mu_xs.dim();
    let like = Likelihood::Gaussian {
        log_sig_x,
        normalised: false,
    };
    let up = Array2::from_elem((b, n), dvalue / F::lit((b * n).max(1) as f64));
    log_likelihood_backward(like, x, mu_xs, up.view())
}
