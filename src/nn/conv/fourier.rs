//! Stride-1 convolutions in the Fourier domain: the three products every convolution layer
//! is made of ([`correlate`], [`fold`], [`weight_grad`], the same contracts as
//! [`super::im2col`]'s `unfold_gemm`, `gemm_fold` and `weight_grad`), computed frequency by
//! frequency.
//!
//! Why: in im2col form a `kh x kw` kernel costs `kh * kw` multiply-adds per output and
//! channel pair (25 for the notebooks' 5x5 kernels). Per frequency of a cyclic `H x W`
//! plane it costs one complex product, 4 real ones, over `H * (W/2 + 1)` frequencies, plus
//! one transform of each image plane in and one back: for 32 -> 32 channels on MNIST's
//! 24x24 maps that is 2-3x less work than the direct products.
//!
//! How: every plane (an image channel, a kernel) is embedded at the top-left of a cyclic
//! `H x W` plane with `H >= h + ph` and `H >= oh` (so that no tap that reads the padding
//! wraps onto a pixel), kernels at the cyclic offset `-p` with their taps `d` apart. Then
//! the forward correlation is `X conj(K)`, the fold (input gradient) `K S`, the weight
//! gradient `conj(A) X`, each summed over channels: per frequency, one real GEMM on the
//! stacked real and imaginary parts (`[Xr Xi] [[Kr', -Ki'], [Ki', Kr']]`). Two real planes
//! share one complex transform (`a + ib`), separated by Hermitian symmetry; only the
//! `W/2 + 1` non-redundant columns of frequencies are kept. The fold's per-frequency
//! kernel block, read transposed, is the correlation's, and a layer keeps its forward's
//! blocks for its backward ([`KernelCache`]).

use std::sync::Arc;

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, ShapeBuilder};
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use super::layer::ConvGeom;
use crate::gemm::gemm;
use crate::tuning;
use crate::Float;

type C<F> = Complex<F>;

/// Whether the Fourier path can compute convolutions of this geometry (stride 1).
pub(crate) fn supports(g: &ConvGeom) -> bool {
    g.stride == (1, 1)
}

/// Whether the Fourier path is expected to beat im2col for `n` images of geometry `g`
/// with `rows` channels on the other side of the weight: counts multiply-adds of both,
/// the transforms at `2.5 N log2 N` per plane, and asks for a 2x margin (the GEMMs per
/// frequency are small and the transforms move data).
pub(crate) fn preferred(g: &ConvGeom, rows: usize, n: usize) -> bool {
    if !supports(g) || n < 4 {
        return false;
    }
    let (hh, ww) = plane_size(g);
    let bins = (hh * (ww / 2 + 1)) as f64;
    let area = (hh * ww) as f64;
    let direct = (g.kernel.0 * g.kernel.1 * g.oh * g.ow * rows * g.c) as f64;
    let spectral = 4.0 * bins * (rows * g.c) as f64 + 2.5 * (rows + g.c) as f64 * area * area.log2();
    2.0 * spectral < direct
}

/// The cyclic plane for `g`: the smallest sizes made of the factors 2, 3 and 5 with
/// `H >= max(h + ph, oh)` (and the same across).
fn plane_size(g: &ConvGeom) -> (usize, usize) {
    (
        smooth_size((g.h + g.padding.0).max(g.oh)),
        smooth_size((g.w + g.padding.1).max(g.ow)),
    )
}

/// The smallest `m >= n` whose only prime factors are 2, 3 and 5.
fn smooth_size(n: usize) -> usize {
    (n.max(1)..)
        .find(|&m| {
            let mut m = m;
            for p in [2, 3, 5] {
                while m % p == 0 {
                    m /= p;
                }
            }
            m == 1
        })
        .expect("some smooth size")
}

/// At most two contiguous runs of rows covering the cyclic run `start .. start + len` of
/// a plane with `n` rows.
fn cyclic_runs(start: usize, len: usize, n: usize) -> [(usize, usize); 2] {
    if len >= n {
        return [(0, n), (0, 0)];
    }
    let s = start % n;
    if s + len <= n {
        [(s, s + len), (0, 0)]
    } else {
        [(s, n), (0, s + len - n)]
    }
}

/// Where a plane sits in the cyclic plane: its size, the cyclic offset of its first
/// element, and the step between its elements (the dilation, for kernels).
#[derive(Debug, Clone, Copy)]
struct Placement {
    dims: (usize, usize),
    offset: (usize, usize),
    step: (usize, usize),
}

impl Placement {
    fn image(dims: (usize, usize)) -> Self {
        Placement {
            dims,
            offset: (0, 0),
            step: (1, 1),
        }
    }

    /// The cyclic run of rows the plane occupies: its first row and how many rows it
    /// spans (the rows of a dilated kernel are `step` apart).
    fn row_run(&self) -> (usize, usize) {
        (self.offset.0, (self.dims.0 - 1) * self.step.0 + 1)
    }
}

/// The transforms of one geometry's cyclic plane.
struct Plan<F: Float> {
    hh: usize,
    ww: usize,
    /// Columns of non-redundant frequencies, `W/2 + 1`.
    half: usize,
    row_fwd: Arc<dyn Fft<F>>,
    row_inv: Arc<dyn Fft<F>>,
    col_fwd: Arc<dyn Fft<F>>,
    col_inv: Arc<dyn Fft<F>>,
    scratch: usize,
}

/// One thread's buffers for transforming planes.
struct PlaneWork<F> {
    /// The plane, `H` rows of `W`.
    z: Vec<C<F>>,
    /// Its transpose, `W` columns of `H` (frequencies end up here, column-major).
    zt: Vec<C<F>>,
    scratch: Vec<C<F>>,
    /// Half-plane spectra of the two planes of a pair, `bins` each.
    sa: Vec<C<F>>,
    sb: Vec<C<F>>,
    /// The joint transforms of every pair of an image's channels, `H W` each, so that
    /// an image's spectra are separated (and filled back) a frequency at a time.
    planes: Vec<C<F>>,
}

impl<F: Float> Plan<F> {
    fn new(g: &ConvGeom) -> Self {
        let (hh, ww) = plane_size(g);
        let mut planner = FftPlanner::<F>::new();
        let row_fwd = planner.plan_fft_forward(ww);
        let row_inv = planner.plan_fft_inverse(ww);
        let col_fwd = planner.plan_fft_forward(hh);
        let col_inv = planner.plan_fft_inverse(hh);
        let scratch = [&row_fwd, &row_inv, &col_fwd, &col_inv]
            .iter()
            .map(|f| f.get_inplace_scratch_len())
            .max()
            .unwrap_or(0);
        Plan {
            hh,
            ww,
            half: ww / 2 + 1,
            row_fwd,
            row_inv,
            col_fwd,
            col_inv,
            scratch,
        }
    }

    /// Frequencies kept per plane: `H * (W/2 + 1)`, indexed `kx * H + ky`.
    fn bins(&self) -> usize {
        self.hh * self.half
    }

    /// `1 / (H W)`: the inverse transform's normalisation.
    fn scale(&self) -> F {
        F::one() / F::lit((self.hh * self.ww) as f64)
    }

    fn work(&self) -> PlaneWork<F> {
        let zero = C::new(F::zero(), F::zero());
        PlaneWork {
            z: vec![zero; self.hh * self.ww],
            zt: vec![zero; self.hh * self.ww],
            scratch: vec![zero; self.scratch],
            sa: vec![zero; self.bins()],
            sb: vec![zero; self.bins()],
            planes: Vec::new(),
        }
    }

    /// The half-plane spectra of the real planes `a` and `b` (`b` absent: zero), placed as
    /// `at` says, into `wk.sa` and `wk.sb`.
    fn forward_pair(&self, a: &[F], b: Option<&[F]>, at: Placement, wk: &mut PlaneWork<F>) {
        self.transform_pair(a, b, at, wk);
        let (sa, sb) = (&mut wk.sa, &mut wk.sb);
        self.separate(&wk.zt, |f, x, y| {
            sa[f] = x;
            sb[f] = y;
        });
    }

    /// The 2-D transform of `a + ib` (placed as `at`) into `wk.zt`, column-major.
    fn transform_pair(&self, a: &[F], b: Option<&[F]>, at: Placement, wk: &mut PlaneWork<F>) {
        self.transform_pair_into(a, b, at, &mut wk.z, &mut wk.zt, &mut wk.scratch);
    }

    /// [`Plan::transform_pair`] into `zt`, with `z` and `scratch` for work space.
    fn transform_pair_into(
        &self,
        a: &[F],
        b: Option<&[F]>,
        at: Placement,
        z: &mut [C<F>],
        zt: &mut [C<F>],
        scratch: &mut [C<F>],
    ) {
        let (hh, ww) = (self.hh, self.ww);
        let (ph, pw) = at.dims;
        let zero = C::new(F::zero(), F::zero());
        if at.offset == (0, 0) && at.step == (1, 1) {
            // An image at the top-left: rows copied straight, the rest zeroed.
            for (i, zr) in z.chunks_exact_mut(ww).enumerate() {
                if i >= ph {
                    zr.fill(zero);
                    continue;
                }
                let ar = &a[i * pw..][..pw];
                match b {
                    Some(b) => {
                        for ((z, &x), &y) in zr.iter_mut().zip(ar).zip(&b[i * pw..][..pw]) {
                            *z = C::new(x, y);
                        }
                    }
                    None => {
                        for (z, &x) in zr.iter_mut().zip(ar) {
                            *z = C::new(x, F::zero());
                        }
                    }
                }
                zr[pw..].fill(zero);
            }
        } else {
            z.fill(zero);
            for i in 0..ph {
                let zr = &mut z[((at.offset.0 + i * at.step.0) % hh) * ww..][..ww];
                let ar = &a[i * pw..][..pw];
                let br = b.map(|b| &b[i * pw..][..pw]);
                for j in 0..pw {
                    let im = br.map_or(F::zero(), |br| br[j]);
                    zr[(at.offset.1 + j * at.step.1) % ww] = C::new(ar[j], im);
                }
            }
        }
        // Rows of the cyclic plane that hold data; the others transform to zero.
        let (first, span) = at.row_run();
        for (r0, r1) in cyclic_runs(first, span, hh) {
            if r1 > r0 {
                self.row_fwd.process_with_scratch(&mut z[r0 * ww..r1 * ww], scratch);
            }
        }
        transpose::transpose(z, zt, ww, hh);
        self.col_fwd.process_with_scratch(zt, scratch);
    }

    /// Calls `put(f, A(f), B(f))` for every kept frequency of the pair whose joint
    /// transform `Z = A + iB` is in `zt`. A and B are Hermitian (real planes), so
    /// `A = (Z(f) + conj Z(-f)) / 2` and `B = (Z(f) - conj Z(-f)) / 2i`.
    #[inline(always)]
    fn separate(&self, zt: &[C<F>], mut put: impl FnMut(usize, C<F>, C<F>)) {
        for kx in 0..self.half {
            for ky in 0..self.hh {
                let f = kx * self.hh + ky;
                let (a, b) = split_pair(zt[f], zt[self.mirror_of(kx, ky)]);
                put(f, a, b);
            }
        }
    }

    /// Where frequency `-f` sits in a column-major plane, for `f = (kx, ky)`.
    #[inline(always)]
    fn mirror_of(&self, kx: usize, ky: usize) -> usize {
        ((self.ww - kx) % self.ww) * self.hh + (self.hh - ky) % self.hh
    }

    /// The inverse of [`Plan::forward_pair`] (unnormalised): from the half-plane spectra
    /// `get(f) = (A(f), B(f))` of two real planes, leaves `a + ib` in `wk.z`, its rows
    /// transformed only over the cyclic run `rows` that the caller reads.
    #[inline(always)]
    fn inverse_pair(&self, rows: (usize, usize), wk: &mut PlaneWork<F>, get: impl Fn(usize) -> (C<F>, C<F>)) {
        let hh = self.hh;
        for kx in 0..self.ww {
            let col = &mut wk.zt[kx * hh..][..hh];
            for (ky, z) in col.iter_mut().enumerate() {
                *z = if kx < self.half {
                    let (a, b) = get(kx * hh + ky);
                    join_pair(a, b)
                } else {
                    // The redundant half, from the kept frequency -f.
                    let (a, b) = get(self.mirror_of(kx, ky));
                    join_mirror(a, b)
                };
            }
        }
        self.finish_inverse(rows, &mut wk.z, &mut wk.zt, &mut wk.scratch);
    }

    /// The inverse transform of the full spectrum `zt` (column-major) into `z`, its rows
    /// transformed only over the cyclic run `rows`; `zt` is overwritten.
    fn finish_inverse(&self, rows: (usize, usize), z: &mut [C<F>], zt: &mut [C<F>], scratch: &mut [C<F>]) {
        let (hh, ww) = (self.hh, self.ww);
        self.col_inv.process_with_scratch(zt, scratch);
        transpose::transpose(zt, z, hh, ww);
        for (r0, r1) in cyclic_runs(rows.0, rows.1, hh) {
            if r1 > r0 {
                self.row_inv.process_with_scratch(&mut z[r0 * ww..r1 * ww], scratch);
            }
        }
    }

    /// Reads the planes of a pair out of `wk.z` (after [`Plan::inverse_pair`]), scaled.
    fn read_pair(&self, at: Placement, scale: F, wk: &PlaneWork<F>, mut read: impl FnMut(usize, F, F)) {
        let (ph, pw) = at.dims;
        for i in 0..ph {
            let zr = &wk.z[((at.offset.0 + i * at.step.0) % self.hh) * self.ww..][..self.ww];
            for j in 0..pw {
                let z = zr[(at.offset.1 + j * at.step.1) % self.ww];
                read(i * pw + j, z.re * scale, z.im * scale);
            }
        }
    }

    /// The spectra of the `nc` planes of one image `x` (each placed as `at`) into image
    /// `j` of `spec`, laid out `[m][bins][2 nc]`: per frequency, real parts then imaginary
    /// parts. Frequency `f` of a chunk is then the matrix at `f * 2 nc` with row stride
    /// `bins * 2 nc`, ready for a GEMM without any transposition.
    fn transform_image(&self, x: &[F], nc: usize, at: Placement, spec: &mut [F], j: usize, wk: &mut PlaneWork<F>) {
        let (hh, n) = (self.hh, self.hh * self.ww);
        let plane = at.dims.0 * at.dims.1;
        let width = 2 * nc;
        let bins = self.bins();
        let image = &mut spec[j * bins * width..][..bins * width];
        let PlaneWork { z, scratch, planes, .. } = wk;
        let planes = pair_planes(planes, nc, n);
        for (p, zt) in planes.chunks_exact_mut(n).enumerate() {
            let ch = 2 * p;
            let b = (ch + 1 < nc).then(|| &x[(ch + 1) * plane..][..plane]);
            self.transform_pair_into(&x[ch * plane..][..plane], b, at, z, zt, scratch);
        }
        // Separated a frequency at a time, so that each row of the image's block is
        // written whole (a pair at a time, the writes were 2 nc values apart).
        for kx in 0..self.half {
            for ky in 0..hh {
                let (at_f, at_m) = (kx * hh + ky, self.mirror_of(kx, ky));
                let (re, im) = image[at_f * width..][..width].split_at_mut(nc);
                // Whole pairs first, with the bounds checked once outside the loop so that
                // it vectorises (gathering across the pairs' planes); an odd channel after.
                assert!(at_f < n && at_m < n);
                let both = planes
                    .chunks_exact(n)
                    .zip(re.chunks_exact_mut(2).zip(im.chunks_exact_mut(2)));
                for (zt, (r2, i2)) in both {
                    let (a, b) = split_pair(zt[at_f], zt[at_m]);
                    r2.copy_from_slice(&[a.re, b.re]);
                    i2.copy_from_slice(&[a.im, b.im]);
                }
                if nc % 2 == 1 {
                    let zt = &planes[(nc / 2) * n..][..n];
                    let (a, _) = split_pair(zt[at_f], zt[at_m]);
                    (re[nc - 1], im[nc - 1]) = (a.re, a.im);
                }
            }
        }
    }

    /// The inverse of [`Plan::transform_image`]: overwrites the `nc` planes of `out`
    /// (`dims` each, at the top-left) from image `j` of `spec`, unscaled.
    fn restore_image(
        &self,
        spec: &[F],
        j: usize,
        nc: usize,
        dims: (usize, usize),
        out: &mut [F],
        wk: &mut PlaneWork<F>,
    ) {
        let (hh, ww, n) = (self.hh, self.ww, self.hh * self.ww);
        let plane = dims.0 * dims.1;
        let width = 2 * nc;
        let bins = self.bins();
        let image = &spec[j * bins * width..][..bins * width];
        let PlaneWork { z, scratch, planes, .. } = wk;
        let planes = pair_planes(planes, nc, n);
        // Each pair's full spectrum Z = A + iB, filled a frequency at a time (each row of
        // the image's block read whole): the kept half directly, the other half from
        // A(-f) = conj A(f), where Z(-f) = conj A(f) + i conj B(f).
        for kx in 0..self.half {
            let mirrored = kx > 0 && ww - kx >= self.half;
            for ky in 0..hh {
                let (at_f, at_m) = (kx * hh + ky, self.mirror_of(kx, ky));
                let (re, im) = image[at_f * width..][..width].split_at(nc);
                for (p, zt) in planes.chunks_exact_mut(n).enumerate() {
                    let ch = 2 * p;
                    let a = C::new(re[ch], im[ch]);
                    let b = if ch + 1 < nc {
                        C::new(re[ch + 1], im[ch + 1])
                    } else {
                        C::new(F::zero(), F::zero())
                    };
                    zt[at_f] = join_pair(a, b);
                    if mirrored {
                        zt[at_m] = join_mirror(a, b);
                    }
                }
            }
        }
        for (p, zt) in planes.chunks_exact_mut(n).enumerate() {
            let ch = 2 * p;
            self.finish_inverse((0, dims.0), z, zt, scratch);
            // Planes at the top-left: rows read straight.
            let (lo, hi) = out[ch * plane..].split_at_mut(plane);
            for (i, zr) in z.chunks_exact(ww).take(dims.0).enumerate() {
                let zr = &zr[..dims.1];
                for (o, z) in lo[i * dims.1..][..dims.1].iter_mut().zip(zr) {
                    *o = z.re;
                }
                if ch + 1 < nc {
                    for (o, z) in hi[i * dims.1..][..dims.1].iter_mut().zip(zr) {
                        *o = z.im;
                    }
                }
            }
        }
    }

    /// Where `g`'s kernels sit: taps `d` apart from the cyclic offset `-p`.
    fn kernel_placement(&self, g: &ConvGeom) -> Placement {
        Placement {
            dims: g.kernel,
            offset: (
                (self.hh - g.padding.0 % self.hh) % self.hh,
                (self.ww - g.padding.1 % self.ww) % self.ww,
            ),
            step: g.dilation,
        }
    }

    /// The per-frequency blocks for the `rows` kernels of `wmat` (`[rows, c*kh*kw]`, row
    /// by row): their spectra, re-laid by [`kernel_blocks`].
    fn kernel_blocks(&self, g: &ConvGeom, wmat: &[F], rows: usize) -> KernelBlocks<F> {
        let by_freq = self.kernel_spectra(g, wmat, rows * g.c);
        kernel_blocks(by_freq.view(), rows, g.c, self.scale())
    }

    /// The spectra of the `rows x c` kernels of `wmat` (`[rows, c*kh*kw]`), frequency-major:
    /// `[bins, nk]`, kernel `k = r * c + ch` in column `k`. Parallel over tiles of
    /// [`KERNEL_TILE`] kernels: a tile's spectra are made a pair at a time into a
    /// kernel-major buffer that stays in cache, then written out a frequency's row at a
    /// time (a blocked transpose, done by the threads that make the spectra).
    fn kernel_spectra(&self, g: &ConvGeom, wmat: &[F], nk: usize) -> Array2<C<F>> {
        let (kk, bins) = (g.kernel.0 * g.kernel.1, self.bins());
        let at = self.kernel_placement(g);
        let zero = C::new(F::zero(), F::zero());
        let mut by_freq = Array2::from_elem((bins, nk), zero);
        by_freq
            .axis_chunks_iter_mut(Axis(1), KERNEL_TILE)
            .into_par_iter()
            .enumerate()
            .for_each_init(
                || (self.work(), vec![zero; KERNEL_TILE * bins]),
                |(wk, tile_spec), (tile, mut cols)| {
                    let width = cols.ncols();
                    for j in (0..width).step_by(2) {
                        let k = tile * KERNEL_TILE + j;
                        let b = (j + 1 < width).then(|| &wmat[(k + 1) * kk..][..kk]);
                        self.forward_pair(&wmat[k * kk..][..kk], b, at, wk);
                        tile_spec[j * bins..][..bins].copy_from_slice(&wk.sa);
                        if b.is_some() {
                            tile_spec[(j + 1) * bins..][..bins].copy_from_slice(&wk.sb);
                        }
                    }
                    for (f, mut row) in cols.axis_iter_mut(Axis(0)).enumerate() {
                        let row = row.as_slice_mut().expect("a row of a standard-layout array");
                        for (j, z) in row.iter_mut().enumerate() {
                            *z = tile_spec[j * bins + f];
                        }
                    }
                },
            );
        by_freq
    }
}

/// Kernels per tile where kernel spectra change between kernel-major and frequency-major
/// order (an even number, so that a tile holds whole pairs): 16 complex `f32` are two
/// cache lines of a frequency's row.
const KERNEL_TILE: usize = 16;

/// Which product a frequency's kernel block serves.
#[derive(Clone, Copy)]
enum Product {
    /// `[Xr Xi] (m x 2c) · [[Kr', -Ki'], [Ki', Kr']] (2c x 2rows)` = `X conj(K)'`: the
    /// block transposed.
    Correlate,
    /// `[Sr Si] (m x 2rows) · [[Kr, Ki], [-Ki, Kr]] (2rows x 2c)` = `S K`: the block.
    Fold,
}

/// The kernels' spectra as the real operands of the per-frequency GEMMs: at every
/// frequency the block `[[Kr, Ki], [-Ki, Kr]]` (`2 rows x 2c`, `K[r, ch]`), scaled by the
/// inverse transform's normalisation. The correlation's operand is the same block read
/// transposed, so one layout serves both products (and a layer's forward and backward).
struct KernelBlocks<F> {
    blocks: Vec<Vec<F>>,
    rows: usize,
    c: usize,
}

impl<F: Float> KernelBlocks<F> {
    /// The operand of `product` at frequency `f`.
    fn operand(&self, f: usize, product: Product) -> ArrayView2<'_, F> {
        let blk = ArrayView2::from_shape((2 * self.rows, 2 * self.c), &self.blocks[f][..]).expect("sized");
        match product {
            Product::Fold => blk,
            Product::Correlate => blk.reversed_axes(),
        }
    }
}

/// What a convolution layer keeps of its kernels' transforms from its forward for its
/// backward. The Fourier path multiplies by the same per-frequency kernel blocks in the
/// forward product and in the input gradient (read the other way round), so a layer keeps
/// the forward's, with the weights and geometry they were made from, and its backward
/// reuses them only if both are unchanged (weights edited in between are transformed
/// afresh). Other paths keep nothing.
pub struct KernelCache<F> {
    kept: Option<Kept<F>>,
}

/// One geometry's kernel blocks and the weights they are the transforms of.
struct Kept<F> {
    g: ConvGeom,
    weights: Vec<F>,
    blocks: KernelBlocks<F>,
}

impl<F> Default for KernelCache<F> {
    fn default() -> Self {
        KernelCache { kept: None }
    }
}

impl<F> std::fmt::Debug for KernelCache<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.kept.as_ref().map(|k| k.g);
        f.debug_struct("KernelCache").field("held_for", &held).finish()
    }
}

/// A clone starts empty: what is kept belongs to one forward and its backward.
impl<F> Clone for KernelCache<F> {
    fn clone(&self) -> Self {
        KernelCache::default()
    }
}

impl<F: Float> KernelCache<F> {
    /// Drops what is kept.
    pub fn clear(&mut self) {
        self.kept = None;
    }

    /// Whether kernel blocks are kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_none()
    }

    /// The blocks of `wmat` (`[rows, c*kh*kw]`) for geometry `g`: the kept ones when they
    /// were made from the same weights and geometry, new ones (then kept) otherwise.
    fn blocks(&mut self, plan: &Plan<F>, g: &ConvGeom, wmat: ArrayView2<F>) -> &KernelBlocks<F> {
        let wmat = wmat.as_standard_layout();
        let w = wmat.as_slice().expect("standard layout");
        let fresh = matches!(&self.kept, Some(k) if k.g == *g && k.weights.as_slice() == w);
        if !fresh {
            // The old blocks go before the new ones are made (megabytes each).
            self.kept = None;
            let blocks = plan.kernel_blocks(g, w, wmat.nrows());
            self.kept = Some(Kept {
                g: *g,
                weights: w.to_vec(),
                blocks,
            });
        }
        &self.kept.as_ref().expect("kept just above").blocks
    }
}

/// Per frequency, the block of [`KernelBlocks`] from the kernel spectra (frequency-major,
/// `[bins, nk]`, kernel `k = r * c + ch`), scaled by `scale` (the inverse transform's
/// normalisation, folded in once here). Each block is written in order, row by row, from
/// the spectra's rows read in order, into its own allocation (no zeroing pass over
/// megabytes that are overwritten at once).
fn kernel_blocks<F: Float>(by_freq: ArrayView2<C<F>>, rows: usize, c: usize, scale: F) -> KernelBlocks<F> {
    let nk = rows * c;
    let blocks = by_freq
        .axis_iter(Axis(0))
        .into_par_iter()
        .map(|ks| {
            let ks = ks.to_slice().expect("standard layout");
            let mut blk = Vec::with_capacity(4 * nk);
            // Rows r: [Kr(r, ch) | Ki(r, ch)] over ch, then rows rows + r: [-Ki | Kr].
            for kr in ks.chunks_exact(c) {
                blk.extend(kr.iter().map(|k| k.re * scale));
                blk.extend(kr.iter().map(|k| k.im * scale));
            }
            for kr in ks.chunks_exact(c) {
                blk.extend(kr.iter().map(|k| -(k.im * scale)));
                blk.extend(kr.iter().map(|k| k.re * scale));
            }
            blk
        })
        .collect();
    KernelBlocks { blocks, rows, c }
}

/// The spectra `(A(f), B(f))` of two real planes from their joint transform `Z = A + iB`
/// at `f` and at `-f`: both are Hermitian, so `A = (Z(f) + conj Z(-f)) / 2` and
/// `B = (Z(f) - conj Z(-f)) / 2i`.
#[inline(always)]
fn split_pair<F: Float>(z: C<F>, z_mirror: C<F>) -> (C<F>, C<F>) {
    let half = F::lit(0.5);
    let zm = z_mirror.conj();
    let (s, d) = (z + zm, z - zm);
    (C::new(s.re * half, s.im * half), C::new(d.im * half, -d.re * half))
}

/// `Z(f) = A(f) + i B(f)`, the inverse of [`split_pair`].
#[inline(always)]
fn join_pair<F: Float>(a: C<F>, b: C<F>) -> C<F> {
    C::new(a.re - b.im, a.im + b.re)
}

/// `Z(-f) = conj A(f) + i conj B(f)`: the redundant half of the joint spectrum.
#[inline(always)]
fn join_mirror<F: Float>(a: C<F>, b: C<F>) -> C<F> {
    C::new(a.re + b.im, b.re - a.im)
}

/// `planes` grown to hold the joint transforms of an image's `nc` channels taken in pairs
/// (`n` values each), and that many of them.
fn pair_planes<F: Float>(planes: &mut Vec<C<F>>, nc: usize, n: usize) -> &mut [C<F>] {
    let len = nc.div_ceil(2) * n;
    if planes.len() < len {
        planes.resize(len, C::new(F::zero(), F::zero()));
    }
    &mut planes[..len]
}

/// Images per thread: the batch split into one contiguous run per worker.
fn per_thread(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// Transforms each image of `inp` (`nc_in` planes placed as `at_in`), multiplies every
/// frequency by the operand of `product` in `blocks` (`2 nc_in x 2 nc_out`), and writes
/// the `nc_out` planes of `dims_out` back into `out`. Parallel over runs of images.
fn through_blocks<F: Float>(
    plan: &Plan<F>,
    inp: ArrayView2<F>,
    (nc_in, at_in): (usize, Placement),
    (blocks, product): (&KernelBlocks<F>, Product),
    (nc_out, dims_out): (usize, (usize, usize)),
    mut out: ArrayViewMut2<F>,
) {
    let bins = plan.bins();
    let (wi, wo) = (2 * nc_in, 2 * nc_out);
    let per = per_thread(inp.nrows());
    out.axis_chunks_iter_mut(Axis(0), per)
        .into_par_iter()
        .zip(inp.axis_chunks_iter(Axis(0), per))
        .for_each(|(mut o, x)| {
            let mut wk = plan.work();
            let mmax = tuning::FOURIER_CHUNK.min(x.nrows());
            // Thread-local buffers: every entry is written before it is read.
            F::with_scratch(bins * mmax * wi, bins * mmax * wo, |sin, sout| {
                for (mut oc, xc) in o
                    .axis_chunks_iter_mut(Axis(0), tuning::FOURIER_CHUNK)
                    .zip(x.axis_chunks_iter(Axis(0), tuning::FOURIER_CHUNK))
                {
                    let m = xc.nrows();
                    for (j, xj) in xc.outer_iter().enumerate() {
                        let xs = xj.as_slice().expect("contiguous sample");
                        plan.transform_image(xs, nc_in, at_in, sin, j, &mut wk);
                    }
                    through_frequencies((blocks, product), sin, sout, m, bins, (wi, wo));
                    for (j, mut oj) in oc.outer_iter_mut().enumerate() {
                        let os = oj.as_slice_mut().expect("contiguous sample");
                        plan.restore_image(sout, j, nc_out, dims_out, os, &mut wk);
                    }
                }
            })
        });
}

/// `sout[f] = sin[f] · blocks.operand(f, product)` at every frequency of a chunk of `m`
/// images, the spectra laid out `[m][bins][width]` with widths `wi` in and `wo` out.
fn through_frequencies<F: Float>(
    (blocks, product): (&KernelBlocks<F>, Product),
    sin: &[F],
    sout: &mut [F],
    m: usize,
    bins: usize,
    (wi, wo): (usize, usize),
) {
    for f in 0..bins {
        let a = frequency(sin, f, m, bins, wi);
        let b = blocks.operand(f, product);
        debug_assert_eq!(b.dim(), (wi, wo));
        gemm(F::one(), a, b, F::zero(), frequency_mut(sout, f, m, bins, wo));
    }
}

/// Frequency `f` of the `m` images of `spec` (`[m][bins][width]`): an `m x width` view
/// with row stride `bins * width`.
fn frequency<F: Float>(spec: &[F], f: usize, m: usize, bins: usize, width: usize) -> ArrayView2<'_, F> {
    let len = (m - 1) * bins * width + width;
    ArrayView2::from_shape((m, width).strides((bins * width, 1)), &spec[f * width..][..len]).expect("sized")
}

/// [`frequency`], writable.
fn frequency_mut<F: Float>(spec: &mut [F], f: usize, m: usize, bins: usize, width: usize) -> ArrayViewMut2<'_, F> {
    let len = (m - 1) * bins * width + width;
    ArrayViewMut2::from_shape((m, width).strides((bins * width, 1)), &mut spec[f * width..][..len]).expect("sized")
}

/// Flattens `[n, a, b]` to `[n, a*b]` (standard layout expected).
fn rows_of<'a, F: Float>(v: ArrayViewMut3<'a, F>) -> ArrayViewMut2<'a, F> {
    let (n, a, b) = v.dim();
    v.into_shape_with_order((n, a * b)).expect("standard-layout output")
}

/// `out[n] = wmat · im2col(inp[n])`, as `im2col::unfold_gemm`: `inp` `[N, c*h*w]`,
/// `wmat` `[rows, c*kh*kw]`, `out` `[N, rows, oh*ow]`. Stride 1 only.
/// The kernel blocks come from `kernels` when it holds this geometry's for these weights.
pub(crate) fn correlate<F: Float>(
    inp: ArrayView2<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    out: ArrayViewMut3<F>,
    kernels: &mut KernelCache<F>,
) {
    debug_assert!(supports(g));
    let plan = Plan::<F>::new(g);
    let rows = wmat.nrows();
    let blocks = kernels.blocks(&plan, g, wmat);
    let inp = inp.as_standard_layout();
    through_blocks(
        &plan,
        inp.view(),
        (g.c, Placement::image((g.h, g.w))),
        (blocks, Product::Correlate),
        (rows, (g.oh, g.ow)),
        rows_of(out),
    );
}

/// `out[n] = col2im(wmat' · src[n])`, as `im2col::gemm_fold`: `src` `[N, rows, oh*ow]`,
/// `wmat` `[rows, c*kh*kw]`, `out` `[N, c*h*w]` (overwritten). Stride 1 only.
/// Kernel blocks as [`correlate`].
pub(crate) fn fold<F: Float>(
    src: ArrayView3<F>,
    g: &ConvGeom,
    wmat: ArrayView2<F>,
    out: ArrayViewMut2<F>,
    kernels: &mut KernelCache<F>,
) {
    debug_assert!(supports(g));
    let plan = Plan::<F>::new(g);
    let rows = wmat.nrows();
    let blocks = kernels.blocks(&plan, g, wmat);
    let src = src.as_standard_layout();
    let (n, r, p) = src.dim();
    let srcm = src.view().into_shape_with_order((n, r * p)).expect("standard layout");
    through_blocks(
        &plan,
        srcm,
        (rows, Placement::image((g.oh, g.ow))),
        (blocks, Product::Fold),
        (g.c, (g.h, g.w)),
        out,
    );
}

/// `dw += sum_n a[n] · im2col(b[n])'`, as `im2col::weight_grad`: `a` `[N, rows, oh*ow]`,
/// `b` `[N, c*h*w]`, `dw` `[rows, c*kh*kw]`. Per thread, the products `conj(A) B` summed
/// over its images at every frequency; then summed over threads and transformed back.
pub(crate) fn weight_grad<F: Float>(a: ArrayView3<F>, b: ArrayView2<F>, g: &ConvGeom, dw: ArrayViewMut2<F>) {
    debug_assert!(supports(g));
    let plan = Plan::<F>::new(g);
    let (n, rows, p) = a.dim();
    let (wa, wb) = (2 * rows, 2 * g.c);
    let bins = plan.bins();
    let a = a.as_standard_layout();
    let am = a.view().into_shape_with_order((n, rows * p)).expect("standard layout");
    let b = b.as_standard_layout();
    let per = per_thread(n);
    let sums: Vec<Vec<F>> = am
        .axis_chunks_iter(Axis(0), per)
        .into_par_iter()
        .zip(b.axis_chunks_iter(Axis(0), per))
        .map(|(ap, bp)| {
            let mut wk = plan.work();
            let mut acc = vec![F::zero(); bins * rows * wb];
            F::with_scratch(
                bins * tuning::FOURIER_CHUNK.min(ap.nrows()) * wa,
                bins * tuning::FOURIER_CHUNK.min(ap.nrows()) * wb,
                |sa, sb| {
                    for (ac, bc) in ap
                        .axis_chunks_iter(Axis(0), tuning::FOURIER_CHUNK)
                        .zip(bp.axis_chunks_iter(Axis(0), tuning::FOURIER_CHUNK))
                    {
                        for (j, (aj, bj)) in ac.outer_iter().zip(bc.outer_iter()).enumerate() {
                            let at = Placement::image((g.oh, g.ow));
                            plan.transform_image(aj.as_slice().expect("contiguous"), rows, at, sa, j, &mut wk);
                            let bt = Placement::image((g.h, g.w));
                            plan.transform_image(bj.as_slice().expect("contiguous"), g.c, bt, sb, j, &mut wk);
                        }
                        accumulate(&mut acc, sa, sb, ac.nrows(), bins, (wa, wb));
                    }
                },
            );
            acc
        })
        .collect();
    finish_weight_grad(&plan, g, rows, sums, dw);
}

/// `acc[f] += conj(A_f)' B_f` for every frequency of a chunk of `m` images, kept as the
/// real block `[Re | Im]` (`rows x 2c`) that [`finish_weight_grad`] reads: `Re = Ar'Br +
/// Ai'Bi`, `Im = Ar'Bi - Ai'Br`. Three products on views of the spectra, with no copies,
/// into half the memory of the whole `[Ar Ai]' [Br Bi]`: the sums are read and written
/// once per chunk, so their size is traffic.
fn accumulate<F: Float>(acc: &mut [F], sa: &[F], sb: &[F], m: usize, bins: usize, (wa, wb): (usize, usize)) {
    let (rows, c) = (wa / 2, wb / 2);
    for (f, block) in acc.chunks_exact_mut(rows * wb).take(bins).enumerate() {
        let x = frequency(sa, f, m, bins, wa);
        let y = frequency(sb, f, m, bins, wb);
        let (ar, ai) = x.split_at(Axis(1), rows);
        let (br, bi) = y.split_at(Axis(1), c);
        let mut z = ArrayViewMut2::from_shape((rows, wb), block).expect("sized");
        gemm(F::one(), ar.t(), y, F::one(), z.view_mut());
        let (re, im) = z.split_at(Axis(1), c);
        gemm(F::one(), ai.t(), bi, F::one(), re);
        gemm(-F::one(), ai.t(), br, F::one(), im);
    }
}

/// Both gradients of a convolution in one pass over the images, sharing the transform of
/// `dy`: the weight gradient as [`weight_grad`] and the input gradient written over the
/// kept input `x`, which is read first (each chunk of images is transformed before its
/// rows are overwritten).
///
/// Conv2d (`dy_is_a`): `a = dy` `[N, rows*oh*ow]`, `b = x` `[N, c*h*w]`, `dx = fold(dy)`.
/// ConvTranspose2d: `a = x`, `b = dy`, `dx = correlate(dy)`. Kernel blocks as
/// [`correlate`] (a layer's forward made them).
pub(crate) fn backward_over_input<F: Float>(
    dy_is_a: bool,
    dy: ArrayView2<F>,
    mut x: ArrayViewMut2<F>,
    g: &ConvGeom,
    (wmat, kernels): (ArrayView2<F>, &mut KernelCache<F>),
    dw: ArrayViewMut2<F>,
) {
    debug_assert!(supports(g));
    let plan = Plan::<F>::new(g);
    let rows = wmat.nrows();
    let bins = plan.bins();
    let (wa, wb) = (2 * rows, 2 * g.c);
    let a_side = (rows, (g.oh, g.ow));
    let b_side = (g.c, (g.h, g.w));
    let (dy_side, x_side, product) = if dy_is_a {
        (a_side, b_side, Product::Fold)
    } else {
        (b_side, a_side, Product::Correlate)
    };
    let (wdy, wx) = (2 * dy_side.0, 2 * x_side.0);
    let blocks = kernels.blocks(&plan, g, wmat);
    let dy = dy.as_standard_layout();
    let per = per_thread(dy.nrows());
    let sums: Vec<Vec<F>> = dy
        .axis_chunks_iter(Axis(0), per)
        .into_par_iter()
        .zip(x.axis_chunks_iter_mut(Axis(0), per))
        .map(|(dyp, mut xp)| {
            let mut wk = plan.work();
            let mut acc = vec![F::zero(); bins * rows * wb];
            let mmax = tuning::FOURIER_CHUNK.min(dyp.nrows());
            F::with_scratch(bins * mmax * wdy, bins * mmax * wx, |sdy, sx| {
                for (dyc, mut xc) in dyp
                    .axis_chunks_iter(Axis(0), tuning::FOURIER_CHUNK)
                    .zip(xp.axis_chunks_iter_mut(Axis(0), tuning::FOURIER_CHUNK))
                {
                    let m = dyc.nrows();
                    for (j, (dj, xj)) in dyc.outer_iter().zip(xc.outer_iter()).enumerate() {
                        let at = Placement::image(dy_side.1);
                        plan.transform_image(dj.as_slice().expect("contiguous"), dy_side.0, at, sdy, j, &mut wk);
                        let at = Placement::image(x_side.1);
                        plan.transform_image(xj.as_slice().expect("contiguous"), x_side.0, at, sx, j, &mut wk);
                    }
                    if dy_is_a {
                        accumulate(&mut acc, sdy, sx, m, bins, (wa, wb));
                    } else {
                        accumulate(&mut acc, sx, sdy, m, bins, (wa, wb));
                    }
                    // x's spectra are spent: its buffer takes dx's.
                    through_frequencies((blocks, product), sdy, sx, m, bins, (wdy, wx));
                    for (j, mut xj) in xc.outer_iter_mut().enumerate() {
                        let out = xj.as_slice_mut().expect("contiguous sample");
                        plan.restore_image(sx, j, x_side.0, x_side.1, out, &mut wk);
                    }
                }
            });
            acc
        })
        .collect();
    finish_weight_grad(&plan, g, rows, sums, dw);
}

/// Sums the threads' blocks, combines them into `conj(A) B` per kernel and frequency, and
/// adds the kernels' taps, transformed back, into `dw`.
fn finish_weight_grad<F: Float>(
    plan: &Plan<F>,
    g: &ConvGeom,
    rows: usize,
    sums: Vec<Vec<F>>,
    mut dw: ArrayViewMut2<F>,
) {
    let c = g.c;
    let bins = plan.bins();
    // The threads' `[Re | Im]` blocks (see [`accumulate`]) summed frequency by frequency
    // (each block read in order), kernel k = r * c + ch.
    let nk = rows * c;
    let zero = C::new(F::zero(), F::zero());
    let mut by_freq = vec![zero; bins * nk];
    by_freq.par_chunks_mut(nk).enumerate().for_each(|(f, zs)| {
        for part in &sums {
            let blk = &part[f * 2 * nk..][..2 * nk];
            for (row, zr) in blk.chunks_exact(2 * c).zip(zs.chunks_exact_mut(c)) {
                let (re, im) = row.split_at(c);
                for ((z, &re), &im) in zr.iter_mut().zip(re).zip(im) {
                    z.re += re;
                    z.im += im;
                }
            }
        }
    });
    // Back to one spectrum per kernel a tile at a time (each tile's columns gathered
    // into a kernel-major buffer: a blocked transpose, in parallel), each pair of kernels
    // then transformed back to its taps.
    let kk = g.kernel.0 * g.kernel.1;
    let at = plan.kernel_placement(g);
    let mut taps = Array2::<F>::zeros((nk.div_ceil(2), 2 * kk));
    let pairs_per_tile = KERNEL_TILE / 2;
    taps.axis_chunks_iter_mut(Axis(0), pairs_per_tile)
        .into_par_iter()
        .enumerate()
        .for_each_init(
            || (plan.work(), vec![zero; KERNEL_TILE * bins]),
            |(wk, tile_spec), (tile, mut tile_taps)| {
                let k0 = tile * KERNEL_TILE;
                let width = KERNEL_TILE.min(nk - k0);
                for (f, row) in by_freq.chunks_exact(nk).enumerate() {
                    for (j, &z) in row[k0..k0 + width].iter().enumerate() {
                        tile_spec[j * bins + f] = z;
                    }
                }
                let spectrum = |j: usize, f: usize| if j < width { tile_spec[j * bins + f] } else { zero };
                for (p, mut t) in tile_taps.axis_iter_mut(Axis(0)).enumerate() {
                    let j = 2 * p;
                    plan.inverse_pair(at.row_run(), wk, |f| (spectrum(j, f), spectrum(j + 1, f)));
                    plan.read_pair(at, plan.scale(), wk, |i, x, y| {
                        t[i] = x;
                        t[kk + i] = y;
                    });
                }
            },
        );
    for k in 0..nk {
        let (r, ch) = (k / c, k % c);
        let src = taps.row(k / 2);
        let src = src.slice(ndarray::s![(k % 2) * kk..(k % 2 + 1) * kk]);
        let mut dst = dw.slice_mut(ndarray::s![r, ch * kk..(ch + 1) * kk]);
        dst += &src;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_sizes_and_cyclic_runs() {
        assert_eq!(smooth_size(24), 24);
        assert_eq!(smooth_size(29), 30);
        assert_eq!(smooth_size(7), 8);
        assert_eq!(smooth_size(121), 125);
        assert_eq!(cyclic_runs(3, 4, 10), [(3, 7), (0, 0)]);
        assert_eq!(cyclic_runs(8, 4, 10), [(8, 10), (0, 2)]);
        assert_eq!(cyclic_runs(5, 12, 10), [(0, 10), (0, 0)]);
    }

    /// A pair of real planes through the transform and back, at a wrapped offset with a
    /// step (a dilated kernel at `-p`), comes back unchanged.
    #[test]
    fn a_pair_of_planes_survives_the_round_trip() {
        let g = ConvGeom::new(2, (9, 7), (3, 2), (1, 1), (2, 1), (2, 3)).unwrap();
        let plan = Plan::<f64>::new(&g);
        let mut wk = plan.work();
        let at = plan.kernel_placement(&g);
        let a: Vec<f64> = (0..6).map(|i| (i as f64 * 0.7).sin()).collect();
        let b: Vec<f64> = (0..6).map(|i| (i as f64 * 1.3).cos()).collect();
        plan.forward_pair(&a, Some(&b), at, &mut wk);
        let (sa, sb) = (wk.sa.clone(), wk.sb.clone());
        plan.inverse_pair(at.row_run(), &mut wk, |f| (sa[f], sb[f]));
        let (mut ra, mut rb) = (vec![0.0; 6], vec![0.0; 6]);
        plan.read_pair(at, plan.scale(), &wk, |k, x, y| {
            ra[k] = x;
            rb[k] = y;
        });
        for k in 0..6 {
            assert!((ra[k] - a[k]).abs() < 1e-14 && (rb[k] - b[k]).abs() < 1e-14, "{k}");
        }
    }
}
