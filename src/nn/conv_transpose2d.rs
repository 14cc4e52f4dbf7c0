//! ConvTranspose2d: the adjoint of Conv2d, on the same im2col kernels run the other way
//! (its forward is Conv2d's input gradient and its input gradient is Conv2d's forward).

use ndarray::{Array4, ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMut4, CowArray, Ix4};

use super::conv2d::{bias_values, channel_bias_grad, ConvOptions};
use super::conv_algorithm::{backward_over_input, correlate, fold, weight_grad};
use super::im2col::ConvGeom;
use super::spectral::KernelCache;
use crate::{Error, Float, Result};

/// The geometry of the convolution this one transposes: unfolding the *output* image
/// `[c_out, h_out, w_out]` with `h_out = (h - 1) s - 2p + d (k - 1) + output_padding + 1`.
pub(crate) fn geom(x: &[usize], w: &[usize], opts: &ConvOptions) -> Result<ConvGeom> {
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
    let mut g = ConvGeom::new(w[1], (ho, wo), (w[2], w[3]), s, p, d)?;
    // Output padding below the dilation (stride 1) leaves the convolution room for more
    // kernel positions than the input has rows: those positions read nothing.
    debug_assert!(g.oh >= x[2] && g.ow >= x[3]);
    (g.oh, g.ow) = (x[2], x[3]);
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
    conv_transpose2d_forward_keeping(x, w, b, opts, &mut KernelCache::default())
}

/// [`conv_transpose2d_forward`], leaving the Fourier path's kernel blocks in `kernels`
/// for the backward (see [`KernelCache`]).
pub(crate) fn conv_transpose2d_forward_keeping<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    b: Option<ArrayView1<F>>,
    opts: &ConvOptions,
    kernels: &mut KernelCache<F>,
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
    let b = bias_values("conv_transpose2d bias", b, g.c)?;
    let mut y = super::zeros4((n, g.c, g.h, g.w));
    {
        let ym = y
            .view_mut()
            .into_shape_with_order((n, g.c * g.h * g.w))
            .expect("contiguous");
        fold(opts.algorithm, xm, &g, (wm, kernels), ym, &b)?;
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
    conv_transpose2d_backward_params(x, w, dy, opts, dw, db)?;
    if !need_dx {
        return Ok(None);
    }
    let mut dx = Array4::<F>::zeros(x.raw_dim());
    conv_transpose2d_backward_input(x.shape(), w, dy, opts, dx.view_mut())?;
    Ok(Some(dx))
}

/// The parameter half of [`conv_transpose2d_backward`]: `dw += ...`, `db += ...`.
pub(crate) fn conv_transpose2d_backward_params<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    dy: ArrayView4<F>,
    opts: &ConvOptions,
    dw: ArrayViewMut4<F>,
    db: Option<ArrayViewMut1<F>>,
) -> Result<()> {
    let g = geom(x.shape(), w.shape(), opts)?;
    let (n, ci) = (x.shape()[0], x.shape()[1]);
    let dy = checked_dy(&g, n, &dy)?;
    let x = x.as_standard_layout();
    let xm = x
        .view()
        .into_shape_with_order((n, ci, g.col_cols()))
        .expect("contiguous");
    let dym = dy
        .view()
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("contiguous");
    if let Some(db) = db {
        channel_bias_grad(dy.view(), db)?;
    }
    let dwm = dw
        .into_shape_with_order((ci, g.col_rows()))
        .expect("contiguous weight gradient");
    weight_grad(opts.algorithm, xm, dym, &g, dwm)?;
    Ok(())
}

/// The input half of [`conv_transpose2d_backward`]: overwrites `dx` (standard layout, the
/// input's shape `x_shape`) with the input gradient.
pub(crate) fn conv_transpose2d_backward_input<F: Float>(
    x_shape: &[usize],
    w: ArrayView4<F>,
    dy: ArrayView4<F>,
    opts: &ConvOptions,
    dx: ArrayViewMut4<F>,
) -> Result<()> {
    let g = geom(x_shape, w.shape(), opts)?;
    let (n, ci) = (x_shape[0], x_shape[1]);
    let dy = checked_dy(&g, n, &dy)?;
    let w = w.as_standard_layout();
    let wm = w.view().into_shape_with_order((ci, g.col_rows())).expect("contiguous");
    let dym = dy
        .view()
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("contiguous");
    let dxm = dx
        .into_shape_with_order((n, ci, g.col_cols()))
        .expect("standard-layout dx");
    correlate(opts.algorithm, dym, &g, (wm, &mut KernelCache::default()), dxm, &[])?;
    Ok(())
}

/// Both halves of [`conv_transpose2d_backward`] in one pass: `dw += ...`, `db += ...`, and
/// the input gradient written over `x` (the kept input, standard layout), read first.
pub(crate) fn conv_transpose2d_backward_over_input<F: Float>(
    x: ArrayViewMut4<F>,
    (w, kernels): (ArrayView4<F>, &mut KernelCache<F>),
    dy: ArrayView4<F>,
    opts: &ConvOptions,
    dw: ArrayViewMut4<F>,
    db: Option<ArrayViewMut1<F>>,
) -> Result<()> {
    let g = geom(x.shape(), w.shape(), opts)?;
    let (n, ci) = (x.shape()[0], x.shape()[1]);
    let dy = checked_dy(&g, n, &dy)?;
    if let Some(db) = db {
        channel_bias_grad(dy.view(), db)?;
    }
    let w = w.as_standard_layout();
    let wm = w.view().into_shape_with_order((ci, g.col_rows())).expect("contiguous");
    let dym = dy
        .view()
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("contiguous");
    let xm = x
        .into_shape_with_order((n, ci * g.col_cols()))
        .expect("standard-layout input");
    let dwm = dw
        .into_shape_with_order((ci, g.col_rows()))
        .expect("contiguous weight gradient");
    backward_over_input(opts.algorithm, false, dym, xm, &g, (wm, kernels), dwm)
}

/// `dy` in standard layout, after checking that it is `[n, c_out, h_out, w_out]`.
fn checked_dy<'a, F: Float>(g: &ConvGeom, n: usize, dy: &'a ArrayView4<'a, F>) -> Result<CowArray<'a, F, Ix4>> {
    if dy.shape() != [n, g.c, g.h, g.w] {
        return Err(Error::shape(
            "conv_transpose2d dy",
            format!("[{n}, {}, {}, {}]", g.c, g.h, g.w),
            dy.shape(),
        ));
    }
    Ok(dy.as_standard_layout())
}
