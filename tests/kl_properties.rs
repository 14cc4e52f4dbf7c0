//! Property tests of the closed-form KL(N(mu, diag e^logvar) || N(0, I)).

use latent::vae::{self, DiagGaussian};
use ndarray::{Array1, Array2, Array3};
use proptest::prelude::*;
use rand::SeedableRng;

fn gaussian(mu: &[f64], lv: &[f64]) -> DiagGaussian<f64> {
    let k = mu.len();
    DiagGaussian::new(
        Array2::from_shape_vec((1, k), mu.to_vec()).unwrap(),
        Array2::from_shape_vec((1, k), lv.to_vec()).unwrap(),
    )
    .unwrap()
}

fn kl(mu: &[f64], lv: &[f64]) -> f64 {
    vae::kl_diag(&gaussian(mu, lv))[0]
}

/// `(mu, logvar)` pairs of a random dimension 1..=8.
fn params(mu_max: f64, lv_max: f64) -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    (1usize..=8).prop_flat_map(move |k| {
        (
            prop::collection::vec(-mu_max..mu_max, k),
            prop::collection::vec(-lv_max..lv_max, k),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn kl_is_non_negative((mu, lv) in params(10.0, 10.0)) {
        prop_assert!(kl(&mu, &lv) >= 0.0);
    }

    /// Zero at the prior, and strictly positive as soon as one coordinate moves, however
    /// little (the closed form uses expm1, so tiny departures are not lost to rounding).
    #[test]
    fn kl_is_zero_only_at_the_prior(
        k in 1usize..8,
        i in 0usize..8,
        which in 0usize..2,
        exponent in -12.0f64..1.0,
        sign in prop::bool::ANY,
    ) {
        let (mu, lv) = (vec![0.0; k], vec![0.0; k]);
        prop_assert_eq!(kl(&mu, &lv), 0.0);
        let delta = if sign { 1.0 } else { -1.0 } * 10f64.powf(exponent);
        let (mut mu2, mut lv2) = (mu.clone(), lv.clone());
        if which == 0 { mu2[i % k] = delta } else { lv2[i % k] = delta }
        prop_assert!(kl(&mu2, &lv2) > 0.0, "KL({:?}, {:?}) = {}", mu2, lv2, kl(&mu2, &lv2));
    }

    /// The Monte-Carlo mean of log q(z) - log p(z) agrees with the closed form within five
    /// standard errors.
    #[test]
    fn kl_matches_monte_carlo_within_clt_bound((mu, lv) in params(3.0, 3.0), seed in 0u64..1000) {
        let q = gaussian(&mu, &lv);
        let n = 20_000;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let eps: Array3<f64> = q.sample_eps(n, &mut rng);
        let z = q.rsample(eps.view()).unwrap();
        let r = vae::log_ratio(&q, eps.view(), z.view()).unwrap();
        let mean = r.mean().unwrap();
        let sd = r.std(1.0);
        let closed = vae::kl_diag(&q)[0];
        prop_assert!((mean - closed).abs() <= 5.0 * sd / (n as f64).sqrt() + 1e-12,
            "MC {} vs closed {} (sd {})", mean, closed, sd);
    }

    /// In one dimension, the closed form equals `∫ q log(q / p) dz` by Simpson's rule over
    /// mu ± 14 sigma.
    #[test]
    fn kl_matches_numerical_integration(mu in -5.0f64..5.0, lv in -4.0f64..4.0) {
        let sd = (0.5 * lv).exp();
        let (a, b, n) = (mu - 14.0 * sd, mu + 14.0 * sd, 4000);
        let h = (b - a) / n as f64;
        let f = |z: f64| {
            let log_q = -0.5 * ((z - mu) / sd).powi(2) - sd.ln() - vae::HALF_LN_2PI;
            let log_p = -0.5 * z * z - vae::HALF_LN_2PI;
            log_q.exp() * (log_q - log_p)
        };
        let simpson: f64 = (0..=n)
            .map(|i| {
                let w = if i == 0 || i == n { 1.0 } else if i % 2 == 1 { 4.0 } else { 2.0 };
                w * f(a + i as f64 * h)
            })
            .sum::<f64>() * h / 3.0;
        let closed = kl(&[mu], &[lv]);
        prop_assert!((simpson - closed).abs() <= 1e-8 * closed.max(1.0), "{} vs {}", simpson, closed);
    }

    #[test]
    fn isotropic_equals_diagonal_with_equal_variances(
        mu in prop::collection::vec(-5.0f64..5.0, 1..8),
        log_sig in -5.0f64..5.0,
    ) {
        let k = mu.len();
        let mut phi = mu.clone();
        phi.push(log_sig);
        let phi = Array2::from_shape_vec((1, k + 1), phi).unwrap();
        let iso = vae::kl_isotropic(phi.view()).unwrap()[0];
        let diag = kl(&mu, &vec![2.0 * log_sig; k]);
        prop_assert!((iso - diag).abs() <= 1e-12 * diag.max(1.0), "{} vs {}", iso, diag);
        let via = vae::kl_diag(&DiagGaussian::from_isotropic(phi.view()).unwrap())[0];
        prop_assert!((via - diag).abs() <= 1e-12 * diag.max(1.0));
    }

    #[test]
    fn kl_is_additive_over_dimensions((mu, lv) in params(10.0, 10.0), split in 0usize..8) {
        let whole = kl(&mu, &lv);
        let per_dim: f64 = mu.iter().zip(&lv).map(|(&m, &v)| kl(&[m], &[v])).sum();
        prop_assert!((whole - per_dim).abs() <= 1e-12 * whole.max(1.0));
        let s = split % mu.len();
        if s > 0 {
            let blocks = kl(&mu[..s], &lv[..s]) + kl(&mu[s..], &lv[s..]);
            prop_assert!((whole - blocks).abs() <= 1e-12 * whole.max(1.0));
        }
    }

    /// dKL/dmu = mu and dKL/dlogvar = (e^logvar - 1) / 2, and both equal central finite
    /// differences.
    #[test]
    fn kl_gradients_are_analytic_and_match_finite_differences((mu, lv) in params(5.0, 5.0)) {
        let q = gaussian(&mu, &lv);
        let k = mu.len();
        let (mut dmu, mut dlv) = (Array2::zeros((1, k)), Array2::zeros((1, k)));
        vae::kl_diag_backward(&q, Array1::ones(1).view(), &mut dmu, &mut dlv).unwrap();
        let h = 1e-6;
        for i in 0..k {
            prop_assert_eq!(dmu[[0, i]], mu[i]);
            prop_assert!((dlv[[0, i]] - 0.5 * lv[i].exp_m1()).abs() <= 1e-15 * dlv[[0, i]].abs().max(1.0));
            let (mut mp, mut mm) = (mu.clone(), mu.clone());
            mp[i] += h;
            mm[i] -= h;
            let fd = (kl(&mp, &lv) - kl(&mm, &lv)) / (2.0 * h);
            prop_assert!((fd - dmu[[0, i]]).abs() <= 1e-6 * dmu[[0, i]].abs().max(1.0), "dmu {} vs {}", fd, dmu[[0, i]]);
            let (mut lp, mut lm) = (lv.clone(), lv.clone());
            lp[i] += h;
            lm[i] -= h;
            let fd = (kl(&mu, &lp) - kl(&mu, &lm)) / (2.0 * h);
            prop_assert!((fd - dlv[[0, i]]).abs() <= 1e-6 * dlv[[0, i]].abs().max(1.0), "dlogvar {} vs {}", fd, dlv[[0, i]]);
        }
    }

    #[test]
    fn kl_and_gradients_are_finite_on_the_whole_range((mu, lv) in params(1e3, 30.0)) {
        let q = gaussian(&mu, &lv);
        let k = mu.len();
        let v = vae::kl_diag(&q)[0];
        prop_assert!(v.is_finite() && v >= 0.0, "{}", v);
        let (mut dmu, mut dlv) = (Array2::zeros((1, k)), Array2::zeros((1, k)));
        vae::kl_diag_backward(&q, Array1::ones(1).view(), &mut dmu, &mut dlv).unwrap();
        prop_assert!(dmu.iter().chain(&dlv).all(|g| g.is_finite()));
        // And in f32, the training precision.
        let q32 = DiagGaussian::new(q.mu.mapv(|v| v as f32), q.logvar.mapv(|v| v as f32)).unwrap();
        let v32 = vae::kl_diag(&q32)[0];
        prop_assert!(v32.is_finite() && v32 >= 0.0, "{}", v32);
    }
}

#[test]
fn kl_at_the_edges_of_the_range() {
    // logvar = -30: KL = (e^-30 - 1 + 30) / 2; logvar = 30: (e^30 - 1 - 30) / 2.
    assert!((kl(&[0.0], &[-30.0]) - 0.5 * ((-30f64).exp_m1() + 30.0)).abs() < 1e-12);
    assert!((kl(&[0.0], &[30.0]) / (0.5 * (30f64.exp_m1() - 30.0)) - 1.0).abs() < 1e-15);
    assert_eq!(kl(&[1e3], &[0.0]), 5e5);
}
