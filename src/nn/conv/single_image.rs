//! The unfolding path's products for a batch smaller than the thread pool (a batch of one:
//! a step at batch 1, the ELBO ascent on one image's posterior). Each image's work is cut
//! across the threads, the unfolding and folding with it:
//! - by output rows on the unfolded side (the forward correlation, ConvTranspose2d's input
//!   gradient): each thread unfolds the rows it multiplies;
//! - by channels of the unfolded image (the weight gradient's columns, the folding): each
//!   thread unfolds or folds its own channels' planes.
//!
//! Either way every output element is computed by one thread, with the sums along the
//! inner dimension in the same order as one whole product: no partial sums to add.
//! Handing the whole image's product to [`crate::gemm::gemm_par`] instead leaves the
//! unfolding (1.3 MB for the ConvVAE's 32-channel 24x24 input) to one thread while the
//! other waits.

use std::ops::Range;

use ndarray::{s, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::im2col::Taps;
use super::layer::ConvGeom;
use crate::gemm::gemm;
use crate::tuning;
use crate::Float;

/// The parts `len` is cut into for the pool's threads, when a batch of `n` images
/// leaves threads idle and an image's product of `work` multiply-adds is worth cutting
/// (`None` otherwise).
fn parts(n: usize, len: usize, work: usize) -> Option<usize> {
    let threads = rayon::current_num_threads();
    (n < threads && len >= 2 && work >= tuning::SINGLE_IMAGE_MIN_WORK).then(|| threads.min(len))
}

/// Output rows per part for `g`, when one image's `rows x col_rows x col_cols` product
/// is worth cutting by them for a batch of `n`.
pub(super) fn row_block(g: &ConvGeom, rows: usize, n: usize) -> Option<usize> {
    parts(n, g.oh, rows * g.col_rows() * g.col_cols()).map(|k| g.oh.div_ceil(k))
}

/// Unfolded channels per part for `g`, as [`row_block`].
pub(super) fn channel_block(g: &ConvGeom, rows: usize, n: usize) -> Option<usize> {
    parts(n, g.c, rows * g.col_rows() * g.col_cols()).map(|k| g.c.div_ceil(k))
}

/// The sub-geometry of `nc` of `g`'s channels.
fn channels(g: &ConvGeom, nc: usize) -> ConvGeom {
    ConvGeom { c: nc, ..*g }
}

/// The output rows of block `i` of `per`.
fn block_rows(g: &ConvGeom, i: usize, per: usize) -> Range<usize> {
    i * per..((i + 1) * per).min(g.oh)
}

/// `out[n] = wmat · im2col(inp[n])`, `inp` `[N, c*h*w]`, `out` `[N, rows, oh*ow]`, each
/// image in blocks of `per` output rows ([`row_block`]).
pub(super) fn correlate<F: Float>(
    inp: ArrayView2<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    mut out: ArrayViewMut3<F>,
    per: usize,
) {
    let taps = Taps::new(g);
    for (x, o) in inp.outer_iter().zip(out.outer_iter_mut()) {
        correlate_image(x.to_slice().expect("contiguous sample"), g, &taps, wmat, o, per);
    }
}

/// [`correlate`] for one image `x` (`c*h*w`), `out` `[rows, oh*ow]`.
fn correlate_image<F: Float>(
    x: &[F],
    g: &ConvGeom,
    taps: &Taps,
    wmat: ArrayView2<F>,
    mut out: ArrayViewMut2<F>,
    per: usize,
) {
    let ck = g.col_rows();
    out.axis_chunks_iter_mut(Axis(1), per * g.ow)
        .into_par_iter()
        .enumerate()
        .for_each(|(i, o)| {
            let ld = o.ncols();
            F::with_scratch(ck * ld, 0, |cols, _| {
                taps.im2col_rows(x, g, block_rows(g, i, per), cols, ld);
                let cm = ArrayView2::from_shape((ck, ld), &*cols).expect("sized");
                gemm(F::one(), wmat, cm, F::zero(), o);
            })
        });
}

/// `out[n] = col2im(wmat' · src[n])`, `src` `[N, rows, oh*ow]`, `out` `[N, c*h*w]`
/// (overwritten), each image in blocks of `per` channels ([`channel_block`]).
pub(super) fn fold<F: Float>(
    src: ArrayView3<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    mut out: ArrayViewMut2<F>,
    per: usize,
) {
    let taps = Taps::new(g);
    for (sc, mut o) in src.outer_iter().zip(out.outer_iter_mut()) {
        fold_image(sc, g, &taps, wmat, o.as_slice_mut().expect("contiguous sample"), per);
    }
}

/// [`fold`] for one image, `src` `[rows, oh*ow]`, `out` (`c*h*w`).
fn fold_image<F: Float>(src: ArrayView2<F>, g: &ConvGeom, taps: &Taps, wmat: ArrayView2<F>, out: &mut [F], per: usize) {
    let (kk, hw, p) = (g.kernel.0 * g.kernel.1, g.h * g.w, g.col_cols());
    out.par_chunks_mut(per * hw).enumerate().for_each(|(i, planes)| {
        let sub = channels(g, planes.len() / hw);
        let w = wmat.slice(s![.., i * per * kk..i * per * kk + sub.col_rows()]);
        F::with_scratch(sub.col_rows() * p, 0, |cols, _| {
            let cm = ArrayViewMut2::from_shape((sub.col_rows(), p), &mut *cols).expect("sized");
            gemm(F::one(), w.t(), src, F::zero(), cm);
            planes.fill(F::zero());
            taps.col2im(cols, &sub, planes, p);
        })
    });
}

/// `dw += sum_n a[n] · im2col(b[n])'`, `a` `[N, rows, oh*ow]`, `b` `[N, c*h*w]`, `dw`
/// `[rows, c*kh*kw]`, image by image, each in blocks of `per` channels (`dw`'s columns).
pub(super) fn weight_grad<F: Float>(
    a: ArrayView3<F>,
    b: ArrayView2<F>,
    g: &ConvGeom,
    mut dw: ArrayViewMut2<F>,
    per: usize,
) {
    let taps = Taps::new(g);
    for (ai, bi) in a.outer_iter().zip(b.outer_iter()) {
        weight_grad_image(
            ai,
            bi.to_slice().expect("contiguous sample"),
            g,
            &taps,
            dw.view_mut(),
            per,
        );
    }
}

/// [`weight_grad`] for one image `b` (`c*h*w`), `a` `[rows, oh*ow]`.
fn weight_grad_image<F: Float>(
    a: ArrayView2<F>,
    b: &[F],
    g: &ConvGeom,
    taps: &Taps,
    mut dw: ArrayViewMut2<F>,
    per: usize,
) {
    let (kk, hw, p) = (g.kernel.0 * g.kernel.1, g.h * g.w, g.col_cols());
    dw.axis_chunks_iter_mut(Axis(1), per * kk)
        .into_par_iter()
        .zip(b.par_chunks(per * hw))
        .for_each(|(dwb, planes)| {
            let sub = channels(g, planes.len() / hw);
            F::with_scratch(sub.col_rows() * p, 0, |cols, _| {
                taps.im2col(planes, &sub, cols, p);
                let cm = ArrayView2::from_shape((sub.col_rows(), p), &*cols).expect("sized");
                gemm(F::one(), a, cm.t(), F::one(), dwb);
            })
        });
}

/// ConvTranspose2d's two gradients, `dy` `[N, c*h*w]` on the unfolded side and the kept
/// input `x` `[N, rows, oh*ow]` overwritten, image by image (see [`backward_over_image`]).
pub(super) fn backward_over_input<F: Float>(
    dy: ArrayView2<F>,
    mut x: ArrayViewMut3<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    mut dw: ArrayViewMut2<F>,
    per: (usize, usize),
) {
    let taps = Taps::new(g);
    for (dyi, xi) in dy.outer_iter().zip(x.outer_iter_mut()) {
        let dyi = dyi.to_slice().expect("contiguous sample");
        backward_over_image(dyi, xi, g, &taps, wmat, dw.view_mut(), per);
    }
}

/// ConvTranspose2d's two gradients for one image: `dy` (`c*h*w`, the unfolded side) is
/// unfolded once, by channel blocks of `per_c` that also give `dw += x · im2col(dy)'`
/// its columns; then `x = wmat · im2col(dy)` is written over the kept input `x`
/// `[rows, oh*ow]` in blocks of `per_rows` output rows.
fn backward_over_image<F: Float>(
    dy: &[F],
    mut x: ArrayViewMut2<F>,
    g: &ConvGeom,
    taps: &Taps,
    wmat: ArrayView2<F>,
    mut dw: ArrayViewMut2<F>,
    (per_c, per_rows): (usize, usize),
) {
    let (kk, hw, p, ck) = (g.kernel.0 * g.kernel.1, g.h * g.w, g.col_cols(), g.col_rows());
    F::with_scratch(ck * p, 0, |cols, _| {
        let xv = x.view();
        cols.par_chunks_mut(per_c * kk * p)
            .zip(dw.axis_chunks_iter_mut(Axis(1), per_c * kk))
            .zip(dy.par_chunks(per_c * hw))
            .for_each(|((block, dwb), planes)| {
                let sub = channels(g, planes.len() / hw);
                taps.im2col(planes, &sub, block, p);
                let cm = ArrayView2::from_shape((sub.col_rows(), p), &*block).expect("sized");
                gemm(F::one(), xv, cm.t(), F::one(), dwb);
            });
        let cm = ArrayView2::from_shape((ck, p), &*cols).expect("sized");
        x.axis_chunks_iter_mut(Axis(1), per_rows * g.ow)
            .into_par_iter()
            .enumerate()
            .for_each(|(i, xb)| {
                let q = i * per_rows * g.ow;
                gemm(F::one(), wmat, cm.slice(s![.., q..q + xb.ncols()]), F::zero(), xb);
            });
    });
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, Array3};

    use super::super::im2col::{gemm_fold, unfold_backward_over_input, unfold_gemm, weight_grad};
    use super::super::layer::ConvGeom;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        let norm = b.iter().map(|v| v * v).sum::<f64>().sqrt();
        let diff = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        diff <= 1e-13 * norm
    }

    /// A single image's four products cut across three threads (uneven blocks of rows
    /// and channels) equal the same products on one thread, which take the batched path,
    /// over strides, padding, dilation and non-square kernels.
    #[test]
    fn cut_products_equal_the_uncut_ones() {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 1.0
        };
        // (c, h, w, kernel, stride, padding, dilation, rows): each product at least
        // tuning::SINGLE_IMAGE_MIN_WORK multiply-adds, so that three threads cut it.
        for &(c, h, w, k, s, p, d, rows) in &[
            (16, 12, 12, (3, 3), 1, 0, 1, 32),
            (16, 16, 16, (3, 3), 2, 1, 1, 32),
            (11, 15, 13, (2, 3), 1, 2, 2, 24),
            (32, 9, 9, (5, 5), 1, 2, 1, 16),
        ] {
            let g = ConvGeom::new(c, (h, w), k, (s, s), (p, p), (d, d)).unwrap();
            let (ck, q) = (g.col_rows(), g.col_cols());
            let x = Array2::from_shape_simple_fn((1, c * h * w), &mut rnd);
            let wmat = Array2::from_shape_simple_fn((rows, ck), &mut rnd);
            let dy = Array3::from_shape_simple_fn((1, rows, q), &mut rnd);
            let dw0 = Array2::from_shape_simple_fn((rows, ck), &mut rnd);
            let run = |threads: usize| {
                pool(threads).install(|| {
                    let cut = super::row_block(&g, rows, 1).is_some() && super::channel_block(&g, rows, 1).is_some();
                    assert_eq!(cut, threads > 1, "{g:?}");
                    let mut y = Array3::zeros((1, rows, q));
                    unfold_gemm(x.view(), &g, wmat.view(), y.view_mut());
                    let mut folded = Array2::from_elem((1, c * h * w), f64::NAN);
                    gemm_fold(dy.view(), &g, wmat.view(), folded.view_mut());
                    let mut dw = dw0.clone();
                    weight_grad(dy.view(), x.view(), &g, dw.view_mut());
                    let mut dw_t = dw0.clone();
                    let mut over = dy.clone();
                    unfold_backward_over_input(x.view(), over.view_mut(), &g, wmat.view(), dw_t.view_mut());
                    (y, folded, dw, dw_t, over)
                })
            };
            let (one, three) = (run(1), run(3));
            let pairs = [
                (one.0.as_slice().unwrap(), three.0.as_slice().unwrap(), "correlation"),
                (one.1.as_slice().unwrap(), three.1.as_slice().unwrap(), "folding"),
                (
                    one.2.as_slice().unwrap(),
                    three.2.as_slice().unwrap(),
                    "weight gradient",
                ),
                (
                    one.3.as_slice().unwrap(),
                    three.3.as_slice().unwrap(),
                    "transposed weight gradient",
                ),
                (
                    one.4.as_slice().unwrap(),
                    three.4.as_slice().unwrap(),
                    "transposed input gradient",
                ),
            ];
            for (a, b, what) in pairs {
                assert!(close(b, a), "{what}, {g:?}");
            }
        }
    }
}
