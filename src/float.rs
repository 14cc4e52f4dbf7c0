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

    /// Bytes per value: 4 or 8.
    const BYTES: usize;

    /// Appends the value's little-endian bytes (the safetensors layout).
    fn extend_le_bytes(self, out: &mut Vec<u8>);

    /// Converts an `f64` constant (exact for `f64`, rounded for `f32`).
    fn lit(x: f64) -> Self;

    /// Widens to `f64`.
    fn to_f64_lossless(self) -> f64;

    /// A standard normal draw.
    fn sample_normal<R: Rng + ?Sized>(rng: &mut R) -> Self;

    /// A uniform draw in `[lo, hi)`.
    fn sample_uniform<R: Rng + ?Sized>(rng: &mut R, lo: Self, hi: Self) -> Self;

    /// `e^x` written so that loops over it vectorise: for `f32`, a polynomial within 1
    /// ulp, no call into libm, which runs one element at a time); for `f64`, the standard
    /// library's `exp`, so that gradient checks and `f64` parity keep libm's accuracy.
    fn exp_lanes(self) -> Self;

    /// The natural logarithm, written so that loops over it vectorise, as
    /// [`Float::exp_lanes`]: for `f32` a polynomial (Cephes' `logf`) with selects for the
    /// special values (`ln 0 = -inf`, NaN below zero, `ln inf = inf`), no call into libm,
    /// whose `logf` runs one element at a time and takes a slow path (errno, a raised
    /// divide-by-zero) at zero; for `f64`, the standard library's `ln`.
    fn ln_lanes(self) -> Self;

    /// `ln(1 + x)`, written so that loops over it vectorise, as [`Float::ln_lanes`]: for
    /// `f32` from [`Float::ln_lanes`] of `u = 1 + x` corrected by `x / (u - 1)` (Goldberg's
    /// trick, within 2 ulp), for `f64` the standard library's `ln_1p`.
    fn ln_1p_lanes(self) -> Self;

    /// `ln(1 + y)` for `y` in `[0, 1]` (the Bernoulli likelihood's `ln(1 + e^{-|z|})`),
    /// written so that loops over it vectorise: for `f32` a shorter path than
    /// [`Float::ln_1p_lanes`] (no exponent to read off, no special values, no division),
    /// within 1 ulp; for `f64` the standard library's `ln_1p`. Outside `[0, 1]` the `f32`
    /// result is unspecified (NaN stays NaN).
    fn ln_1p_unit_lanes(self) -> Self;

    /// `tanh x`, written so that loops over it vectorise: for `f32` Cephes' `tanhf` (an odd
    /// polynomial below 0.625 in magnitude, `1 - 2 / (e^{2|x|} + 1)` with the sign of `x`
    /// above, through [`Float::exp_lanes`]), within 2 ulp; for `f64` the standard
    /// library's `tanh`. libm's `tanhf` runs one element at a time through `expm1f`.
    fn tanh_lanes(self) -> Self;

    /// Lane by lane (eight lanes, an AVX register of `f32`), `a[l]` where `c[l]`, else
    /// `b[l]`: through and-masks on the bit patterns, with the masks passed through
    /// [`std::hint::black_box`] so that LLVM cannot turn them back into selects. Written
    /// as `if`, a rectifier's select compiles to a branch per lane that loads the chosen
    /// side only when needed (the signs of activations are coin flips to a branch
    /// predictor) or, in place, to a masked store of the entries that change, which is
    /// microcoded on AMD's cores: both measured 2-4x slower than this.
    fn select_lanes(c: [bool; 8], a: [Self; 8], b: [Self; 8]) -> [Self; 8];

    /// Calls `f` with two scratch buffers of lengths `n1` and `n2`, reused across calls on
    /// the same thread (so the unfolding kernels do not allocate, and fault in, fresh
    /// pages on every call). Their contents on entry are unspecified: `f` must write
    /// before it reads. Re-entrant: a nested call (from `f`, or from a rayon task run on
    /// this thread while `f` waits) gets buffers of its own.
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

/// Whether every value of `s` is finite, without an early exit, so that the loop
/// vectorises (a validity check of a whole batch costs a fraction of a pass over it).
pub(crate) fn all_finite<F: Float>(s: &[F]) -> bool {
    s.iter().fold(true, |ok, x| ok & x.is_finite())
}

/// [`all_finite`] over an array: over its memory as one slice when it is contiguous, value
/// by value otherwise.
pub(crate) fn all_finite_array<F: Float, D: ndarray::Dimension>(a: ndarray::ArrayView<F, D>) -> bool {
    match a.as_slice_memory_order() {
        Some(s) => all_finite(s),
        None => a.iter().all(|x| x.is_finite()),
    }
}

/// `e^x` in `f32` without branches or calls, so that a loop over it vectorises: Cody-Waite
/// reduction `x = n ln 2 + r` with `|r| <= ln 2 / 2`, Cephes' degree-6 polynomial for
/// `e^r`, and `2^n` built from its bits in two halves (so that neither overflows before
/// the product does). Within 1 ulp of the correctly rounded result wherever that is a
/// normal number (over the tests' sweeps; Cephes documents 2.3e-7 relative); overflows to infinity above `ln f32::MAX`, goes to zero (or a subnormal,
/// without flush-to-zero) below `ln f32::MIN_POSITIVE`, and returns NaN for NaN.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 355/512: n * LN2_HI is exact for |n| < 2^15
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer, kept in the low bits.
    const ROUND: f32 = 12_582_912.0;
    // Selects, not min/max, so that a NaN passes through. Past these bounds the result is
    // already infinite or zero, and n stays small enough for the exponent arithmetic.
    let x = if x < -104.0 { -104.0 } else { x };
    let x = if x > 89.0 { 89.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let p = p * r * r + r + 1.0;
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let half = n >> 1;
    let scale = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    p * scale(half) * scale(n - half)
}

/// `ln x` in `f32` without branches or calls, so that a loop over it vectorises: `x = m 2^e`
/// with `m` in `[sqrt(1/2), sqrt(2))` read off the bits (subnormals scaled by `2^23`
/// first), Cephes' degree-9 polynomial for `ln(1 + f)`, `f = m - 1`, and `e ln 2` added
/// in two parts (Cody-Waite). Within 1 ulp of the correctly rounded result for every
/// positive finite input of the tests' sweeps; zero gives `-inf`, a negative number or
/// NaN gives NaN, infinity gives infinity.
#[inline(always)]
fn ln_f32(x: f32) -> f32 {
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub { x * 8_388_608.0 } else { x };
    let bits = xs.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - if sub { 127 + 23 } else { 127 };
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    let f = if big { m * 0.5 } else { m } - 1.0;
    let e = (e + big as i32) as f32;
    let r = ln_reduced_f32(f, e, 0.0);
    let r = if x == 0.0 { f32::NEG_INFINITY } else { r };
    let r = if x == f32::INFINITY { f32::INFINITY } else { r };
    // `!(x >= 0)` is true below zero and for NaN.
    if x >= 0.0 {
        r
    } else {
        f32::NAN
    }
}

/// `ln(1 + x)` in `f32` without branches or calls: `u = 1 + x` rounds away the low bits
/// of a small `x`, and `ln u * x / (u - 1)` puts them back (Goldberg, "What every computer
/// scientist should know about floating-point arithmetic", theorem 4); `x` itself where
/// `u` rounds to 1.
#[inline(always)]
fn ln_1p_f32(x: f32) -> f32 {
    let u = 1.0 + x;
    let d = u - 1.0;
    let r = ln_f32(u) * (x / d);
    let r = if d == 0.0 { x } else { r };
    if x == f32::INFINITY {
        x
    } else {
        r
    }
}

/// `ln(1 + y)` in `f32` for `y` in `[0, 1]` (the softplus's `ln(1 + e^{-|x|})`), without
/// branches, calls or a division: `u = 1 + y` rounded, the part `c = y - (u - 1)` it
/// rounded away (exact, as `1 >= y`), `u = m 2^e` with `m` in `[1, sqrt 2)` or
/// `[sqrt(1/2), 1)` by at most one halving (no bits to read off: `u` lies in `[1, 2]`),
/// Cephes' polynomial for `ln m` as in [`ln_f32`], and `c / u` added as
/// `c 2^{-e} (1 - f + f^2)`, within a fraction of an ulp as `|c| <= 2^{-24}`. NaN gives NaN.
#[inline(always)]
fn ln_1p_unit_f32(y: f32) -> f32 {
    let u = 1.0 + y;
    let c = y - (u - 1.0);
    let big = u > std::f32::consts::SQRT_2;
    let m = if big { u * 0.5 } else { u };
    let c = if big { c * 0.5 } else { c };
    let e = if big { 1.0 } else { 0.0 };
    let f = m - 1.0;
    ln_reduced_f32(f, e, c * (1.0 - f + f * f))
}

/// `e ln 2 + ln(1 + f)` for `f` in `[sqrt(1/2) - 1, sqrt(2) - 1]` and a whole `e`, plus
/// `tail`, a correction far below the result's ulp added among the small terms: Cephes'
/// degree-9 polynomial for `ln(1 + f)`, and `e ln 2` in two parts (Cody-Waite), the
/// larger added last.
#[inline(always)]
fn ln_reduced_f32(f: f32, e: f32, tail: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 355/512, exact times any exponent
    const LN2_LO: f32 = -2.121_944_4e-4;
    let z = f * f;
    let p = 7.037_683_6e-2_f32;
    let p = p * f - 1.151_461e-1;
    let p = p * f + 1.167_699_9e-1;
    let p = p * f - 1.242_014_1e-1;
    let p = p * f + 1.424_932_3e-1;
    let p = p * f - 1.666_805_8e-1;
    let p = p * f + 2.000_071_4e-1;
    let p = p * f - 2.499_999_4e-1;
    let p = p * f + 3.333_333e-1;
    let y = p * f * z + e * LN2_LO - 0.5 * z + tail;
    f + y + e * LN2_HI
}

/// `tanh x` in `f32` without branches or calls: Cephes' `tanhf`.
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let p = -5.704_988_7e-3_f32;
    let p = p * z + 2.063_909e-2;
    let p = p * z - 5.373_971_6e-2;
    let p = p * z + 1.333_144_2e-1;
    let p = p * z - 3.333_328e-1;
    // Odd: the sign of x, signed zeros included.
    let small = (p * z * x + x).copysign(x);
    let big = (1.0 - 2.0 / (exp_f32(a + a) + 1.0)).copysign(x);
    // `!(a >= 0.625)` also takes NaN to the polynomial, which returns it.
    if a >= 0.625 {
        big
    } else {
        small
    }
}

macro_rules! impl_float {
    ($t:ty, $bits:ty, $exp:path, $ln:path, $ln_1p:path, $ln_1p_unit:path, $tanh:path) => {
        impl Float for $t {
            const NAME: &'static str = stringify!($t);
            const BYTES: usize = std::mem::size_of::<$t>();

            #[inline]
            fn extend_le_bytes(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }

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
                // The buffers are taken out of the cell while `f` runs, so that a nested
                // call on this thread (rayon runs other tasks on a thread that waits inside
                // `f`) finds the cell free and allocates its own.
                let (mut a, mut b) = SCRATCH.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
                if a.len() < n1 {
                    a.resize(n1, 0.0);
                }
                if b.len() < n2 {
                    b.resize(n2, 0.0);
                }
                let r = f(&mut a[..n1], &mut b[..n2]);
                SCRATCH.with(|cell| *cell.borrow_mut() = (a, b));
                r
            }

            #[inline(always)]
            fn select_lanes(c: [bool; 8], a: [Self; 8], b: [Self; 8]) -> [Self; 8] {
                let keep: [$bits; 8] = std::hint::black_box(std::array::from_fn(|l| (c[l] as $bits).wrapping_neg()));
                std::array::from_fn(|l| <$t>::from_bits((a[l].to_bits() & keep[l]) | (b[l].to_bits() & !keep[l])))
            }

            #[inline(always)]
            fn exp_lanes(self) -> Self {
                $exp(self)
            }

            #[inline(always)]
            fn ln_lanes(self) -> Self {
                $ln(self)
            }

            #[inline(always)]
            fn ln_1p_lanes(self) -> Self {
                $ln_1p(self)
            }

            #[inline(always)]
            fn ln_1p_unit_lanes(self) -> Self {
                $ln_1p_unit(self)
            }

            #[inline(always)]
            fn tanh_lanes(self) -> Self {
                $tanh(self)
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

impl_float!(f32, u32, exp_f32, ln_f32, ln_1p_f32, ln_1p_unit_f32, tanh_f32);
impl_float!(f64, u64, f64::exp, f64::ln, f64::ln_1p, f64::ln_1p, f64::tanh);

#[cfg(test)]
mod tests {
    use super::*;

    /// A call inside another's closure (as rayon's work stealing makes happen on a
    /// thread that waits inside `f`) gets its own buffers instead of a RefCell panic.
    #[test]
    fn scratch_buffers_survive_nested_calls() {
        let total = f32::with_scratch(3, 2, |a, b| {
            a.fill(1.0);
            b.fill(2.0);
            let inner = f32::with_scratch(4, 1, |c, d| {
                c.fill(3.0);
                d.fill(4.0);
                c.iter().sum::<f32>() + d[0]
            });
            a.iter().sum::<f32>() + b.iter().sum::<f32>() + inner
        });
        assert_eq!(total, 3.0 + 4.0 + 12.0 + 4.0);
        // The outer buffers are kept for the next call.
        f32::with_scratch(3, 2, |a, _| assert_eq!(a.len(), 3));
    }

    /// Each lane is the chosen value to the bit (NaN payloads, signed zeros and
    /// infinities included), for both types and every pattern of conditions.
    #[test]
    fn select_lanes_keeps_the_chosen_bits() {
        fn check<F: Float>(special: [F; 8], to_bits: impl Fn(F) -> u64) {
            let other: [F; 8] = std::array::from_fn(|l| F::lit(l as f64 - 3.5));
            for pattern in 0..256u32 {
                let c: [bool; 8] = std::array::from_fn(|l| pattern >> l & 1 == 1);
                let got = F::select_lanes(c, special, other);
                for l in 0..8 {
                    let want = if c[l] { special[l] } else { other[l] };
                    assert_eq!(
                        to_bits(got[l]),
                        to_bits(want),
                        "{} pattern {pattern:08b} lane {l}",
                        F::NAME
                    );
                }
            }
        }
        let nan32 = f32::from_bits(0x7fc0_1234);
        check(
            [
                0.0,
                -0.0,
                1.5,
                -2.25,
                f32::INFINITY,
                f32::NEG_INFINITY,
                nan32,
                f32::MIN_POSITIVE / 4.0,
            ],
            |v| v.to_bits() as u64,
        );
        let nan64 = f64::from_bits(0xfff8_0000_0000_abcd);
        check(
            [
                0.0,
                -0.0,
                1.5,
                -2.25,
                f64::INFINITY,
                f64::NEG_INFINITY,
                nan64,
                f64::MIN_POSITIVE / 4.0,
            ],
            f64::to_bits,
        );
    }

    /// Distance in units in the last place between two finite `f32` of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_f32_is_within_one_ulp_wherever_the_result_is_normal() {
        let (lo, hi) = (f32::MIN_POSITIVE.ln(), f32::MAX.ln());
        let n = 1 << 21;
        let mut worst = (0, 0.0f32);
        for i in 0..=n {
            let x = lo + (hi - lo) * (i as f32 / n as f32);
            let want = (x as f64).exp() as f32;
            if !want.is_normal() {
                continue;
            }
            let d = ulps(exp_f32(x), want);
            if d > worst.0 {
                worst = (d, x);
            }
        }
        assert!(worst.0 <= 1, "{} ulp at x = {}", worst.0, worst.1);
        // Every 101st float in [-1, 1] (bit patterns), where sigmoid spends most of its
        // time: the small |x| the sweep above steps over.
        for sign in [0u32, 1 << 31] {
            for bits in (0..=1.0f32.to_bits()).step_by(101) {
                let x = f32::from_bits(bits | sign);
                let d = ulps(exp_f32(x), (x as f64).exp() as f32);
                assert!(d <= 1, "{d} ulp at x = {x}");
            }
        }
    }

    /// `ln_1p_f32` and `tanh_f32` within 2 ulp of the correctly rounded value (from `f64`)
    /// over sweeps of their ranges, small arguments included; their edges.
    #[test]
    fn ln_1p_and_tanh_f32_are_within_two_ulps() {
        let mut worst = (0u32, 0u32);
        let n = 1 << 20;
        for i in 0..=n {
            // ln_1p over (-1, 1e6): dense near zero and near -1, as the BCE needs (0, 1].
            let t = i as f64 / n as f64;
            for x in [t * t * 1e6, -(1.0 - 1e-7) * t, t * 1e-6] {
                let x = x as f32;
                let want = (x as f64).ln_1p() as f32;
                worst.0 = worst.0.max(ulps(ln_1p_f32(x), want));
            }
            // tanh over [-20, 20] and small arguments.
            for x in [(t - 0.5) * 40.0, (t - 0.5) * 1e-3] {
                let x = x as f32;
                let want = (x as f64).tanh() as f32;
                worst.1 = worst.1.max(ulps(tanh_f32(x), want));
            }
        }
        assert!(worst.0 <= 2 && worst.1 <= 2, "ln_1p, tanh worst ulps {worst:?}");
        assert_eq!(ln_1p_f32(0.0), 0.0);
        assert_eq!(ln_1p_f32(1e-30), 1e-30);
        assert_eq!(ln_1p_f32(-1.0), f32::NEG_INFINITY);
        assert_eq!(ln_1p_f32(f32::INFINITY), f32::INFINITY);
        assert!(ln_1p_f32(-2.0).is_nan() && ln_1p_f32(f32::NAN).is_nan());
        assert_eq!((tanh_f32(0.0), tanh_f32(-0.0).to_bits()), (0.0, (-0.0f32).to_bits()));
        assert_eq!((tanh_f32(50.0), tanh_f32(-f32::INFINITY)), (1.0, -1.0));
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    /// `ln_1p_unit_f32` within 1 ulp of the correctly rounded value (from `f64`) on every
    /// 61st float of `[0, 1]` (bit patterns: dense near zero, where `1 + y` rounds), the
    /// subnormals and the ends included.
    #[test]
    fn ln_1p_unit_f32_is_within_one_ulp_on_the_unit_interval() {
        let mut worst = (0u32, 0.0f32);
        let ends = [0u32, 1, 0x007f_ffff, 0x0080_0000, 1.0f32.to_bits()];
        for bits in (0..=1.0f32.to_bits()).step_by(61).chain(ends) {
            let y = f32::from_bits(bits);
            let d = ulps(ln_1p_unit_f32(y), (y as f64).ln_1p() as f32);
            if d > worst.0 {
                worst = (d, y);
            }
        }
        assert!(worst.0 <= 1, "{} ulp at y = {}", worst.0, worst.1);
        assert_eq!(ln_1p_unit_f32(0.0), 0.0);
        assert_eq!(ln_1p_unit_f32(1e-30), 1e-30);
        assert_eq!(ln_1p_unit_f32(1.0), std::f32::consts::LN_2);
        assert!(ln_1p_unit_f32(f32::NAN).is_nan());
    }

    #[test]
    fn exp_f32_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1e30), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.7).is_finite());
        assert_eq!(<f64 as Float>::exp_lanes(0.5), 0.5f64.exp());
    }

    #[test]
    fn ln_f32_is_within_one_ulp_of_the_correctly_rounded_log() {
        // Every 61st positive finite float (bit patterns): all exponents, subnormals
        // included, and a dense sample of each binade's mantissas.
        let mut worst = (0, 0.0f32);
        for bits in (1..f32::INFINITY.to_bits()).step_by(61) {
            let x = f32::from_bits(bits);
            let want = (x as f64).ln() as f32;
            let got = ln_f32(x);
            let d = if want == 0.0 {
                got.to_bits() & 0x7fff_ffff
            } else {
                ulps(got, want)
            };
            if d > worst.0 {
                worst = (d, x);
            }
        }
        assert!(worst.0 <= 1, "{} ulp at x = {:e}", worst.0, worst.1);
        // Around 1, where ln x is small and relative accuracy is hardest: every float in
        // [1 - 2^-9, 1 + 2^-8].
        for bits in (1.0f32 - 1.0 / 512.0).to_bits()..=(1.0f32 + 1.0 / 256.0).to_bits() {
            let x = f32::from_bits(bits);
            let want = (x as f64).ln() as f32;
            let got = ln_f32(x);
            assert!(
                if want == 0.0 { got == 0.0 } else { ulps(got, want) <= 1 },
                "ln_f32({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn ln_f32_edges() {
        assert_eq!(ln_f32(1.0), 0.0);
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(-0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
        assert!(ln_f32(-1.0).is_nan());
        assert!(ln_f32(f32::NEG_INFINITY).is_nan());
        assert!(ln_f32(f32::NAN).is_nan());
        assert_eq!(ln_f32(f32::MAX), (f32::MAX as f64).ln() as f32);
        assert_eq!(ln_f32(f32::from_bits(1)), (f32::from_bits(1) as f64).ln() as f32);
        assert_eq!(<f64 as Float>::ln_lanes(0.5), 0.5f64.ln());
    }
}
