//! im2col / col2im: the unfolding that turns a convolution into a matrix product.
//!
//! For an input of `c x h x w` and a kernel of `kh x kw` (stride, padding, dilation), the
//! column matrix has one row per `(channel, ki, kj)` and one column per output position:
//! `cols[(ch*kh + ki)*kw + kj, oy*ow + ox] = x[ch, oy*sh - ph + ki*dh, ox*sw - pw + kj*dw]`
//! (zero outside the image). `col2im` is its adjoint: it adds each column entry back onto
//! the pixel it came from. Conv2d's forward is im2col then GEMM; its input gradient is GEMM
//! then col2im; ConvTranspose2d is the same pair run the other way.

use std::ops::Range;

use ndarray::{s, Array2, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::layer::ConvGeom;
use super::single_image;
use crate::gemm::{gemm, gemm_par};
use crate::tuning;
use crate::Float;

/// Unfolds one image `x` (`c*h*w`, row-major) into `cols` (`col_rows x col_cols`).
#[cfg(test)]
pub fn im2col<F: Float>(x: &[F], g: &ConvGeom, cols: &mut [F]) {
    debug_assert_eq!(cols.len(), g.col_rows() * g.col_cols());
    im2col_ld(x, g, cols, g.col_cols());
}

/// `im2col` into a wider matrix: row `r` of this image's block starts at `cols[r * ld]`
/// (`ld >= col_cols`), so that several images can sit side by side in one column matrix.
#[cfg(test)]
pub fn im2col_ld<F: Float>(x: &[F], g: &ConvGeom, cols: &mut [F], ld: usize) {
    im2col_rows(x, g, 0..g.oh, cols, ld);
}

/// `im2col_ld` for the output rows `oys` alone: the column matrix's columns
/// `oys.start * ow .. oys.end * ow`, written from column 0 of each row of `cols`.
fn im2col_rows<F: Float>(x: &[F], g: &ConvGeom, oys: Range<usize>, cols: &mut [F], ld: usize) {
    let n_out = oys.len() * g.ow;
    debug_assert_eq!(x.len(), g.c * g.h * g.w);
    debug_assert!(oys.end <= g.oh && ld >= n_out && cols.len() >= (g.col_rows() - 1) * ld + n_out);
    let (kh, kw) = g.kernel;
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (dh, dw) = g.dilation;
    for ch in 0..g.c {
        let plane = &x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
        for ki in 0..kh {
            let (ylo, yhi) = ConvGeom::valid(g.oh, g.h, sh, ph, ki * dh);
            let (ylo, yhi) = (ylo.max(oys.start), yhi.min(oys.end));
            for kj in 0..kw {
                let (xlo, xhi) = ConvGeom::valid(g.ow, g.w, sw, pw, kj * dw);
                let row = &mut cols[((ch * kh + ki) * kw + kj) * ld..][..n_out];
                // Only positions whose tap falls in the padding are zero: fill those alone.
                if ylo > oys.start || yhi < oys.end || xlo > 0 || xhi < g.ow {
                    row.fill(F::zero());
                }
                for oy in ylo..yhi {
                    let iy = oy * sh + ki * dh - ph;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let dst = &mut row[(oy - oys.start) * g.ow..][..g.ow];
                    if sw == 1 {
                        // Runs are short (an output row): a plain loop beats a memmove call.
                        let ix0 = xlo + kj * dw - pw;
                        for (d, &v) in dst[xlo..xhi].iter_mut().zip(&src[ix0..]) {
                            *d = v;
                        }
                    } else {
                        // Strided taps, without a bounds check per element.
                        let ix0 = xlo * sw + kj * dw - pw;
                        for (d, &v) in dst[xlo..xhi].iter_mut().zip(src[ix0..].iter().step_by(sw)) {
                            *d = v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds the column matrix `cols` back onto the image `x` (`c*h*w`): the adjoint of
/// `im2col`. `x` is accumulated into, not overwritten.
#[cfg(test)]
pub fn col2im<F: Float>(cols: &[F], g: &ConvGeom, x: &mut [F]) {
    debug_assert_eq!(cols.len(), g.col_rows() * g.col_cols());
    col2im_ld(cols, g, x, g.col_cols());
}

/// `col2im` from a block of a wider matrix with leading dimension `ld` (see `im2col_ld`).
pub fn col2im_ld<F: Float>(cols: &[F], g: &ConvGeom, x: &mut [F], ld: usize) {
    debug_assert_eq!(x.len(), g.c * g.h * g.w);
    debug_assert!(ld >= g.col_cols() && cols.len() >= (g.col_rows() - 1) * ld + g.col_cols());
    let (kh, kw) = g.kernel;
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (dh, dw) = g.dilation;
    let n_out = g.col_cols();
    for ch in 0..g.c {
        let plane = &mut x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
        for ki in 0..kh {
            let (ylo, yhi) = ConvGeom::valid(g.oh, g.h, sh, ph, ki * dh);
            for kj in 0..kw {
                let (xlo, xhi) = ConvGeom::valid(g.ow, g.w, sw, pw, kj * dw);
                let row = &cols[((ch * kh + ki) * kw + kj) * ld..][..n_out];
                for oy in ylo..yhi {
                    let iy = oy * sh + ki * dh - ph;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let src = &row[oy * g.ow..(oy + 1) * g.ow];
                    if sw == 1 {
                        let ix0 = xlo + kj * dw - pw;
                        for (d, &s) in dst[ix0..ix0 + (xhi - xlo)].iter_mut().zip(&src[xlo..xhi]) {
                            *d += s;
                        }
                    } else {
                        let ix0 = xlo * sw + kj * dw - pw;
                        for (d, &v) in dst[ix0..].iter_mut().step_by(sw).zip(&src[xlo..xhi]) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// How images are unfolded for one geometry: row by row (stride-1 convolutions with
/// output rows of 8 or more, where each row is a straight copy), or through a table of
/// tap offsets (strided or short rows, where per-row loop overhead would dominate).
pub(crate) struct Taps {
    /// For tap `r = ki * kw + kj` and output position `q`: the offset in one channel plane
    /// of the pixel it reads, or `u32::MAX` in the padding. 32 bits, half the table's
    /// traffic of `usize`, and the width of the vector gathers that read through it.
    table: Option<Vec<u32>>,
    /// For groups of up to `group` images unfolded side by side ([`Taps::grouped`]): tap
    /// `r`'s offsets for image `j` at `[(r * group + j) * p..][..p]`, each the table's offset
    /// plus `j` images; `None` for one image at a time.
    group: Option<(usize, Vec<u32>)>,
}

impl Taps {
    pub(crate) fn new(g: &ConvGeom) -> Self {
        // Planes too large for 32-bit offsets go row by row too.
        if (g.stride == (1, 1) && g.ow >= 8) || g.h * g.w >= u32::MAX as usize {
            return Taps {
                table: None,
                group: None,
            };
        }
        let (kh, kw) = g.kernel;
        let p = g.col_cols();
        let mut table = vec![u32::MAX; kh * kw * p];
        for ki in 0..kh {
            for kj in 0..kw {
                let (ylo, yhi) = ConvGeom::valid(g.oh, g.h, g.stride.0, g.padding.0, ki * g.dilation.0);
                let (xlo, xhi) = ConvGeom::valid(g.ow, g.w, g.stride.1, g.padding.1, kj * g.dilation.1);
                let t = &mut table[(ki * kw + kj) * p..][..p];
                for oy in ylo..yhi {
                    let iy = oy * g.stride.0 + ki * g.dilation.0 - g.padding.0;
                    for ox in xlo..xhi {
                        t[oy * g.ow + ox] = (iy * g.w + ox * g.stride.1 + kj * g.dilation.1 - g.padding.1) as u32;
                    }
                }
            }
        }
        Taps {
            table: Some(table),
            group: None,
        }
    }

    /// [`Taps::new`] for unfolding (and folding) up to `group` consecutive images at a
    /// time with [`Taps::im2col_images`] and [`Taps::col2im_images`]. Through a table, a
    /// small plane's rows are short (16 taps for a 7x7 plane at stride 2, one vector or
    /// two): with the group's images in one table, each tap is one run of `group * p`
    /// values per channel instead of `group` runs of `p`.
    pub(crate) fn grouped(g: &ConvGeom, group: usize) -> Self {
        let mut taps = Self::new(g);
        let image = g.c * g.h * g.w;
        let fits = group.checked_mul(image).is_some_and(|len| len < u32::MAX as usize);
        if let (Some(table), true, true) = (&taps.table, group > 1, fits) {
            let p = g.col_cols();
            let mut wide = Vec::with_capacity(table.len() * group);
            for row in table.chunks_exact(p) {
                for j in 0..group {
                    let shift = (j * image) as u32;
                    wide.extend(row.iter().map(|&o| if o == u32::MAX { o } else { o + shift }));
                }
            }
            taps.group = Some((group, wide));
        }
        taps
    }

    /// The group table's rows for `m` images side by side in a matrix of leading
    /// dimension `ld`, if it has them (`m` at most its group, `ld = m * p`).
    fn group_rows(&self, m: usize, p: usize, ld: usize) -> Option<(usize, &[u32])> {
        match &self.group {
            Some((group, wide)) if m <= *group && ld == m * p => Some((*group * p, wide)),
            _ => None,
        }
    }

    /// Unfolds the images `x` `[m, c*h*w]` side by side into `cols` `[c*kh*kw, ld]`, image
    /// `j` at columns `j * p..`: [`Taps::im2col`] image by image, or one pass through the
    /// group table where there is one (contiguous images, `ld = m * p`).
    pub(crate) fn im2col_images<F: Float>(&self, x: ArrayView2<F>, g: &ConvGeom, cols: &mut [F], ld: usize) {
        let (m, p, kk, hw) = (x.nrows(), g.col_cols(), g.kernel.0 * g.kernel.1, g.h * g.w);
        if let (Some((stride, wide)), Some(xs)) = (self.group_rows(m, p, ld), x.as_slice()) {
            for ch in 0..g.c {
                for (r, taps) in wide.chunks_exact(stride).enumerate() {
                    gather(&xs[ch * hw..], &taps[..ld], &mut cols[(ch * kk + r) * ld..][..ld]);
                }
            }
            return;
        }
        for (j, xj) in x.outer_iter().enumerate() {
            self.im2col(xj.to_slice().expect("contiguous sample"), g, &mut cols[j * p..], ld);
        }
    }

    /// The adjoint of [`Taps::im2col_images`]: adds image `j`'s columns of `cols`
    /// `[c*kh*kw, ld]` (from `j * p`) onto image `j` of `x` `[m, c*h*w]`.
    pub(crate) fn col2im_images<F: Float>(&self, cols: &[F], g: &ConvGeom, mut x: ArrayViewMut2<F>, ld: usize) {
        let (m, p, kk, hw) = (x.nrows(), g.col_cols(), g.kernel.0 * g.kernel.1, g.h * g.w);
        if let Some((stride, wide)) = self.group_rows(m, p, ld) {
            if let Some(xs) = x.as_slice_mut() {
                for ch in 0..g.c {
                    for (r, taps) in wide.chunks_exact(stride).enumerate() {
                        scatter_add(&cols[(ch * kk + r) * ld..][..ld], &taps[..ld], &mut xs[ch * hw..]);
                    }
                }
                return;
            }
        }
        for (j, mut xj) in x.outer_iter_mut().enumerate() {
            self.col2im(&cols[j * p..], g, xj.as_slice_mut().expect("contiguous sample"), ld);
        }
    }

    /// `im2col_ld`, through the table when there is one.
    pub(crate) fn im2col<F: Float>(&self, x: &[F], g: &ConvGeom, cols: &mut [F], ld: usize) {
        self.im2col_rows(x, g, 0..g.oh, cols, ld);
    }

    /// [`im2col_rows`], through the table when there is one.
    pub(crate) fn im2col_rows<F: Float>(&self, x: &[F], g: &ConvGeom, oys: Range<usize>, cols: &mut [F], ld: usize) {
        let Some(table) = &self.table else {
            return im2col_rows(x, g, oys, cols, ld);
        };
        let (kk, p, hw) = (g.kernel.0 * g.kernel.1, g.col_cols(), g.h * g.w);
        let q = oys.start * g.ow..oys.end * g.ow;
        for (ch, plane) in x.chunks_exact(hw).enumerate() {
            for (r, taps) in table.chunks_exact(p).enumerate() {
                gather(plane, &taps[q.clone()], &mut cols[(ch * kk + r) * ld..][..q.len()]);
            }
        }
    }

    /// [`col2im_ld`], through the table when there is one.
    pub(crate) fn col2im<F: Float>(&self, cols: &[F], g: &ConvGeom, x: &mut [F], ld: usize) {
        let Some(table) = &self.table else {
            return col2im_ld(cols, g, x, ld);
        };
        let (kk, p, hw) = (g.kernel.0 * g.kernel.1, g.col_cols(), g.h * g.w);
        for (ch, plane) in x.chunks_exact_mut(hw).enumerate() {
            for (r, taps) in table.chunks_exact(p).enumerate() {
                scatter_add(&cols[(ch * kk + r) * ld..][..p], taps, plane);
            }
        }
    }
}

/// `dst[i] = src[taps[i]]`, or zero where the tap is in the padding (`u32::MAX`, past the
/// end of `src`).
#[inline]
fn gather<F: Float>(src: &[F], taps: &[u32], dst: &mut [F]) {
    if cfg!(target_feature = "avx512f") {
        // Branch-free (a clamped read, then a select), so that the loop compiles to vector
        // gathers: faster with AVX-512.
        let last = src.len() - 1;
        for (d, &o) in dst.iter_mut().zip(taps) {
            let o = o as usize;
            let v = src[o.min(last)];
            *d = if o <= last { v } else { F::zero() };
        }
    } else {
        // Without AVX-512 the compiler gathers the branch-free form lane by lane (inserts
        // and conditional moves), and a checked read is faster (by a fifth per value at the
        // strided VAE's shapes, on AVX2).
        for (d, &o) in dst.iter_mut().zip(taps) {
            *d = src.get(o as usize).copied().unwrap_or(F::zero());
        }
    }
}

/// `dst[taps[i]] += src[i]`, skipping taps in the padding: the adjoint of [`gather`].
#[inline]
fn scatter_add<F: Float>(src: &[F], taps: &[u32], dst: &mut [F]) {
    for (&v, &o) in src.iter().zip(taps) {
        if let Some(d) = dst.get_mut(o as usize) {
            *d += v;
        }
    }
}

/// `image[o, ..] += b[o]` for one image laid out `[channels, plane]` (`b` may be empty:
/// no bias). The unfolding path adds a bias this way to each image while it is in cache.
pub(crate) fn add_bias_per_channel<F: Float>(image: &mut [F], b: &[F]) {
    if b.is_empty() {
        return;
    }
    let plane = image.len() / b.len();
    for (values, &bo) in image.chunks_exact_mut(plane).zip(b) {
        for v in values {
            *v += bo;
        }
    }
}

/// [`add_bias_per_channel`] for each image (row) of `y` `[N, channels * plane]`, parallel
/// over the images: for the paths that do not add the bias as they write.
pub(crate) fn add_bias_to_images<F: Float>(mut y: ArrayViewMut2<F>, b: &[F]) {
    if b.is_empty() {
        return;
    }
    let add =
        |mut yn: ndarray::ArrayViewMut1<F>| add_bias_per_channel(yn.as_slice_mut().expect("contiguous sample"), b);
    if y.len() < tuning::PAR_MIN_BIAS {
        y.outer_iter_mut().for_each(add);
    } else {
        y.outer_iter_mut().into_par_iter().for_each(add);
    }
}

/// The product of one group of images: split over the thread pool when there are fewer
/// groups than threads (a batch of one then uses every core), on the calling thread
/// otherwise (parallelism is over the groups). Either way the same sums in the same order.
fn group_gemm<F: Float>(split: bool, a: ArrayView2<F>, b: ArrayView2<F>, beta: F, c: ArrayViewMut2<F>) {
    if split {
        gemm_par(F::one(), a, b, beta, c);
    } else {
        gemm(F::one(), a, b, beta, c);
    }
}

/// Whether `groups` independent products leave threads idle.
fn too_few(groups: usize) -> bool {
    groups < rayon::current_num_threads()
}

/// Images per GEMM for `p` output positions each and a batch of `n`.
fn group_size(p: usize, n: usize) -> usize {
    tuning::IM2COL_MIN_GEMM_COLS.div_ceil(p.max(1)).clamp(1, n.max(1))
}

/// For every sample `n`: `out[n] = wmat · im2col(inp[n])`, with `wmat` `[rows, c*kh*kw]`,
/// `inp` `[N, c*h*w]` and `out` `[N, rows, oh*ow]`. Small images are unfolded a group at a
/// time into one wide column matrix, so that each GEMM has enough columns. Parallel over
/// groups.
#[cfg(test)]
pub fn unfold_gemm<F: Float>(inp: ArrayView2<F>, g: &ConvGeom, wmat: ArrayView2<F>, out: ArrayViewMut3<F>) {
    unfold_gemm_bias(inp, g, wmat, out, &[]);
}

/// `unfold_gemm`, then `out[n, o, ..] += bias[o]` (no bias if `bias` is empty), added to
/// each group's images while they are in cache.
pub(crate) fn unfold_gemm_bias<F: Float>(
    inp: ArrayView2<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    mut out: ArrayViewMut3<F>,
    bias: &[F],
) {
    let (n, rows) = (inp.nrows(), wmat.nrows());
    if g.is_dense() {
        let mut out2 = out.into_shape_with_order((n, rows)).expect("one position");
        gemm_par(F::one(), inp, wmat.t(), F::zero(), out2.view_mut());
        return add_bias_to_images(out2, bias);
    }
    let (ck, p) = (g.col_rows(), g.col_cols());
    if let Some(per) = single_image::row_block(g, rows, n) {
        single_image::correlate(inp, g, wmat, out.view_mut(), per);
        let out2 = out.into_shape_with_order((n, rows * p)).expect("standard layout");
        return add_bias_to_images(out2, bias);
    }
    let gs = group_size(p, inp.nrows());
    let split = too_few(inp.nrows().div_ceil(gs));
    let taps = Taps::grouped(g, gs);
    out.axis_chunks_iter_mut(Axis(0), gs)
        .into_par_iter()
        .zip(inp.axis_chunks_iter(Axis(0), gs).into_par_iter())
        .for_each(|(mut o, x)| {
            let m = x.nrows();
            let ld = m * p;
            F::with_scratch(ck * ld, if m > 1 { rows * ld } else { 0 }, |cols, ybuf| {
                taps.im2col_images(x, g, cols, ld);
                let cm = ArrayView2::from_shape((ck, ld), &*cols).expect("sized");
                if m == 1 {
                    let mut o0 = o.index_axis_mut(Axis(0), 0);
                    group_gemm(split, wmat, cm, F::zero(), o0.view_mut());
                    add_bias_per_channel(o0.as_slice_mut().expect("contiguous sample"), bias);
                    return;
                }
                let mut y = ArrayViewMut2::from_shape((rows, ld), ybuf).expect("sized");
                group_gemm(split, wmat, cm, F::zero(), y.view_mut());
                for (j, mut oj) in o.outer_iter_mut().enumerate() {
                    oj.assign(&y.slice(s![.., j * p..(j + 1) * p]));
                    add_bias_per_channel(oj.as_slice_mut().expect("contiguous sample"), bias);
                }
            })
        });
}

/// `[N, rows, 1]` as `[N, rows]` (a dense geometry's single output position).
fn one_position<F: Float>(v: ArrayView3<F>) -> ArrayView2<F> {
    let (n, rows, _) = v.dim();
    v.into_shape_with_order((n, rows)).expect("one position")
}

/// Copies the samples `src[j]` `[rows, p]` side by side into `dst` `[rows, m * p]`.
fn gather_side_by_side<'a, F: Float>(src: ArrayView3<F>, dst: &'a mut [F]) -> ArrayView2<'a, F> {
    let (m, rows, p) = src.dim();
    {
        let mut d = ArrayViewMut2::from_shape((rows, m * p), &mut dst[..rows * m * p]).expect("sized");
        for (j, sj) in src.outer_iter().enumerate() {
            d.slice_mut(s![.., j * p..(j + 1) * p]).assign(&sj);
        }
    }
    ArrayView2::from_shape((rows, m * p), &dst[..rows * m * p]).expect("sized")
}

/// For every sample `n`: `out[n] = col2im(wmat^T · src[n])`, with `wmat` `[rows, c*kh*kw]`,
/// `src` `[N, rows, oh*ow]` and `out` `[N, c*h*w]` (overwritten). Grouped as
/// `unfold_gemm`; parallel over groups.
pub fn gemm_fold<F: Float>(src: ArrayView3<F>, g: &ConvGeom, wmat: ArrayView2<F>, out: ArrayViewMut2<F>) {
    gemm_fold_bias(src, g, wmat, out, &[]);
}

/// [`gemm_fold`], then `out[n, c, ..] += bias[c]` (no bias if `bias` is empty), added to
/// each image as soon as it is folded, while it is in cache.
pub(crate) fn gemm_fold_bias<F: Float>(
    src: ArrayView3<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    mut out: ArrayViewMut2<F>,
    bias: &[F],
) {
    if g.is_dense() {
        let src2 = one_position(src);
        gemm_par(F::one(), src2, wmat, F::zero(), out.view_mut());
        return add_bias_to_images(out, bias);
    }
    let (ck, p) = (g.col_rows(), g.col_cols());
    let rows = wmat.nrows();
    if let Some(per) = single_image::channel_block(g, rows, src.shape()[0]) {
        single_image::fold(src, g, wmat, out.view_mut(), per);
        return add_bias_to_images(out, bias);
    }
    let gs = group_size(p, src.shape()[0]);
    let split = too_few(src.shape()[0].div_ceil(gs));
    let taps = Taps::grouped(g, gs);
    out.axis_chunks_iter_mut(Axis(0), gs)
        .into_par_iter()
        .zip(src.axis_chunks_iter(Axis(0), gs).into_par_iter())
        .for_each(|(mut o, sc)| {
            let m = sc.shape()[0];
            let ld = m * p;
            F::with_scratch(ck * ld, if m > 1 { rows * ld } else { 0 }, |cols, sbuf| {
                {
                    let cm = ArrayViewMut2::from_shape((ck, ld), &mut *cols).expect("sized");
                    if m == 1 {
                        group_gemm(split, wmat.t(), sc.index_axis(Axis(0), 0), F::zero(), cm);
                    } else {
                        let sm = gather_side_by_side(sc, sbuf);
                        group_gemm(split, wmat.t(), sm, F::zero(), cm);
                    }
                }
                o.fill(F::zero());
                taps.col2im_images(cols, g, o.view_mut(), ld);
                for mut oj in o.outer_iter_mut() {
                    add_bias_per_channel(oj.as_slice_mut().expect("contiguous sample"), bias);
                }
            })
        });
}

/// Samples per run of [`unfolded_runs`]: the batch of `n` cut into one run per thread.
fn run_length(n: usize) -> usize {
    let parts = rayon::current_num_threads().clamp(1, n.max(1));
    n.div_ceil(parts).max(1)
}

/// The skeleton of the products that sum over samples into `dw` (`[rows, c*kh*kw]`): runs
/// of `per` samples ([`run_length`]), in parallel, run `k` paired with `runs[k]`; within a
/// run, the samples of `b` (`[N, c*h*w]`) unfolded a group at a time (grouped as `unfold_gemm`)
/// into a `[c*kh*kw, m * oh*ow]` column matrix, and `group(run, first, range, cols, buf,
/// acc)` called with the run's first sample, the group's samples, the columns, a scratch
/// of `rows * m * oh*ow` (when `m > 1`) and the run's partial sum of `dw`. The partials
/// are added in order: the same result whatever the number of threads.
fn unfolded_runs<F: Float, R: Send>(
    b: ArrayView2<F>,
    g: &ConvGeom,
    rows: usize,
    (per, runs): (usize, Vec<R>),
    mut dw: ArrayViewMut2<F>,
    group: impl Fn(&mut R, usize, std::ops::Range<usize>, ArrayView2<F>, &mut [F], &mut Array2<F>) + Sync,
) {
    let (ck, p) = (g.col_rows(), g.col_cols());
    let n = b.nrows();
    let gs = group_size(p, per);
    let taps = Taps::grouped(g, gs);
    let partials: Vec<Array2<F>> = runs
        .into_par_iter()
        .enumerate()
        .map(|(part, mut run)| {
            let mut acc = Array2::<F>::zeros(dw.raw_dim());
            let (first, end) = (part * per, ((part + 1) * per).min(n));
            F::with_scratch(ck * gs * p, if gs > 1 { rows * gs * p } else { 0 }, |cols, buf| {
                for start in (first..end).step_by(gs) {
                    let stop = (start + gs).min(end);
                    let ld = (stop - start) * p;
                    taps.im2col_images(b.slice(s![start..stop, ..]), g, cols, ld);
                    let cm = ArrayView2::from_shape((ck, ld), &cols[..ck * ld]).expect("sized");
                    group(&mut run, first, start..stop, cm, buf, &mut acc);
                }
            });
            acc
        })
        .collect();
    for part in partials {
        dw += &part;
    }
}

/// `dw += sum_n a[n] · im2col(b[n])^T`, with `a` `[N, rows, oh*ow]`, `b` `[N, c*h*w]` and
/// `dw` `[rows, c*kh*kw]`: the weight gradient of both convolutions. One partial sum per
/// thread over a contiguous run of samples, reduced in order at the end.
pub fn weight_grad<F: Float>(a: ArrayView3<F>, b: ArrayView2<F>, g: &ConvGeom, dw: ArrayViewMut2<F>) {
    if g.is_dense() {
        return gemm_par(F::one(), one_position(a).t(), b, F::one(), dw);
    }
    let n = a.shape()[0];
    if let Some(per) = single_image::channel_block(g, a.shape()[1], n) {
        return single_image::weight_grad(a, b, g, dw, per);
    }
    let per = run_length(n);
    let runs = vec![(); n.div_ceil(per)];
    let split = too_few(runs.len());
    unfolded_runs(b, g, a.shape()[1], (per, runs), dw, |_, _, range, cm, buf, acc| {
        let am = if range.len() == 1 {
            a.index_axis(Axis(0), range.start)
        } else {
            gather_side_by_side(a.slice(s![range, .., ..]), buf)
        };
        group_gemm(split, am, cm.t(), F::one(), acc.view_mut());
    });
}

/// ConvTranspose2d's two gradients in one pass, with `dy` `[N, c*h*w]` on the unfolded side
/// and the kept input `x` `[N, rows, oh*ow]`: each group of samples' `dy` is unfolded once
/// and serves both products, `dw += x[n] · im2col(dy[n])'` and then `x[n] = wmat ·
/// im2col(dy[n])` written over `x`. Parallel as [`weight_grad`].
pub fn unfold_backward_over_input<F: Float>(
    dy: ArrayView2<F>,
    mut x: ArrayViewMut3<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    dw: ArrayViewMut2<F>,
) {
    if g.is_dense() {
        let n = dy.nrows();
        let x2 = x.into_shape_with_order((n, wmat.nrows())).expect("one position");
        gemm_par(F::one(), x2.view().t(), dy, F::one(), dw);
        return gemm_par(F::one(), dy, wmat.t(), F::zero(), x2);
    }
    let (p, rows) = (g.col_cols(), wmat.nrows());
    let n = dy.nrows();
    if let (Some(per_c), Some(per_rows)) = (
        single_image::channel_block(g, rows, n),
        single_image::row_block(g, rows, n),
    ) {
        return single_image::backward_over_input(dy, x, g, wmat, dw, (per_c, per_rows));
    }
    let per = run_length(n);
    let runs: Vec<_> = x.axis_chunks_iter_mut(Axis(0), per).collect();
    let split = too_few(runs.len());
    unfolded_runs(dy, g, rows, (per, runs), dw, |xrun, first, range, cm, buf, acc| {
        let (m, ld) = (range.len(), range.len() * p);
        let mut xg = xrun.slice_mut(s![range.start - first..range.end - first, .., ..]);
        if m == 1 {
            let x0 = xg.index_axis_mut(Axis(0), 0);
            group_gemm(split, x0.view(), cm.t(), F::one(), acc.view_mut());
            group_gemm(split, wmat, cm, F::zero(), x0);
            return;
        }
        let side = gather_side_by_side(xg.view(), buf);
        group_gemm(split, side, cm.t(), F::one(), acc.view_mut());
        let mut y = ArrayViewMut2::from_shape((rows, ld), &mut buf[..rows * ld]).expect("sized");
        group_gemm(split, wmat, cm, F::zero(), y.view_mut());
        for (j, mut xj) in xg.outer_iter_mut().enumerate() {
            xj.assign(&y.slice(s![.., j * p..(j + 1) * p]));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values uniform in [-1, 1) from a linear congruential generator seeded with `seed`.
    fn uniform(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 1.0
        }
    }

    /// im2col and col2im are adjoint: <im2col(x), c> = <x, col2im(c)> for random x, c,
    /// over many geometries (stride, padding, dilation, non-square kernels).
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let mut rnd = uniform(1);
        for &(c, h, w, kh, kw, s, p, d) in &[
            (1, 5, 5, 3, 3, 1, 0, 1),
            (2, 7, 6, 3, 2, 2, 1, 1),
            (3, 9, 9, 3, 3, 1, 0, 2),
            (2, 8, 5, 4, 4, 2, 2, 1),
            (1, 4, 4, 1, 1, 3, 0, 1),
            (2, 6, 7, 2, 3, 3, 2, 2),
        ] {
            let g = ConvGeom::new(c, (h, w), (kh, kw), (s, s), (p, p), (d, d)).unwrap();
            let x: Vec<f64> = (0..c * h * w).map(|_| rnd()).collect();
            let cc: Vec<f64> = (0..g.col_rows() * g.col_cols()).map(|_| rnd()).collect();
            let mut cols = vec![0.0; cc.len()];
            im2col(&x, &g, &mut cols);
            let mut back = vec![0.0; x.len()];
            col2im(&cc, &g, &mut back);
            let lhs: f64 = cols.iter().zip(&cc).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0), "{g:?}: {lhs} vs {rhs}");
            // The table of tap offsets gives the same unfolding and folding, also inside a
            // wider matrix (leading dimension larger than the image's columns).
            let reference = tap_table_for_test(&g);
            if let Some(t) = Taps::new(&g).table {
                assert_eq!(t, reference, "{g:?}");
            }
            let table = Taps {
                table: Some(reference),
                group: None,
            };
            let ld = g.col_cols() + 3;
            let mut wide = vec![7.0; (g.col_rows() - 1) * ld + g.col_cols()];
            table.im2col(&x, &g, &mut wide, ld);
            for r in 0..g.col_rows() {
                assert_eq!(
                    &wide[r * ld..][..g.col_cols()],
                    &cols[r * g.col_cols()..][..g.col_cols()]
                );
            }
            let mut wide_c = vec![0.0; wide.len()];
            for r in 0..g.col_rows() {
                wide_c[r * ld..][..g.col_cols()].copy_from_slice(&cc[r * g.col_cols()..][..g.col_cols()]);
            }
            let mut back2 = vec![0.0; x.len()];
            table.col2im(&wide_c, &g, &mut back2, ld);
            assert!(back.iter().zip(&back2).all(|(a, b)| (a - b).abs() < 1e-14), "{g:?}");
        }
    }

    /// A group's images unfolded and folded in one pass through the group table equal
    /// the same images one at a time, exactly: for whole and partial groups, geometries
    /// with and without a table, and images that are not contiguous (the per-image path).
    #[test]
    fn grouped_unfolding_and_folding_equal_image_by_image() {
        let mut rnd = uniform(3);
        for &(c, h, w, kh, kw, s, p) in &[
            (3, 7, 7, 3, 3, 2, 1),
            (2, 8, 6, 4, 4, 2, 1),
            (1, 5, 9, 3, 2, 3, 2),
            (2, 6, 6, 3, 3, 1, 1),
            (2, 12, 12, 3, 3, 1, 0),
        ] {
            let g = ConvGeom::new(c, (h, w), (kh, kw), (s, s), (p, p), (1, 1)).unwrap();
            let (ck, q, image) = (g.col_rows(), g.col_cols(), c * h * w);
            let one = Taps::new(&g);
            let grouped = Taps::grouped(&g, 4);
            assert_eq!(grouped.group.is_some(), one.table.is_some(), "{g:?}");
            for m in 1..=4 {
                let ld = m * q;
                let x = Array2::from_shape_simple_fn((m, image), &mut rnd);
                let mut want = vec![f64::NAN; ck * ld];
                for (j, xj) in x.outer_iter().enumerate() {
                    one.im2col(xj.as_slice().unwrap(), &g, &mut want[j * q..], ld);
                }
                let mut got = vec![f64::NAN; ck * ld];
                grouped.im2col_images(x.view(), &g, &mut got, ld);
                assert_eq!(got, want, "unfolding {m} images, {g:?}");
                // The images as every other row of a larger array: not one slice.
                let mut spaced = Array2::zeros((2 * m, image));
                for j in 0..m {
                    spaced.row_mut(2 * j).assign(&x.row(j));
                }
                let mut got = vec![f64::NAN; ck * ld];
                grouped.im2col_images(spaced.slice(s![..;2, ..]), &g, &mut got, ld);
                assert_eq!(got, want, "unfolding {m} spaced images, {g:?}");

                let cols: Vec<f64> = (0..ck * ld).map(|_| rnd()).collect();
                let start = Array2::from_shape_simple_fn((m, image), &mut rnd);
                let mut want = start.clone();
                for (j, mut xj) in want.outer_iter_mut().enumerate() {
                    one.col2im(&cols[j * q..], &g, xj.as_slice_mut().unwrap(), ld);
                }
                let mut got = start.clone();
                grouped.col2im_images(&cols, &g, got.view_mut(), ld);
                assert_eq!(got, want, "folding {m} images, {g:?}");
            }
        }
    }

    /// The tap table of `g` from the definition, whatever its stride (the constructor
    /// only builds one for strided or short-row geometries).
    fn tap_table_for_test(g: &ConvGeom) -> Vec<u32> {
        let (kh, kw) = g.kernel;
        let p = g.col_cols();
        let mut t = vec![u32::MAX; kh * kw * p];
        for ki in 0..kh {
            for kj in 0..kw {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.padding.0 as isize;
                        let ix = (ox * g.stride.1 + kj * g.dilation.1) as isize - g.padding.1 as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                            t[(ki * kw + kj) * p + oy * g.ow + ox] = (iy as usize * g.w + ix as usize) as u32;
                        }
                    }
                }
            }
        }
        t
    }

    #[test]
    fn im2col_matches_the_definition() {
        let g = ConvGeom::new(2, (5, 6), (3, 2), (2, 1), (1, 0), (1, 2)).unwrap();
        let x: Vec<f64> = (0..60).map(|i| i as f64).collect();
        let mut cols = vec![f64::NAN; g.col_rows() * g.col_cols()];
        im2col(&x, &g, &mut cols);
        for ch in 0..2 {
            for ki in 0..3 {
                for kj in 0..2 {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let iy = (oy * 2 + ki) as isize - 1;
                            let ix = (ox + kj * 2) as isize;
                            let want = if (0..5).contains(&iy) && (0..6).contains(&ix) {
                                x[ch * 30 + iy as usize * 6 + ix as usize]
                            } else {
                                0.0
                            };
                            let got = cols[((ch * 3 + ki) * 2 + kj) * g.col_cols() + oy * g.ow + ox];
                            assert_eq!(got, want);
                        }
                    }
                }
            }
        }
    }
}
