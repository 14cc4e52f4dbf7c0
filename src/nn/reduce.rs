//! Sums that vectorise. One running float sum is a chain of dependent adds, each waiting
//! for the last (about four cycles apiece), and the compiler may not reorder it; eight
//! running sums, added up at the end, let it use whole SIMD registers (32 in
//! [`sum_map2`], whose terms are long enough that independent chains pay). The result
//! differs from the serial sum only in rounding.

use crate::Float;

const LANES: usize = 8;

/// `sum_i f(a[i])`.
#[inline]
pub(crate) fn sum_map<F: Float>(a: &[F], f: impl Fn(F) -> F) -> F {
    let mut acc = [F::zero(); LANES];
    let mut chunks = a.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    for &v in chunks.remainder() {
        acc[0] += f(v);
    }
    acc.iter().fold(F::zero(), |s, &v| s + v)
}

/// Running sums of [`sum_map2`]: four registers of eight `f32`, so that a long
/// per-element function (the BCE's `exp` and `ln`, dozens of dependent operations) runs
/// as four independent chains that the core overlaps, not one that waits on itself.
const WIDE_LANES: usize = 4 * LANES;

/// `sum_i f(a[i], b[i])`, for an `f` long enough that [`WIDE_LANES`] sums pay.
#[inline]
pub(crate) fn sum_map2<F: Float>(a: &[F], b: &[F], f: impl Fn(F, F) -> F) -> F {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [F::zero(); WIDE_LANES];
    let mut ca = a.chunks_exact(WIDE_LANES);
    let mut cb = b.chunks_exact(WIDE_LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..WIDE_LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    // The remainder as one more block, padded with its first entry and the padding's
    // terms dropped, so that it runs on vectors too: one element at a time, the 16 left
    // over from each 784-pixel row took a quarter of the Bernoulli likelihood's time.
    let (ra, rb) = (ca.remainder(), cb.remainder());
    if let (Some(&a0), Some(&b0)) = (ra.first(), rb.first()) {
        let x: [F; WIDE_LANES] = std::array::from_fn(|l| ra.get(l).copied().unwrap_or(a0));
        let y: [F; WIDE_LANES] = std::array::from_fn(|l| rb.get(l).copied().unwrap_or(b0));
        for l in 0..WIDE_LANES {
            let v = f(x[l], y[l]);
            acc[l] += if l < ra.len() { v } else { F::zero() };
        }
    }
    acc.iter().fold(F::zero(), |s, &v| s + v)
}

/// `(sum_i f(a[i], b[i]), sum_i g(a[i], b[i]))` in one pass over both slices: the terms of
/// each eight entries from one call of `f8` on lanes (for selects that must stay
/// branch-free: see [`crate::Float::select_lanes`]), those of the remainder from `f1`.
#[inline]
pub(crate) fn sum_map2_pair_lanes<F: Float>(
    a: &[F],
    b: &[F],
    f8: impl Fn([F; LANES], [F; LANES]) -> ([F; LANES], [F; LANES]),
    f1: impl Fn(F, F) -> (F, F),
) -> (F, F) {
    debug_assert_eq!(a.len(), b.len());
    let mut acc_f = [F::zero(); LANES];
    let mut acc_g = [F::zero(); LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let (tf, tg) = f8(std::array::from_fn(|l| x[l]), std::array::from_fn(|l| y[l]));
        for l in 0..LANES {
            acc_f[l] += tf[l];
            acc_g[l] += tg[l];
        }
    }
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        let (tf, tg) = f1(x, y);
        acc_f[0] += tf;
        acc_g[0] += tg;
    }
    let total = |acc: [F; LANES]| acc.iter().fold(F::zero(), |s, &v| s + v);
    (total(acc_f), total(acc_g))
}

/// `sum_i f(&mut y[i], t[i])`, where `f` may update `y[i]` and returns the term to sum:
/// a map and a reduction in one pass.
#[inline]
pub(crate) fn update_sum<F: Float>(y: &mut [F], t: &[F], f: impl Fn(&mut F, F) -> F) -> F {
    debug_assert_eq!(y.len(), t.len());
    let mut acc = [F::zero(); LANES];
    let mut ys = y.chunks_exact_mut(LANES);
    let mut ts = t.chunks_exact(LANES);
    for (yb, tb) in (&mut ys).zip(&mut ts) {
        for l in 0..LANES {
            acc[l] += f(&mut yb[l], tb[l]);
        }
    }
    for (yv, &tv) in ys.into_remainder().iter_mut().zip(ts.remainder()) {
        acc[0] += f(yv, tv);
    }
    acc.iter().fold(F::zero(), |s, &v| s + v)
}

/// `sum_i a[i]` in exactly ndarray's order for a contiguous array (`ArrayBase::sum`: eight
/// running sums, combined as `((((0 + (s0 + s4)) + (s1 + s5)) + (s2 + s6)) + (s3 + s7))`,
/// then the remainder added in turn), so that callers which sum many short planes can skip
/// `sum`'s per-call layout checks and still give the same bits.
#[inline]
pub(crate) fn sum_as_ndarray<F: Float>(a: &[F]) -> F {
    let mut p = [F::zero(); LANES];
    let mut chunks = a.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            p[l] += c[l];
        }
    }
    let mut acc = F::zero();
    for l in 0..LANES / 2 {
        acc += p[l] + p[l + LANES / 2];
    }
    for &v in chunks.remainder() {
        acc += v;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_equal_serial_sums() {
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 100, 1023] {
            let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
            let serial: f64 = a.iter().map(|x| x * x).sum();
            assert!(
                (sum_map(&a, |x| x * x) - serial).abs() <= 1e-12 * serial.max(1.0),
                "n = {n}"
            );
            let pair = |x: f64, y: f64| (x * y, x - y);
            let lanes = |x: [f64; 8], y: [f64; 8]| -> ([f64; 8], [f64; 8]) {
                (
                    std::array::from_fn(|l| x[l] * y[l]),
                    std::array::from_fn(|l| x[l] - y[l]),
                )
            };
            let (s1, s2) = sum_map2_pair_lanes(&a, &b, lanes, pair);
            let plane = ndarray::Array1::from_vec(a.clone());
            assert_eq!(sum_as_ndarray(&a).to_bits(), plane.sum().to_bits(), "n = {n}");
            let a32: Vec<f32> = a.iter().map(|&v| v as f32 * 1e3).collect();
            let plane32 = ndarray::Array1::from_vec(a32.clone());
            assert_eq!(sum_as_ndarray(&a32).to_bits(), plane32.sum().to_bits(), "n = {n}, f32");
            let d1: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let d2: f64 = a.iter().zip(&b).map(|(x, y)| x - y).sum();
            assert!((s1 - d1).abs() <= 1e-12 * d1.abs().max(1.0) && (s2 - d2).abs() <= 1e-12 * d2.abs().max(1.0));
            let wide = sum_map2(&a, &b, |x, y| x * y);
            assert!((wide - d1).abs() <= 1e-12 * d1.abs().max(1.0), "n = {n}");
            let mut y = a.clone();
            let s3 = update_sum(&mut y, &b, |y, t| {
                let r = *y - t;
                *y = 2.0 * r;
                r * r
            });
            let d3: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            assert!((s3 - d3).abs() <= 1e-12 * d3.max(1.0), "n = {n}");
            assert!(y.iter().zip(a.iter().zip(&b)).all(|(y, (x, t))| *y == 2.0 * (x - t)));
        }
    }
}
