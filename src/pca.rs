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

/// Running mean and centred scatter matrix over batches of rows, merged exactly
/// (Chan, Golub and LeVeque's pairwise update), so that any batching gives the same
/// moments as one pass over all rows.
#[derive(Debug, Clone)]
pub struct Moments {
    n: usize,
    mean: Array1<f64>,
    scatter: Array2<f64>,
}

impl Moments {
    /// Empty moments for rows of `dim` values.
    pub fn new(dim: usize) -> Self {
        Moments {
            n: 0,
            mean: Array1::zeros(dim),
            scatter: Array2::zeros((dim, dim)),
        }
    }

    /// Rows seen so far.
    pub fn count(&self) -> usize {
        self.n
    }

    /// The mean row.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// Adds a batch of rows `[b, dim]`.
    ///
    /// The batch is centred on its own mean in `f32` and its scatter `Xc^T Xc` computed by
    /// one parallel GEMM over the upper-triangular blocks only; columns that are zero
    /// throughout the batch (MNIST's border) are dropped before the product.
    pub fn update(&mut self, batch: ArrayView2<f32>) -> Result<()> {
        let (b, d) = batch.dim();
        if d != self.mean.len() {
            return Err(Error::shape("Moments::update", format!("[batch, {}]", self.mean.len()), batch.shape()));
        }
        if b == 0 {
            return Ok(());
        }
        if batch.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite("PCA input".into()));
        }
        let bmean: Array1<f64> = batch.map(|&v| v as f64).sum_axis(Axis(0)) / b as f64;
        let active: Vec<usize> = (0..d).filter(|&j| batch.column(j).iter().any(|&v| v != 0.0)).collect();
        let mut xc = Array2::<f32>::zeros((b, active.len()));
        for (mut out, row) in xc.axis_iter_mut(Axis(0)).zip(batch.axis_iter(Axis(0))) {
            for (o, &j) in out.iter_mut().zip(&active) {
                *o = row[j] - bmean[j] as f32;
            }
        }
        let sb = symmetric_gram(xc.view());
        // Pairwise merge: S = Sa + Sb + (na nb / n) delta delta^T, mean += delta nb / n.
        let (na, nb) = (self.n as f64, b as f64);
        let n = na + nb;
        let delta = &bmean - &self.mean;
        let w = na * nb / n;
        for i in 0..d {
            let di = delta[i] * w;
            if di != 0.0 {
                let mut row = self.scatter.row_mut(i);
                row.scaled_add(di, &delta);
            }
        }
        for (ai, &i) in active.iter().enumerate() {
            for (aj, &j) in active.iter().enumerate() {
                self.scatter[[i, j]] += sb[[ai, aj]] as f64;
            }
        }
        self.mean.scaled_add(nb / n, &delta);
        self.n += b;
        Ok(())
    }

    /// The unbiased covariance `S / (n - 1)`.
    pub fn covariance(&self) -> Result<Array2<f64>> {
        if self.n < 2 {
            return Err(Error::InvalidArgument(format!(
                "PCA needs at least 2 samples, got {}",
                self.n
            )));
        }
        Ok(&self.scatter / (self.n - 1) as f64)
    }
}

/// `X^T X` for `X` `[n, d]`, computing only the blocks on and above the diagonal, in
/// parallel, and mirroring the rest.
fn symmetric_gram(x: ArrayView2<f32>) -> Array2<f32> {
    let d = x.ncols();
    let mut g = Array2::<f32>::zeros((d, d));
    if d == 0 {
        return g;
    }
    let block = d.div_ceil(8).next_multiple_of(8).max(8);
    let edges: Vec<usize> = (0..d).step_by(block).chain([d]).collect();
    let pairs: Vec<(usize, usize)> = (0..edges.len() - 1)
        .flat_map(|i| (i..edges.len() - 1).map(move |j| (i, j)))
        .collect();
    use rayon::prelude::*;
    let blocks: Vec<((usize, usize), Array2<f32>)> = pairs
        .par_iter()
        .map(|&(i, j)| {
            let (r0, r1, c0, c1) = (edges[i], edges[i + 1], edges[j], edges[j + 1]);
            let mut out = Array2::zeros((r1 - r0, c1 - c0));
            gemm(1.0, x.slice(s![.., r0..r1]).t(), x.slice(s![.., c0..c1]), 0.0, out.view_mut());
            ((r0, c0), out)
        })
        .collect();
    for ((r0, c0), out) in blocks {
        let (h, w) = out.dim();
        g.slice_mut(s![r0..r0 + h, c0..c0 + w]).assign(&out);
        if r0 != c0 {
            g.slice_mut(s![c0..c0 + w, r0..r0 + h]).assign(&out.t());
        }
    }
    g
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
        let d = moments.mean.len();
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
            mean: moments.mean.clone(),
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
        PcaParams { k, solver: Solver::Eigh }
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
            return Err(Error::shape(format!("Pca::{what}"), format!("[n, {}]", self.mean.len()), x.shape()));
        }
        Ok(())
    }

    fn check_codes(&self, h: &ArrayView2<f32>, what: &str) -> Result<()> {
        if h.ncols() != self.k() {
            return Err(Error::shape(format!("Pca::{what}"), format!("[n, {}]", self.k()), h.shape()));
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
            return Err(Error::Numerical("PCA: a component has zero variance, whitening is undefined".into()));
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
fn randomized_top(a: &Array2<f64>, k: usize, oversample: usize, power_iters: usize, seed: u64) -> Result<(Array1<f64>, Array2<f64>)> {
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
        let big = col.iter().copied().fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if big < 0.0 {
            col.mapv_inplace(|x| -x);
        }
    }
}

/// Principal angles (radians, ascending) between the column spaces of `a` and `b`
/// (`[dim, ka]`, `[dim, kb]`): the arccosines of the singular values of `Qa^T Qb`.
pub fn principal_angles(a: &Array2<f64>, b: &Array2<f64>) -> Result<Array1<f64>> {
    if a.nrows() != b.nrows() {
        return Err(Error::shape("principal_angles b", format!("[{}, k]", a.nrows()), b.shape()));
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
