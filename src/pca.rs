//! Principal component analysis: streamed moments, top-K eigenvectors of the covariance,
//! and the notebook's whitened encoder/decoder.
//!
//! ```no_run
//! # use latent::pca::Pca;
//! # let x = ndarray::Array2::<f32>::zeros((100, 784));
//! let pca = Pca::params(20).fit(x.view())?;
//! let codes = pca.transform(x.view())?;
//! let recon = pca.inverse_transform(codes.view())?;
//! println!("{:.2}% of the variance", 100.0 * pca.explained_variance_ratio().sum());
//! # Ok::<(), latent::Error>(())
//! ```

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;

use crate::gemm::{gemm, gemm_par};

use crate::{Error, Float, Result};

/// How the top-K eigenvectors of the covariance are found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Solver {
    /// Full symmetric eigendecomposition (faer; LAPACK's `dsyevd` with the `lapack`
    /// feature). Gives the whole spectrum.
    Eigh,
    /// Randomized subspace iteration on the covariance, like `torch.svd_lowrank`: a
    /// Gaussian sketch of `k + oversample` columns, `power_iters` orthonormalised power
    /// steps, then an exact eigendecomposition of the small projected matrix.
    Randomized {
        /// Extra sketch columns beyond `k`.
        oversample: usize,
        /// Power iterations.
        power_iters: usize,
        /// Seed of the Gaussian sketch.
        seed: u64,
    },
}

/// Rows per block of the second-moment accumulation: small enough that a block of sorted
/// MNIST rows touches under half of the pixels, large enough for an efficient product
/// (128 to 512 measured within 15% of each other).
const BLOCK_ROWS: usize = 256;

/// Rows of the first batch that set the per-column shift (a reference value only needs to
/// be near the mean, not equal to it).
const SHIFT_ROWS: usize = 2048;

/// Running first and second moments over batches of rows, accumulated in `f64`.
///
/// Each block of rows is shifted by a per-column reference `c` and its second moment
/// `(X - c)^T (X - c)` computed in `f32` by a lower-triangular GEMM over only the columns
/// that are non-zero somewhere in the block. Rows are first grouped so that a block holds
/// rows of similar support: ordered by the first and last column where they are non-zero,
/// or, for images ([`Moments::with_image_shape`]), by the bounding box of their non-zero
/// pixels. A block of 256 MNIST rows then touches 417 (by first/last) or 337 (by box) of
/// the 784 pixels instead of 549 in the data's own order, and the products do 42% or
/// 62% less work. The order only changes the rounding of the sums. The reference is the
/// column mean of the first batch's first rows where that mean exceeds three standard
/// deviations (where the uncentred sums would cancel and lose digits) and zero
/// elsewhere, which keeps sparse data sparse. The covariance is formed at the end as
/// `(S - n m m^T) / (n - 1)` with `S` and `m` of the shifted data.
#[derive(Debug, Clone)]
pub struct Moments {
    n: usize,
    /// `(height, width)` when rows are flattened images: rows are then ordered by the
    /// bounding box of their support instead of its first and last index.
    image: Option<(usize, usize)>,
    shift: Option<Array1<f32>>,
    sum: Array1<f64>,
    second: Array2<f64>,
}

impl Moments {
    /// Empty moments for rows of `dim` values.
    pub fn new(dim: usize) -> Self {
        Moments {
            n: 0,
            image: None,
            shift: None,
            sum: Array1::zeros(dim),
            second: Array2::zeros((dim, dim)),
        }
    }

    /// Declares rows to be flattened images of `height x width` pixels (channel-major, as
    /// NCHW flattens; `dim` a multiple of `height * width`). Only the order in which rows
    /// are grouped into blocks changes: by the bounding box of each image's support,
    /// which on MNIST makes a block of 256 rows touch 337 pixels instead of 417, and the
    /// products do 35% less work. Errors if `dim` is not a multiple of the image size.
    pub fn with_image_shape(mut self, height: usize, width: usize) -> Result<Self> {
        let d = self.sum.len();
        if height == 0 || width == 0 || d % (height * width) != 0 {
            return Err(Error::InvalidArgument(format!(
                "Moments: rows of {d} values are not images of {height} x {width} pixels"
            )));
        }
        self.image = Some((height, width));
        Ok(self)
    }

    /// Moments of all rows of `x` (a convenience for [`Moments::new`] + [`Moments::update`]).
    ///
    /// # Panics
    /// If `x` holds a non-finite value; use [`Moments::update`] to get an error instead.
    pub fn from_rows(x: ArrayView2<f32>) -> Self {
        let mut m = Moments::new(x.ncols());
        m.update(x).expect("finite input");
        m
    }

    /// Rows seen so far.
    pub fn count(&self) -> usize {
        self.n
    }

    /// The mean row.
    pub fn mean(&self) -> Array1<f64> {
        let d = self.sum.len();
        let shift = self.shift.clone().unwrap_or_else(|| Array1::zeros(d));
        &self.sum / self.n.max(1) as f64 + &shift.mapv(f64::from)
    }

    /// Adds a batch of rows `[b, dim]`.
    pub fn update(&mut self, batch: ArrayView2<f32>) -> Result<()> {
        use rayon::prelude::*;
        let (b, d) = batch.dim();
        if d != self.sum.len() {
            return Err(Error::shape(
                "Moments::update",
                format!("[batch, {}]", self.sum.len()),
                batch.shape(),
            ));
        }
        if b == 0 {
            return Ok(());
        }
        if u32::try_from(b).is_err() {
            return Err(Error::InvalidArgument(format!(
                "Moments::update: a batch of {b} rows; pass at most {} at a time",
                u32::MAX
            )));
        }
        let owned;
        let data = match batch.as_slice() {
            Some(s) => s,
            None => {
                owned = batch.as_standard_layout().into_owned();
                owned.as_slice().expect("standard layout")
            }
        };
        let shift = self
            .shift
            .get_or_insert_with(|| reference_shift(batch.slice(s![..b.min(SHIFT_ROWS), ..])))
            .clone();
        let shift = shift.as_slice().expect("contiguous shift");
        let supports = Supports::of(data, d, shift)?;
        let order = supports.order(self.image);
        // Part p takes blocks p, p + P, p + 2P, ...: neighbouring blocks have similar
        // supports, so interleaving balances the work. One accumulator per part.
        let blocks: Vec<&[u32]> = order.chunks(BLOCK_ROWS).collect();
        let parts = rayon::current_num_threads().clamp(1, blocks.len());
        let partials: Vec<(Array1<f64>, Array2<f64>)> = (0..parts)
            .into_par_iter()
            .map(|p| {
                let mut acc = BlockAccumulator::new(d);
                for rows in blocks.iter().skip(p).step_by(parts) {
                    acc.add(data, rows, shift, &supports);
                }
                (acc.sum, acc.second)
            })
            .collect();
        for (s, m) in partials {
            self.sum += &s;
            self.second += &m;
        }
        self.n += b;
        Ok(())
    }

    /// The unbiased covariance `(S - n m m^T) / (n - 1)`.
    pub fn covariance(&self) -> Result<Array2<f64>> {
        if self.n < 2 {
            return Err(Error::InvalidArgument(format!(
                "PCA needs at least 2 samples, got {}",
                self.n
            )));
        }
        let d = self.sum.len();
        let n = self.n as f64;
        let m = &self.sum / n;
        // `second` holds the upper triangle: form it row by row, then mirror it.
        let mut cov = Array2::<f64>::zeros((d, d));
        for (i, (mut out, s)) in cov.rows_mut().into_iter().zip(self.second.rows()).enumerate() {
            let (out, s, m) = (
                &mut out.as_slice_mut().expect("row")[i..],
                &s.as_slice().expect("row")[i..],
                &m.as_slice().expect("vector")[i..],
            );
            let mi = m[0];
            for ((o, &sv), &mj) in out.iter_mut().zip(s).zip(m) {
                *o = (sv - n * mi * mj) / (n - 1.0);
            }
        }
        for i in 0..d {
            for j in 0..i {
                cov[[i, j]] = cov[[j, i]];
            }
        }
        Ok(cov)
    }
}

/// The per-column shift: the column mean where it exceeds three standard deviations,
/// zero elsewhere.
fn reference_shift(batch: ArrayView2<f32>) -> Array1<f32> {
    let n = batch.nrows() as f64;
    let mut sum = Array1::<f64>::zeros(batch.ncols());
    let mut sq = Array1::<f64>::zeros(batch.ncols());
    for row in batch.rows() {
        for ((s, q), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(row) {
            *s += v as f64;
            *q += (v as f64) * (v as f64);
        }
    }
    Array1::from_shape_fn(batch.ncols(), |j| {
        let mean = sum[j] / n;
        let var = (sq[j] / n - mean * mean).max(0.0);
        if mean * mean > 9.0 * var {
            mean as f32
        } else {
            0.0
        }
    })
}

/// Where each row differs from the shift, as one bit per column.
struct Supports {
    d: usize,
    /// `words()` per row.
    bits: Vec<u64>,
}

impl Supports {
    /// The supports of the rows of `data` (`d` values each), in parallel; an error if a
    /// value is not finite.
    fn of(data: &[f32], d: usize, shift: &[f32]) -> Result<Self> {
        use rayon::prelude::*;
        let words = d.div_ceil(64);
        let mut bits = vec![0u64; data.len() / d * words];
        let finite = bits
            .par_chunks_mut(words)
            .zip(data.par_chunks(d))
            .map(|(out, row)| {
                let mut finite = true;
                for ((w, x), c) in out.iter_mut().zip(row.chunks(64)).zip(shift.chunks(64)) {
                    let mut m = 0u64;
                    for (b, (&v, &c)) in x.iter().zip(c).enumerate() {
                        m |= u64::from(v != c) << b;
                        finite &= v.is_finite();
                    }
                    *w = m;
                }
                finite
            })
            .reduce(|| true, |a, b| a && b);
        if !finite {
            return Err(Error::NonFinite("PCA input".into()));
        }
        Ok(Supports { d, bits })
    }

    /// 64-bit words per row.
    fn words(&self) -> usize {
        self.d.div_ceil(64)
    }

    fn row(&self, i: u32) -> &[u64] {
        let w = self.words();
        &self.bits[i as usize * w..][..w]
    }

    /// Row indices ordered by the first and last column of their support, or for images
    /// `(height, width)` by its bounding box (top, bottom, left, right). Ties keep their
    /// input order, so the order (and the rounding) is reproducible.
    fn order(&self, image: Option<(usize, usize)>) -> Vec<u32> {
        let n = self.bits.len() / self.words();
        let key = |i: u32| -> u64 {
            let bits = self.row(i);
            match image {
                None => {
                    let (first, last) = bit_span(bits, 0, self.d).unwrap_or((self.d, 0));
                    ((first as u64) << 32) | last as u64
                }
                Some((h, w)) => {
                    let (mut top, mut bottom, mut left, mut right) = (h, 0, w, 0);
                    // One image row of every channel at a time: its first and last bit.
                    for (r, start) in (0..self.d).step_by(w).enumerate() {
                        if let Some((lo, hi)) = bit_span(bits, start, w) {
                            let y = r % h;
                            top = top.min(y);
                            bottom = bottom.max(y);
                            left = left.min(lo);
                            right = right.max(hi);
                        }
                    }
                    let f = |v: usize| v as u64 & 0xffff;
                    (f(top) << 48) | (f(bottom) << 32) | (f(left) << 16) | f(right)
                }
            }
        };
        use rayon::prelude::*;
        let keys: Vec<u64> = (0..n as u32).into_par_iter().map(key).collect();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&i| keys[i as usize]);
        order
    }
}

fn bit(bits: &[u64], j: usize) -> bool {
    bits[j / 64] >> (j % 64) & 1 == 1
}

/// The first and last set bit among bits `start..start + len`, relative to `start`.
fn bit_span(bits: &[u64], start: usize, len: usize) -> Option<(usize, usize)> {
    if len <= 64 {
        // The common case (images at most 64 pixels wide): the span fits in one shifted
        // word, read from at most two.
        let (w, off) = (start / 64, start % 64);
        let mut m = bits[w] >> off;
        if off + len > 64 {
            m |= bits[w + 1] << (64 - off);
        }
        if len < 64 {
            m &= (1u64 << len) - 1;
        }
        return (m != 0).then(|| (m.trailing_zeros() as usize, 63 - m.leading_zeros() as usize));
    }
    let end = start + len;
    // Word `w` masked to the bits of `start..end`.
    let word = |w: usize| {
        let (lo, hi) = ((w * 64).max(start), ((w + 1) * 64).min(end));
        let width = hi - lo;
        let mask = if width == 64 {
            u64::MAX
        } else {
            ((1u64 << width) - 1) << (lo % 64)
        };
        bits[w] & mask
    };
    let words = start / 64..end.div_ceil(64);
    let first = words.clone().find_map(|w| {
        let m = word(w);
        (m != 0).then(|| 64 * w + m.trailing_zeros() as usize)
    })?;
    let last = words
        .rev()
        .find_map(|w| {
            let m = word(w);
            (m != 0).then(|| 64 * w + 63 - m.leading_zeros() as usize)
        })
        .expect("a set bit was found");
    Some((first - start, last - start))
}

/// One thread's sums and upper-triangular second moment, with the scratch a block needs.
struct BlockAccumulator {
    d: usize,
    sum: Array1<f64>,
    second: Array2<f64>,
    /// The block's shifted active columns, row-major `[rows, active]`.
    xs: Vec<f32>,
    /// The block's product; only its leading `active x active` corner is used.
    g: faer::Mat<f32>,
}

/// A run of consecutive active columns: its first position among the active columns, its
/// first column, its length.
#[derive(Clone, Copy)]
struct Run {
    at: usize,
    col: usize,
    len: usize,
}

impl BlockAccumulator {
    fn new(d: usize) -> Self {
        BlockAccumulator {
            d,
            sum: Array1::zeros(d),
            second: Array2::zeros((d, d)),
            xs: Vec::with_capacity(BLOCK_ROWS * d),
            g: faer::Mat::zeros(d, d),
        }
    }

    /// Adds the shifted column sums and second moment of the rows `rows` of `data`.
    fn add(&mut self, data: &[f32], rows: &[u32], shift: &[f32], supports: &Supports) {
        let d = self.d;
        let row = |i: u32| &data[i as usize * d..(i as usize + 1) * d];
        let mut active = vec![0u64; supports.words()];
        for &i in rows {
            for (a, &b) in active.iter_mut().zip(supports.row(i)) {
                *a |= b;
            }
        }
        let runs = active_runs(&active, d);
        let a = runs.last().map_or(0, |r| r.at + r.len);
        if a == 0 {
            return;
        }
        self.xs.clear();
        self.xs.resize(rows.len() * a, 0.0);
        let mut col_sum = vec![0f64; a];
        for (out, &i) in self.xs.chunks_exact_mut(a).zip(rows) {
            let x = row(i);
            for r in &runs {
                let (o, v, c) = (
                    &mut out[r.at..r.at + r.len],
                    &x[r.col..r.col + r.len],
                    &shift[r.col..r.col + r.len],
                );
                for ((o, &v), &c) in o.iter_mut().zip(v).zip(c) {
                    *o = v - c;
                }
            }
            for (s, &o) in col_sum.iter_mut().zip(out.iter()) {
                *s += o as f64;
            }
        }
        for r in &runs {
            for (t, &s) in self
                .sum
                .slice_mut(s![r.col..r.col + r.len])
                .iter_mut()
                .zip(&col_sum[r.at..])
            {
                *t += s;
            }
        }
        let x = faer::MatRef::from_row_major_slice(&self.xs, rows.len(), a);
        faer::linalg::matmul::triangular::matmul(
            self.g.as_mut().submatrix_mut(0, 0, a, a),
            faer::linalg::matmul::triangular::BlockStructure::TriangularLower,
            faer::Accum::Replace,
            x.transpose(),
            faer::linalg::matmul::triangular::BlockStructure::Rectangular,
            x,
            faer::linalg::matmul::triangular::BlockStructure::Rectangular,
            1.0f32,
            faer::Par::Seq,
        );
        let g = self.g.as_ref().submatrix(0, 0, a, a);
        let second = self.second.as_slice_mut().expect("contiguous accumulator");
        // g's lower triangle, column q, is the upper triangle of the row of active column
        // q: add it run by run, along the rows of the f64 accumulator.
        for (qr, rq) in runs.iter().enumerate() {
            for q in rq.at..rq.at + rq.len {
                let gcol = g
                    .col(q)
                    .try_as_col_major()
                    .expect("faer columns are contiguous")
                    .as_slice();
                let target = &mut second[(rq.col + q - rq.at) * d..][..d];
                for r in &runs[qr..] {
                    let from = r.at.max(q);
                    let len = r.at + r.len - from;
                    let col = r.col + from - r.at;
                    for (t, &v) in target[col..col + len].iter_mut().zip(&gcol[from..from + len]) {
                        *t += v as f64;
                    }
                }
            }
        }
    }
}

/// The maximal runs of set bits among the first `d` of `active`, numbered consecutively.
fn active_runs(active: &[u64], d: usize) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut at = 0;
    for j in 0..d {
        if !bit(active, j) {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.col + r.len == j => r.len += 1,
            _ => runs.push(Run { at, col: j, len: 1 }),
        }
        at += 1;
    }
    runs
}

/// PCA's settings before fitting: the number of components and the solver.
#[derive(Debug, Clone, Copy)]
pub struct PcaParams {
    k: usize,
    solver: Solver,
    image: Option<(usize, usize)>,
}

impl PcaParams {
    /// Chooses the solver (default [`Solver::Eigh`]).
    pub fn solver(mut self, solver: Solver) -> Self {
        self.solver = solver;
        self
    }

    /// Declares the rows to be flattened `height x width` images, which makes the moments
    /// faster on sparse images and changes nothing else (see [`Moments::with_image_shape`]).
    pub fn image_shape(mut self, height: usize, width: usize) -> Self {
        self.image = Some((height, width));
        self
    }

    /// Fits on all rows of `x` `[n, dim]` at once.
    pub fn fit(&self, x: ArrayView2<f32>) -> Result<Pca> {
        self.fit_batches(std::iter::once(x))
    }

    /// Fits on rows streamed in batches (all of the same width).
    pub fn fit_batches<'a>(&self, batches: impl IntoIterator<Item = ArrayView2<'a, f32>>) -> Result<Pca> {
        let mut moments: Option<Moments> = None;
        for b in batches {
            let m = match &mut moments {
                Some(m) => m,
                None => {
                    let mut m = Moments::new(b.ncols());
                    if let Some((h, w)) = self.image {
                        m = m.with_image_shape(h, w)?;
                    }
                    moments.insert(m)
                }
            };
            m.update(b)?;
        }
        let moments = moments.ok_or_else(|| Error::InvalidArgument("PCA: no data".into()))?;
        self.fit_moments(&moments)
    }

    /// Fits from accumulated [`Moments`].
    pub fn fit_moments(&self, moments: &Moments) -> Result<Pca> {
        let d = moments.sum.len();
        if self.k == 0 || self.k > d {
            return Err(Error::InvalidArgument(format!(
                "PCA: k = {} must be between 1 and the data dimension {d}",
                self.k
            )));
        }
        let cov = moments.covariance()?;
        let total_variance = cov.diag().sum();
        let (spectrum, vectors) = match self.solver {
            Solver::Eigh => eigh_descending(&cov)?,
            Solver::Randomized {
                oversample,
                power_iters,
                seed,
            } => randomized_top(&cov, self.k, oversample, power_iters, seed)?,
        };
        let mut components = vectors.slice(s![.., ..self.k]).to_owned();
        fix_signs(&mut components);
        Ok(Pca {
            mean: moments.mean(),
            explained_variance: spectrum.slice(s![..self.k]).mapv(|v| v.max(0.0)),
            spectrum: spectrum.mapv(|v| v.max(0.0)),
            components,
            total_variance,
            n_samples: moments.n,
        })
    }
}

/// A fitted PCA: mean, orthonormal components (columns, by decreasing variance) and the
/// covariance spectrum.
#[derive(Debug, Clone)]
pub struct Pca {
    mean: Array1<f64>,
    components: Array2<f64>,
    explained_variance: Array1<f64>,
    spectrum: Array1<f64>,
    total_variance: f64,
    n_samples: usize,
}

impl Pca {
    /// Settings for a `k`-component PCA (linfa's `params -> fit -> model`).
    pub fn params(k: usize) -> PcaParams {
        PcaParams {
            k,
            solver: Solver::Eigh,
            image: None,
        }
    }

    /// Number of components.
    pub fn k(&self) -> usize {
        self.components.ncols()
    }

    /// The mean row.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// Components as columns `[dim, k]`, orthonormal, by decreasing variance; each one's
    /// largest-magnitude entry is positive (a fixed sign, so that solvers agree).
    pub fn components(&self) -> &Array2<f64> {
        &self.components
    }

    /// Variance along each component (the top-k covariance eigenvalues).
    pub fn explained_variance(&self) -> &Array1<f64> {
        &self.explained_variance
    }

    /// Fraction of the total variance along each component.
    pub fn explained_variance_ratio(&self) -> Array1<f64> {
        &self.explained_variance / self.total_variance
    }

    /// Every eigenvalue the solver found, descending (all `dim` of them with
    /// [`Solver::Eigh`], `k + oversample` with [`Solver::Randomized`]).
    pub fn spectrum(&self) -> &Array1<f64> {
        &self.spectrum
    }

    /// Trace of the covariance.
    pub fn total_variance(&self) -> f64 {
        self.total_variance
    }

    /// Rows the model was fitted on.
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    fn check(&self, x: &ArrayView2<f32>, what: &str) -> Result<()> {
        if x.ncols() != self.mean.len() {
            return Err(Error::shape(
                format!("Pca::{what}"),
                format!("[n, {}]", self.mean.len()),
                x.shape(),
            ));
        }
        Ok(())
    }

    fn check_codes(&self, h: &ArrayView2<f32>, what: &str) -> Result<()> {
        if h.ncols() != self.k() {
            return Err(Error::shape(
                format!("Pca::{what}"),
                format!("[n, {}]", self.k()),
                h.shape(),
            ));
        }
        Ok(())
    }

    fn project(&self, x: ArrayView2<f32>, w: &Array2<f64>) -> Array2<f32> {
        let mean = self.mean.mapv(|v| v as f32);
        let xc = &x - &mean;
        let w = w.mapv(|v| v as f32);
        let mut h = Array2::zeros((x.nrows(), w.ncols()));
        gemm_par(1.0, xc.view(), w.view(), 0.0, h.view_mut());
        h
    }

    fn lift(&self, h: ArrayView2<f32>, w: &Array2<f64>) -> Array2<f32> {
        let w = w.mapv(|v| v as f32);
        let mut x = Array2::zeros((h.nrows(), w.nrows()));
        gemm_par(1.0, h, w.t(), 0.0, x.view_mut());
        x + &self.mean.mapv(|v| v as f32)
    }

    /// Coordinates along the components: `(x - mean) V`.
    pub fn transform(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.check(&x, "transform")?;
        Ok(self.project(x, &self.components))
    }

    /// Back to data space: `h V^T + mean`.
    pub fn inverse_transform(&self, h: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.check_codes(&h, "inverse_transform")?;
        Ok(self.lift(h, &self.components))
    }

    /// The notebook's whitened encoder weights `V / sqrt(s)` `[dim, k]`: codes with unit
    /// variance on the training data.
    pub fn w_encode(&self) -> Array2<f64> {
        &self.components / &self.explained_variance.mapv(f64::sqrt)
    }

    /// The notebook's decoder weights `U sqrt(s)` `[dim, k]` (U = V for a covariance).
    pub fn w_decode(&self) -> Array2<f64> {
        &self.components * &self.explained_variance.mapv(f64::sqrt)
    }

    /// Whitened codes `(x - mean) W_encode`.
    pub fn encode(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.check(&x, "encode")?;
        if self.explained_variance.iter().any(|&v| v <= 0.0) {
            return Err(Error::Numerical(
                "PCA: a component has zero variance, whitening is undefined".into(),
            ));
        }
        Ok(self.project(x, &self.w_encode()))
    }

    /// From whitened codes back to data space: `h W_decode^T + mean`.
    pub fn decode(&self, h: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.check_codes(&h, "decode")?;
        Ok(self.lift(h, &self.w_decode()))
    }

    /// Projection onto the top-k subspace and back.
    pub fn reconstruct(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let h = self.transform(x)?;
        self.inverse_transform(h.view())
    }
}

/// Eigenvalues in descending order and the matching eigenvectors as columns, from the
/// crate's default eigensolver (faer, or LAPACK with the `lapack` feature).
pub fn eigh_descending(a: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    #[cfg(feature = "lapack")]
    return eigh_descending_lapack(a);
    #[cfg(not(feature = "lapack"))]
    return eigh_descending_faer(a);
}

/// [`eigh_descending`] by faer's self-adjoint eigensolver (pure Rust).
pub fn eigh_descending_faer(a: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    check_square_finite(a)?;
    let n = a.nrows();
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| a[[i, j]]);
    let evd = m
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| Error::Numerical(format!("eigendecomposition did not converge: {e:?}")))?;
    let s = evd.S().column_vector();
    let u = evd.U();
    // faer returns ascending order: reverse.
    Ok((
        Array1::from_shape_fn(n, |i| s[n - 1 - i]),
        Array2::from_shape_fn((n, n), |(i, j)| u[(i, n - 1 - j)]),
    ))
}

/// [`eigh_descending`] by LAPACK (`dsyevd` through ndarray-linalg and OpenBLAS).
#[cfg(feature = "lapack")]
pub fn eigh_descending_lapack(a: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    use ndarray_linalg::{Eigh, UPLO};
    check_square_finite(a)?;
    let (vals, vecs) = a
        .eigh(UPLO::Lower)
        .map_err(|e| Error::Numerical(format!("LAPACK eigendecomposition failed: {e}")))?;
    let order: Vec<usize> = (0..vals.len()).rev().collect();
    Ok((vals.select(Axis(0), &order), vecs.select(Axis(1), &order)))
}

fn check_square_finite(a: &Array2<f64>) -> Result<()> {
    if a.nrows() != a.ncols() {
        return Err(Error::shape("eigendecomposition", "a square matrix", a.shape()));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("matrix passed to the eigensolver".into()));
    }
    Ok(())
}

/// Randomized top-k eigenpairs of a symmetric positive semi-definite matrix.
fn randomized_top(
    a: &Array2<f64>,
    k: usize,
    oversample: usize,
    power_iters: usize,
    seed: u64,
) -> Result<(Array1<f64>, Array2<f64>)> {
    let n = a.nrows();
    let q = (k + oversample).min(n);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut y = Array2::from_shape_simple_fn((n, q), || f64::sample_normal(&mut rng));
    let mut basis = orthonormalise(&y);
    for _ in 0..power_iters {
        gemm_par(1.0, a.view(), basis.view(), 0.0, y.view_mut());
        basis = orthonormalise(&y);
    }
    // Rayleigh-Ritz: eigenpairs of B = Q^T A Q, lifted back by Q.
    let mut aq = Array2::zeros((n, q));
    gemm_par(1.0, a.view(), basis.view(), 0.0, aq.view_mut());
    let mut b = Array2::zeros((q, q));
    gemm(1.0, basis.t(), aq.view(), 0.0, b.view_mut());
    let b = (&b + &b.t()) * 0.5;
    let (vals, small) = eigh_descending(&b)?;
    let mut vecs = Array2::zeros((n, q));
    gemm(1.0, basis.view(), small.view(), 0.0, vecs.view_mut());
    Ok((vals, vecs))
}

/// An orthonormal basis of the columns of `y` (thin Householder QR), on the calling
/// thread: faer's `Mat::qr` forks onto the thread pool, which on these thin matrices
/// (784 x 40) costs twice the factorisation itself.
fn orthonormalise(y: &Array2<f64>) -> Array2<f64> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::{householder, qr::no_pivoting::factor};
    let (n, q) = y.dim();
    let size = n.min(q);
    let mut qr = faer::Mat::<f64>::from_fn(n, q, |i, j| y[[i, j]]);
    let block = factor::recommended_block_size::<f64>(n, q);
    let mut coeff = faer::Mat::<f64>::zeros(block, size);
    let par = faer::Par::Seq;
    factor::qr_in_place(
        qr.as_mut(),
        coeff.as_mut(),
        par,
        MemStack::new(&mut MemBuffer::new(factor::qr_in_place_scratch::<f64>(
            n,
            q,
            block,
            par,
            Default::default(),
        ))),
        Default::default(),
    );
    // The Householder basis: the unit lower trapezoid of the factored matrix.
    for j in 0..q {
        for i in 0..j.min(n) {
            qr[(i, j)] = 0.0;
        }
        if j < n {
            qr[(j, j)] = 1.0;
        }
    }
    let mut thin = faer::Mat::<f64>::identity(n, size);
    householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
        qr.as_ref().subcols(0, size),
        coeff.as_ref(),
        faer::Conj::No,
        thin.as_mut(),
        par,
        MemStack::new(&mut MemBuffer::new(
            householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(n, block, size),
        )),
    );
    Array2::from_shape_fn((n, size), |(i, j)| thin[(i, j)])
}

/// Makes each column's largest-magnitude entry positive.
fn fix_signs(v: &mut Array2<f64>) {
    for mut col in v.axis_iter_mut(Axis(1)) {
        let big = col
            .iter()
            .copied()
            .fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if big < 0.0 {
            col.mapv_inplace(|x| -x);
        }
    }
}

/// Principal angles (radians, ascending) between the column spaces of `a` and `b`
/// (`[dim, ka]`, `[dim, kb]`): the arccosines of the singular values of `Qa^T Qb`.
pub fn principal_angles(a: &Array2<f64>, b: &Array2<f64>) -> Result<Array1<f64>> {
    if a.nrows() != b.nrows() {
        return Err(Error::shape(
            "principal_angles b",
            format!("[{}, k]", a.nrows()),
            b.shape(),
        ));
    }
    let (qa, qb) = (orthonormalise(a), orthonormalise(b));
    let mut m = Array2::zeros((qa.ncols(), qb.ncols()));
    gemm(1.0, qa.t(), qb.view(), 0.0, m.view_mut());
    let fm = faer::Mat::<f64>::from_fn(m.nrows(), m.ncols(), |i, j| m[[i, j]]);
    let svd = fm
        .thin_svd()
        .map_err(|e| Error::Numerical(format!("SVD did not converge: {e:?}")))?;
    let s = svd.S().column_vector();
    let mut angles: Vec<f64> = (0..s.nrows()).map(|i| s[i].clamp(-1.0, 1.0).acos()).collect();
    angles.sort_by(f64::total_cmp);
    Ok(Array1::from(angles))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bit_span` against a direct search, for spans inside one word, across words and
    /// longer than a word.
    #[test]
    fn bit_span_finds_the_first_and_last_set_bit() {
        let d: usize = 300;
        let mut bits = vec![0u64; d.div_ceil(64)];
        for j in [3, 63, 64, 130, 191, 192, 255, 299] {
            bits[j / 64] |= 1 << (j % 64);
        }
        for start in 0..d {
            for len in 1..=(d - start).min(140) {
                let set: Vec<usize> = (start..start + len).filter(|&j| bit(&bits, j)).collect();
                let want = set.first().map(|&f| (f - start, set.last().unwrap() - start));
                assert_eq!(bit_span(&bits, start, len), want, "start {start}, len {len}");
            }
        }
    }

    /// Rows come out ordered by (first, last) non-zero column, or by the bounding box of
    /// their non-zero pixels, ties in input order.
    #[test]
    fn rows_are_ordered_by_their_support() {
        // Four 2 x 3 images (d = 6): pixel (y, x) is column 3y + x.
        let rows: [&[usize]; 4] = [&[4, 5], &[0, 5], &[1], &[2, 3]];
        let mut data = vec![0f32; rows.len() * 6];
        for (i, cols) in rows.iter().enumerate() {
            for &j in cols.iter() {
                data[i * 6 + j] = 1.0;
            }
        }
        let s = Supports::of(&data, 6, &[0.0; 6]).unwrap();
        // (first, last): row 1 (0, 5), row 2 (1, 1), row 3 (2, 3), row 0 (4, 5).
        assert_eq!(s.order(None), vec![1, 2, 3, 0]);
        // Boxes (top, bottom, left, right): row 0 (1, 1, 1, 2), row 1 (0, 1, 0, 2),
        // row 2 (0, 0, 1, 1), row 3 (0, 1, 0, 2).
        assert_eq!(s.order(Some((2, 3))), vec![2, 1, 3, 0]);
    }
}
