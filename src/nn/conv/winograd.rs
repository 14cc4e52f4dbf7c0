//! Stride-1 convolutions of small planes by Winograd's minimal filtering (Toom-Cook): the
//! three products every convolution layer is made of ([`correlate`], [`fold`],
//! [`weight_grad`], the contracts of [`super::im2col`]'s `unfold_gemm`, `gemm_fold` and
//! `weight_grad`), computed point by point.
//!
//! Why: the DCGAN VAE's widest layer is a 4x4 transposed convolution from 3x3 to 6x6 maps
//! with 256 -> 128 channels. im2col pays 16 multiply-adds per input pixel and channel pair
//! (144 per 3x3 plane); evaluated at 6 x 6 points it is 36, four times fewer. The Fourier
//! path is no help at that size: a 6x6 cyclic plane has 24 complex frequencies, 96 real
//! products, and transforms that dominate such small planes.
//!
//! How: along one axis, a stride-1 correlation `y[o] = sum_k w[k] d[o + k]` (`m` outputs,
//! `r` taps, `d` the padded input of length `n = m + r - 1`) is the transpose of the full
//! convolution of an `m`-vector with `w`, a product of polynomials of degree `m - 1` and
//! `r - 1`. Evaluating both at `n` points (`0, 1, -1, 2, -2, ...` and infinity, where a
//! polynomial's value is its leading coefficient) and interpolating is exact, so
//! `y = E_m' ((E_r w) . (V^-T d))` with `E_k` the `n x k` evaluation matrix of degree
//! `k - 1` polynomials and `V = E_n`. In two dimensions the transforms act on both axes
//! and the product per point is summed over channels: one GEMM per point over a chunk of
//! images. The plane is one tile (`n <= MAX_POINTS` along each axis), so no tiling and no
//! overlap; with more points the interpolation's coefficients grow and f32 rounding with
//! them, which is why the count is capped.

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, ShapeBuilder};
use rayon::prelude::*;

use super::layer::ConvGeom;
use crate::gemm::gemm;
use crate::tuning;
use crate::Float;

/// Most evaluation points along one axis: `0, 1, -1, 2, -2` and infinity, the set of the
/// widely used F(4, 3) transforms, whose rounding in f32 stays within a few ulps.
const MAX_POINTS: usize = 6;

/// Points along an axis for a window of `n` inputs: `n` outputs of the plane, padding on
/// both sides included.
fn points(g: &ConvGeom) -> (usize, usize) {
    (g.oh + g.kernel.0 - 1, g.ow + g.kernel.1 - 1)
}

/// Whether this path can compute convolutions of geometry `g`: stride 1, no dilation, and
/// a padded plane of at most [`MAX_POINTS`] along each axis.
pub(crate) fn supports(g: &ConvGeom) -> bool {
    let (nh, nw) = points(g);
    g.stride == (1, 1) && g.dilation == (1, 1) && nh <= MAX_POINTS && nw <= MAX_POINTS
}

/// Whether this path is expected to beat im2col for `n` images of geometry `g` with `rows`
/// channels on the other side of the weight: multiply-adds per point against those of the
/// direct products, the transforms counted per plane, with a 1.5x margin for the smaller
/// GEMMs.
pub(crate) fn preferred(g: &ConvGeom, rows: usize, n: usize) -> bool {
    if !supports(g) || n < 4 {
        return false;
    }
    let (nh, nw) = points(g);
    let pts = (nh * nw) as f64;
    let direct = (g.kernel.0 * g.kernel.1 * g.oh * g.ow * rows * g.c) as f64;
    let transforms = (g.c + rows) as f64 * pts * (nh.max(nw)) as f64;
    let winograd = pts * (rows * g.c) as f64 + transforms;
    1.5 * winograd < direct
}

/// The `rows x cols` matrix whose row `i` evaluates a polynomial of `cols` coefficients at
/// point `i` of `0, 1, -1, 2, -2, ...`, the last of `rows` points being infinity.
fn evaluation(rows: usize, cols: usize) -> Vec<f64> {
    let mut e = vec![0.0; rows * cols];
    for i in 0..rows {
        let row = &mut e[i * cols..(i + 1) * cols];
        if i + 1 == rows {
            // At infinity a polynomial's value is its leading coefficient.
            if cols > 0 {
                row[cols - 1] = 1.0;
            }
            continue;
        }
        let a = if i == 0 {
            0.0
        } else {
            let mag = i.div_ceil(2) as f64;
            if i % 2 == 1 {
                mag
            } else {
                -mag
            }
        };
        let mut v = 1.0;
        for x in row.iter_mut() {
            *x = v;
            v *= a;
        }
    }
    e
}

/// The inverse of the square `n x n` matrix `m` (Gauss-Jordan, partial pivoting): the
/// evaluation matrices here are small and well conditioned.
fn inverse(m: &[f64], n: usize) -> Vec<f64> {
    let mut a = m.to_vec();
    let mut inv: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .expect("non-empty");
        for k in 0..n {
            a.swap(col * n + k, pivot * n + k);
            inv.swap(col * n + k, pivot * n + k);
        }
        let d = a[col * n + col];
        assert!(d != 0.0, "evaluation matrix is singular");
        for k in 0..n {
            a[col * n + k] /= d;
            inv[col * n + k] /= d;
        }
        for i in (0..n).filter(|&i| i != col) {
            let f = a[i * n + col];
            if f != 0.0 {
                for k in 0..n {
                    a[i * n + k] -= f * a[col * n + k];
                    inv[i * n + k] -= f * inv[col * n + k];
                }
            }
        }
    }
    inv
}

/// The transforms along one axis for `m` outputs, `r` taps and an input of `len` with `pad`
/// zeros before it (`n = m + r - 1 = len + 2 pad` points), row-major in f64.
struct AxisTransforms {
    /// Input to points, `n x len`: the columns `pad .. pad + len` of `V^-T`.
    data: Vec<f64>,
    /// Points to outputs, `m x n`: `E_m'`.
    out: Vec<f64>,
    /// Kernel to points, `n x r`: `E_r`.
    kernel: Vec<f64>,
    n: usize,
    m: usize,
    r: usize,
    len: usize,
}

impl AxisTransforms {
    fn new(m: usize, r: usize, len: usize, pad: usize) -> Self {
        let n = m + r - 1;
        debug_assert_eq!(n, len + 2 * pad, "stride 1, no dilation");
        let vinv = inverse(&evaluation(n, n), n);
        let (em, er) = (evaluation(n, m), evaluation(n, r));
        let mut data = vec![0.0; n * len];
        for j in 0..n {
            for i in 0..len {
                data[j * len + i] = vinv[(i + pad) * n + j];
            }
        }
        let out = (0..m * n).map(|k| em[(k % n) * m + k / n]).collect();
        AxisTransforms {
            data,
            out,
            kernel: er,
            n,
            m,
            r,
            len,
        }
    }
}

/// The Kronecker product of the row-major `a` (`ra x ca`) and `b` (`rb x cb`): the
/// transform of a row-major plane along both axes as one matrix.
fn kron<F: Float>(a: &[f64], (ra, ca): (usize, usize), b: &[f64], (rb, cb): (usize, usize)) -> Array2<F> {
    Array2::from_shape_fn((ra * rb, ca * cb), |(i, j)| {
        F::lit(a[(i / rb) * ca + j / cb] * b[(i % rb) * cb + j % cb])
    })
}

/// The two-dimensional transforms of one geometry, with `rows` channels on the far side of
/// the weight. Each acts on a whole image at once as one small GEMM: its `c` (or `rows`)
/// planes are the columns, so that the work is vectorised across channels.
struct Plan<F> {
    g: ConvGeom,
    rows: usize,
    /// Points per plane, `nh * nw`.
    pts: usize,
    /// Image plane to points, `pts x (h w)`.
    data: Array2<F>,
    /// Points to output plane, `(oh ow) x pts`.
    out: Array2<F>,
    /// Kernel plane to points, `pts x (kh kw)`.
    kernel: Array2<F>,
}

impl<F: Float> Plan<F> {
    fn new(g: &ConvGeom, rows: usize) -> Self {
        debug_assert!(supports(g));
        let h = AxisTransforms::new(g.oh, g.kernel.0, g.h, g.padding.0);
        let w = AxisTransforms::new(g.ow, g.kernel.1, g.w, g.padding.1);
        Plan {
            g: *g,
            rows,
            pts: h.n * w.n,
            data: kron(&h.data, (h.n, h.len), &w.data, (w.n, w.len)),
            out: kron(&h.out, (h.m, h.n), &w.out, (w.m, w.n)),
            kernel: kron(&h.kernel, (h.n, h.r), &w.kernel, (w.n, w.r)),
        }
    }

    /// One image (`c` planes of `h x w`) to its points, `v[p * c + ch]`.
    fn image_in(&self, x: &[F], v: &mut [F]) {
        let (c, hw) = (self.g.c, self.g.h * self.g.w);
        let x = ArrayView2::from_shape((c, hw), &x[..c * hw]).expect("sized");
        let v = ArrayViewMut2::from_shape((self.pts, c), &mut v[..self.pts * c]).expect("sized");
        gemm(F::one(), self.data.view(), x.t(), F::zero(), v);
    }

    /// The adjoint of [`Self::image_in`]: points `v[p * c + ch]` back onto an image,
    /// overwriting it.
    fn image_out(&self, v: &[F], x: &mut [F]) {
        let (c, hw) = (self.g.c, self.g.h * self.g.w);
        let v = ArrayView2::from_shape((self.pts, c), &v[..self.pts * c]).expect("sized");
        let x = ArrayViewMut2::from_shape((c, hw), &mut x[..c * hw]).expect("sized");
        gemm(F::one(), v.t(), self.data.view(), F::zero(), x);
    }

    /// Points `m[p * rows + r]` to one output (`rows` planes of `oh x ow`), overwriting it.
    fn rows_out(&self, m: &[F], y: &mut [F]) {
        let (rows, p) = (self.rows, self.g.oh * self.g.ow);
        let m = ArrayView2::from_shape((self.pts, rows), &m[..self.pts * rows]).expect("sized");
        let y = ArrayViewMut2::from_shape((rows, p), &mut y[..rows * p]).expect("sized");
        gemm(F::one(), m.t(), self.out.t(), F::zero(), y);
    }

    /// The adjoint of [`Self::rows_out`]: an output-side image to its points.
    fn rows_in(&self, y: &[F], m: &mut [F]) {
        let (rows, p) = (self.rows, self.g.oh * self.g.ow);
        let y = ArrayView2::from_shape((rows, p), &y[..rows * p]).expect("sized");
        let m = ArrayViewMut2::from_shape((self.pts, rows), &mut m[..self.pts * rows]).expect("sized");
        gemm(F::one(), self.out.t(), y.t(), F::zero(), m);
    }

    /// Values per point of one sample: `c` on the image side, `rows` on the rows side.
    fn width(&self, image_side: bool) -> usize {
        if image_side {
            self.g.c
        } else {
            self.rows
        }
    }

    /// One sample of the image side ([`Self::image_in`]) or of the rows side
    /// ([`Self::rows_in`]) to its points.
    fn sample_to_points(&self, image_side: bool, x: &[F], points: &mut [F]) {
        if image_side {
            self.image_in(x, points)
        } else {
            self.rows_in(x, points)
        }
    }

    /// Points back to one sample of the image side ([`Self::image_out`]) or of the rows
    /// side ([`Self::rows_out`]), overwriting it.
    fn points_to_sample(&self, image_side: bool, points: &[F], x: &mut [F]) {
        if image_side {
            self.image_out(points, x)
        } else {
            self.rows_out(points, x)
        }
    }

    /// The weight `[rows, c*kh*kw]` at the points, laid out `[pts][rows][c]` (the layout
    /// of the weight gradient's point sums): one GEMM against the weight's planes.
    fn kernel(&self, wmat: ArrayView2<F>) -> Vec<F> {
        let (c, rows, kk, pts) = (self.g.c, self.rows, self.g.kernel.0 * self.g.kernel.1, self.pts);
        let wmat = wmat.as_standard_layout();
        let planes = wmat.to_shape((rows * c, kk)).expect("standard layout");
        let mut u = vec![F::zero(); pts * rows * c];
        let um = ArrayViewMut2::from_shape((pts, rows * c), &mut u).expect("sized");
        gemm(F::one(), self.kernel.view(), planes.t(), F::zero(), um);
        u
    }

    /// `dw += ` the adjoint kernel transform of the point sums `ubar` (`[pts][rows][c]`).
    fn kernel_adjoint(&self, ubar: &[F], mut dw: ArrayViewMut2<F>) {
        let (c, rows, kk, pts) = (self.g.c, self.rows, self.g.kernel.0 * self.g.kernel.1, self.pts);
        let ubar = ArrayView2::from_shape((pts, rows * c), ubar).expect("sized");
        let mut planes = Array2::zeros((rows * c, kk));
        gemm(F::one(), ubar.t(), self.kernel.view(), F::zero(), planes.view_mut());
        for (rc, plane) in planes.outer_iter().enumerate() {
            let (r, ch) = (rc / c, rc % c);
            for (k, &v) in plane.iter().enumerate() {
                dw[(r, ch * kk + k)] += v;
            }
        }
    }
}

/// Point `p` of a chunk's transformed planes laid out `[m][pts][width]`: an `m x width`
/// matrix with rows `pts * width` apart.
fn at_point<F: Float>(buf: &[F], p: usize, m: usize, pts: usize, width: usize) -> ArrayView2<'_, F> {
    ArrayView2::from_shape((m, width).strides((pts * width, 1)), &buf[p * width..]).expect("in bounds")
}

fn at_point_mut<F: Float>(buf: &mut [F], p: usize, m: usize, pts: usize, width: usize) -> ArrayViewMut2<'_, F> {
    ArrayViewMut2::from_shape((m, width).strides((pts * width, 1)), &mut buf[p * width..]).expect("in bounds")
}

/// Images per chunk for a batch of `n`: [`tuning::WINOGRAD_CHUNK`], or fewer so that every thread has one.
fn chunk_size(n: usize) -> usize {
    tuning::WINOGRAD_CHUNK
        .min(n.div_ceil(rayon::current_num_threads()))
        .max(1)
}

/// `out[n] = wmat · im2col(inp[n])` (see `im2col::unfold_gemm`).
pub(crate) fn correlate<F: Float>(inp: ArrayView2<F>, g: &ConvGeom, wmat: ArrayView2<F>, out: ArrayViewMut3<F>) {
    let n = out.shape()[0];
    let out = out
        .into_shape_with_order((n, wmat.nrows() * g.col_cols()))
        .expect("standard layout");
    through_chunks(&Plan::new(g, wmat.nrows()), wmat, inp, out, true);
}

/// Chunk by chunk, each sample to its points on one side, through the kernel, and back to
/// the other side over `out`: `correlate` (`to_rows`, image side to rows side) and `fold`.
fn through_chunks<F: Float>(
    plan: &Plan<F>,
    wmat: ArrayView2<F>,
    src: ArrayView2<F>,
    mut out: ArrayViewMut2<F>,
    to_rows: bool,
) {
    let u = plan.kernel(wmat);
    let pts = plan.pts;
    let (from, to) = (plan.width(to_rows), plan.width(!to_rows));
    let cs = chunk_size(src.nrows());
    out.axis_chunks_iter_mut(Axis(0), cs)
        .into_par_iter()
        .zip(src.axis_chunks_iter(Axis(0), cs).into_par_iter())
        .for_each(|(mut o, s)| {
            let m = s.nrows();
            let mut a = vec![F::zero(); m * pts * from];
            let mut b = vec![F::zero(); m * pts * to];
            for (i, si) in s.outer_iter().enumerate() {
                plan.sample_to_points(
                    to_rows,
                    si.as_slice().expect("contiguous sample"),
                    &mut a[i * pts * from..],
                );
            }
            through_kernel(plan, &u, &a, &mut b, m, to_rows);
            for (i, mut oi) in o.outer_iter_mut().enumerate() {
                plan.points_to_sample(
                    !to_rows,
                    &b[i * pts * to..],
                    oi.as_slice_mut().expect("contiguous sample"),
                );
            }
        });
}

/// Per point, the product with the kernel's points `u` (laid out `[pts][rows][c]`): from
/// the image side to the rows side (`to_rows`: `dst[p] = src[p] u[p]'`), or back
/// (`dst[p] = src[p] u[p]`).
fn through_kernel<F: Float>(plan: &Plan<F>, u: &[F], src: &[F], dst: &mut [F], m: usize, to_rows: bool) {
    let (c, rows, pts) = (plan.g.c, plan.rows, plan.pts);
    let (from, to) = if to_rows { (c, rows) } else { (rows, c) };
    for p in 0..pts {
        let up = ArrayView2::from_shape((rows, c), &u[p * c * rows..][..c * rows]).expect("sized");
        let up = if to_rows { up.t() } else { up };
        gemm(
            F::one(),
            at_point(src, p, m, pts, from),
            up,
            F::zero(),
            at_point_mut(dst, p, m, pts, to),
        );
    }
}

/// `out[n] = col2im(wmat' · src[n])` (see `im2col::gemm_fold`); overwrites `out`.
pub(crate) fn fold<F: Float>(src: ArrayView3<F>, g: &ConvGeom, wmat: ArrayView2<F>, out: ArrayViewMut2<F>) {
    let (n, rows, p) = src.dim();
    let src = src.as_standard_layout();
    let src = src
        .view()
        .into_shape_with_order((n, rows * p))
        .expect("standard layout");
    through_chunks(&Plan::new(g, rows), wmat, src, out, false);
}

/// `dw += sum_n a[n] · im2col(b[n])'` (see `im2col::weight_grad`).
pub(crate) fn weight_grad<F: Float>(a: ArrayView3<F>, b: ArrayView2<F>, g: &ConvGeom, dw: ArrayViewMut2<F>) {
    let plan = Plan::new(g, a.shape()[1]);
    let (c, rows, pts) = (g.c, plan.rows, plan.pts);
    let sums = through_parts(&plan, a.shape()[0], None, |range, _, mbar, v, ubar| {
        for (i, n) in range.clone().enumerate() {
            let an = a.index_axis(Axis(0), n);
            let an = an.as_standard_layout();
            plan.rows_in(an.as_slice().expect("standard"), &mut mbar[i * pts * rows..]);
            plan.image_in(b.row(n).as_slice().expect("contiguous sample"), &mut v[i * pts * c..]);
        }
        accumulate(&plan, mbar, v, ubar, range.len());
    });
    plan.kernel_adjoint(&sums, dw);
}

/// Per point: `ubar[p] += mbar[p]' v[p]`, `ubar` laid out `[pts][rows][c]`.
fn accumulate<F: Float>(plan: &Plan<F>, mbar: &[F], v: &[F], ubar: &mut [F], m: usize) {
    let (c, rows, pts) = (plan.g.c, plan.rows, plan.pts);
    for p in 0..pts {
        let acc = ArrayViewMut2::from_shape((rows, c), &mut ubar[p * rows * c..][..rows * c]).expect("sized");
        gemm(
            F::one(),
            at_point(mbar, p, m, pts, rows).t(),
            at_point(v, p, m, pts, c),
            F::one(),
            acc,
        );
    }
}

/// Runs `body` over the batch in one contiguous run of chunks per thread, each with its own
/// scratch and its own point sums (`[pts][rows][c]`), and adds the threads' sums in a fixed
/// order: the same result whatever the scheduling. `over`, when given, is split into the
/// same runs of rows, so that each chunk can overwrite its own samples.
fn through_parts<F: Float>(
    plan: &Plan<F>,
    n: usize,
    mut over: Option<ArrayViewMut2<F>>,
    body: impl Fn(std::ops::Range<usize>, Option<ArrayViewMut2<F>>, &mut [F], &mut [F], &mut [F]) + Sync,
) -> Vec<F> {
    let (c, rows, pts) = (plan.g.c, plan.rows, plan.pts);
    let parts = rayon::current_num_threads().clamp(1, n.max(1));
    let per = n.div_ceil(parts).max(1);
    let cs = tuning::WINOGRAD_CHUNK.min(per);
    let runs: Vec<Option<ArrayViewMut2<F>>> = match over.as_mut() {
        Some(x) => x.axis_chunks_iter_mut(Axis(0), per).map(Some).collect(),
        None => (0..n.div_ceil(per)).map(|_| None).collect(),
    };
    let partials: Vec<Vec<F>> = runs
        .into_par_iter()
        .enumerate()
        .map(|(part, mut run)| {
            let mut ubar = vec![F::zero(); pts * rows * c];
            let mut mbar = vec![F::zero(); cs * pts * rows];
            let mut v = vec![F::zero(); cs * pts * c];
            let (first, end) = (part * per, ((part + 1) * per).min(n));
            for start in (first..end).step_by(cs) {
                let stop = (start + cs).min(end);
                let rows_here = run
                    .as_mut()
                    .map(|r| r.slice_mut(ndarray::s![start - first..stop - first, ..]));
                body(start..stop, rows_here, &mut mbar, &mut v, &mut ubar);
            }
            ubar
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut sums = parts.next().unwrap_or_else(|| vec![F::zero(); pts * rows * c]);
    for p in parts {
        for (s, v) in sums.iter_mut().zip(&p) {
            *s += *v;
        }
    }
    sums
}

/// Both gradients in one pass over the batch, sharing the transform of `dy` (see
/// [`super::algorithm::backward_over_input`]): the input gradient overwrites `x`,
/// `dw +=` the weight gradient.
pub(crate) fn backward_over_input<F: Float>(
    dy_is_a: bool,
    dy: ArrayView2<F>,
    x: ArrayViewMut2<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    dw: ArrayViewMut2<F>,
) {
    let plan = Plan::new(g, wmat.nrows());
    let u = plan.kernel(wmat);
    let (c, rows, pts) = (g.c, plan.rows, plan.pts);
    let sums = through_parts(&plan, dy.nrows(), Some(x), |range, xs, mbar, v, ubar| {
        let mut xs = xs.expect("rows to overwrite");
        let m = range.len();
        for (i, k) in range.enumerate() {
            let dyk = dy.row(k);
            let dyk = dyk.as_slice().expect("contiguous sample");
            let xk = xs.row(i);
            let xk = xk.as_slice().expect("contiguous sample");
            let (a_side, b_side) = if dy_is_a { (dyk, xk) } else { (xk, dyk) };
            plan.rows_in(a_side, &mut mbar[i * pts * rows..]);
            plan.image_in(b_side, &mut v[i * pts * c..]);
        }
        accumulate(&plan, mbar, v, ubar, m);
        // dx: dy's points through the kernel to x's side (the image side for Conv2d).
        let to_rows = !dy_is_a;
        let (from, to) = if to_rows { (&*v, mbar) } else { (&*mbar, v) };
        through_kernel(&plan, &u, from, to, m, to_rows);
        let width = plan.width(!to_rows);
        for (i, mut xi) in xs.outer_iter_mut().enumerate() {
            plan.points_to_sample(
                !to_rows,
                &to[i * pts * width..],
                xi.as_slice_mut().expect("contiguous sample"),
            );
        }
    });
    plan.kernel_adjoint(&sums, dw);
}
