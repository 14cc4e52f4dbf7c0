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

/// Rows per block of the second-moment accumulation: small enough that a block of MNIST
/// touches ~2/3 of the pixels, large enough for an efficient matrix product.
const BLOCK_ROWS: usize = 256;

/// Running first and second moments over batches of rows, accumulated in `f64`.
///
/// Each block of rows is shifted by a per-column reference `c` and its second moment
/// `(X - c)^T (X - c)` computed in `f32` by a lower-triangular GEMM over only the columns
/// that are non-zero somewhere in the block (on MNIST a third of the pixels of a block are
/// zero throughout, so this does less than half the work of a dense product). The
/// reference is the first batch's column mean where that mean exceeds three standard
/// deviations (where the uncentred sums would cancel and lose digits) and zero elsewhere,
/// which keeps sparse data sparse. The covariance is formed at the end as
/// `(S - n m m^T) / (n - 1)` with `S` and `m` of the shifted data.
#[derive(Debug, Clone)]
pub struct Moments {
    n: usize,
    shift: Option<Array1<f32>>,
    sum: Array1<f64>,
    second: Array2<f64>,
}

impl Moments {
    /// Empty moments for rows of `dim` values.
    pub fn new(dim: usize) -> Self {
        Moments {
            n: 0,
            shift: None,
            sum: Array1::zeros(dim),
            second: Array2::zeros((dim, dim)),
        }
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
        let shift = self.shift.get_or_insert_with(|| reference_shift(batch)).clone();
        // One accumulator per thread, each over a contiguous run of blocks.
        use rayon::prelude::*;
        let parts = rayon::current_num_threads().max(1);
        let per_part = b.div_ceil(parts).next_multiple_of(BLOCK_ROWS);
        let partials: Vec<Result<(Array1<f64>, Array2<f64>)>> = batch
            .axis_chunks_iter(Axis(0), per_part)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|rows| {
                let mut sum = Array1::<f64>::zeros(d);
                let mut second = Array2::<f64>::zeros((d, d));
                for block in rows.axis_chunks_iter(Axis(0), BLOCK_ROWS) {
                    accumulate_block(block, &shift, &mut sum, &mut second)?;
                }
                Ok((sum, second))
            })
            .collect();
        let mut sum = Array1::<f64>::zeros(d);
        let mut second = Array2::<f64>::zeros((d, d));
        for part in partials {
            let (s, m) = part?;
            sum += &s;
            second += &m;
        }
        self.sum += &sum;
        self.second += &second;
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
        // `second` holds the upper triangle: mirror it while forming the covariance.
        let cov = Array2::from_shape_fn((d, d), |(i, j)| {
            let (i, j) = if i <= j { (i, j) } else { (j, i) };
            (self.second[[i, j]] - n * m[i] * m[j]) / (n - 1.0)
        });
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

/// Adds one block's shifted column sums and upper-triangular second moment.
fn accumulate_block(
    block: ArrayView2<f32>,
    shift: &Array1<f32>,
    sum: &mut Array1<f64>,
    second: &mut Array2<f64>,
) -> Result<()> {
    let (rows, d) = block.dim();
    let owned;
    let data = match block.as_slice() {
        Some(s) => s,
        None => {
            owned = block.as_standard_layout().into_owned();
            owned.as_slice().expect("standard layout")
        }
    };
    let shift = shift.as_slice().expect("contiguous shift");
    let mut active = vec![false; d];
    let mut finite = true;
    for row in data.chunks_exact(d) {
        for ((a, &v), &c) in active.iter_mut().zip(row).zip(shift) {
            *a |= v != c;
            finite &= v.is_finite();
        }
    }
    if !finite {
        return Err(Error::NonFinite("PCA input".into()));
    }
    let cols: Vec<usize> = (0..d).filter(|&j| active[j]).collect();
    let a = cols.len();
    if a == 0 {
        return Ok(());
    }
    let mut xs = vec![0f32; rows * a];
    let mut col_sum = vec![0f64; a];
    for (out, row) in xs.chunks_exact_mut(a).zip(data.chunks_exact(d)) {
        for ((o, &j), s) in out.iter_mut().zip(&cols).zip(col_sum.iter_mut()) {
            *o = row[j] - shift[j];
            *s += *o as f64;
        }
    }
    for (&j, s) in cols.iter().zip(&col_sum) {
        sum[j] += s;
    }
    let x = faer::MatRef::from_row_major_slice(&xs, rows, a);
    let mut g = faer::Mat::<f32>::zeros(a, a);
    faer::linalg::matmul::triangular::matmul(
        g.as_mut(),
        faer::linalg::matmul::triangular::BlockStructure::TriangularLower,
        faer::Accum::Replace,
        x.transpose(),
        faer::linalg::matmul::triangular::BlockStructure::Rectangular,
        x,
        faer::linalg::matmul::triangular::BlockStructure::Rectangular,
        1.0f32,
        faer::Par::Seq,
    );
    let second = second.as_slice_mut().expect("contiguous accumulator");
    // g's lower triangle, column q, is the upper triangle of row cols[q]: add it row-wise
    // so that the f64 accumulator is walked along its rows, not down its columns.
    for q in 0..a {
        let col = g
            .col(q)
            .try_as_col_major()
            .expect("faer columns are contiguous")
            .as_slice();
        let row = &mut second[cols[q] * d..(cols[q] + 1) * d];
        for (&gp, &j) in col[q..].iter().zip(&cols[q..]) {
            row[j] += gp as f64;
        }
    }
    Ok(())
}

/// PCA's settings before fitting: the number of components and the solver.
#[derive(Debug, Clone, Copy)]
pub struct PcaParams {
    k: usize,
    solver: Solver,
}

impl PcaParams {
    /// Chooses the solver (default [`Solver::Eigh`]).
    pub fn solver(mut self, solver: Solver) -> Self {
        self.solver = solver;
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
            moments.get_or_insert_with(|| Moments::new(b.ncols())).update(b)?;
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

/// An orthonormal basis of the columns of `y` (thin QR).
fn orthonormalise(y: &Array2<f64>) -> Array2<f64> {
    let (n, q) = y.dim();
    let m = faer::Mat::<f64>::from_fn(n, q, |i, j| y[[i, j]]);
    let qm = m.qr().compute_thin_Q();
    Array2::from_shape_fn((n, q), |(i, j)| qm[(i, j)])
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
