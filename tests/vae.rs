//! The VAE estimators and models: finite-difference gradient checks in f64 for every
//! estimator and for one whole training step of every model under every objective, plus
//! shape and error checks.

mod common;

use common::{fd_check, fd_check_h, rand_array};
use latent::loss::Reduction;
use latent::models::{VaeModel, VanillaVaeParams};
use latent::nn::Module;
use latent::vae::{self, DiagGaussian, KlEstimator, Likelihood, LossConfig, Objective, Vae};
use ndarray::{Array1, Array2, Array3, ArrayD, Ix2, Ix3, Ix4};
use rand::{Rng, SeedableRng};

const TOL: f64 = 1e-6;

/// Finite-difference step for whole models: summed losses over thousands of pixels are
/// large, so a step of 1e-6 loses digits to rounding (|loss| * 1e-16 / h); 1e-5 keeps the
/// truncation error (h^2 times the third derivative) below that.
const H: f64 = 1e-5;

fn arr2(shape: [usize; 2], seed: u64, scale: f64) -> Array2<f64> {
    rand_array(&shape, seed)
        .mapv(|v| v * scale)
        .into_dimensionality::<Ix2>()
        .unwrap()
}

fn arr3(shape: [usize; 3], seed: u64) -> Array3<f64> {
    rand_array(&shape, seed).into_dimensionality::<Ix3>().unwrap()
}

#[test]
fn kl_diag_gradient_matches_finite_differences() {
    let (mu, lv) = (arr2([3, 4], 1, 2.0), arr2([3, 4], 2, 3.0));
    let dkl = Array1::from(vec![0.3, -1.2, 2.0]);
    let q = DiagGaussian::new(mu.clone(), lv.clone()).unwrap();
    let (mut dmu, mut dlv) = (Array2::zeros((3, 4)), Array2::zeros((3, 4)));
    vae::kl_diag_backward(&q, dkl.view(), &mut dmu, &mut dlv).unwrap();
    let f = |mu: &Array2<f64>, lv: &Array2<f64>| {
        let q = DiagGaussian::new(mu.clone(), lv.clone()).unwrap();
        vae::kl_diag(&q).dot(&dkl)
    };
    let e = fd_check(&mu.clone().into_dyn(), &dmu.into_dyn(), 12, |m| {
        f(&m.clone().into_dimensionality().unwrap(), &lv)
    });
    assert!(e < TOL, "dmu {e:.2e}");
    let e = fd_check(&lv.clone().into_dyn(), &dlv.into_dyn(), 12, |l| {
        f(&mu, &l.clone().into_dimensionality().unwrap())
    });
    assert!(e < TOL, "dlogvar {e:.2e}");
}

/// The total gradient of the Monte-Carlo KL with respect to phi, through the samples.
#[test]
fn kl_mc_isotropic_total_gradient_matches_finite_differences() {
    let phi = arr2([3, 4], 3, 0.8);
    let eps = arr3([3, 5, 3], 4);
    let value = |phi: &Array2<f64>| {
        let q = DiagGaussian::from_isotropic(phi.view()).unwrap();
        let zs = q.rsample(eps.view()).unwrap();
        vae::kl_mc_isotropic(phi.view(), zs.view()).unwrap()
    };
    let q = DiagGaussian::from_isotropic(phi.view()).unwrap();
    let zs = q.rsample(eps.view()).unwrap();
    let (mut dphi, dzs) = vae::kl_mc_isotropic_backward(phi.view(), zs.view(), 1.0).unwrap();
    let (mut dmu, mut dlv) = (Array2::zeros((3, 3)), Array2::zeros((3, 3)));
    q.rsample_backward(eps.view(), dzs.view(), &mut dmu, &mut dlv).unwrap();
    dphi += &DiagGaussian::isotropic_grad(dmu.view(), dlv.view());
    let e = fd_check(&phi.clone().into_dyn(), &dphi.into_dyn(), 12, |p| {
        value(&p.clone().into_dimensionality().unwrap())
    });
    assert!(e < TOL, "dphi {e:.2e}");
}

/// `log_ratio` and its backward, through the reparameterisation, against finite differences.
#[test]
fn log_ratio_total_gradient_matches_finite_differences() {
    let (mu, lv) = (arr2([2, 3], 5, 1.0), arr2([2, 3], 6, 1.5));
    let eps = arr3([2, 4, 3], 7);
    let dr = arr2([2, 4], 8, 1.0);
    let f = |mu: &Array2<f64>, lv: &Array2<f64>| {
        let q = DiagGaussian::new(mu.clone(), lv.clone()).unwrap();
        let z = q.rsample(eps.view()).unwrap();
        (vae::log_ratio(&q, eps.view(), z.view()).unwrap() * &dr).sum()
    };
    let q = DiagGaussian::new(mu.clone(), lv.clone()).unwrap();
    let z = q.rsample(eps.view()).unwrap();
    let (mut dmu, mut dlv) = (Array2::zeros((2, 3)), Array2::zeros((2, 3)));
    let dz = vae::log_ratio_backward(z.view(), dr.view(), &mut dlv).unwrap();
    q.rsample_backward(eps.view(), dz.view(), &mut dmu, &mut dlv).unwrap();
    let e = fd_check(&mu.clone().into_dyn(), &dmu.into_dyn(), 6, |m| {
        f(&m.clone().into_dimensionality().unwrap(), &lv)
    });
    assert!(e < TOL, "dmu {e:.2e}");
    let e = fd_check(&lv.clone().into_dyn(), &dlv.into_dyn(), 6, |l| {
        f(&mu, &l.clone().into_dimensionality().unwrap())
    });
    assert!(e < TOL, "dlogvar {e:.2e}");
}

#[test]
fn likelihood_gradients_match_finite_differences() {
    let x = arr2([2, 5], 9, 1.0).mapv(|v| (v + 1.0) / 2.0);
    let up = arr2([2, 3], 10, 1.0);
    let logits = arr3([2, 3, 5], 11);
    let probs = logits.mapv(|z| 0.05 + 0.9 / (1.0 + (-z).exp()));
    for (like, mean) in [
        (
            Likelihood::Gaussian {
                log_sig_x: -0.4,
                normalised: false,
            },
            logits.clone(),
        ),
        (
            Likelihood::Gaussian {
                log_sig_x: 0.3,
                normalised: true,
            },
            logits.clone(),
        ),
        (Likelihood::SquaredError, logits.clone()),
        (Likelihood::Bernoulli, probs),
        (Likelihood::BernoulliLogits, logits.clone()),
    ] {
        let f = |m: &ArrayD<f64>, like: Likelihood<f64>| {
            let m = m.view().into_dimensionality::<Ix3>().unwrap();
            (vae::log_likelihood(like, x.view(), m).unwrap() * &up).sum()
        };
        let (dmean, dls) = vae::log_likelihood_backward(like, x.view(), mean.view(), up.view()).unwrap();
        let e = fd_check(&mean.clone().into_dyn(), &dmean.into_dyn(), 30, |m| f(m, like));
        assert!(e < TOL, "{like:?}: dmean {e:.2e}");
        if let Likelihood::Gaussian { log_sig_x, normalised } = like {
            let m = mean.clone().into_dyn();
            let h = 1e-6;
            let at = |s: f64| {
                f(
                    &m,
                    Likelihood::Gaussian {
                        log_sig_x: s,
                        normalised,
                    },
                )
            };
            let numeric = (at(log_sig_x + h) - at(log_sig_x - h)) / (2.0 * h);
            assert!(
                (numeric - dls).abs() < TOL * dls.abs().max(1.0),
                "dlog_sig_x {numeric} vs {dls}"
            );
        }
    }
}

#[test]
fn log_mean_exp_gradient_matches_finite_differences_and_is_stable() {
    let log_w = arr2([3, 6], 12, 40.0);
    let dv = Array1::from(vec![1.0, -0.5, 2.0]);
    let g = vae::log_mean_exp_backward(log_w.view(), dv.view()).unwrap();
    let e = fd_check(&log_w.clone().into_dyn(), &g.into_dyn(), 18, |lw| {
        vae::log_mean_exp(lw.view().into_dimensionality::<Ix2>().unwrap()).dot(&dv)
    });
    assert!(e < TOL, "{e:.2e}");
    // Weights of -1e4 nats would underflow a naive exp: the shift keeps them exact.
    let lw = Array2::from_shape_vec((1, 2), vec![-1e4, -1e4 + 2f64.ln()]).unwrap();
    let v = vae::log_mean_exp(lw.view())[0];
    assert!((v - (-1e4 + 1.5f64.ln())).abs() < 1e-9, "{v}");
    // With one sample, IWAE is the ELBO.
    let one = arr2([4, 1], 13, 5.0);
    assert_eq!(vae::log_mean_exp(one.view()), one.column(0));
}

/// One training step of `model` under `cfg`: every parameter gradient against finite
/// differences of the loss.
fn check_model<M: Vae<f64>>(name: &str, model: &mut M, batch: usize, cfg: LossConfig, probes: usize) {
    let [c, h, w] = model.image_shape();
    let x = rand_array(&[batch, c, h, w], 14)
        .mapv(|v| 0.1 + 0.4 * (v + 1.0))
        .into_dimensionality::<Ix4>()
        .unwrap();
    let eps = arr3([batch, cfg.objective.samples(), model.latent_dim()], 15);
    vae::loss_and_grad(model, x.view(), eps.view(), &cfg).unwrap();
    let mut grads = Vec::new();
    model.visit_params(&mut |p| grads.push((p.name.clone(), p.value.clone(), p.grad.clone())));
    for (i, (pname, value, grad)) in grads.into_iter().enumerate() {
        let e = fd_check_h(&value, &grad, probes, H, |vp| {
            let mut j = 0;
            model.visit_params(&mut |p| {
                if j == i {
                    p.value.assign(vp);
                }
                j += 1;
            });
            let loss = vae::loss_and_grad(model, x.view(), eps.view(), &cfg).unwrap().loss;
            let mut j = 0;
            model.visit_params(&mut |p| {
                if j == i {
                    p.value.assign(&value);
                }
                j += 1;
            });
            loss
        });
        assert!(e < TOL, "{name} {cfg:?}: d{pname} {e:.2e}");
    }
}

fn objectives() -> Vec<LossConfig> {
    let elbo = |samples, beta, kl, reduction| LossConfig {
        objective: Objective::Elbo { samples, beta },
        kl,
        reduction,
    };
    vec![
        elbo(1, 1.0, KlEstimator::Closed, Reduction::Sum),
        elbo(3, 2.5, KlEstimator::MonteCarlo, Reduction::Mean),
        elbo(2, 0.5, KlEstimator::Closed, Reduction::Mean),
        LossConfig {
            objective: Objective::Iwae { samples: 4 },
            kl: KlEstimator::MonteCarlo,
            reduction: Reduction::Mean,
        },
    ]
}

/// Small random perturbations so that no ReLU sits on its kink and the pixel biases are
/// not all zero.
fn jitter(model: &mut impl Module<f64>, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    model.visit_params(&mut |p| p.value.mapv_inplace(|v| v + 0.05 * rng.random_range(-1.0..1.0)));
}

#[test]
fn conv_vae_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    let mut m = VaeModel::<f64>::conv([1, 7, 7], 2, 2, 3, &mut rng).unwrap();
    jitter(&mut m, 17);
    for cfg in objectives() {
        check_model("ConvVae", &mut m, 2, cfg, 8);
    }
}

#[test]
fn strided_vae_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
    let mut m = VaeModel::<f64>::strided([1, 28, 28], 2, &mut rng).unwrap();
    jitter(&mut m, 19);
    for cfg in objectives() {
        check_model("StridedVae", &mut m, 2, cfg, 5);
    }
}

#[test]
fn dcgan_vae_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let mut m = VaeModel::<f64>::dcgan([1, 28, 28], 2, 2, 2, &mut rng).unwrap();
    jitter(&mut m, 21);
    for cfg in objectives() {
        check_model("DcganVae", &mut m, 3, cfg, 5);
    }
}

#[test]
fn vanilla_vae_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
    let params = VanillaVaeParams {
        image: [2, 8, 8],
        latent: 3,
        hidden: vec![2, 3],
    };
    let mut m = params.build::<f64, _>(&mut rng).unwrap();
    jitter(&mut m, 23);
    for cfg in objectives() {
        check_model("VanillaVae", &mut m, 3, cfg, 5);
    }
}

/// AntixK's defaults: 3x64x64 images through widths 32..512 down to 2x2 and back.
#[test]
fn mlp_vae_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let mut m = VaeModel::<f64>::mlp([1, 4, 5], [6, 5], 3, &mut rng).unwrap();
    jitter(&mut m, 14);
    for cfg in objectives() {
        check_model("MLP VAE", &mut m, 3, cfg, 5);
    }
}

/// DReG's encoder gradient is not the gradient of a loss, so it is checked against its
/// definition instead: with one sample its weights are 1 and it is the gradient of the
/// sampled ELBO with q's parameters held fixed inside log q, which differs from IWAE-1's
/// by the score term; its decoder gradient is IWAE's exactly; it needs a per-sample decoder.
#[test]
fn dreg_keeps_the_iwae_decoder_gradient_and_refuses_a_coupled_decoder() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    let mut m = VaeModel::<f64>::mlp([1, 4, 5], [6, 5], 3, &mut rng).unwrap();
    let x = rand_array(&[4, 1, 4, 5], 16)
        .mapv(|v| 0.5 + 0.45 * v)
        .into_dimensionality::<Ix4>()
        .unwrap();
    let eps = arr3([4, 5, 3], 17);
    let cfg = |objective| LossConfig {
        objective,
        kl: KlEstimator::MonteCarlo,
        reduction: Reduction::Mean,
    };
    let grads = |m: &mut VaeModel<f64>| {
        let mut g = Vec::new();
        m.visit_params(&mut |p| g.push((p.name.clone(), p.grad.clone())));
        g
    };
    let iwae = vae::loss_and_grad(&mut m, x.view(), eps.view(), &cfg(Objective::Iwae { samples: 5 })).unwrap();
    let g_iwae = grads(&mut m);
    let dreg = vae::loss_and_grad(&mut m, x.view(), eps.view(), &cfg(Objective::IwaeDreg { samples: 5 })).unwrap();
    let g_dreg = grads(&mut m);
    assert_eq!(iwae.loss, dreg.loss);
    for ((name, a), (_, b)) in g_iwae.iter().zip(&g_dreg) {
        if name.starts_with("decoder") {
            assert_eq!(a, b, "{name}: the decoder's gradient is IWAE's");
        } else {
            assert!(a != b, "{name}: the encoder's gradient is DReG's own");
        }
    }
    let mut dcgan = VaeModel::<f64>::dcgan([1, 28, 28], 2, 2, 2, &mut rng).unwrap();
    let x = ndarray::Array4::from_elem((2, 1, 28, 28), 0.5);
    let eps = arr3([2, 3, 2], 18);
    let err = vae::loss_and_grad(
        &mut dcgan,
        x.view(),
        eps.view(),
        &cfg(Objective::IwaeDreg { samples: 3 }),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("DReG"), "{err}");
}

#[test]
fn vanilla_vae_default_shapes() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(24);
    let mut m = VanillaVaeParams::default().build::<f32, _>(&mut rng).unwrap();
    let mut names = Vec::new();
    m.visit_params(&mut |p| names.push((p.name.clone(), p.value.shape().to_vec())));
    assert!(names.contains(&("encoder.4.0.weight".into(), vec![512, 256, 3, 3])));
    assert!(names.contains(&("fc_mu.weight".into(), vec![128, 2048])));
    assert!(names.contains(&("decoder.3.0.weight".into(), vec![64, 32, 3, 3])));
    assert!(names.contains(&("final_layer.3.weight".into(), vec![3, 32, 3, 3])));
    let mut buffers = 0;
    m.visit_buffers(&mut |_, _| buffers += 1);
    assert_eq!(buffers, 2 * (5 + 4 + 1), "running mean and var of every BatchNorm");
    let x = ndarray::Array4::<f32>::from_elem((2, 3, 64, 64), 0.25);
    let eps = Array3::<f32>::zeros((2, 1, 128));
    let cfg = m.recipe();
    let parts = vae::loss_and_grad(&mut m, x.view(), eps.view(), &cfg).unwrap();
    assert_eq!(parts.output.shape(), &[2, 3, 64, 64]);
    assert!(parts.output.iter().all(|v| v.abs() <= 1.0), "Tanh output");
    assert_eq!(parts.posterior.mu.dim(), (2, 128));
}

#[test]
fn bad_inputs_are_named() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(25);
    let mut m = VaeModel::<f32>::strided([1, 28, 28], 4, &mut rng).unwrap();
    let cfg = m.recipe();
    let x = ndarray::Array4::<f32>::zeros((2, 1, 27, 28));
    let e = vae::loss_and_grad(&mut m, x.view(), Array3::zeros((2, 1, 4)).view(), &cfg).unwrap_err();
    assert!(e.to_string().contains("VAE input images"), "{e}");
    let x = ndarray::Array4::<f32>::zeros((2, 1, 28, 28));
    let e = vae::loss_and_grad(&mut m, x.view(), Array3::zeros((2, 1, 3)).view(), &cfg).unwrap_err();
    assert!(e.to_string().contains("VAE noise eps"), "{e}");
    let mut bad = x.clone();
    bad[[1, 0, 3, 3]] = f32::NAN;
    let e = vae::loss_and_grad(&mut m, bad.view(), Array3::zeros((2, 1, 4)).view(), &cfg).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    let zero = LossConfig {
        objective: Objective::Elbo { samples: 0, beta: 1.0 },
        ..cfg
    };
    let e = vae::loss_and_grad(&mut m, x.view(), Array3::zeros((2, 0, 4)).view(), &zero).unwrap_err();
    assert!(e.to_string().contains("samples"), "{e}");
    assert!(VaeModel::<f32>::strided([1, 32, 32], 4, &mut rng).is_err());
    assert!(VaeModel::<f32>::dcgan([1, 32, 32], 4, 2, 2, &mut rng).is_err());
    assert!(VanillaVaeParams {
        image: [3, 60, 60],
        ..Default::default()
    }
    .build::<f32, _>(&mut rng)
    .is_err());
}

/// IWAE-k is at least the ELBO on the same samples, and the IWAE estimate grows (on
/// average) with k towards log p(x).
#[test]
fn iwae_bounds_the_elbo_from_above() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(26);
    let mut m = VaeModel::<f64>::conv([1, 7, 7], 2, 2, 3, &mut rng).unwrap();
    let x = rand_array(&[4, 1, 7, 7], 27)
        .mapv(|v| (v + 1.0) / 2.0)
        .into_dimensionality::<Ix4>()
        .unwrap();
    let eps = arr3([4, 6, 2], 28);
    let elbo = LossConfig {
        objective: Objective::Elbo { samples: 6, beta: 1.0 },
        kl: KlEstimator::MonteCarlo,
        reduction: Reduction::Mean,
    };
    let iwae = LossConfig {
        objective: Objective::Iwae { samples: 6 },
        ..elbo
    };
    let e = vae::evaluate(&mut m, x.view(), eps.view(), &elbo).unwrap().bound;
    let i = vae::evaluate(&mut m, x.view(), eps.view(), &iwae).unwrap().bound;
    assert!(i >= e, "IWAE {i} < ELBO {e}");
    // A sharp likelihood (sigma_x = e^-1.5) makes the posterior far from q, so the gap
    // between the bounds is wide; average over repetitions to beat the sampling noise.
    let latent::vae::PixelLikelihood::LearnedGaussian { log_sig_x, .. } = &mut m.likelihood else {
        panic!("the ConvVAE learns sigma_x")
    };
    log_sig_x.value.fill(-1.5);
    let mut mean_ll = |k, reps| {
        (0..reps)
            .map(|_| {
                vae::iwae_log_likelihood(&mut m, x.view(), k, 2, &mut rng)
                    .unwrap()
                    .mean()
                    .unwrap()
            })
            .sum::<f64>()
            / reps as f64
    };
    let (l1, l5, l50) = (mean_ll(1, 400), mean_ll(5, 80), mean_ll(50, 8));
    eprintln!("IWAE-1 {l1:.4}, IWAE-5 {l5:.4}, IWAE-50 {l50:.4}");
    assert!(l1 < l5 && l5 < l50, "IWAE-k not increasing in k: {l1}, {l5}, {l50}");
}

/// The ELBO ascent on phi: gradients with respect to a free posterior through a frozen
/// decoder (BatchNorm on running statistics), against finite differences.
#[test]
fn posterior_gradient_through_a_frozen_decoder_matches_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
    let mut m = VaeModel::<f64>::dcgan([1, 28, 28], 3, 2, 2, &mut rng).unwrap();
    jitter(&mut m, 30);
    m.visit_buffers(&mut |name, mut v| {
        if name.ends_with("running_var") {
            v.fill(1.7);
        }
    });
    let x = rand_array(&[1, 1, 28, 28], 31)
        .mapv(|v| 0.1 + 0.4 * (v + 1.0))
        .into_dimensionality::<Ix4>()
        .unwrap();
    let eps = arr3([1, 3, 3], 32);
    let (mu, lv) = (arr2([1, 3], 33, 1.0), arr2([1, 3], 34, 1.0));
    for cfg in objectives() {
        let cfg = LossConfig {
            objective: match cfg.objective {
                Objective::Elbo { beta, .. } => Objective::Elbo { samples: 3, beta },
                Objective::Iwae { .. } | Objective::IwaeDreg { .. } => Objective::Iwae { samples: 3 },
            },
            ..cfg
        };
        let q = DiagGaussian::new(mu.clone(), lv.clone()).unwrap();
        let (_, dmu, dlv) = vae::posterior_loss_and_grad(&mut m, x.view(), &q, eps.view(), &cfg).unwrap();
        let mut loss = |mu: &Array2<f64>, lv: &Array2<f64>| {
            let q = DiagGaussian::new(mu.clone(), lv.clone()).unwrap();
            vae::posterior_loss_and_grad(&mut m, x.view(), &q, eps.view(), &cfg)
                .unwrap()
                .0
                .loss
        };
        let e = fd_check_h(&mu.clone().into_dyn(), &dmu.into_dyn(), 3, H, |p| {
            loss(&p.clone().into_dimensionality().unwrap(), &lv)
        });
        assert!(e < TOL, "{cfg:?}: dmu {e:.2e}");
        let e = fd_check_h(&lv.clone().into_dyn(), &dlv.into_dyn(), 3, H, |p| {
            loss(&mu, &p.clone().into_dimensionality().unwrap())
        });
        assert!(e < TOL, "{cfg:?}: dlogvar {e:.2e}");
    }
    // Frozen: the running statistics were used, not updated.
    m.visit_buffers(&mut |name, v| {
        if name.ends_with("running_var") {
            assert!(v.iter().all(|&s| s == 1.7), "{name} changed");
        }
    });
}

/// Each notebook model's `layout` (what the GPU trainer builds its layers from) accounts
/// for every parameter, in the order `visit_params` visits them, with the shapes its
/// layers expect; it is read off the layers, so AntixK's VanillaVAE has one too, and a
/// model with a layer that does not describe itself is refused, naming the layer.
#[test]
fn model_layouts_account_for_every_parameter_in_order() {
    use latent::nn::LayerSpec;
    use latent::vae::PosteriorForm;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let small = VanillaVaeParams {
        image: [3, 16, 16],
        latent: 4,
        hidden: vec![4, 8],
    };
    let models: Vec<VaeModel<f32>> = vec![
        VaeModel::conv_cis522(20, &mut rng).unwrap(),
        VaeModel::dcgan_coursera(32, &mut rng).unwrap(),
        VaeModel::strided([1, 28, 28], 32, &mut rng).unwrap(),
        small.build(&mut rng).unwrap(),
        user_mlp_vae(&mut rng),
    ];
    for mut m in models {
        let layout = m.layout().expect("notebook models describe themselves");
        let mut expected: Vec<Vec<usize>> = Vec::new();
        if layout.learned_log_sig_x {
            expected.push(vec![]);
        }
        expected.extend(layout.encoder.iter().flat_map(LayerSpec::param_shapes));
        if let PosteriorForm::LinearHeads { features } = layout.posterior {
            let head = LayerSpec::Linear {
                in_features: features,
                out_features: m.latent_dim(),
                bias: true,
            };
            expected.extend(head.param_shapes());
            expected.extend(head.param_shapes());
        }
        expected.extend(layout.decoder.iter().flat_map(LayerSpec::param_shapes));
        let mut found = Vec::new();
        m.visit_params(&mut |p| found.push(p.value.shape().to_vec()));
        assert_eq!(expected, found, "{:?}", layout.posterior);
        assert!(layout
            .encoder
            .iter()
            .chain(&layout.decoder)
            .all(|l| !matches!(l, LayerSpec::Opaque(_))));
    }
    let mut opaque = VaeModel::<f32>::strided([1, 28, 28], 4, &mut rng).unwrap();
    opaque.encoder = std::mem::take(&mut opaque.encoder).push(Opaque);
    let err = opaque.layout().unwrap_err().to_string();
    assert!(
        err.contains("Opaque") && err.contains("does not describe itself"),
        "{err}"
    );
}

/// A VAE in none of the notebooks, assembled by hand: Flatten, Linear, Tanh, linear heads;
/// Linear, Tanh, Linear, Unflatten; Bernoulli on logits.
fn user_mlp_vae(rng: &mut rand_chacha::ChaCha8Rng) -> VaeModel<f32> {
    use latent::nn::{Activation, ActivationLayer, Flatten, Linear, Sequential, Unflatten};
    let encoder = Sequential::new()
        .push(Flatten::new())
        .push(Linear::new("encoder.0", 784, 16, true, rng))
        .push(ActivationLayer::new(Activation::Tanh));
    let head = latent::vae::PosteriorHead::linear(("fc_mu", "fc_logvar"), 16, 4, rng);
    let decoder = Sequential::new()
        .push(Linear::new("decoder.0", 4, 16, true, rng))
        .push(ActivationLayer::new(Activation::Tanh))
        .push(Linear::new("decoder.2", 16, 784, true, rng))
        .push(Unflatten::new(&[1, 28, 28]));
    VaeModel::new([1, 28, 28], 4, encoder, head, decoder, Likelihood::BernoulliLogits).unwrap()
}

/// A layer of a user's own that does not describe itself (the identity).
#[derive(Clone)]
struct Opaque;

impl latent::nn::Module<f32> for Opaque {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut latent::nn::Param<f32>)) {}
}

impl latent::nn::Layer<f32> for Opaque {
    fn forward(&mut self, x: ndarray::ArrayD<f32>, _mode: latent::nn::Mode) -> latent::Result<ndarray::ArrayD<f32>> {
        Ok(x)
    }
    fn backward(&mut self, dy: ndarray::ArrayD<f32>, _need_dx: bool) -> latent::Result<Option<ndarray::ArrayD<f32>>> {
        Ok(Some(dy))
    }
}

/// The relative distance `|a - b| / |b|` of two arrays (0 for two zeros).
fn rel(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    let d = (a - b).mapv(|v| v * v).sum().sqrt();
    let n = b.mapv(|v| v * v).sum().sqrt();
    if n == 0.0 {
        d
    } else {
        d / n
    }
}

fn grads_of(model: &mut VaeModel<f64>) -> Vec<ArrayD<f64>> {
    let mut g = Vec::new();
    model.visit_params(&mut |p| g.push(p.grad.clone()));
    g
}

/// `DataParallel` computes the loss of the whole batch: with the batch cut into 2 or 3
/// parts, the loss, its parts, the outputs, the posterior and every gradient equal the
/// one-piece step's up to the order of the sums over images, under every objective (sum
/// and mean reductions, several samples, IWAE, a learned sigma_x); two Adam steps later
/// the parameters still agree, so the copies follow the model.
#[test]
fn data_parallel_steps_equal_whole_batch_steps() {
    use latent::optim::{Adam, AdamConfig};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(40);
    let models: Vec<(VaeModel<f64>, usize)> = vec![
        (VaeModel::<f64>::conv([1, 7, 7], 2, 2, 3, &mut rng).unwrap(), 3),
        (VaeModel::<f64>::strided([1, 28, 28], 3, &mut rng).unwrap(), 2),
    ];
    for (mut model, parts) in models {
        let batch = 8 * parts + 1;
        let [c, h, w] = model.image_shape();
        let x = rand_array(&[batch, c, h, w], 41)
            .mapv(|v| 0.1 + 0.4 * (v + 1.0))
            .into_dimensionality::<Ix4>()
            .unwrap();
        for cfg in objectives() {
            let mut par = vae::DataParallel::vae_in_parts(&model, parts);
            assert_eq!(par.parts(), parts);
            let mut twin = model.clone();
            let eps = arr3([batch, cfg.objective.samples(), model.latent_dim()], 42);
            let whole = vae::loss_and_grad(&mut twin, x.view(), eps.view(), &cfg).unwrap();
            let split = par.loss_and_grad(&mut model, x.view(), eps.view(), &cfg).unwrap();
            for (what, a, b) in [
                ("loss", split.loss, whole.loss),
                ("bound", split.bound, whole.bound),
                ("recon", split.recon, whole.recon),
                ("kl", split.kl, whole.kl),
            ] {
                assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{cfg:?} {what}: {a} vs {b}");
            }
            assert!(rel(&split.output.into_dyn(), &whole.output.into_dyn()) < 1e-13);
            assert!(rel(&split.posterior.mu.into_dyn(), &whole.posterior.mu.into_dyn()) < 1e-13);
            assert!(rel(&split.posterior.logvar.into_dyn(), &whole.posterior.logvar.into_dyn()) < 1e-13);
            for (i, (a, b)) in grads_of(&mut model).iter().zip(&grads_of(&mut twin)).enumerate() {
                assert!(rel(a, b) < 1e-12, "{cfg:?}: gradient {i} {:.2e}", rel(a, b));
            }
            // Two steps each, from the same parameters and noise.
            let (mut opt_a, mut opt_b) = (Adam::new(AdamConfig::new(1e-2)), Adam::new(AdamConfig::new(1e-2)));
            let (mut rng_a, mut rng_b) = (
                rand_chacha::ChaCha8Rng::seed_from_u64(43),
                rand_chacha::ChaCha8Rng::seed_from_u64(43),
            );
            for _ in 0..2 {
                par.train_step(&mut model, x.view(), &cfg, &mut opt_a, &mut rng_a)
                    .unwrap();
                vae::train_step(&mut twin, x.view(), &cfg, &mut opt_b, &mut rng_b).unwrap();
            }
            let mut values = Vec::new();
            twin.visit_params(&mut |p| values.push(p.value.clone()));
            let mut i = 0;
            model.visit_params(&mut |p| {
                assert!(
                    rel(&p.value, &values[i]) < 1e-10,
                    "{cfg:?}: parameter {} after two steps",
                    p.name
                );
                i += 1;
            });
        }
    }
}

/// A model whose batch is coupled (BatchNorm) is not cut, nor is one with a layer that does
/// not describe itself, and a batch too small to cut
/// is not cut: either way `DataParallel` is the one-piece step, to the bit.
#[test]
fn data_parallel_leaves_coupled_models_and_small_batches_whole() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(44);
    let dcgan = VaeModel::<f64>::dcgan([1, 28, 28], 2, 2, 2, &mut rng).unwrap();
    assert!(dcgan.couples_batch());
    assert_eq!(vae::DataParallel::vae_in_parts(&dcgan, 4).parts(), 1);
    let mut opaque = VaeModel::<f32>::strided([1, 28, 28], 4, &mut rng).unwrap();
    assert!(!opaque.couples_batch());
    assert_eq!(vae::DataParallel::vae_in_parts(&opaque, 2).parts(), 2);
    opaque.decoder = std::mem::take(&mut opaque.decoder).push(Opaque);
    assert!(opaque.couples_batch());
    assert_eq!(vae::DataParallel::vae_in_parts(&opaque, 2).parts(), 1);
    let mut m = VaeModel::<f64>::strided([1, 28, 28], 3, &mut rng).unwrap();
    let mut par = vae::DataParallel::vae_in_parts(&m, 2);
    let mut twin = m.clone();
    let cfg = m.recipe();
    let x = rand_array(&[15, 1, 28, 28], 45)
        .mapv(|v| 0.5 + 0.4 * v)
        .into_dimensionality::<Ix4>()
        .unwrap();
    let eps = arr3([15, 1, 3], 46);
    let a = par.loss_and_grad(&mut m, x.view(), eps.view(), &cfg).unwrap();
    let b = vae::loss_and_grad(&mut twin, x.view(), eps.view(), &cfg).unwrap();
    assert_eq!(a.loss, b.loss);
    assert_eq!(grads_of(&mut m), grads_of(&mut twin));
}

/// Parts that do not fit together are refused when the model is assembled, with an error
/// that says which: an encoder too wide for its head, a decoder that does not give the
/// images back, heads of another latent size.
#[test]
fn mismatched_parts_are_named_when_the_model_is_assembled() {
    use latent::nn::{Activation, ActivationLayer, Flatten, Linear, Sequential, Unflatten};
    use latent::vae::PosteriorHead;
    let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(50);
    let mut encoder = |out| {
        Sequential::<f32>::new()
            .push(Flatten::new())
            .push(Linear::new("e", 64, out, true, rng))
    };
    let (e6, e7) = (encoder(6), encoder(7));
    let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(51);
    let mut decoder = |side: usize| {
        Sequential::<f32>::new()
            .push(Linear::new("d", 3, side * side, true, rng))
            .push(ActivationLayer::new(Activation::Sigmoid))
            .push(Unflatten::new(&[1, side, side]))
    };
    let (d8, d7) = (decoder(8), decoder(7));
    let ok = VaeModel::new(
        [1, 8, 8],
        3,
        e6.clone(),
        PosteriorHead::MeanLogStd,
        d8.clone(),
        Likelihood::Bernoulli,
    );
    assert!(ok.is_ok());
    let err = VaeModel::new(
        [1, 8, 8],
        3,
        e7,
        PosteriorHead::MeanLogStd,
        d8.clone(),
        Likelihood::Bernoulli,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("encoder gives [1, 7]") && err.contains("[1, 6]"), "{err}");
    let err = VaeModel::new(
        [1, 8, 8],
        3,
        e6.clone(),
        PosteriorHead::MeanLogStd,
        d7,
        Likelihood::Bernoulli,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("decoder gives [1, 1, 7, 7]"), "{err}");
    let heads = PosteriorHead::linear(("mu", "logvar"), 6, 4, rng);
    let err = VaeModel::new([1, 8, 8], 3, e6.clone(), heads, d8.clone(), Likelihood::Bernoulli)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not latent = 3"), "{err}");
    let err = VaeModel::new([1, 9, 9], 3, e6, PosteriorHead::MeanLogStd, d8, Likelihood::Bernoulli)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("encoder cannot take [1, 9, 9] images"), "{err}");
}

/// An evaluation-mode encode keeps nothing for backward (the linear heads included), so a
/// backward after it is an error rather than a gradient of stale features; a training
/// encode keeps what the backward needs.
#[test]
fn an_evaluation_forward_keeps_nothing_for_backward() {
    let mut m = VaeModel::<f32>::strided([1, 28, 28], 3, &mut rand_chacha::ChaCha8Rng::seed_from_u64(52)).unwrap();
    let x = ndarray::Array4::<f32>::from_elem((2, 1, 28, 28), 0.5);
    m.encode(x.view(), latent::nn::Mode::Eval).unwrap();
    let d = Array2::<f32>::ones((2, 3));
    let err = m.encode_backward(d.clone(), d.clone()).unwrap_err().to_string();
    assert!(err.contains("backward before forward"), "{err}");
    m.encode(x.view(), latent::nn::Mode::Train).unwrap();
    m.encode_backward(d.clone(), d).unwrap();
}

/// The two-stochastic-layer VAE's whole step, ELBO and IWAE, against central differences
/// in f64 on every parameter.
#[test]
fn two_layer_vae_gradients_match_finite_differences() {
    use latent::models::Hvae2;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(60);
    let mut m = Hvae2::<f64>::new([1, 3, 4], (7, 5), (6, 3), &mut rng).unwrap();
    jitter(&mut m, 61);
    let x = rand_array(&[3, 1, 3, 4], 62)
        .mapv(|v| if v > 0.0 { 1.0 } else { 0.0 })
        .into_dimensionality::<Ix4>()
        .unwrap();
    let (eps1, eps2) = (arr3([3, 4, 5], 63), arr3([3, 4, 3], 64));
    for objective in [
        Objective::Elbo { samples: 4, beta: 1.0 },
        Objective::Iwae { samples: 4 },
    ] {
        m.loss_and_grad(x.view(), eps1.view(), eps2.view(), objective).unwrap();
        let mut grads = Vec::new();
        m.visit_params(&mut |p| grads.push((p.name.clone(), p.value.clone(), p.grad.clone())));
        for (i, (name, value, grad)) in grads.into_iter().enumerate() {
            let e = fd_check_h(&value, &grad, 5, H, |vp| {
                let mut c = m.clone();
                let mut j = 0;
                c.visit_params(&mut |p| {
                    if j == i {
                        p.value.assign(vp);
                    }
                    j += 1;
                });
                c.loss_and_grad(x.view(), eps1.view(), eps2.view(), objective)
                    .unwrap()
                    .loss
            });
            assert!(e < TOL, "two-layer VAE {objective:?}: d{name} {e:.2e}");
        }
    }
    let bad = m.loss_and_grad(
        x.view(),
        eps1.view(),
        arr3([3, 4, 2], 65).view(),
        Objective::Iwae { samples: 4 },
    );
    assert!(bad.unwrap_err().to_string().contains("eps2"));
}

/// The two-layer model's DReG gradient against central differences in f64. Its encoder
/// part is the gradient of a surrogate, `-mean_b sum_k c_k l_k`, with `c = w~^2` fixed at
/// the current parameters and `l_k` the log-weight of sample k with q's parameters fixed
/// (at their current values) inside both `log q` terms, while the samples `h1`, `h2` move
/// with the encoder's parameters; its decoder part is IWAE's, checked against the loss.
#[test]
fn two_layer_dreg_gradients_match_finite_differences_of_their_surrogate() {
    use latent::models::{GaussianMlp, Hvae2};
    use latent::nn::{Layer, Mode};
    use ndarray::{Array2, ArrayView2, Axis, Ix2};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(66);
    let mut m = Hvae2::<f64>::new([1, 3, 4], (7, 5), (6, 3), &mut rng).unwrap();
    jitter(&mut m, 67);
    let (b, k) = (3, 4);
    let x = rand_array(&[b, 1, 3, 4], 68)
        .mapv(|v| if v > 0.0 { 1.0 } else { 0.0 })
        .into_dimensionality::<Ix4>()
        .unwrap();
    let (eps1, eps2) = (arr3([b, k, 5], 69), arr3([b, k, 3], 70));
    let gaussian = |g: &mut GaussianMlp<f64>, input: Array2<f64>| {
        let h = g.net.forward(input.into_dyn(), Mode::Eval).unwrap();
        let q = g
            .heads
            .forward(h.into_dimensionality::<Ix2>().unwrap().view(), Mode::Eval)
            .unwrap();
        (q.mu, q.logvar)
    };
    // sum over the last axis of log N(v; mu, e^lv), rows of [m, c].
    let log_normal = |v: ArrayView2<f64>, mu: ArrayView2<f64>, lv: ArrayView2<f64>| {
        let t = (&v - &mu).mapv(|d| d * d) * lv.mapv(|l| (-l).exp());
        (lv.mapv(|l| -0.5 * (2.0 * std::f64::consts::PI).ln() - 0.5 * l) - t * 0.5).sum_axis(Axis(1))
    };
    let x2 = x.to_shape((b, 12)).unwrap().to_owned();
    // l [b, k]: samples from `path`'s encoder, q's densities from `fixed`'s.
    let surrogate_terms = |path: &mut Hvae2<f64>, fixed: &mut Hvae2<f64>| {
        let (mu1, lv1) = gaussian(&mut path.q_h1, x2.clone());
        let mut h1 = Array2::zeros((b * k, 5));
        for ((r, c), v) in h1.indexed_iter_mut() {
            let (i, j) = (r / k, r % k);
            *v = mu1[[i, c]] + (0.5 * lv1[[i, c]]).exp() * eps1[[i, j, c]];
        }
        let (mu2, lv2) = gaussian(&mut path.q_h2, h1.clone());
        let e2 = eps2.to_shape((b * k, 3)).unwrap();
        let h2 = &mu2 + &(lv2.mapv(|l| (0.5 * l).exp()) * &e2);
        let (mp, lvp) = gaussian(&mut path.p_h1, h2.clone());
        let logits = path.p_x.forward(h1.clone().into_dyn(), Mode::Eval).unwrap();
        let logits = logits.into_shape_with_order((b, k, 12)).unwrap();
        let ll = vae::log_likelihood(vae::Likelihood::BernoulliLogits, x2.view(), logits.view()).unwrap();
        let (fmu1, flv1) = gaussian(&mut fixed.q_h1, x2.clone());
        let rep = |a: &Array2<f64>| Array2::from_shape_fn((b * k, a.ncols()), |(r, c)| a[[r / k, c]]);
        let (fmu2, flv2) = gaussian(&mut fixed.q_h2, h1.clone());
        let zeros = Array2::zeros((b * k, 3));
        let rest = log_normal(h1.view(), mp.view(), lvp.view()) + log_normal(h2.view(), zeros.view(), zeros.view())
            - log_normal(h1.view(), rep(&fmu1).view(), rep(&flv1).view())
            - log_normal(h2.view(), fmu2.view(), flv2.view());
        ll + rest.into_shape_with_order((b, k)).unwrap()
    };
    let mut base = m.clone();
    let log_w = m.log_weights(x.view(), eps1.view(), eps2.view()).unwrap();
    let l0 = surrogate_terms(&mut base.clone(), &mut base);
    let start = (&l0 - &log_w).mapv(f64::abs).fold(0.0, |a: f64, &d| a.max(d));
    assert!(
        start < 1e-10,
        "the surrogate's terms are the log-weights at the start: {start:e}"
    );
    let w = vae::log_mean_exp_backward(log_w.view(), ndarray::Array1::ones(b).view()).unwrap();
    let c = w.mapv(|v| v * v);
    m.loss_and_grad(x.view(), eps1.view(), eps2.view(), Objective::IwaeDreg { samples: k })
        .unwrap();
    let mut grads = Vec::new();
    m.visit_params(&mut |p| grads.push((p.name.clone(), p.value.clone(), p.grad.clone())));
    for (i, (name, value, grad)) in grads.into_iter().enumerate() {
        let encoder = name.starts_with("q_");
        let e = fd_check_h(&value, &grad, 5, H, |vp| {
            let mut moved = base.clone();
            let mut j = 0;
            moved.visit_params(&mut |p| {
                if j == i {
                    p.value.assign(vp);
                }
                j += 1;
            });
            if encoder {
                -(&c * &surrogate_terms(&mut moved, &mut base.clone())).sum() / b as f64
            } else {
                moved
                    .loss_and_grad(x.view(), eps1.view(), eps2.view(), Objective::Iwae { samples: k })
                    .unwrap()
                    .loss
            }
        });
        assert!(e < TOL, "two-layer DReG: d{name} {e:.2e}");
    }
}

/// The conditional VAE: every parameter gradient against finite differences under each
/// objective (the decoder's label columns repeated over each image's samples); each
/// image's bound is its own, with its label, whatever the batch; labels of the wrong
/// count or class are errors.
#[test]
fn conditional_vae_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let mut m = VaeModel::<f64>::mlp_conditional([2, 3, 4], [6, 5], 3, 4, &mut rng).unwrap();
    jitter(&mut m, 22);
    assert_eq!(m.classes(), Some(4));
    m.condition_on(ndarray::arr1(&[2u8, 0, 3, 1, 2]).view()).unwrap();
    for cfg in objectives() {
        check_model("conditional MLP VAE", &mut m, 5, cfg, 5);
    }
    // Two images, two samples each: the batch's mean bound is the mean of each image's
    // bound alone with its label and its noise (so codes meet their own image's label).
    let x = rand_array(&[2, 2, 3, 4], 23)
        .mapv(|v| 0.5 + 0.4 * v)
        .into_dimensionality::<Ix4>()
        .unwrap();
    let eps = arr3([2, 2, 3], 24);
    let cfg = LossConfig {
        objective: Objective::Elbo { samples: 2, beta: 1.0 },
        kl: KlEstimator::Closed,
        reduction: Reduction::Mean,
    };
    m.condition_on(ndarray::arr1(&[3u8, 1]).view()).unwrap();
    let both = vae::loss_and_grad(&mut m, x.view(), eps.view(), &cfg).unwrap().loss;
    let mut alone = 0.0;
    for (i, label) in [(0, 3u8), (1, 1)] {
        m.condition_on(ndarray::arr1(&[label]).view()).unwrap();
        let xi = x.slice(ndarray::s![i..i + 1, .., .., ..]);
        let ei = eps.slice(ndarray::s![i..i + 1, .., ..]);
        alone += vae::loss_and_grad(&mut m, xi, ei, &cfg).unwrap().loss / 2.0;
    }
    assert!((both - alone).abs() < 1e-12 * alone.abs(), "{both} vs {alone}");
    // Another label gives another bound: the label reaches the model.
    m.condition_on(ndarray::arr1(&[0u8, 1]).view()).unwrap();
    let other = vae::loss_and_grad(&mut m, x.view(), eps.view(), &cfg).unwrap().loss;
    assert!((other - both).abs() > 1e-9);
    // Wrong count, class out of range.
    m.condition_on(ndarray::arr1(&[0u8, 1, 2]).view()).unwrap();
    let e = vae::loss_and_grad(&mut m, x.view(), eps.view(), &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 labels") && e.contains("2 images"), "{e}");
    let e = m.condition_on(ndarray::arr1(&[4u8]).view()).unwrap_err().to_string();
    assert!(e.contains("label 4"), "{e}");
}
