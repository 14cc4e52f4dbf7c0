//! Losses with their gradients: MSE, binary cross-entropy on probabilities and on logits.
//!
//! Each `*_loss` returns the value, each `*_grad` the gradient of that value with respect
//! to the prediction, with PyTorch's reductions.

use ndarray::{Array, ArrayView, Dimension, Zip};

use crate::{Error, Float, Result};

/// How per-element losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Mean over all elements.
    Mean,
    /// Sum over all elements.
    Sum,
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            _ => Err(Error::InvalidArgument(format!("unknown reduction '{s}'"))),
        }
    }
}

impl Reduction {
    pub(crate) fn scale<F: Float>(self, n: usize) -> F {
        match self {
            Reduction::Mean => F::one() / F::lit(n as f64),
            Reduction::Sum => F::one(),
        }
    }
}

fn check_same<F, D: Dimension>(what: &str, pred: &ArrayView<F, D>, target: &ArrayView<F, D>) -> Result<()> {
    if pred.shape() != target.shape() {
        return Err(Error::shape(
            format!("{what} target"),
            format!("{:?} (as pred)", pred.shape()),
            target.shape(),
        ));
    }
    if pred.is_empty() {
        return Err(Error::InvalidArgument(format!("{what}: empty input")));
    }
    Ok(())
}

/// `reduce((pred - target)^2)`.
pub fn mse_loss<F: Float, D: Dimension>(
    pred: ArrayView<F, D>,
    target: ArrayView<F, D>,
    reduction: Reduction,
) -> Result<F> {
    check_same("mse_loss", &pred, &target)?;
    let mut sum = F::zero();
    Zip::from(&pred)
        .and(&target)
        .for_each(|&p, &t| sum += (p - t) * (p - t));
    Ok(sum * reduction.scale(pred.len()))
}

/// Gradient of [`mse_loss`]: `2 (pred - target) * scale`.
pub fn mse_grad<F: Float, D: Dimension>(
    pred: ArrayView<F, D>,
    target: ArrayView<F, D>,
    reduction: Reduction,
) -> Result<Array<F, D>> {
    check_same("mse_grad", &pred, &target)?;
    let c = F::lit(2.0) * reduction.scale::<F>(pred.len());
    Ok(Zip::from(&pred).and(&target).map_collect(|&p, &t| c * (p - t)))
}

/// Binary cross-entropy on probabilities, `-(t log p + (1-t) log(1-p))`, with each log
/// clamped at -100 as `torch.nn.functional.binary_cross_entropy` does.
pub fn bce_loss<F: Float, D: Dimension>(
    prob: ArrayView<F, D>,
    target: ArrayView<F, D>,
    reduction: Reduction,
) -> Result<F> {
    check_same("bce_loss", &prob, &target)?;
    let mut sum = F::zero();
    Zip::from(&prob).and(&target).for_each(|&p, &t| sum += bce_elem(p, t));
    Ok(sum * reduction.scale(prob.len()))
}

/// Gradient of [`bce_loss`]: `(p - t) / max(p (1 - p), 1e-12)`, PyTorch's guarded form.
pub fn bce_grad<F: Float, D: Dimension>(
    prob: ArrayView<F, D>,
    target: ArrayView<F, D>,
    reduction: Reduction,
) -> Result<Array<F, D>> {
    check_same("bce_grad", &prob, &target)?;
    let c = reduction.scale::<F>(prob.len());
    Ok(Zip::from(&prob)
        .and(&target)
        .map_collect(|&p, &t| c * bce_elem_grad(p, t)))
}

/// Binary cross-entropy on logits, computed stably as `max(z, 0) - z t + log(1 + e^{-|z|})`.
pub fn bce_with_logits_loss<F: Float, D: Dimension>(
    logits: ArrayView<F, D>,
    target: ArrayView<F, D>,
    reduction: Reduction,
) -> Result<F> {
    check_same("bce_with_logits_loss", &logits, &target)?;
    let mut sum = F::zero();
    Zip::from(&logits)
        .and(&target)
        .for_each(|&z, &t| sum += bce_logits_elem(z, t));
    Ok(sum * reduction.scale(logits.len()))
}

/// Gradient of [`bce_with_logits_loss`]: `sigmoid(z) - t`.
pub fn bce_with_logits_grad<F: Float, D: Dimension>(
    logits: ArrayView<F, D>,
    target: ArrayView<F, D>,
    reduction: Reduction,
) -> Result<Array<F, D>> {
    check_same("bce_with_logits_grad", &logits, &target)?;
    let c = reduction.scale::<F>(logits.len());
    Ok(Zip::from(&logits)
        .and(&target)
        .map_collect(|&z, &t| c * (sigmoid(z) - t)))
}

/// One element of [`bce_loss`]: `-(t log p + (1-t) log(1-p))`, logs clamped at -100.
#[inline]
pub(crate) fn bce_elem<F: Float>(p: F, t: F) -> F {
    let floor = F::lit(-100.0);
    -(t * p.ln_lanes().max(floor) + (F::one() - t) * (F::one() - p).ln_lanes().max(floor))
}

/// Derivative of [`bce_elem`] in `p`, with PyTorch's guard on the denominator.
#[inline]
pub(crate) fn bce_elem_grad<F: Float>(p: F, t: F) -> F {
    (p - t) / (p * (F::one() - p)).max(F::lit(1e-12))
}

/// One element of [`bce_with_logits_loss`], stable for any logit.
#[inline]
pub(crate) fn bce_logits_elem<F: Float>(z: F, t: F) -> F {
    z.max(F::zero()) - z * t + (-z.abs()).exp_lanes().ln_1p_unit_lanes()
}

/// The logistic function, written to stay finite for any `z`: with `e = e^{-|z|}`,
/// `1 / (1 + e)` for `z >= 0` and `e` times that otherwise. Both sides are computed and one
/// selected, with [`Float::exp_lanes`], so that a loop over it vectorises.
#[inline(always)]
pub fn sigmoid<F: Float>(z: F) -> F {
    let e = (-z.abs()).exp_lanes();
    let pos = F::one() / (F::one() + e);
    let neg = e * pos;
    if z >= F::zero() {
        pos
    } else {
        neg
    }
}
