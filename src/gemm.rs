//! The one place where matrix products are computed.
//!
//! Every CPU layer calls [`gemm`] (one thread) or [`gemm_par`] (split over rayon's
//! workers), never a kernel library directly, so that the kernels can be swapped in one
//! place (the GPU path is separate: cuBLAS, in the `cuda` module behind the `cuda` feature). The kernels are faer's: on this crate's shapes (a 20-wide code, a 784-wide
//! image) they measured 1.4x faster than matrixmultiply's on one thread when the crate
//! chose them (`docs/performance-log.md`).
//! Kernels run single-threaded: parallelism is explicit, over rayon, one level only.
//!
//! faer's kernels run along the output's contiguous side, 16 lanes at a time: an output
//! that is narrow along that side (a row-major `n x 20`, the codes of a K = 20 model)
//! leaves lanes of a masked kernel idle, and the same product into a column-major output
//! measured up to 1.8x faster. Callers that own a narrow output lay it out column-major
//! (`models::LinearAe`'s workspaces).

use ndarray::{ArrayView2, ArrayViewMut2, Axis};

use crate::tuning;
use crate::Float;

/// `C = alpha A B + beta C`, on the calling thread.
///
/// Shapes: `a` is `m x k`, `b` is `k x n`, `c` is `m x n`; any strides (transposed views
/// are free). With `beta == 0` the old contents of `c` are ignored, NaN included.
///
/// # Panics
/// If the shapes disagree: this is an internal seam, callers check user input first.
pub fn gemm<F: Float>(alpha: F, a: ArrayView2<F>, b: ArrayView2<F>, beta: F, mut c: ArrayViewMut2<F>) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "gemm: inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "gemm: output shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == F::zero() {
            c.fill(F::zero());
        } else {
            c *= beta;
        }
        return;
    }
    F::gemm_faer(alpha, a, b, beta, c);
}

/// `C = alpha A B + beta C`, split into row or column blocks over rayon's thread pool.
///
/// The result is the same as [`gemm`] up to nothing at all: each output element is computed
/// by exactly one call, with the same summation order along `k`.
pub fn gemm_par<F: Float>(alpha: F, a: ArrayView2<F>, b: ArrayView2<F>, beta: F, c: ArrayViewMut2<F>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < tuning::GEMM_PAR_MIN_WORK {
        return gemm(alpha, a, b, beta, c);
    }
    split(alpha, a, b, beta, c, threads);
}

fn split<F: Float>(alpha: F, a: ArrayView2<F>, b: ArrayView2<F>, beta: F, mut c: ArrayViewMut2<F>, parts: usize) {
    let (m, k) = a.dim();
    let n = b.ncols();
    if parts <= 1 || m * n * k < tuning::GEMM_PAR_MIN_WORK {
        return gemm(alpha, a, b, beta, c);
    }
    let left = parts / 2;
    // Split the longer output side, on a multiple of 8 (whole SIMD registers).
    if m >= n && m >= 16 {
        let at = round8(m * left / parts).clamp(8, m - 1);
        let (a0, a1) = a.split_at(Axis(0), at);
        let (c0, c1) = c.view_mut().split_at(Axis(0), at);
        rayon::join(
            || split(alpha, a0, b, beta, c0, left),
            || split(alpha, a1, b, beta, c1, parts - left),
        );
    } else if n >= 16 {
        let at = round8(n * left / parts).clamp(8, n - 1);
        let (b0, b1) = b.split_at(Axis(1), at);
        let (c0, c1) = c.view_mut().split_at(Axis(1), at);
        rayon::join(
            || split(alpha, a, b0, beta, c0, left),
            || split(alpha, a, b1, beta, c1, parts - left),
        );
    } else {
        gemm(alpha, a, b, beta, c);
    }
}

fn round8(x: usize) -> usize {
    (x + 4) / 8 * 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn naive(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
        let mut c = Array2::zeros((a.nrows(), b.ncols()));
        for i in 0..a.nrows() {
            for j in 0..b.ncols() {
                c[[i, j]] = (0..a.ncols()).map(|p| a[[i, p]] * b[[p, j]]).sum();
            }
        }
        c
    }

    #[test]
    fn parallel_split_matches_naive_product_on_awkward_shapes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 0, 2), (97, 130, 33), (9, 700, 301), (300, 64, 5)] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f64 - 5.0);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 13) as f64 * 0.5);
            let mut c = Array2::from_elem((m, n), f64::NAN);
            gemm_par(1.0, a.view(), b.view(), 0.0, c.view_mut());
            assert_eq!(c, naive(&a, &b), "shape {m}x{k}x{n}");
            // Transposed operands are strided views, no copies.
            let mut ct = Array2::zeros((n, m));
            gemm_par(1.0, b.t(), a.t(), 0.0, ct.view_mut());
            assert_eq!(ct, naive(&a, &b).t());
        }
    }
}
