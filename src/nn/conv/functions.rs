//! Conv2d and ConvTranspose2d as free functions, forward and backward side by side.
//!
//! A convolution is three products (see [`super::reference`] for them as plain loops):
//! the forward correlation, the input gradient (the correlation's adjoint, a "fold") and
//! the weight gradient. Conv2d's forward is the correlation and its input gradient the
//! fold; ConvTranspose2d is the same pair the other way round, so both directions share
//! the products, routed to one algorithm by [`super::algorithm`]. The bias is added as
//! the products write their output, and its gradient is the sum of `dy` per channel.
//! Backward accumulates (`+=`) into `dw` and `db`, as every layer of [`crate::nn`] does.

use ndarray::{Array4, ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMut4, Axis, CowArray, Ix4};
use rayon::prelude::*;

use super::algorithm::{backward_over_input, correlate, fold, weight_grad};
use super::fourier::KernelCache;
use super::layer::{direct_geom, transposed_geom, ConvGeom, ConvOptions};
use crate::nn::reduce::sum_as_ndarray;
use crate::nn::zeros4;
use crate::tuning;
use crate::{Error, Float, Result};

fn check_x<F>(what: &str, x: &ArrayView4<F>, channels: usize) -> Result<()> {
    if x.shape()[1] != channels {
        return Err(Error::shape(what, format!("[batch, {channels}, h, w]"), x.shape()));
    }
    Ok(())
}

/// Forward: `x` `[n, c, h, w]`, `w` `[o, c, kh, kw]`, `b` `[o]` → `[n, o, oh, ow]`.
pub fn conv2d_forward<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    b: Option<ArrayView1<F>>,
    opts: &ConvOptions,
) -> Result<Array4<F>> {
    conv2d_forward_keeping(x, w, b, opts, &mut KernelCache::default())
}

/// [`conv2d_forward`], leaving the Fourier path's kernel blocks in `kernels` for the
/// backward (see [`KernelCache`]).
pub(crate) fn conv2d_forward_keeping<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    b: Option<ArrayView1<F>>,
    opts: &ConvOptions,
    kernels: &mut KernelCache<F>,
) -> Result<Array4<F>> {
    check_x("conv2d input", &x, w.shape()[1])?;
    let g = direct_geom(x.shape(), w.shape(), opts)?;
    let (n, o) = (x.shape()[0], w.shape()[0]);
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let xm = x
        .view()
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("contiguous");
    let wm = w.view().into_shape_with_order((o, g.col_rows())).expect("contiguous");
    let b = bias_values("conv2d bias", b, o)?;
    let mut y = zeros4((n, o, g.oh, g.ow));
    {
        let yv = y
            .view_mut()
            .into_shape_with_order((n, o, g.col_cols()))
            .expect("contiguous");
        correlate(opts.algorithm, xm, &g, (wm, kernels), yv, &b)?;
    }
    Ok(y)
}

/// The bias as the slice every convolution path takes (a copy of its `channels` values),
/// empty for none; an error naming `what` if it is not one value per output channel.
pub(crate) fn bias_values<F: Float>(what: &str, b: Option<ArrayView1<F>>, channels: usize) -> Result<Vec<F>> {
    match b {
        Some(b) if b.len() != channels => Err(Error::shape(what, format!("[{channels}]"), b.shape())),
        Some(b) => Ok(b.to_vec()),
        None => Ok(Vec::new()),
    }
}

/// `db[o] += sum over n, y, x of dy[n, o, y, x]`: each thread takes a contiguous block of
/// channels and reads its part of every image in turn (contiguous runs, not one channel's
/// planes scattered over the batch), adding each image's plane sums in batch order: the
/// same sums as on one thread. An error if `db` is not one value per channel of `dy`.
pub(crate) fn channel_bias_grad<F: Float>(dy: ArrayView4<F>, mut db: ArrayViewMut1<F>) -> Result<()> {
    let channels = db.len();
    if channels != dy.shape()[1] {
        return Err(Error::shape(
            "bias gradient",
            format!("[{}]", dy.shape()[1]),
            db.shape(),
        ));
    }
    // The planes of a standard-layout `dy` are contiguous runs: summed without `sum`'s
    // per-call layout checks (a DCGAN VAE step sums some 575,000 planes of 1 to 784
    // values), to the same bits.
    let hw = dy.shape()[2] * dy.shape()[3];
    let flat = dy.as_slice().filter(|_| hw > 0 && channels > 0);
    let sum = |first: usize, block: &mut [F]| match flat {
        Some(flat) => {
            for image in flat.chunks_exact(channels * hw) {
                let planes = image[first * hw..].chunks_exact(hw);
                for (d, plane) in block.iter_mut().zip(planes) {
                    *d += sum_as_ndarray(plane);
                }
            }
        }
        None => {
            for dyn_ in dy.axis_iter(Axis(0)) {
                for (d, plane) in block.iter_mut().zip(dyn_.axis_iter(Axis(0)).skip(first)) {
                    *d += plane.sum();
                }
            }
        }
    };
    let db = db.as_slice_mut().expect("contiguous bias gradient");
    let threads = rayon::current_num_threads();
    if dy.len() < tuning::PAR_MIN_BIAS || threads < 2 || channels < 2 {
        sum(0, db);
        return Ok(());
    }
    let per = channels.div_ceil(threads);
    db.par_chunks_mut(per)
        .enumerate()
        .for_each(|(i, block)| sum(i * per, block));
    Ok(())
}

/// Backward of [`conv2d_forward`] given `dy` `[n, o, oh, ow]`: accumulates `dw += ...` and
/// `db += ...`, returns `dx` if `need_dx`.
pub fn conv2d_backward<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    dy: ArrayView4<F>,
    opts: &ConvOptions,
    need_dx: bool,
    dw: ArrayViewMut4<F>,
    db: Option<ArrayViewMut1<F>>,
) -> Result<Option<Array4<F>>> {
    conv2d_backward_params(x, w, dy, opts, dw, db)?;
    if !need_dx {
        return Ok(None);
    }
    let mut dx = Array4::<F>::zeros(x.raw_dim());
    conv2d_backward_input(x.shape(), w, dy, opts, dx.view_mut())?;
    Ok(Some(dx))
}

/// The parameter half of [`conv2d_backward`]: `dw += ...`, `db += ...`.
pub(crate) fn conv2d_backward_params<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    dy: ArrayView4<F>,
    opts: &ConvOptions,
    dw: ArrayViewMut4<F>,
    db: Option<ArrayViewMut1<F>>,
) -> Result<()> {
    check_x("conv2d input", &x, w.shape()[1])?;
    let g = direct_geom(x.shape(), w.shape(), opts)?;
    let n = x.shape()[0];
    let dy = checked_dy_direct(&g, n, w.shape()[0], &dy)?;
    let x = x.as_standard_layout();
    let xm = x
        .view()
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("contiguous");
    let dym = dy
        .view()
        .into_shape_with_order((n, w.shape()[0], g.col_cols()))
        .expect("contiguous");
    if let Some(db) = db {
        channel_bias_grad(dy.view(), db)?;
    }
    let dwm = dw
        .into_shape_with_order((w.shape()[0], g.col_rows()))
        .expect("contiguous weight gradient");
    weight_grad(opts.algorithm, dym, xm, &g, dwm)?;
    Ok(())
}

/// The input half of [`conv2d_backward`]: overwrites `dx` (standard layout, the input's
/// shape `x_shape`) with the input gradient.
pub(crate) fn conv2d_backward_input<F: Float>(
    x_shape: &[usize],
    w: ArrayView4<F>,
    dy: ArrayView4<F>,
    opts: &ConvOptions,
    dx: ArrayViewMut4<F>,
) -> Result<()> {
    let g = direct_geom(x_shape, w.shape(), opts)?;
    let (n, o) = (x_shape[0], w.shape()[0]);
    let dy = checked_dy_direct(&g, n, o, &dy)?;
    let w = w.as_standard_layout();
    let wm = w.view().into_shape_with_order((o, g.col_rows())).expect("contiguous");
    let dym = dy
        .view()
        .into_shape_with_order((n, o, g.col_cols()))
        .expect("contiguous");
    let dxm = dx
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("standard-layout dx");
    fold(opts.algorithm, dym, &g, (wm, &mut KernelCache::default()), dxm, &[])?;
    Ok(())
}

/// Both halves of [`conv2d_backward`] in one pass: `dw += ...`, `db += ...`, and the input
/// gradient written over `x` (the kept input, standard layout), which is read first. The
/// Fourier path's kernel blocks come from `kernels` when the forward left them there.
pub(crate) fn conv2d_backward_over_input<F: Float>(
    x: ArrayViewMut4<F>,
    (w, kernels): (ArrayView4<F>, &mut KernelCache<F>),
    dy: ArrayView4<F>,
    opts: &ConvOptions,
    dw: ArrayViewMut4<F>,
    db: Option<ArrayViewMut1<F>>,
) -> Result<()> {
    check_x("conv2d input", &x.view(), w.shape()[1])?;
    let g = direct_geom(x.shape(), w.shape(), opts)?;
    let (n, o) = (x.shape()[0], w.shape()[0]);
    let dy = checked_dy_direct(&g, n, o, &dy)?;
    if let Some(db) = db {
        channel_bias_grad(dy.view(), db)?;
    }
    let w = w.as_standard_layout();
    let wm = w.view().into_shape_with_order((o, g.col_rows())).expect("contiguous");
    let dym = dy
        .view()
        .into_shape_with_order((n, o * g.col_cols()))
        .expect("contiguous");
    let xm = x
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("standard-layout input");
    let dwm = dw
        .into_shape_with_order((o, g.col_rows()))
        .expect("contiguous weight gradient");
    backward_over_input(opts.algorithm, true, dym, xm, &g, (wm, kernels), dwm)
}

/// `dy` in standard layout, after checking that it is `[n, o, oh, ow]`.
fn checked_dy_direct<'a, F: Float>(
    g: &ConvGeom,
    n: usize,
    o: usize,
    dy: &'a ArrayView4<'a, F>,
) -> Result<CowArray<'a, F, Ix4>> {
    if dy.shape() != [n, o, g.oh, g.ow] {
        return Err(Error::shape(
            "conv2d dy",
            format!("[{n}, {o}, {}, {}]", g.oh, g.ow),
            dy.shape(),
        ));
    }
    Ok(dy.as_standard_layout())
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
    let g = transposed_geom(x.shape(), w.shape(), opts)?;
    let (n, ci) = (x.shape()[0], x.shape()[1]);
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let xm = x
        .view()
        .into_shape_with_order((n, ci, g.col_cols()))
        .expect("contiguous");
    let wm = w.view().into_shape_with_order((ci, g.col_rows())).expect("contiguous");
    let b = bias_values("conv_transpose2d bias", b, g.c)?;
    let mut y = zeros4((n, g.c, g.h, g.w));
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
    let g = transposed_geom(x.shape(), w.shape(), opts)?;
    let (n, ci) = (x.shape()[0], x.shape()[1]);
    let dy = checked_dy_transposed(&g, n, &dy)?;
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
    let g = transposed_geom(x_shape, w.shape(), opts)?;
    let (n, ci) = (x_shape[0], x_shape[1]);
    let dy = checked_dy_transposed(&g, n, &dy)?;
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
    let g = transposed_geom(x.shape(), w.shape(), opts)?;
    let (n, ci) = (x.shape()[0], x.shape()[1]);
    let dy = checked_dy_transposed(&g, n, &dy)?;
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
fn checked_dy_transposed<'a, F: Float>(
    g: &ConvGeom,
    n: usize,
    dy: &'a ArrayView4<'a, F>,
) -> Result<CowArray<'a, F, Ix4>> {
    if dy.shape() != [n, g.c, g.h, g.w] {
        return Err(Error::shape(
            "conv_transpose2d dy",
            format!("[{n}, {}, {}, {}]", g.c, g.h, g.w),
            dy.shape(),
        ));
    }
    Ok(dy.as_standard_layout())
}
