//! PCA invariants over random shapes, agreement between solvers and backends, and the
//! MNIST figures the notebooks report.

use latent::data::{Dataset, DatasetKind, Split};
use latent::pca::{eigh_descending_faer, principal_angles, Moments, Pca, Solver};
use ndarray::{s, Array2, Axis};
use rand::{Rng, SeedableRng};

/// Correlated data: `n x d` with a decaying spectrum, as f32 in roughly [-3, 3].
fn data(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mix = Array2::from_shape_fn((d, d), |(i, _)| rng.random_range(-1.0..1.0) / (1.0 + i as f64));
    let z = Array2::from_shape_fn((n, d), |_| rng.random_range(-1.0..1.0f64));
    (z.dot(&mix) + 0.5).mapv(|v| v as f32)
}

fn max_abs(a: &Array2<f64>) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[test]
fn components_are_orthonormal_and_reconstruction_error_is_the_discarded_variance() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for case in 0..12 {
        let d = rng.random_range(2..40);
        let n = rng.random_range(d + 2..200);
        let k = rng.random_range(1..=d);
        let x = data(n, d, case);
        let pca = Pca::params(k).fit(x.view()).unwrap();
        let v = pca.components();
        let gram = v.t().dot(v) - Array2::<f64>::eye(k);
        assert!(
            max_abs(&gram) < 1e-10,
            "case {case} ({n}x{d}, k={k}): V^T V - I = {:.1e}",
            max_abs(&gram)
        );
        let ev = pca.explained_variance();
        assert!(ev.windows(2).into_iter().all(|w| w[0] >= w[1]), "descending");
        // Mean squared residual per row = (n-1)/n * sum of the discarded eigenvalues.
        let recon = pca.reconstruct(x.view()).unwrap();
        let err: f64 = (&recon - &x).mapv(|v| (v as f64).powi(2)).sum() / n as f64;
        let discarded: f64 = pca.spectrum().slice(s![k..]).sum() * (n - 1) as f64 / n as f64;
        let scale = pca.total_variance();
        assert!(
            (err - discarded).abs() < 1e-5 * scale,
            "case {case} ({n}x{d}, k={k}): residual {err} vs discarded {discarded}"
        );
    }
}

#[test]
fn batching_does_not_change_the_moments() {
    let x = data(257, 9, 3);
    let whole = Pca::params(4).fit(x.view()).unwrap();
    let batches: Vec<_> = x.axis_chunks_iter(Axis(0), 31).collect();
    let streamed = Pca::params(4).fit_batches(batches).unwrap();
    // The data are f32 (one ulp at 0.5 is 6e-8) and each run shifts columns by a reference
    // taken from its own first batch, so the means agree to f32 rounding of the input.
    let dm = (whole.mean() - streamed.mean())
        .mapv(f64::abs)
        .fold(0.0, |a: f64, &b| a.max(b));
    assert!(dm < 1e-8, "means differ by {dm}");
    let dv = max_abs(&(whole.components() - streamed.components()));
    assert!(dv < 1e-5, "components differ by {dv}");
    let mut m = Moments::new(9);
    m.update(x.view()).unwrap();
    assert_eq!(m.count(), 257);
}

/// Ordering rows by the bounding box of their support (images) instead of its first and
/// last index changes only the rounding; a shape that does not divide the rows is refused.
#[test]
fn image_ordering_changes_only_the_rounding() {
    // Sparse images with two channels, random pixels switched on in random boxes; one
    // shape narrower and one wider than a 64-bit word of the support masks.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for (h, w) in [(6usize, 5usize), (3, 70)] {
        let d = 2 * h * w;
        let mut x = Array2::<f32>::zeros((700, d));
        for mut row in x.rows_mut() {
            let (top, left) = (rng.random_range(0..h - 2), rng.random_range(0..w - 2));
            for j in 0..d {
                let (y, c) = ((j / w) % h, j % w);
                if y >= top && y < top + 3 && c >= left && c < left + 3 && rng.random_bool(0.7) {
                    row[j] = rng.random_range(0.1..1.0);
                }
            }
        }
        let plain = Moments::from_rows(x.view());
        let mut image = Moments::new(d).with_image_shape(h, w).unwrap();
        image.update(x.view()).unwrap();
        let (a, b) = (plain.covariance().unwrap(), image.covariance().unwrap());
        let rel = max_abs(&(&a - &b)) / max_abs(&a);
        assert!(rel < 1e-6, "{h}x{w}: covariances differ by {rel:.2e} relative");
        assert!(max_abs(&(plain.mean() - image.mean()).insert_axis(Axis(0))) < 1e-12);
    }
    let err = Moments::new(60).with_image_shape(7, 5).unwrap_err().to_string();
    assert!(err.contains("7 x 5"), "{err}");
    let x = Array2::<f32>::zeros((4, 60));
    let err = Pca::params(2).image_shape(7, 5).fit(x.view()).unwrap_err().to_string();
    assert!(err.contains("7 x 5"), "{err}");
}

#[test]
fn a_large_offset_does_not_cost_precision() {
    // Uncentred sums of data offset by 1000 would cancel away f32's digits; the per-column
    // shift keeps the covariance as accurate as for the centred data.
    let x = data(500, 10, 6);
    let far = x.mapv(|v| v + 1000.0);
    let near = Moments::from_rows(x.view());
    let shifted = Moments::from_rows(far.view());
    let (a, b) = (near.covariance().unwrap(), shifted.covariance().unwrap());
    // f32 holds 1000 + v to ~6e-5 absolute: that rounding of the input bounds the agreement.
    let rel = max_abs(&(&a - &b)) / max_abs(&a);
    assert!(rel < 1e-3, "covariance of offset data off by {rel:.2e} relative");
    assert!((&shifted.mean() - &near.mean() - 1000.0).mapv(f64::abs).sum() < 1e-3);
}

#[test]
fn randomized_solver_agrees_with_the_full_one() {
    let x = data(400, 60, 5);
    let exact = Pca::params(5).fit(x.view()).unwrap();
    let fast = Pca::params(5)
        .solver(Solver::Randomized {
            oversample: 10,
            power_iters: 6,
            seed: 1,
        })
        .fit(x.view())
        .unwrap();
    let rel = (exact.explained_variance() - fast.explained_variance())
        .mapv(f64::abs)
        .sum()
        / exact.explained_variance().sum();
    assert!(rel < 1e-6, "eigenvalues differ by {rel:.2e}");
    let angles = principal_angles(exact.components(), fast.components()).unwrap();
    assert!(angles.iter().all(|&a| a < 1e-3), "subspaces differ: {angles:?}");
}

#[test]
fn whitened_codes_have_unit_variance_and_decode_back() {
    let x = data(300, 12, 8);
    // The top 6 components span a condition number of ~60, so f32 whitening is accurate
    // to ~1e-5; the bottom ones (condition ~7000) would measure f32 rounding instead.
    let top = Pca::params(6).fit(x.view()).unwrap();
    let h = top.encode(x.view()).unwrap().mapv(f64::from);
    let cov = h.t().dot(&h) / (h.nrows() - 1) as f64;
    let dev = max_abs(&(cov - Array2::<f64>::eye(6)));
    assert!(dev < 1e-4, "whitened covariance deviates from I by {dev:.2e}");
    let pca = Pca::params(12).fit(x.view()).unwrap();
    // With all components kept the whitened round trip is the identity.
    let back = pca.decode(pca.encode(x.view()).unwrap().view()).unwrap();
    let e = (&back - &x).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
    assert!(e < 1e-4, "round trip error {e}");
}

#[test]
fn principal_angles_of_a_subspace_with_itself_are_zero_and_orthogonal_ones_are_right() {
    let a = Array2::from_shape_fn((5, 2), |(i, j)| if i == j { 1.0 } else { 0.0 });
    let b = Array2::from_shape_fn((5, 2), |(i, j)| if i == j + 2 { 1.0 } else { 0.0 });
    assert!(principal_angles(&a, &(&a * 3.0)).unwrap().iter().all(|&t| t < 1e-7));
    let t = principal_angles(&a, &b).unwrap();
    assert!(
        t.iter().all(|&t| (t - std::f64::consts::FRAC_PI_2).abs() < 1e-12),
        "{t:?}"
    );
}

#[test]
fn bad_arguments_are_errors() {
    let x = data(10, 4, 1);
    assert!(Pca::params(0).fit(x.view()).unwrap_err().to_string().contains("k = 0"));
    assert!(Pca::params(5)
        .fit(x.view())
        .unwrap_err()
        .to_string()
        .contains("data dimension 4"));
    assert!(Pca::params(1)
        .fit(x.slice(s![..1, ..]))
        .unwrap_err()
        .to_string()
        .contains("at least 2 samples"));
    let mut bad = x.clone();
    bad[[3, 2]] = f32::NAN;
    assert!(Pca::params(1)
        .fit(bad.view())
        .unwrap_err()
        .to_string()
        .contains("non-finite"));
    let pca = Pca::params(2).fit(x.view()).unwrap();
    let e = pca
        .transform(Array2::<f32>::zeros((3, 5)).view())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Pca::transform") && e.contains("[3, 5]"), "{e}");
}

#[cfg(feature = "lapack")]
#[test]
fn lapack_and_faer_give_the_same_decomposition() {
    use latent::pca::eigh_descending_lapack;
    for seed in 0..4 {
        let x = data(300, 20 + 7 * seed as usize, seed).mapv(f64::from);
        let xc = &x - &x.mean_axis(Axis(0)).unwrap();
        let cov = xc.t().dot(&xc) / (x.nrows() - 1) as f64;
        let (va, ua) = eigh_descending_faer(&cov).unwrap();
        let (vb, ub) = eigh_descending_lapack(&cov).unwrap();
        assert!((&va - &vb).mapv(f64::abs).sum() < 1e-10 * va.sum(), "eigenvalues");
        // Eigenvectors agree up to sign: compare |U_a^T U_b| with the identity on the top 5.
        let m = ua.slice(s![.., ..5]).t().dot(&ub.slice(s![.., ..5])).mapv(f64::abs);
        assert!(max_abs(&(m - Array2::<f64>::eye(5))) < 1e-8, "eigenvectors");
    }
}

#[test]
fn faer_eigendecomposition_reconstructs_the_matrix() {
    let x = data(100, 15, 4).mapv(f64::from);
    let a = x.t().dot(&x);
    let (vals, vecs) = eigh_descending_faer(&a).unwrap();
    let back = vecs.dot(&Array2::from_diag(&vals)).dot(&vecs.t());
    assert!(max_abs(&(back - &a)) < 1e-9 * max_abs(&a));
}

/// The figures of the notebooks (PyTorch / scikit-learn on the same data), to 4
/// significant digits: variance explained at K = 10, 20, 50, 100 and PCA's test MSE at K = 20.
#[test]
fn mnist_pca_matches_the_reference_figures() {
    let train = Dataset::load(DatasetKind::Mnist, None, Split::Train).unwrap();
    let test = Dataset::load(DatasetKind::Mnist, None, Split::Test).unwrap();
    let pca = Pca::params(100).fit(train.flat()).unwrap();
    let ratio = pca.explained_variance_ratio();
    for (k, want) in [(10, 0.4881), (20, 0.6436), (50, 0.8246), (100, 0.9146)] {
        let got = ratio.slice(s![..k]).sum();
        assert!((got - want).abs() < 0.00005, "K={k}: {got:.6} vs {want}");
    }
    // The example's settings (image ordering, and the randomized solver) reach the same
    // figures.
    let randomized = Solver::Randomized {
        oversample: 20,
        power_iters: 8,
        seed: 0,
    };
    for solver in [Solver::Eigh, randomized] {
        let pca20 = Pca::params(20)
            .image_shape(28, 28)
            .solver(solver)
            .fit(train.flat())
            .unwrap();
        let got = pca20.explained_variance_ratio().sum();
        assert!((got - 0.6436).abs() < 0.00005, "{solver:?}: K=20 {got:.6}");
        let recon = pca20.reconstruct(test.flat()).unwrap();
        let mse = (&recon - &test.flat()).mapv(|v| (v as f64).powi(2)).mean().unwrap();
        assert!((mse - 0.023538).abs() < 0.0000005, "{solver:?}: test MSE {mse:.7}");
    }
}
