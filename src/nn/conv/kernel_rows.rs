//! Stride-1 convolutions with one GEMM per kernel row: the three products every
//! convolution layer is made of ([`correlate`], [`fold`], [`weight_grad`], the contracts of
//! [`super::im2col`]'s `unfold_gemm`, `gemm_fold` and `weight_grad`) over an input
//! unfolded along the kernel's columns alone.
//!
//! Why: im2col copies every input value `kh * kw` times. For one image through the
//! ConvVAE's 32 -> 32 5x5 layers that is a 1.3 MB column matrix, larger than a core's L2:
//! writing it and reading it back cost the forward half as much again as its GEMM, and
//! the input gradient's col2im as much. At a batch of a few images the Fourier path's
//! kernel transforms are not amortised either.
//!
//! How: with stride 1, output row `oy` reads padded input row `oy + ki * dh` through kernel
//! row `ki`. So unfold the padded input along the kernel's columns only, into *strips*
//! `S[(ch, kj), y * ow + ox] = x[ch, y - ph, ox + kj * dw - pw]` (zero in the padding) for
//! every padded row `y`: `kw` copies of the input instead of `kh * kw`. Kernel row `ki`'s
//! column matrix is then the window of `oh * ow` columns of `S` starting at `ki * dh * ow`,
//! a plain strided view, and
//! - the forward is `kh` GEMMs accumulated into the output, `out = sum_ki W_ki S_ki`, with
//!   `W_ki[r, (ch, kj)] = w[r, ch, ki, kj]`;
//! - the input gradient adds `W_ki' dy` into the same windows of a strip matrix, then adds
//!   each strip back onto the pixels it was copied from (the strips' adjoint);
//! - the weight gradient is `dW_ki = dy S_ki'`, one GEMM per kernel row.
//!
//! The products have the same multiply-adds as im2col's, over an inner dimension of
//! `c * kw` per GEMM instead of `c * kh * kw`; the sums run in another order, so results
//! agree with im2col's to rounding, not to the bit.

use std::ops::Range;

use ndarray::{s, Array3, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::layer::ConvGeom;
use crate::gemm::gemm;
use crate::tuning;
use crate::Float;

/// Whether this path can compute convolutions of geometry `g`: stride 1.
pub(crate) fn supports(g: &ConvGeom) -> bool {
    g.stride == (1, 1)
}

/// Whether this path is expected to beat im2col and the Fourier path for `n` images of
/// geometry `g`: a batch of at most [`tuning::KERNEL_ROWS_MAX_BATCH`], stride 1, at least [`tuning::KERNEL_ROWS_MIN_INNER`]
/// values along each GEMM's inner dimension, and more than one output position (a kernel
/// covering the whole plane is one GEMM either way).
pub(crate) fn preferred(g: &ConvGeom, n: usize) -> bool {
    supports(g)
        && n <= tuning::KERNEL_ROWS_MAX_BATCH
        && g.c * g.kernel.1 >= tuning::KERNEL_ROWS_MIN_INNER
        && g.col_cols() > 1
}

/// Padded rows of the strips: every input row some kernel row reads, `oh + (kh - 1) dh`.
fn padded_rows(g: &ConvGeom) -> usize {
    g.oh + (g.kernel.0 - 1) * g.dilation.0
}

/// The first column of kernel row `ki`'s window in the strips: `ki * dh * ow`.
fn window_start(g: &ConvGeom, ki: usize) -> usize {
    ki * g.dilation.0 * g.ow
}

/// `out = sum_ki w(ki) · S_ki`: the forward's product over the strips `sm`, each kernel
/// row's window as wide as `out` (`w(ki)`: the rows of kernel row `ki`'s weight that
/// `out` takes).
fn times_strips<'a, F: Float>(
    g: &ConvGeom,
    w: impl Fn(usize) -> ArrayView2<'a, F>,
    sm: ArrayView2<F>,
    mut out: ArrayViewMut2<F>,
) {
    let width = out.ncols();
    for ki in 0..g.kernel.0 {
        let at = window_start(g, ki);
        let beta = if ki == 0 { F::zero() } else { F::one() };
        gemm(F::one(), w(ki), sm.slice(s![.., at..at + width]), beta, out.view_mut());
    }
}

/// `acc[ki] = a · S_ki'` (added to `acc[ki]` with `add`): the weight gradient by kernel
/// rows, `acc` `[kh, rows, srows]` for `a` `[rows, oh*ow]` and strips `sm` of `srows` rows.
fn strips_weight_grad<F: Float>(g: &ConvGeom, a: ArrayView2<F>, sm: ArrayView2<F>, add: bool, acc: &mut [F]) {
    let (rows, srows, p) = (a.nrows(), sm.nrows(), g.col_cols());
    let beta = if add { F::one() } else { F::zero() };
    for (ki, acck) in acc.chunks_exact_mut(rows * srows).take(g.kernel.0).enumerate() {
        let at = window_start(g, ki);
        let acck = ArrayViewMut2::from_shape((rows, srows), acck).expect("sized");
        gemm(F::one(), a, sm.slice(s![.., at..at + p]).t(), beta, acck);
    }
}

/// The weight `wmat` (`[rows, c*kh*kw]`, columns `(ch, ki, kj)`) as one `[rows, c*kw]`
/// matrix per kernel row, columns `(ch, kj)`: `[kh, rows, c*kw]`.
fn by_kernel_rows<F: Float>(wmat: ArrayView2<F>, g: &ConvGeom) -> Array3<F> {
    let (kh, kw) = g.kernel;
    let (rows, cols) = wmat.dim();
    let wmat = wmat.as_standard_layout();
    let w = wmat.as_slice().expect("standard layout");
    let mut out = Array3::zeros((kh, rows, g.c * kw));
    let dst = out.as_slice_mut().expect("fresh array");
    for (ki, dst) in dst.chunks_exact_mut(rows * g.c * kw).enumerate() {
        for (wr, dst) in w.chunks_exact(cols).zip(dst.chunks_exact_mut(g.c * kw)) {
            for (src, dst) in wr.chunks_exact(kh * kw).zip(dst.chunks_exact_mut(kw)) {
                // A plain loop: a memmove call per run of a few values costs more.
                for (d, &v) in dst.iter_mut().zip(&src[ki * kw..(ki + 1) * kw]) {
                    *d = v;
                }
            }
        }
    }
    out
}

/// The pieces each image's product is cut into for a batch of `n` on rayon's pool: as
/// many as make the tasks a multiple of the threads (one image of two threads: 2; three
/// images: 2 each), at most `len`, and one when the image's `work` (multiply-adds) is too
/// little to share.
fn pieces(n: usize, len: usize, work: usize) -> usize {
    let threads = rayon::current_num_threads();
    if work < tuning::KERNEL_ROWS_MIN_WORK {
        return 1;
    }
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    (threads / gcd(n.max(1), threads)).clamp(1, len.max(1))
}

/// Writes the strips of the channels `chans` of `x` (consecutive `h*w` planes: a whole
/// image, or a block of its channels) for the padded rows `ys` into `out`,
/// `chans.len() * kw` rows of `ys.len() * ow` values.
fn strips<F: Float>(x: &[F], g: &ConvGeom, chans: Range<usize>, ys: Range<usize>, out: &mut [F]) {
    let (kw, ow, hw) = (g.kernel.1, g.ow, g.h * g.w);
    let (ph, pw) = g.padding;
    let len = ys.len() * ow;
    debug_assert!(out.len() >= chans.len() * kw * len);
    // The padded rows that are image rows.
    let (ylo, yhi) = (ys.start.max(ph), ys.end.min(ph + g.h).max(ys.start.max(ph)));
    for (i, ch) in chans.enumerate() {
        let plane = &x[ch * hw..(ch + 1) * hw];
        for kj in 0..kw {
            let (xlo, xhi) = ConvGeom::valid(ow, g.w, 1, pw, kj * g.dilation.1);
            let row = &mut out[(i * kw + kj) * len..][..len];
            // Only the padding's share is zero: fill that alone.
            if ylo > ys.start || yhi < ys.end || xlo > 0 || xhi < ow {
                row.fill(F::zero());
            }
            if xlo == xhi {
                continue;
            }
            let ix0 = xlo + kj * g.dilation.1 - pw;
            for y in ylo..yhi {
                let src = &plane[(y - ph) * g.w + ix0..][..xhi - xlo];
                let dst = &mut row[(y - ys.start) * ow + xlo..][..xhi - xlo];
                // Runs are short (an output row): a plain loop beats a memmove call.
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v;
                }
            }
        }
    }
}

/// Adds the strips `src` of `planes.len() / (h*w)` channels (all padded rows, as
/// [`strips`] writes them) onto the pixels they were copied from: the adjoint of
/// [`strips`].
fn add_strips<F: Float>(src: &[F], g: &ConvGeom, planes: &mut [F]) {
    let (kw, ow, hw) = (g.kernel.1, g.ow, g.h * g.w);
    let (ph, pw) = g.padding;
    let len = padded_rows(g) * ow;
    // The image rows some kernel row reads (all of them but for an output padding).
    let ih = g.h.min(padded_rows(g).saturating_sub(ph));
    for (i, plane) in planes.chunks_exact_mut(hw).enumerate() {
        for kj in 0..kw {
            let (xlo, xhi) = ConvGeom::valid(ow, g.w, 1, pw, kj * g.dilation.1);
            if xlo == xhi {
                continue;
            }
            let row = &src[(i * kw + kj) * len..][..len];
            let ix0 = xlo + kj * g.dilation.1 - pw;
            for iy in 0..ih {
                let dst = &mut plane[iy * g.w + ix0..][..xhi - xlo];
                for (d, &v) in dst.iter_mut().zip(&row[(iy + ph) * ow + xlo..]) {
                    *d += v;
                }
            }
        }
    }
}

/// For every image: `out[n] = wmat · im2col(inp[n])`, `inp` `[N, c*h*w]`, `out` `[N, rows,
/// oh*ow]`, each image cut into blocks of output rows ([`pieces`]), each block from the
/// strips of the input rows it reads.
pub(crate) fn correlate<F: Float>(inp: ArrayView2<F>, g: &ConvGeom, wmat: ArrayView2<F>, mut out: ArrayViewMut3<F>) {
    let wr = by_kernel_rows(wmat, g);
    let n = inp.nrows();
    let per =
        g.oh.div_ceil(pieces(n, g.oh, wmat.nrows() * g.col_rows() * g.col_cols()));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(inp.axis_iter(Axis(0)).into_par_iter())
        .for_each(|(mut o, x)| {
            let x = x.to_slice().expect("contiguous sample");
            o.axis_chunks_iter_mut(Axis(1), per * g.ow)
                .into_par_iter()
                .enumerate()
                .for_each(|(i, block)| correlate_rows(x, g, &wr, i * per, block));
        });
}

/// [`correlate`] for the output rows from `oy0` of one image `x`, `out` `[rows, m * ow]`.
fn correlate_rows<F: Float>(x: &[F], g: &ConvGeom, wr: &Array3<F>, oy0: usize, out: ArrayViewMut2<F>) {
    let (kh, kw, dh, ow) = (g.kernel.0, g.kernel.1, g.dilation.0, g.ow);
    let m = out.ncols() / ow;
    let ys = oy0..oy0 + m + (kh - 1) * dh;
    let (srows, len) = (g.c * kw, ys.len() * ow);
    F::with_scratch(srows * len, 0, |buf, _| {
        strips(x, g, 0..g.c, ys, buf);
        let sm = ArrayView2::from_shape((srows, len), &*buf).expect("sized");
        times_strips(g, |ki| wr.index_axis(Axis(0), ki), sm, out);
    });
}

/// For every image: `out[n] = col2im(wmat' · src[n])`, `src` `[N, rows, oh*ow]`, `out`
/// `[N, c*h*w]` (overwritten), each image cut into blocks of channels ([`pieces`]).
pub(crate) fn fold<F: Float>(src: ArrayView3<F>, g: &ConvGeom, wmat: ArrayView2<F>, mut out: ArrayViewMut2<F>) {
    let wr = by_kernel_rows(wmat, g);
    let hw = g.h * g.w;
    let per =
        g.c.div_ceil(pieces(src.shape()[0], g.c, wmat.nrows() * g.col_rows() * g.col_cols()));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(src.axis_iter(Axis(0)).into_par_iter())
        .for_each(|(mut o, sc)| {
            o.as_slice_mut()
                .expect("contiguous sample")
                .par_chunks_mut(per * hw)
                .enumerate()
                .for_each(|(i, planes)| fold_channels(sc, g, &wr, i * per, planes));
        });
}

/// [`fold`] of one image's `src` (`[rows, oh*ow]`) into its channels from `c0`, `planes`
/// (overwritten).
fn fold_channels<F: Float>(src: ArrayView2<F>, g: &ConvGeom, wr: &Array3<F>, c0: usize, planes: &mut [F]) {
    let nc = planes.len() / (g.h * g.w);
    F::with_scratch(nc * g.kernel.1 * padded_rows(g) * g.ow, 0, |buf, _| {
        fold_channels_in(src, g, wr, c0, planes, buf)
    });
}

/// [`fold_channels`] with the strips in `buf` (`nc * kw * padded rows * ow`).
fn fold_channels_in<F: Float>(
    src: ArrayView2<F>,
    g: &ConvGeom,
    wr: &Array3<F>,
    c0: usize,
    planes: &mut [F],
    buf: &mut [F],
) {
    let (kh, kw, ow) = (g.kernel.0, g.kernel.1, g.ow);
    let nc = planes.len() / (g.h * g.w);
    let (srows, len, p) = (nc * kw, padded_rows(g) * ow, g.col_cols());
    let mut sm = ArrayViewMut2::from_shape((srows, len), &mut buf[..srows * len]).expect("sized");
    // Kernel row 0's window (the first `p` columns) is written, the rest added to.
    sm.slice_mut(s![.., p..]).fill(F::zero());
    for ki in 0..kh {
        let at = window_start(g, ki);
        let w = wr.index_axis(Axis(0), ki);
        let w = w.slice(s![.., c0 * kw..(c0 + nc) * kw]);
        let beta = if ki == 0 { F::zero() } else { F::one() };
        gemm(F::one(), w.t(), src, beta, sm.slice_mut(s![.., at..at + p]));
    }
    planes.fill(F::zero());
    add_strips(buf, g, planes);
}

/// `dw += sum_n a[n] · im2col(b[n])'`, `a` `[N, rows, oh*ow]`, `b` `[N, c*h*w]`, `dw`
/// `[rows, c*kh*kw]`: cut into blocks of channels ([`pieces`]), each summing over the
/// images in order (the same sums whatever the number of threads).
pub(crate) fn weight_grad<F: Float>(a: ArrayView3<F>, b: ArrayView2<F>, g: &ConvGeom, mut dw: ArrayViewMut2<F>) {
    let (kk, hw) = (g.kernel.0 * g.kernel.1, g.h * g.w);
    let per = g.c.div_ceil(pieces(1, g.c, a.len() * g.col_rows()));
    dw.axis_chunks_iter_mut(Axis(1), per * kk)
        .into_par_iter()
        .zip(b.axis_chunks_iter(Axis(1), per * hw).into_par_iter())
        .for_each(|(dwb, bb)| weight_grad_channels(a, Images::Read(bb), g, dwb));
}

/// The images a block of channels takes its strips from (`[N, nc*h*w]`, the block's
/// channels of each image): read only, or read and then overwritten with the [`fold`] of
/// `a[n]` through the weight by kernel rows, channels from `c0` (Conv2d's backward).
enum Images<'a, F> {
    Read(ArrayView2<'a, F>),
    ReadThenFold(ArrayViewMut2<'a, F>, &'a Array3<F>, usize),
}

/// [`weight_grad`] for one block of channels, `images` their planes, `dw` their columns.
fn weight_grad_channels<F: Float>(a: ArrayView3<F>, mut images: Images<F>, g: &ConvGeom, mut dw: ArrayViewMut2<F>) {
    let (kh, kw) = g.kernel;
    let rows = a.shape()[1];
    let nc = dw.ncols() / (kh * kw);
    let (srows, len) = (nc * kw, padded_rows(g) * g.ow);
    F::with_scratch(srows * len, kh * rows * srows, |buf, acc| {
        for (j, aj) in a.outer_iter().enumerate() {
            let image = match &images {
                Images::Read(b) => b.row(j),
                Images::ReadThenFold(b, ..) => b.row(j),
            };
            strips(
                image.to_slice().expect("contiguous planes"),
                g,
                0..nc,
                0..padded_rows(g),
                buf,
            );
            let sm = ArrayView2::from_shape((srows, len), &*buf).expect("sized");
            strips_weight_grad(g, aj, sm, j > 0, acc);
            // The strips are spent: their buffer takes the input gradient's.
            if let Images::ReadThenFold(b, wr, c0) = &mut images {
                let mut bj = b.row_mut(j);
                fold_channels_in(aj, g, wr, *c0, bj.as_slice_mut().expect("contiguous planes"), buf);
            }
        }
        add_by_kernel_rows(acc, g, dw.view_mut());
    });
}

/// `dw[r, (ch, ki, kj)] += acc[ki][r, (ch, kj)]`: a weight gradient by kernel rows
/// (`[kh, rows, nc*kw]`) added to the `[rows, nc*kh*kw]` block `dw` of the weight's.
fn add_by_kernel_rows<F: Float>(acc: &[F], g: &ConvGeom, mut dw: ArrayViewMut2<F>) {
    let (kh, kw) = g.kernel;
    let (rows, srows) = (dw.nrows(), dw.ncols() / kh);
    for (r, mut dwr) in dw.outer_iter_mut().enumerate() {
        let dwr = dwr.as_slice_mut().expect("a row of a row-major matrix");
        for ki in 0..kh {
            let from = &acc[(ki * rows + r) * srows..][..srows];
            for (ci, from) in from.chunks_exact(kw).enumerate() {
                for (d, &v) in dwr[(ci * kh + ki) * kw..][..kw].iter_mut().zip(from) {
                    *d += v;
                }
            }
        }
    }
}

/// Both gradients in one call, the input gradient written over the kept input `x`, `dw +=
/// ...`: Conv2d (`dy_is_a`) has `dy` `[N, rows*oh*ow]` and `x` `[N, c*h*w]`, and each block
/// of channels takes an image's strips for the weight gradient, then folds the input
/// gradient over them; ConvTranspose2d has them the other way round, and each image's
/// strips of `dy` serve both products, by blocks of the kept input's channels (`rows`):
/// `dw[block] += x[n][block] · S_ki'`, then `x[n][block] = W_ki[block] · S_ki`. Either
/// way, one fork per pass.
pub(crate) fn backward_over_input<F: Float>(
    dy_is_a: bool,
    dy: ArrayView2<F>,
    mut x: ArrayViewMut2<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    mut dw: ArrayViewMut2<F>,
) {
    let (n, rows, p) = (dy.nrows(), wmat.nrows(), g.col_cols());
    let wr = by_kernel_rows(wmat, g);
    let (kk, hw) = (g.kernel.0 * g.kernel.1, g.h * g.w);
    if dy_is_a {
        let dy3 = dy.into_shape_with_order((n, rows, p)).expect("standard layout");
        let per = g.c.div_ceil(pieces(1, g.c, dy3.len() * g.col_rows()));
        return dw
            .axis_chunks_iter_mut(Axis(1), per * kk)
            .into_par_iter()
            .zip(x.axis_chunks_iter_mut(Axis(1), per * hw).into_par_iter())
            .enumerate()
            .for_each(|(i, (dwb, xb))| weight_grad_channels(dy3, Images::ReadThenFold(xb, &wr, i * per), g, dwb));
    }
    let mut x3 = x.into_shape_with_order((n, rows, p)).expect("standard layout");
    let (kh, kw) = g.kernel;
    let (srows, len) = (g.c * kw, padded_rows(g) * g.ow);
    let per = rows.div_ceil(pieces(1, rows, rows * g.col_rows() * p));
    F::with_scratch(srows * len, 0, |buf, _| {
        for (dyj, mut xj) in dy.outer_iter().zip(x3.outer_iter_mut()) {
            strips(
                dyj.to_slice().expect("contiguous sample"),
                g,
                0..g.c,
                0..padded_rows(g),
                buf,
            );
            let sm = ArrayView2::from_shape((srows, len), &*buf).expect("sized");
            dw.axis_chunks_iter_mut(Axis(0), per)
                .into_par_iter()
                .zip(xj.axis_chunks_iter_mut(Axis(0), per).into_par_iter())
                .enumerate()
                .for_each(|(i, (dwb, xb))| {
                    let rs = i * per..i * per + xb.nrows();
                    F::with_scratch(kh * rs.len() * srows, 0, |acc, _| {
                        strips_weight_grad(g, xb.view(), sm, false, acc);
                        add_by_kernel_rows(acc, g, dwb);
                    });
                    // The kept input is read: the input gradient goes over it.
                    times_strips(
                        g,
                        |ki| wr.index_axis(Axis(0), ki).slice_move(s![rs.clone(), ..]),
                        sm,
                        xb,
                    );
                });
        }
    });
}
