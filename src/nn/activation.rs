//! Element-wise activations: ReLU, LeakyReLU(slope), Sigmoid, Tanh.

use ndarray::{ArrayD, ArrayViewD, Zip};
use rayon::prelude::*;

use super::{Layer, Mode, Module, Param};
use crate::loss::sigmoid;
use crate::tuning;
use crate::{Error, Float, Result};

/// Which activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x > 0`, `slope * x` otherwise.
    LeakyRelu(f64),
    /// `1 / (1 + e^{-x})`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
}

/// `f` over `x`, in parallel for large arrays.
fn map<F: Float>(x: ArrayViewD<F>, f: impl Fn(F) -> F + Sync + Send) -> ArrayD<F> {
    if x.len() >= tuning::ACTIVATION_PAR_MIN {
        Zip::from(&x).par_map_collect(|&v| f(v))
    } else {
        x.mapv(f)
    }
}

/// `g = f(saved, g)` in place over `dy`, in parallel for large arrays.
fn map_grad<F: Float>(saved: ArrayViewD<F>, dy: &mut ArrayD<F>, f: impl Fn(F, F) -> F + Sync + Send) {
    let z = Zip::from(dy).and(&saved);
    if saved.len() >= tuning::ACTIVATION_PAR_MIN {
        z.par_for_each(|g, &s| *g = f(s, *g));
    } else {
        z.for_each(|g, &s| *g = f(s, *g));
    }
}

/// A rectifier at `z`: `z` where positive, elsewhere `slope z`, or a plain zero for ReLU
/// (`slope` None; not `0 z`, which is `-0` or NaN for some `z`), as PyTorch's. Both sides
/// are computed and one selected, so that loops over it vectorise.
#[inline(always)]
pub(crate) fn rectify<F: Float>(z: F, slope: Option<F>) -> F {
    let negative = slope.map_or(F::zero(), |s| s * z);
    if z > F::zero() {
        z
    } else {
        negative
    }
}

/// [`rectify`] on eight lanes at once, selected by [`Float::select_lanes`]: the form the
/// crate's loops over activations use.
#[inline(always)]
pub(crate) fn rectify_lanes<F: Float>(z: [F; 8], slope: Option<F>) -> [F; 8] {
    let negative = std::array::from_fn(|l| slope.map_or(F::zero(), |s| s * z[l]));
    F::select_lanes(std::array::from_fn(|l| z[l] > F::zero()), z, negative)
}

/// [`rectify_grad`] on eight lanes at once, given whether each input was positive.
#[inline(always)]
pub(crate) fn rectify_grad_lanes<F: Float>(positive: [bool; 8], g: [F; 8], slope: Option<F>) -> [F; 8] {
    let negative = std::array::from_fn(|l| slope.map_or(F::zero(), |s| s * g[l]));
    F::select_lanes(positive, g, negative)
}

/// A rectifier's gradient at input `z` for output gradient `g`: `g` where `z > 0`,
/// elsewhere `slope g` (zero for ReLU), as PyTorch's; selected as [`rectify`].
#[inline(always)]
pub(crate) fn rectify_grad<F: Float>(z: F, g: F, slope: Option<F>) -> F {
    let negative = slope.map_or(F::zero(), |s| s * g);
    if z > F::zero() {
        g
    } else {
        negative
    }
}

/// `y = act(x)`.
pub fn activation_forward<F: Float>(act: Activation, x: ArrayViewD<F>) -> ArrayD<F> {
    match act {
        Activation::Relu | Activation::LeakyRelu(_) => {
            let slope = negative_slope(act);
            map(x, move |v| rectify(v, slope))
        }
        Activation::Sigmoid => map(x, sigmoid),
        Activation::Tanh => map(x, F::tanh_lanes),
    }
}

impl Activation {
    /// Whether the derivative is read off the output `y` (Sigmoid: `y (1 - y)`, Tanh:
    /// `1 - y^2`) rather than the input `x` (ReLU, LeakyReLU: the sign of `x`).
    pub fn backward_uses_output(self) -> bool {
        matches!(self, Activation::Sigmoid | Activation::Tanh)
    }
}

/// `dx = act'(x) * dy`, from `saved`: the output `y` when
/// [`Activation::backward_uses_output`], the input `x` otherwise, as PyTorch computes them.
pub fn activation_backward<F: Float>(act: Activation, saved: ArrayViewD<F>, dy: ArrayViewD<F>) -> ArrayD<F> {
    let mut dx = dy.to_owned();
    activation_backward_inplace(act, saved, &mut dx);
    dx
}

/// [`activation_backward`] overwriting `dy` with `dx`.
pub fn activation_backward_inplace<F: Float>(act: Activation, saved: ArrayViewD<F>, dy: &mut ArrayD<F>) {
    match act {
        Activation::Relu | Activation::LeakyRelu(_) => {
            let slope = negative_slope(act);
            map_grad(saved, dy, move |x, g| rectify_grad(x, g, slope))
        }
        Activation::Sigmoid => map_grad(saved, dy, |y, g| g * y * (F::one() - y)),
        Activation::Tanh => map_grad(saved, dy, |y, g| g * (F::one() - y * y)),
    }
}

/// What a training-mode forward keeps for the backward.
#[derive(Debug, Clone)]
enum Saved<F> {
    /// Sigmoid, Tanh: the output, whose derivative is a function of it.
    Output(ArrayD<F>),
    /// ReLU, LeakyReLU: only the sign of each input, one byte per entry (`x > 0`), in
    /// standard order, and the shape: a quarter of an `f32` copy, and the forward then
    /// runs in place on the array it is handed.
    Positive(Vec<bool>, Vec<usize>),
}

/// An activation as a layer. In training mode it keeps what its derivative needs (the
/// output, or the signs of the input: see [`Activation::backward_uses_output`]).
#[derive(Debug, Clone)]
pub struct ActivationLayer<F> {
    /// Which activation.
    pub act: Activation,
    saved: Option<Saved<F>>,
}

/// The factor a rectifier applies where its input is not positive: `None` for ReLU (the
/// result is a plain zero there, as PyTorch's, whatever the input: not `0 * x`, which is
/// `-0` or NaN for some), `Some(slope)` for LeakyReLU.
pub(crate) fn negative_slope<F: Float>(act: Activation) -> Option<F> {
    match act {
        Activation::LeakyRelu(s) => Some(F::lit(s)),
        _ => None,
    }
}

/// `x = act(x)` in place for a rectifier (`slope` from [`negative_slope`]) over the
/// standard-layout slice `x`; with `keep_signs`, returns `x > 0` for each entry.
fn rectify_in_place<F: Float>(x: &mut [F], slope: Option<F>, keep_signs: bool) -> Option<Vec<bool>> {
    let mut positive = keep_signs.then(|| vec![false; x.len()]);
    // Eight lanes at a time through masks ([`rectify_lanes`]), not branches or masked
    // stores. (One arm per slope, so that each loop is compiled with its slope known.)
    let run = |x: &mut [F], pos: Option<&mut [bool]>| match (pos, slope) {
        (Some(pos), None) => rectify_slice(x, Some(pos), None),
        (Some(pos), Some(s)) => rectify_slice(x, Some(pos), Some(s)),
        (None, None) => rectify_slice(x, None, None),
        (None, Some(s)) => rectify_slice(x, None, Some(s)),
    };
    match (&mut positive, x.len() >= tuning::ACTIVATION_PAR_MIN) {
        (Some(pos), true) => x
            .par_chunks_mut(tuning::RELU_SIGN_CHUNK)
            .zip(pos.par_chunks_mut(tuning::RELU_SIGN_CHUNK))
            .for_each(|(x, p)| run(x, Some(p))),
        (None, true) => x.par_chunks_mut(tuning::RELU_SIGN_CHUNK).for_each(|x| run(x, None)),
        (pos, false) => run(x, pos.as_deref_mut()),
    }
    positive
}

/// `x = rectify(x)` over a slice, eight lanes at a time, recording `x > 0` in `pos`
/// when given.
#[inline(always)]
fn rectify_slice<F: Float>(x: &mut [F], mut pos: Option<&mut [bool]>, slope: Option<F>) {
    let mut xs = x.chunks_exact_mut(8);
    for (i, xc) in (&mut xs).enumerate() {
        let z: [F; 8] = std::array::from_fn(|l| xc[l]);
        if let Some(pos) = pos.as_deref_mut() {
            for (p, &v) in pos[i * 8..i * 8 + 8].iter_mut().zip(&z) {
                *p = v > F::zero();
            }
        }
        xc.copy_from_slice(&rectify_lanes(z, slope));
    }
    // The last few entries through zero-padded lanes: a scalar loop here is vectorised
    // by LLVM, with masked stores.
    let tail = xs.into_remainder();
    let z: [F; 8] = std::array::from_fn(|l| tail.get(l).copied().unwrap_or(F::zero()));
    if let Some(pos) = pos {
        let done = pos.len() - tail.len();
        for (p, &v) in pos[done..].iter_mut().zip(&z) {
            *p = v > F::zero();
        }
    }
    let n = tail.len();
    tail.copy_from_slice(&rectify_lanes(z, slope)[..n]);
}

/// `g` kept where the input was positive, replaced by `slope g` (zero for ReLU)
/// elsewhere, in place over the standard-layout slice `g`.
fn rectify_grad_in_place<F: Float>(g: &mut [F], positive: &[bool], slope: Option<F>) {
    let run = |g: &mut [F], pos: &[bool]| match slope {
        None => rectify_grad_slice(g, pos, None),
        Some(s) => rectify_grad_slice(g, pos, Some(s)),
    };
    if g.len() >= tuning::ACTIVATION_PAR_MIN {
        g.par_chunks_mut(tuning::RELU_SIGN_CHUNK)
            .zip(positive.par_chunks(tuning::RELU_SIGN_CHUNK))
            .for_each(|(g, p)| run(g, p));
    } else {
        run(g, positive);
    }
}

/// `g = rectify_grad(g)` over a slice given the input's signs, eight lanes at a time.
#[inline(always)]
fn rectify_grad_slice<F: Float>(g: &mut [F], positive: &[bool], slope: Option<F>) {
    let mut gs = g.chunks_exact_mut(8);
    let mut ps = positive.chunks_exact(8);
    for (gc, pc) in (&mut gs).zip(&mut ps) {
        let dy: [F; 8] = std::array::from_fn(|l| gc[l]);
        gc.copy_from_slice(&rectify_grad_lanes(std::array::from_fn(|l| pc[l]), dy, slope));
    }
    let (tail, tail_pos) = (gs.into_remainder(), ps.remainder());
    let dy: [F; 8] = std::array::from_fn(|l| tail.get(l).copied().unwrap_or(F::zero()));
    let pos: [bool; 8] = std::array::from_fn(|l| tail_pos.get(l).copied().unwrap_or(false));
    let n = tail.len();
    tail.copy_from_slice(&rectify_grad_lanes(pos, dy, slope)[..n]);
}

impl<F: Float> ActivationLayer<F> {
    /// A layer applying `act`.
    pub fn new(act: Activation) -> Self {
        ActivationLayer { act, saved: None }
    }
}

impl<F: Float> Module<F> for ActivationLayer<F> {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param<F>)) {}
}

impl<F: Float> Layer<F> for ActivationLayer<F> {
    fn spec(&self) -> super::LayerSpec {
        super::LayerSpec::Activation(self.act)
    }

    fn forward(&mut self, x: ArrayD<F>, mode: Mode) -> Result<ArrayD<F>> {
        if self.act.backward_uses_output() {
            let y = activation_forward(self.act, x.view());
            if mode.keeps_cache() {
                self.saved = Some(Saved::Output(y.clone()));
            }
            return Ok(y);
        }
        let mut y = if x.is_standard_layout() {
            x
        } else {
            x.as_standard_layout().into_owned()
        };
        let shape = y.shape().to_vec();
        let slope = negative_slope(self.act);
        let signs = rectify_in_place(y.as_slice_mut().expect("standard layout"), slope, mode.keeps_cache());
        if let Some(positive) = signs {
            self.saved = Some(Saved::Positive(positive, shape));
        }
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let saved = self
            .saved
            .take()
            .ok_or_else(|| Error::InvalidArgument(format!("{:?}: backward before forward", self.act)))?;
        let shape = match &saved {
            Saved::Output(y) => y.shape(),
            Saved::Positive(_, shape) => shape.as_slice(),
        };
        if dy.shape() != shape {
            return Err(Error::shape(
                format!("{:?} dy", self.act),
                format!("{shape:?}"),
                dy.shape(),
            ));
        }
        if !need_dx {
            return Ok(None);
        }
        let mut dx = dy;
        match saved {
            Saved::Output(y) => activation_backward_inplace(self.act, y.view(), &mut dx),
            Saved::Positive(positive, _) => {
                if !dx.is_standard_layout() {
                    dx = dx.as_standard_layout().into_owned();
                }
                let g = dx.as_slice_mut().expect("standard layout");
                rectify_grad_in_place(g, &positive, negative_slope(self.act));
            }
        }
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array4, IxDyn};

    /// The layer's in-place rectifiers (signs kept as bytes) give the free functions'
    /// values and gradients exactly, on a non-standard-layout input larger than one
    /// parallel chunk, with zeros, negative zeros and NaN among the inputs.
    #[test]
    fn in_place_rectifiers_match_the_free_functions() {
        let x = Array4::from_shape_fn((3, 5, 70, 90), |(a, b, c, d)| {
            ((a * 31 + b * 17 + c * 7 + d * 3) % 23) as f64 - 11.0
        })
        .permuted_axes([0, 2, 1, 3])
        .into_dyn();
        let mut x = x.clone();
        x[IxDyn(&[0, 0, 0, 0])] = -0.0;
        x[IxDyn(&[0, 0, 0, 1])] = f64::NAN;
        let dy = x.mapv(|v| v * 0.5 + 1.0);
        for act in [Activation::Relu, Activation::LeakyRelu(0.2)] {
            let mut layer = ActivationLayer::new(act);
            let y = layer.forward(x.clone(), Mode::Train).unwrap();
            let want = activation_forward(act, x.view());
            let same = |a: &ArrayD<f64>, b: &ArrayD<f64>| {
                a.shape() == b.shape() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
            };
            assert!(same(&y, &want), "{act:?} forward");
            let dx = layer.backward(dy.clone(), true).unwrap().unwrap();
            assert!(
                same(&dx, &activation_backward(act, x.view(), dy.view())),
                "{act:?} backward"
            );
            // Inference keeps nothing: a backward then is an error, not stale signs.
            let mut layer = ActivationLayer::<f64>::new(act);
            layer.forward(x.clone(), Mode::Eval).unwrap();
            assert!(layer.backward(dy.clone(), true).is_err());
        }
    }
}
