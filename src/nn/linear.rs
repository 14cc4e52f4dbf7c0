//! Linear (fully connected) layer: `y = x W^T + b`, PyTorch's layout (`W` is `[out, in]`).

use ndarray::{Array2, ArrayD, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Ix2};
use rand::Rng;

use super::{Layer, Mode, Module, Param};
use crate::gemm::gemm_par;
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
pub fn linear_backward<F: Float>(
    x: ArrayView2<F>,
    w: ArrayView2<F>,
    dy: ArrayView2<F>,
    dx: Option<ArrayViewMut2<F>>,
    dw: ArrayViewMut2<F>,
    db: Option<ArrayViewMut1<F>>,
) {
    gemm_par(F::one(), dy.t(), x, F::one(), dw);
    if let Some(mut db) = db {
        for row in dy.axis_iter(Axis(0)) {
            db += &row;
        }
    }
    if let Some(dx) = dx {
        gemm_par(F::one(), dy, w, F::zero(), dx);
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

    /// Forward in training: keeps a copy of `x` for [`Linear::backward2`].
    pub fn forward2(&mut self, x: ArrayView2<F>) -> Result<Array2<F>> {
        let y = self.infer(x)?;
        self.input = Some(x.to_owned());
        Ok(y)
    }

    /// Backward: accumulates the weight and bias gradients, returns `dx` if `need_dx`.
    pub fn backward2(&mut self, dy: ArrayView2<F>, need_dx: bool) -> Result<Option<Array2<F>>> {
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
        linear_backward(x.view(), w, dy, dx.as_mut().map(|d| d.view_mut()), dw, db);
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
        let y = self.infer(x2.view())?;
        if mode.keeps_cache() {
            self.input = Some(x2);
        }
        Ok(y.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let shape = dy.shape().to_vec();
        let dy = dy
            .into_dimensionality::<Ix2>()
            .map_err(|_| Error::shape(format!("Linear {} dy", self.weight.name), "[batch, features]", &shape))?;
        Ok(self.backward2(dy.view(), need_dx)?.map(Array2::into_dyn))
    }
}
