//! ConvTranspose2d: the adjoint of Conv2d, on the same im2col kernels run the other way
//! (its forward is Conv2d's input gradient and its input gradient is Conv2d's forward).

use ndarray::{Array4, ArrayD, ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMut4, Ix4};
use rand::Rng;

use super::conv2d::{add_channel_bias, channel_bias_grad, to4, ConvOptions};
use super::im2col::{gemm_fold, unfold_gemm, weight_grad, ConvGeom};
use super::{Layer, Mode, Module, Param};
use crate::{Error, Float, Result};

/// The geometry of the convolution this one transposes: unfolding the *output* image
/// `[c_out, h_out, w_out]` with `h_out = (h - 1) s - 2p + d (k - 1) + output_padding + 1`.
fn geom(x: &[usize], w: &[usize], opts: &ConvOptions) -> Result<ConvGeom> {
    if x[1] != w[0] {
        return Err(Error::shape(
            "conv_transpose2d input",
            format!("[batch, {}, h, w]", w[0]),
            x,
        ));
    }
    let side = |n: usize, k: usize, s: usize, p: usize, d: usize, op: usize| -> Result<usize> {
        if op >= s && op >= d {
            return Err(Error::InvalidArgument(format!(
                "output_padding {op} must be smaller than the stride {s} or the dilation {d}"
            )));
        }
        ((n.max(1) - 1) * s + d * (k - 1) + op + 1)
            .checked_sub(2 * p)
            .filter(|&v| v > 0)
            .ok_or_else(|| Error::InvalidArgument("padding larger than the transposed output".into()))
    };
    let (s, p, d, op) = (opts.stride, opts.padding, opts.dilation, opts.output_padding);
    let ho = side(x[2], w[2], s.0, p.0, d.0, op.0)?;
    let wo = side(x[3], w[3], s.1, p.1, d.1, op.1)?;
    let g = ConvGeom::new(w[1], (ho, wo), (w[2], w[3]), s, p, d)?;
    debug_assert_eq!((g.oh, g.ow), (x[2], x[3]));
    Ok(g)
}

/// Forward: `x` `[n, c_in, h, w]`, `w` `[c_in, c_out, kh, kw]` (PyTorch's layout), `b`
/// `[c_out]` → `[n, c_out, h_out, w_out]`.
pub fn conv_transpose2d_forward<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    b: Option<ArrayView1<F>>,
    opts: &ConvOptions,
) -> Result<Array4<F>> {
    let g = geom(x.shape(), w.shape(), opts)?;
    let (n, ci) = (x.shape()[0], x.shape()[1]);
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let xm = x
        .view()
        .into_shape_with_order((n, ci, g.col_cols()))
        .expect("contiguous");
    let wm = w.view().into_shape_with_order((ci, g.col_rows())).expect("contiguous");
    let mut y = Array4::<F>::zeros((n, g.c, g.h, g.w));
    {
        let ym = y
            .view_mut()
            .into_shape_with_order((n, g.c * g.h * g.w))
            .expect("contiguous");
        gemm_fold(xm, &g, wm, ym);
    }
    if let Some(b) = b {
        add_channel_bias(y.view_mut(), b);
    }
    Ok(y)
}

/// Backward of [`conv_transpose2d_forward`] given `dy`: accumulates `dw`, `db`, returns
/// `dx` if `need_dx`.
pub fn conv_transpose2d_backward<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    dy: ArrayView4<F>,
    opts: &ConvOptions,
    need_dx: bool,
    dw: ArrayViewMut4<F>,
    db: Option<ArrayViewMut1<F>>,
) -> Result<Option<Array4<F>>> {
    let g = geom(x.shape(), w.shape(), opts)?;
    let (n, ci) = (x.shape()[0], x.shape()[1]);
    if dy.shape() != [n, g.c, g.h, g.w] {
        return Err(Error::shape(
            "conv_transpose2d dy",
            format!("[{n}, {}, {}, {}]", g.c, g.h, g.w),
            dy.shape(),
        ));
    }
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let dy = dy.as_standard_layout();
    let xm = x
        .view()
        .into_shape_with_order((n, ci, g.col_cols()))
        .expect("contiguous");
    let wm = w.view().into_shape_with_order((ci, g.col_rows())).expect("contiguous");
    let dym = dy
        .view()
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("contiguous");
    if let Some(db) = db {
        channel_bias_grad(dy.view(), db);
    }
    let dwm = dw
        .into_shape_with_order((ci, g.col_rows()))
        .expect("contiguous weight gradient");
    weight_grad(xm, dym, &g, dwm);
    Ok(need_dx.then(|| {
        let mut dx = Array4::<F>::zeros(x.raw_dim());
        let dxm = dx
            .view_mut()
            .into_shape_with_order((n, ci, g.col_cols()))
            .expect("contiguous");
        unfold_gemm(dym, &g, wm, dxm);
        dx
    }))
}

/// A transposed 2-D convolution layer: weight `[in, out, kh, kw]`, bias `[out]`, PyTorch's
/// default initialisation (`fan_in = out*kh*kw`, as `torch.nn.ConvTranspose2d` computes it)
/// and `state_dict` names.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d<F> {
    /// `[in, out, kh, kw]`.
    pub weight: Param<F>,
    /// `[out]`.
    pub bias: Option<Param<F>>,
    /// Stride, padding, dilation, output padding.
    pub opts: ConvOptions,
    input: Option<Array4<F>>,
}

impl<F: Float> ConvTranspose2d<F> {
    /// `in_ch -> out_ch` channels with a `kernel = (kh, kw)` kernel.
    pub fn new<R: Rng + ?Sized>(
        prefix: &str,
        in_ch: usize,
        out_ch: usize,
        kernel: (usize, usize),
        opts: ConvOptions,
        rng: &mut R,
    ) -> Self {
        let bound = F::one() / F::lit((out_ch * kernel.0 * kernel.1) as f64).sqrt();
        let weight = Param::uniform(
            format!("{prefix}.weight"),
            &[in_ch, out_ch, kernel.0, kernel.1],
            bound,
            rng,
        );
        let bias = opts
            .bias
            .then(|| Param::uniform(format!("{prefix}.bias"), &[out_ch], bound, rng));
        ConvTranspose2d {
            weight,
            bias,
            opts,
            input: None,
        }
    }

    /// Forward without keeping the input.
    pub fn infer(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        let w = self
            .weight
            .value
            .view()
            .into_dimensionality::<Ix4>()
            .expect("4-D weight");
        let b = self
            .bias
            .as_ref()
            .map(|b| b.value.view().into_dimensionality().expect("vector"));
        conv_transpose2d_forward(x, w, b, &self.opts)
    }

    /// Backward from the kept input.
    pub fn backward4(&mut self, dy: ArrayView4<F>, need_dx: bool) -> Result<Option<Array4<F>>> {
        let x = self.input.take().ok_or_else(|| {
            Error::InvalidArgument(format!("ConvTranspose2d {}: backward before forward", self.weight.name))
        })?;
        let w = self
            .weight
            .value
            .view()
            .into_dimensionality::<Ix4>()
            .expect("4-D weight");
        let dw = self
            .weight
            .grad
            .view_mut()
            .into_dimensionality::<Ix4>()
            .expect("4-D weight");
        let db = self
            .bias
            .as_mut()
            .map(|b| b.grad.view_mut().into_dimensionality().expect("vector"));
        conv_transpose2d_backward(x.view(), w, dy, &self.opts, need_dx, dw, db)
    }
}

impl<F: Float> Module<F> for ConvTranspose2d<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}

impl<F: Float> Layer<F> for ConvTranspose2d<F> {
    fn forward(&mut self, x: ArrayD<F>, mode: Mode) -> Result<ArrayD<F>> {
        let x = to4(x, &self.weight.name)?;
        let y = self.infer(x.view())?;
        if mode == Mode::Train {
            self.input = Some(x);
        }
        Ok(y.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let dy = to4(dy, &self.weight.name)?;
        Ok(self.backward4(dy.view(), need_dx)?.map(Array4::into_dyn))
    }
}
