//! Linear (fully connected) layer: `y = x W^T + b`, PyTorch's layout (`W` is `[out, in]`).

use ndarray::{Array2, ArrayD, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Ix2};
use rand::Rng;
use rayon::prelude::*;

use super::{Layer, Mode, Module, Param};
use crate::gemm::{gemm, gemm_par};
use crate::tuning;
use crate::{Error, Float, Result};

/// `y = x w^T + b`. Shapes: `x` `[n, in]`, `w` `[out, in]`, `b` `[out]`, `y` `[n, out]`.
pub fn linear_forward<F: Float>(x: ArrayView2<F>, w: ArrayView2<F>, b: Option<ArrayView1<F>>, mut y: ArrayViewMut2<F>) {
    gemm_par(F::one(), x, w.t(), F::zero(), y.view_mut());
    if let Some(b) = b {
        y += &b;
    }
}

/// Backward of [`linear_forward`] given `dy` `[n, out]`: accumulates `dw += dy^T x` and
/// `db += sum_rows(dy)`, and writes `dx = dy w` when `dx` is given.
///
/// ```
/// use latent::nn::{linear_backward, linear_forward};
/// use ndarray::{array, Array1, Array2};
///
/// let x = array![[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]; // [n = 2, in = 3]
/// let w = array![[0.1, 0.2, 0.3], [-0.3, 0.0, 0.4]]; // [out = 2, in = 3]
/// let b = array![0.5, -0.5];
/// let mut y = Array2::zeros((2, 2));
/// linear_forward(x.view(), w.view(), Some(b.view()), y.view_mut());
/// assert!((y[[0, 0]] - 1.9_f64).abs() < 1e-12); // 0.1 + 0.4 + 0.9 + 0.5
///
/// // L = sum(y): dL/dy is all ones.
/// let dy = Array2::ones((2, 2));
/// let (mut dx, mut dw, mut db) = (Array2::zeros((2, 3)), Array2::zeros((2, 3)), Array1::zeros(2));
/// linear_backward(x.view(), w.view(), dy.view(), Some(dx.view_mut()), dw.view_mut(), Some(db.view_mut()));
/// assert_eq!(db, array![2.0, 2.0]); // one per row of the batch
/// assert_eq!(dw.row(0), x.sum_axis(ndarray::Axis(0))); // dy^T x
/// assert_eq!(dx.row(1), w.sum_axis(ndarray::Axis(0))); // dy w
/// ```
pub fn linear_backward<F: Float>(
    x: ArrayView2<F>,
    w: ArrayView2<F>,
    dy: ArrayView2<F>,
    dx: Option<ArrayViewMut2<F>>,
    dw: ArrayViewMut2<F>,
    db: Option<ArrayViewMut1<F>>,
) {
    if let Some(mut db) = db {
        for row in dy.axis_iter(Axis(0)) {
            db += &row;
        }
    }
    let threads = rayon::current_num_threads();
    if x.nrows() <= tuning::LINEAR_SMALL_BATCH && threads > 1 && w.len() >= tuning::LINEAR_SMALL_BATCH_MIN_WEIGHT {
        let (out, inp) = w.dim();
        if inp >= out {
            return small_batch_backward_by_inputs(x, w, dy, dx, dw, inp.div_ceil(threads));
        }
        return small_batch_backward_by_outputs(x, w, dy, dx, dw, out.div_ceil(threads));
    }
    gemm_par(F::one(), dy.t(), x, F::one(), dw);
    if let Some(dx) = dx {
        gemm_par(F::one(), dy, w, F::zero(), dx);
    }
}

/// The small-batch backward cut by blocks of `per` input features (columns of `w`):
/// `dw[:, C] += dy' x[:, C]` and `dx[:, C] = dy w[:, C]`, each block on one thread.
fn small_batch_backward_by_inputs<F: Float>(
    x: ArrayView2<F>,
    w: ArrayView2<F>,
    dy: ArrayView2<F>,
    dx: Option<ArrayViewMut2<F>>,
    mut dw: ArrayViewMut2<F>,
    per: usize,
) {
    let blocks = dw
        .axis_chunks_iter_mut(Axis(1), per)
        .into_par_iter()
        .zip(x.axis_chunks_iter(Axis(1), per))
        .zip(w.axis_chunks_iter(Axis(1), per));
    match dx {
        Some(mut dx) => blocks
            .zip(dx.axis_chunks_iter_mut(Axis(1), per))
            .for_each(|(((dwb, xb), wb), dxb)| {
                gemm(F::one(), dy.t(), xb, F::one(), dwb);
                gemm(F::one(), dy, wb, F::zero(), dxb);
            }),
        None => blocks.for_each(|((dwb, xb), _)| gemm(F::one(), dy.t(), xb, F::one(), dwb)),
    }
}

/// The small-batch backward cut by blocks of `per` output features (rows of `w`):
/// `dw[R, :] += dy[:, R]' x` and the partial `dy[:, R] w[R, :]` on one thread each, the
/// partials of `dx` then added in block order.
fn small_batch_backward_by_outputs<F: Float>(
    x: ArrayView2<F>,
    w: ArrayView2<F>,
    dy: ArrayView2<F>,
    dx: Option<ArrayViewMut2<F>>,
    mut dw: ArrayViewMut2<F>,
    per: usize,
) {
    let want_dx = dx.is_some();
    let partials: Vec<Option<Array2<F>>> = dw
        .axis_chunks_iter_mut(Axis(0), per)
        .into_par_iter()
        .zip(w.axis_chunks_iter(Axis(0), per))
        .zip(dy.axis_chunks_iter(Axis(1), per))
        .map(|((dwb, wb), dyb)| {
            gemm(F::one(), dyb.t(), x, F::one(), dwb);
            want_dx.then(|| {
                let mut part = Array2::zeros(x.raw_dim());
                gemm(F::one(), dyb, wb, F::zero(), part.view_mut());
                part
            })
        })
        .collect();
    if let Some(mut dx) = dx {
        dx.fill(F::zero());
        for part in partials.into_iter().flatten() {
            dx += &part;
        }
    }
}

/// A linear layer with PyTorch's default initialisation and `state_dict` names
/// `{prefix}.weight`, `{prefix}.bias`.
#[derive(Debug, Clone)]
pub struct Linear<F> {
    /// `[out, in]`.
    pub weight: Param<F>,
    /// `[out]`, if the layer has a bias.
    pub bias: Option<Param<F>>,
    input: Option<Array2<F>>,
}

impl<F: Float> Linear<F> {
    /// A layer `in_features -> out_features`, weights and bias from
    /// `U(-1/sqrt(in), 1/sqrt(in))` as `torch.nn.Linear`.
    pub fn new<R: Rng + ?Sized>(
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        rng: &mut R,
    ) -> Self {
        let bound = F::one() / F::lit(in_features as f64).sqrt();
        let weight = Param::uniform(format!("{prefix}.weight"), &[out_features, in_features], bound, rng);
        let bias = bias.then(|| Param::uniform(format!("{prefix}.bias"), &[out_features], bound, rng));
        Linear {
            weight,
            bias,
            input: None,
        }
    }

    /// A layer `in_features -> out_features` with Glorot and Bengio's (2010) uniform
    /// weights, `U(-sqrt(6 / (in + out)), sqrt(6 / (in + out)))`, and a zero bias: the
    /// initialisation of Burda et al.'s VAEs.
    pub fn glorot<R: Rng + ?Sized>(prefix: &str, in_features: usize, out_features: usize, rng: &mut R) -> Self {
        let bound = F::lit((6.0 / (in_features + out_features).max(1) as f64).sqrt());
        let weight = Param::uniform(format!("{prefix}.weight"), &[out_features, in_features], bound, rng);
        let bias = Some(Param::new(
            format!("{prefix}.bias"),
            ndarray::ArrayD::zeros(ndarray::IxDyn(&[out_features])),
        ));
        Linear {
            weight,
            bias,
            input: None,
        }
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.weight.value.shape()[1]
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight.value.shape()[0]
    }

    fn check(&self, x: &ArrayView2<F>) -> Result<()> {
        if x.ncols() != self.in_features() {
            return Err(Error::shape(
                format!("Linear {} input", self.weight.name),
                format!("[batch, {}]", self.in_features()),
                x.shape(),
            ));
        }
        Ok(())
    }

    /// Forward without keeping anything for backward (inference).
    pub fn infer(&self, x: ArrayView2<F>) -> Result<Array2<F>> {
        self.check(&x)?;
        let mut y = Array2::zeros((x.nrows(), self.out_features()));
        let b = self
            .bias
            .as_ref()
            .map(|b| b.value.view().into_dimensionality().expect("vector"));
        linear_forward(x, self.weight.value2(), b, y.view_mut());
        Ok(y)
    }

    /// Forward in `mode`; outside [`Mode::Eval`] keeps `x` for [`Linear::backward2`].
    pub fn forward2(&mut self, x: Array2<F>, mode: Mode) -> Result<Array2<F>> {
        let y = self.infer(x.view())?;
        self.input = mode.keeps_cache().then_some(x);
        Ok(y)
    }

    /// Backward from the kept input: accumulates the weight and bias gradients, returns
    /// `dx` if `need_dx`.
    pub fn backward2(&mut self, dy: Array2<F>, need_dx: bool) -> Result<Option<Array2<F>>> {
        let x = self
            .input
            .take()
            .ok_or_else(|| Error::InvalidArgument(format!("Linear {}: backward before forward", self.weight.name)))?;
        if dy.dim() != (x.nrows(), self.out_features()) {
            return Err(Error::shape(
                format!("Linear {} backward dy", self.weight.name),
                format!("[{}, {}]", x.nrows(), self.out_features()),
                dy.shape(),
            ));
        }
        let mut dx = need_dx.then(|| Array2::zeros(x.raw_dim()));
        let w = self.weight.value.view().into_dimensionality::<Ix2>().expect("matrix");
        let dw = self
            .weight
            .grad
            .view_mut()
            .into_dimensionality::<Ix2>()
            .expect("matrix");
        let db = self
            .bias
            .as_mut()
            .map(|b| b.grad.view_mut().into_dimensionality().expect("vector"));
        linear_backward(x.view(), w, dy.view(), dx.as_mut().map(|d| d.view_mut()), dw, db);
        Ok(dx)
    }
}

impl<F: Float> Module<F> for Linear<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}

impl<F: Float> Layer<F> for Linear<F> {
    fn spec(&self) -> super::LayerSpec {
        super::LayerSpec::Linear {
            in_features: self.in_features(),
            out_features: self.out_features(),
            bias: self.bias.is_some(),
        }
    }

    fn forward(&mut self, x: ArrayD<F>, mode: Mode) -> Result<ArrayD<F>> {
        let shape = x.shape().to_vec();
        let x2 = x.into_dimensionality::<Ix2>().map_err(|_| {
            Error::shape(
                format!("Linear {} input", self.weight.name),
                "[batch, features]",
                &shape,
            )
        })?;
        Ok(self.forward2(x2, mode)?.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let shape = dy.shape().to_vec();
        let dy = dy
            .into_dimensionality::<Ix2>()
            .map_err(|_| Error::shape(format!("Linear {} dy", self.weight.name), "[batch, features]", &shape))?;
        Ok(self.backward2(dy, need_dx)?.map(Array2::into_dyn))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    /// The small-batch backward (cut by input features for a wide layer, by output
    /// features with partial input gradients for a tall one) gives the definition's
    /// gradients on two and three threads, with and without the input gradient.
    #[test]
    fn small_batch_backward_matches_the_definition() {
        let mut seed = 3u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 1.0
        };
        for &(n, inp, out) in &[(1, 4000, 9), (3, 11, 3001), (tuning::LINEAR_SMALL_BATCH, 257, 131)] {
            assert!(inp * out >= tuning::LINEAR_SMALL_BATCH_MIN_WEIGHT);
            let x = Array2::from_shape_simple_fn((n, inp), &mut rnd);
            let w = Array2::from_shape_simple_fn((out, inp), &mut rnd);
            let dy = Array2::from_shape_simple_fn((n, out), &mut rnd);
            let dw0 = Array2::from_shape_simple_fn((out, inp), &mut rnd);
            // The definition, summed in f64 loops.
            let mut dw_ref = dw0.clone();
            let mut dx_ref = Array2::<f64>::zeros((n, inp));
            for i in 0..n {
                for j in 0..out {
                    for k in 0..inp {
                        dw_ref[[j, k]] += dy[[i, j]] * x[[i, k]];
                        dx_ref[[i, k]] += dy[[i, j]] * w[[j, k]];
                    }
                }
            }
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let mut dw = dw0.clone();
                    let mut dx = Array2::from_elem((n, inp), f64::NAN);
                    linear_backward(x.view(), w.view(), dy.view(), Some(dx.view_mut()), dw.view_mut(), None);
                    // Every entry within tol (a NaN fails: the comparison is false).
                    let near =
                        |a: &Array2<f64>, b: &Array2<f64>, tol: f64| a.iter().zip(b).all(|(u, v)| (u - v).abs() < tol);
                    assert!(near(&dw, &dw_ref, 1e-12), "dw, {n}x{inp}->{out}, {threads} threads");
                    assert!(near(&dx, &dx_ref, 1e-11), "dx, {n}x{inp}->{out}, {threads} threads");
                    let mut dw = dw0.clone();
                    linear_backward(x.view(), w.view(), dy.view(), None, dw.view_mut(), None);
                    assert!(
                        near(&dw, &dw_ref, 1e-12),
                        "dw alone, {n}x{inp}->{out}, {threads} threads"
                    );
                });
            }
        }
    }
}
