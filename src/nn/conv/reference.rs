//! The three products of a convolution written as the loops that define them: the
//! reference every faster path is tested against ([`super::ConvAlgorithm::Reference`]
//! runs a layer on them), and the place to read what a convolution computes.
//!
//! Shapes, as every path has them: an image side `x` of `c` channels of `h x w` (the
//! unfolded side, [`ConvGeom`]), an output side of `rows` channels of `oh x ow`, and the
//! weight as a matrix `wmat[r, (ch * kh + ki) * kw + kj]`. The kernel at output position
//! `(oy, ox)` reads pixel `(oy * sh - ph + ki * dh, ox * sw - pw + kj * dw)` of each channel
//! through tap `(ki, kj)`; taps that fall in the padding read zero.
//!
//! - Conv2d: forward is [`correlate`] (image side in, output side out); backward is
//!   [`fold`] for `dx` (its adjoint) and [`weight_grad`] for `dw`.
//! - ConvTranspose2d is Conv2d run the other way: forward is [`fold`] of its input (which
//!   sits on the output side), `dx` is [`correlate`] of `dy` (on the image side), and `dw`
//!   is [`weight_grad`] with the two sides' roles as in Conv2d.
//!
//! The bias and its gradient are added by the caller, the same for every path.

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3};

use super::layer::ConvGeom;
use crate::Float;

/// The taps of the kernel at output position `(oy, ox)` that land inside the image, as
/// `(tap, pixel)`: `tap = ki * kw + kj` and `pixel = iy * w + ix` within one channel.
fn taps(g: &ConvGeom, oy: usize, ox: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (kh, kw) = g.kernel;
    (0..kh).flat_map(move |ki| {
        (0..kw).filter_map(move |kj| {
            let iy = (oy * g.stride.0 + ki * g.dilation.0).checked_sub(g.padding.0)?;
            let ix = (ox * g.stride.1 + kj * g.dilation.1).checked_sub(g.padding.1)?;
            (iy < g.h && ix < g.w).then_some((ki * kw + kj, iy * g.w + ix))
        })
    })
}

/// The correlation: `out[n, r, oy * ow + ox] = sum over ch and taps of
/// wmat[r, ch * kh * kw + tap] * x[n, ch * h * w + pixel]` (overwrites `out`).
pub(crate) fn correlate<F: Float>(x: ArrayView2<F>, g: &ConvGeom, wmat: ArrayView2<F>, mut out: ArrayViewMut3<F>) {
    let (plane, taps_per_channel) = (g.h * g.w, g.kernel.0 * g.kernel.1);
    for n in 0..x.nrows() {
        for r in 0..wmat.nrows() {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut sum = F::zero();
                    for ch in 0..g.c {
                        for (tap, pixel) in taps(g, oy, ox) {
                            sum += wmat[[r, ch * taps_per_channel + tap]] * x[[n, ch * plane + pixel]];
                        }
                    }
                    out[[n, r, oy * g.ow + ox]] = sum;
                }
            }
        }
    }
}

/// The adjoint of [`correlate`]: each output-side value `src[n, r, p]` is spread back
/// through the taps onto the pixels it was read from, `out[n, ch * h * w + pixel] +=
/// wmat[r, ch * kh * kw + tap] * src[n, r, p]` (`out` is overwritten, then summed into).
pub(crate) fn fold<F: Float>(src: ArrayView3<F>, g: &ConvGeom, wmat: ArrayView2<F>, mut out: ArrayViewMut2<F>) {
    let (plane, taps_per_channel) = (g.h * g.w, g.kernel.0 * g.kernel.1);
    out.fill(F::zero());
    for n in 0..src.shape()[0] {
        for r in 0..wmat.nrows() {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let d = src[[n, r, oy * g.ow + ox]];
                    for ch in 0..g.c {
                        for (tap, pixel) in taps(g, oy, ox) {
                            out[[n, ch * plane + pixel]] += wmat[[r, ch * taps_per_channel + tap]] * d;
                        }
                    }
                }
            }
        }
    }
}

/// The weight gradient: `dw[r, ch * kh * kw + tap] += sum over n and positions of
/// a[n, r, p] * b[n, ch * h * w + pixel]`, with `a` on the output side and `b` on the
/// image side (accumulates into `dw`).
pub(crate) fn weight_grad<F: Float>(a: ArrayView3<F>, b: ArrayView2<F>, g: &ConvGeom, mut dw: ArrayViewMut2<F>) {
    let (plane, taps_per_channel) = (g.h * g.w, g.kernel.0 * g.kernel.1);
    for n in 0..a.shape()[0] {
        for r in 0..a.shape()[1] {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let d = a[[n, r, oy * g.ow + ox]];
                    for ch in 0..g.c {
                        for (tap, pixel) in taps(g, oy, ox) {
                            dw[[r, ch * taps_per_channel + tap]] += d * b[[n, ch * plane + pixel]];
                        }
                    }
                }
            }
        }
    }
}
