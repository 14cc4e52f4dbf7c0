//! The scalar types the crate computes in: `f32` for training, `f64` for gradient checks.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// A floating-point element type (`f32` or `f64`) with the matrix product it dispatches to.
#[allow(clippy::wrong_self_convention)]
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + rustfft::FftNum
    + Send
    + Sync
    + Debug
    + Display
    + Default
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + 'static
{
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;

    /// Converts an `f64` constant (exact for `f64`, rounded for `f32`).
    fn lit(x: f64) -> Self;

    /// Widens to `f64`.
    fn to_f64_lossless(self) -> f64;

    /// A standard normal draw.
    fn sample_normal<R: Rng + ?Sized>(rng: &mut R) -> Self;

    /// A uniform draw in `[lo, hi)`.
    fn sample_uniform<R: Rng + ?Sized>(rng: &mut R, lo: Self, hi: Self) -> Self;

    /// Calls `f` with two scratch buffers of lengths `n1` and `n2`, reused across calls on
    /// the same thread (so the unfolding kernels do not allocate, and fault in, fresh
    /// pages on every call). Their contents on entry are unspecified: `f` must write
    /// before it reads. Not re-entrant: `f` must not call it again.
    fn with_scratch<R>(n1: usize, n2: usize, f: impl FnOnce(&mut [Self], &mut [Self]) -> R) -> R;

    /// `C = alpha A B + beta C` on ndarray views of any strides, on the calling thread
    /// (faer's kernels for this type). Use [`crate::gemm::gemm`], which checks shapes.
    fn gemm_faer(
        alpha: Self,
        a: ndarray::ArrayView2<Self>,
        b: ndarray::ArrayView2<Self>,
        beta: Self,
        c: ndarray::ArrayViewMut2<Self>,
    );
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            const NAME: &'static str = stringify!($t);

            #[inline]
            fn lit(x: f64) -> Self {
                x as $t
            }

            #[inline]
            fn to_f64_lossless(self) -> f64 {
                self as f64
            }

            fn with_scratch<R>(n1: usize, n2: usize, f: impl FnOnce(&mut [Self], &mut [Self]) -> R) -> R {
                thread_local! {
                    static SCRATCH: std::cell::RefCell<(Vec<$t>, Vec<$t>)> =
                        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
                }
                SCRATCH.with(|cell| {
                    let mut guard = cell.borrow_mut();
                    let (a, b) = &mut *guard;
                    if a.len() < n1 {
                        a.resize(n1, 0.0);
                    }
                    if b.len() < n2 {
                        b.resize(n2, 0.0);
                    }
                    f(&mut a[..n1], &mut b[..n2])
                })
            }

            #[inline]
            fn sample_normal<R: Rng + ?Sized>(rng: &mut R) -> Self {
                StandardNormal.sample(rng)
            }

            #[inline]
            fn sample_uniform<R: Rng + ?Sized>(rng: &mut R, lo: Self, hi: Self) -> Self {
                rng.random_range(lo..hi)
            }

            fn gemm_faer(
                alpha: Self,
                a: ndarray::ArrayView2<Self>,
                b: ndarray::ArrayView2<Self>,
                beta: Self,
                mut c: ndarray::ArrayViewMut2<Self>,
            ) {
                let (m, k) = a.dim();
                let n = b.ncols();
                debug_assert_eq!((k, m, n), (b.nrows(), c.nrows(), c.ncols()));
                let accum = if beta == 0.0 {
                    faer::Accum::Replace
                } else {
                    if beta != 1.0 {
                        c *= beta;
                    }
                    faer::Accum::Add
                };
                let (sa, sb, sc) = (a.strides(), b.strides(), [c.strides()[0], c.strides()[1]]);
                // SAFETY: the views describe valid memory of these shapes and strides, and
                // `c` is a unique borrow, so it aliases neither `a` nor `b`.
                let (fa, fb, fc) = unsafe {
                    (
                        faer::MatRef::from_raw_parts(a.as_ptr(), m, k, sa[0], sa[1]),
                        faer::MatRef::from_raw_parts(b.as_ptr(), k, n, sb[0], sb[1]),
                        faer::MatMut::from_raw_parts_mut(c.as_mut_ptr(), m, n, sc[0], sc[1]),
                    )
                };
                faer::linalg::matmul::matmul(fc, accum, fa, fb, alpha, faer::Par::Seq);
            }
        }
    };
}

impl_float!(f32);
impl_float!(f64);
