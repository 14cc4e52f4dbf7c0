//! CIS-522's linear autoencoder: `Linear(dim, K)` then `Linear(K, dim)`, no nonlinearity.
//! Trained with MSE it can at best reach PCA's reconstruction error with K components.

use ndarray::{Array2, ArrayD, ArrayView1, ArrayView2, ArrayViewMut2, Ix1, Ix2, IxDyn, ShapeBuilder, Zip};
use rand::Rng;
use rayon::prelude::*;

use crate::gemm::gemm;
use crate::nn::reduce::update_sum;
use crate::nn::{Linear, Module, Param};
use crate::optim::Adam;
use crate::pool::on_worker;
use crate::{Error, Float, Result};

/// Linear encoder `enc_lin` and decoder `dec_lin`, as the notebook's `LinearAutoEncoder`.
#[derive(Debug, Clone)]
pub struct LinearAe<F> {
    /// `dim -> K`.
    pub enc_lin: Linear<F>,
    /// `K -> dim`.
    pub dec_lin: Linear<F>,
    workspaces: Vec<Workspace<F>>,
}

/// One thread's buffers for a training step, kept between steps.
///
/// The products whose output is K wide (the codes `h`, their gradient `dh`, the decoder's
/// weight gradient `dwd`, `dim x K`) write column-major matrices, for the reason in
/// [`crate::gemm`]'s notes; on one thread's shapes (125 rows, 784 pixels, K = 20) those
/// three products measured 1.2-1.8x faster so, the step about a fifth faster.
#[derive(Debug, Clone)]
struct Workspace<F> {
    /// The thread's rows, when the batch is gathered from a larger data set.
    x: Array2<F>,
    /// Codes `[rows, K]`, column-major.
    h: Array2<F>,
    y: Array2<F>,
    /// Gradient of the codes `[rows, K]`, column-major.
    dh: Array2<F>,
    dwe: ArrayD<F>,
    dbe: ArrayD<F>,
    /// Decoder weight gradient `[dim, K]`, column-major.
    dwd: Array2<F>,
    dbd: ArrayD<F>,
}

impl<F: Float> Workspace<F> {
    fn new(d: usize, k: usize) -> Self {
        Workspace {
            x: Array2::zeros((0, d)),
            h: Array2::zeros((0, k).f()),
            y: Array2::zeros((0, d)),
            dh: Array2::zeros((0, k).f()),
            dwe: ArrayD::zeros(IxDyn(&[k, d])),
            dbe: ArrayD::zeros(IxDyn(&[k])),
            dwd: Array2::zeros((d, k).f()),
            dbd: ArrayD::zeros(IxDyn(&[d])),
        }
    }

    /// Forward and backward on rows `x`; the gradients of `scale * sum((y - x)^2)` go into
    /// this workspace (overwritten). Returns the rows' sum of squared errors.
    fn run(
        &mut self,
        x: ArrayView2<F>,
        we: ArrayView2<F>,
        be: Option<ArrayView1<F>>,
        wd: ArrayView2<F>,
        bd: Option<ArrayView1<F>>,
        scale: F,
    ) -> F {
        let n = x.nrows();
        if self.h.nrows() != n {
            self.h = Array2::zeros((n, we.nrows()).f());
            self.y = Array2::zeros((n, wd.nrows()));
            self.dh = Array2::zeros((n, we.nrows()).f());
        }
        linear_forward_seq(x, we, be, self.h.view_mut());
        linear_forward_seq(self.h.view(), wd, bd, self.y.view_mut());
        // y becomes dy = scale (y - x) in place, summing the squared error on the way.
        let sse = match (self.y.as_slice_mut(), x.as_slice()) {
            (Some(y), Some(t)) => residual_in_place(y, t, scale),
            _ => {
                let mut sse = F::zero();
                Zip::from(&mut self.y).and(&x).for_each(|y, &t| {
                    let r = *y - t;
                    sse += r * r;
                    *y = scale * r;
                });
                sse
            }
        };
        // The weight gradients are overwritten by their GEMMs (beta = 0), the encoder's bias
        // gradient by its column sums; the decoder's bias gradient sums row by row.
        self.dbd.fill(F::zero());
        let dy = self.y.view();
        gemm(F::one(), dy.t(), self.h.view(), F::zero(), self.dwd.view_mut());
        let mut dbd = self.dbd.view_mut().into_dimensionality::<Ix1>().expect("vector");
        for row in dy.rows() {
            dbd += &row;
        }
        gemm(F::one(), dy, wd, F::zero(), self.dh.view_mut());
        let mut dwe = self.dwe.view_mut().into_dimensionality::<Ix2>().expect("matrix");
        gemm(F::one(), self.dh.t(), x, F::zero(), dwe.view_mut());
        // dh is column-major: each code's bias gradient is the sum of one contiguous column,
        // in row order. At a trained model this sum cancels to a small result, so its
        // rounding depends on the order: a pairwise sum put the f32 gradient ten times
        // further from the f64 one (tests/gradcheck.rs) than this, the row-major order.
        for (d, col) in self.dbe.iter_mut().zip(self.dh.columns()) {
            *d = col.iter().fold(F::zero(), |a, &b| a + b);
        }
        sse
    }
}

/// `y <- scale (y - t)`, returning the sum of squares of `y - t`, in the lane sums of
/// [`crate::nn::reduce`]: one serial sum is a chain of dependent adds that cannot
/// vectorise, and it measured a fifth of a training step.
fn residual_in_place<F: Float>(y: &mut [F], t: &[F], scale: F) -> F {
    update_sum(y, t, |y, t| {
        let r = *y - t;
        *y = scale * r;
        r * r
    })
}

/// `y = x w^T + b` on the calling thread.
fn linear_forward_seq<F: Float>(x: ArrayView2<F>, w: ArrayView2<F>, b: Option<ArrayView1<F>>, mut y: ArrayViewMut2<F>) {
    gemm(F::one(), x, w.t(), F::zero(), y.view_mut());
    if let Some(b) = b {
        y += &b;
    }
}

impl<F: Float> LinearAe<F> {
    /// A model for `dim`-pixel images and `k` latent dimensions, PyTorch-initialised.
    pub fn new<R: Rng + ?Sized>(dim: usize, k: usize, rng: &mut R) -> Result<Self> {
        if k == 0 || dim == 0 {
            return Err(Error::InvalidArgument(format!(
                "LinearAe: dim = {dim} and K = {k} must be positive"
            )));
        }
        Ok(LinearAe {
            enc_lin: Linear::new("enc_lin", dim, k, true, rng),
            dec_lin: Linear::new("dec_lin", k, dim, true, rng),
            workspaces: Vec::new(),
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
    /// The gradients are overwritten (not accumulated into); the optimizer step is the caller's.
    ///
    /// Data-parallel: the batch is cut into one run of rows per thread; each runs the
    /// whole forward and backward on its rows into its own reusable workspace, and the
    /// partial gradients are summed once at the end. One fork-join per step instead of
    /// one per matrix product, and no allocation after the first step.
    pub fn loss_and_grad(&mut self, x: ArrayView2<F>) -> Result<F> {
        self.check_input(x)?;
        let n = x.nrows();
        self.step_parts(n, |rows, ws, run| run(ws, x.slice(ndarray::s![rows, ..])))
    }

    /// [`LinearAe::loss_and_grad`] on the batch made of rows `rows` of `data`
    /// (`[n_data, dim]`). Each thread copies its own rows into its workspace, so the batch
    /// is never assembled in one place and the copy lands in the cache of the core that
    /// uses it.
    pub fn loss_and_grad_rows(&mut self, data: ArrayView2<F>, rows: &[usize]) -> Result<F> {
        self.check_input(data)?;
        if let Some(&bad) = rows.iter().find(|&&r| r >= data.nrows()) {
            return Err(Error::InvalidArgument(format!(
                "LinearAe: row {bad} is outside the data ({} rows)",
                data.nrows()
            )));
        }
        self.step_parts(rows.len(), |range, ws, run| {
            let mine = &rows[range];
            let mut x = std::mem::replace(&mut ws.x, Array2::zeros((0, 0)));
            if x.dim() != (mine.len(), data.ncols()) {
                x = Array2::zeros((mine.len(), data.ncols()));
            }
            for (mut dst, &r) in x.rows_mut().into_iter().zip(mine) {
                dst.assign(&data.row(r));
            }
            let sse = run(ws, x.view());
            ws.x = x;
            sse
        })
    }

    fn check_input(&self, x: ArrayView2<F>) -> Result<()> {
        if x.ncols() != self.enc_lin.in_features() {
            return Err(Error::shape(
                "LinearAe input",
                format!("[batch, {}]", self.enc_lin.in_features()),
                x.shape(),
            ));
        }
        Ok(())
    }

    /// Cuts a batch of `n` rows into one run per thread; `part(rows, workspace, run)`
    /// hands run `rows` to `run` and returns its sum of squared errors. Sums the partial
    /// gradients into the parameters and returns the mean loss.
    fn step_parts<P>(&mut self, n: usize, part: P) -> Result<F>
    where
        P: Fn(std::ops::Range<usize>, &mut Workspace<F>, &dyn Fn(&mut Workspace<F>, ArrayView2<F>) -> F) -> F + Sync,
    {
        if n == 0 {
            return Err(Error::InvalidArgument("LinearAe: empty batch".into()));
        }
        let (d, k) = (self.enc_lin.in_features(), self.enc_lin.out_features());
        let parts = rayon::current_num_threads().clamp(1, n.div_ceil(32));
        let rows = n.div_ceil(parts);
        let parts = n.div_ceil(rows);
        self.workspaces.resize_with(parts, || Workspace::new(d, k));
        let scale = F::lit(2.0) / F::lit((n * d) as f64);
        let (we, wd) = (self.enc_lin.weight.value2(), self.dec_lin.weight.value2());
        let be = self
            .enc_lin
            .bias
            .as_ref()
            .map(|b| b.value.view().into_dimensionality::<Ix1>().expect("vector"));
        let bd = self
            .dec_lin
            .bias
            .as_ref()
            .map(|b| b.value.view().into_dimensionality::<Ix1>().expect("vector"));
        let run = |ws: &mut Workspace<F>, xs: ArrayView2<F>| ws.run(xs, we, be, wd, bd, scale);
        let sse: Vec<F> = self.workspaces[..parts]
            .par_iter_mut()
            .enumerate()
            .map(|(p, ws)| part(p * rows..((p + 1) * rows).min(n), ws, &run))
            .collect();
        let loss = sse.into_iter().fold(F::zero(), |a, b| a + b) / F::lit((n * d) as f64);
        if !loss.is_finite() {
            return Err(Error::NonFinite("LinearAe training loss".into()));
        }
        // The parts are summed in order into the first workspace, in its own layouts, then
        // written over the gradients: one pass that transposes the column-major `dwd`.
        let (sum, rest) = self.workspaces[..parts].split_first_mut().expect("at least one part");
        for ws in rest.iter() {
            sum.dwe += &ws.dwe;
            sum.dwd += &ws.dwd;
            sum.dbe += &ws.dbe;
            sum.dbd += &ws.dbd;
        }
        self.enc_lin.weight.grad.assign(&sum.dwe);
        self.dec_lin.weight.grad.assign(&sum.dwd);
        if let Some(b) = &mut self.enc_lin.bias {
            b.grad.assign(&sum.dbe);
        }
        if let Some(b) = &mut self.dec_lin.bias {
            b.grad.assign(&sum.dbd);
        }
        Ok(loss)
    }

    /// One training step: [`LinearAe::loss_and_grad`] then `opt.step`.
    pub fn train_step(&mut self, x: ArrayView2<F>, opt: &mut Adam<F>) -> Result<F> {
        on_worker(|| {
            let loss = self.loss_and_grad(x)?;
            opt.step(self)?;
            Ok(loss)
        })
    }

    /// One training step on rows `rows` of `data`: [`LinearAe::loss_and_grad_rows`] then
    /// `opt.step`.
    pub fn train_step_rows(&mut self, data: ArrayView2<F>, rows: &[usize], opt: &mut Adam<F>) -> Result<F> {
        on_worker(|| {
            let loss = self.loss_and_grad_rows(data, rows)?;
            opt.step(self)?;
            Ok(loss)
        })
    }
}

impl<F: Float> Module<F> for LinearAe<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.enc_lin.visit_params(f);
        self.dec_lin.visit_params(f);
    }
}
