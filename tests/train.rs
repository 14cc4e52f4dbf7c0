//! `Trainer`: resume bit for bit, hooks (a KL warm-up, early stopping), the history and
//! its CSV, the non-finite guard, collapse restarts, the autoencoders through the same
//! loop, and a user-built conv VAE trained data-parallel whose step matches finite
//! differences in f64.

mod common;

use common::fd_check_h;
use latent::data::Dataset;
use latent::loss::Reduction;
use latent::models::{ConvAe, LinearAe};
use latent::nn::{
    Activation, ActivationLayer, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Linear, Module, Sequential, Unflatten,
};
use latent::optim::AdamConfig;
use latent::train::{CollapsePolicy, EvalConfig, NonFinitePolicy, Trainer};
use latent::vae::{self, KlEstimator, Likelihood, LossConfig, Objective, PosteriorHead, VaeModel};
use latent::Float;
use ndarray::{Array1, Array4, Ix4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` images `[c, side, side]` of soft blobs in [0, 1], labelled by where the blob is.
fn blobs(n: usize, c: usize, side: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut images = Array4::zeros((n, c, side, side));
    let mut labels = Array1::zeros(n);
    for i in 0..n {
        let (cy, cx) = (rng.random_range(0.0..side as f32), rng.random_range(0.0..side as f32));
        labels[i] = (2 * (cy > side as f32 / 2.0) as u8) + (cx > side as f32 / 2.0) as u8;
        for ch in 0..c {
            for y in 0..side {
                for x in 0..side {
                    let d2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
                    images[[i, ch, y, x]] = (-d2 / (2.0 + ch as f32)).exp();
                }
            }
        }
    }
    Dataset::from_arrays(images, labels).unwrap()
}

/// A VAE in none of the notebooks: an MLP encoder and decoder with Tanh, Bernoulli on logits.
fn mlp_vae<F: Float>(side: usize, hidden: usize, latent: usize, rng: &mut ChaCha8Rng) -> latent::Result<VaeModel<F>> {
    let d = side * side;
    let tanh = || ActivationLayer::new(Activation::Tanh);
    let encoder = Sequential::new()
        .push(Flatten::new())
        .push(Linear::new("encoder.0", d, hidden, true, rng))
        .push(tanh());
    let head = PosteriorHead::linear(("fc_mu", "fc_logvar"), hidden, latent, rng);
    let decoder = Sequential::new()
        .push(Linear::new("decoder.0", latent, hidden, true, rng))
        .push(tanh())
        .push(Linear::new("decoder.2", hidden, d, true, rng))
        .push(Unflatten::new(&[1, side, side]));
    VaeModel::new(
        [1, side, side],
        latent,
        encoder,
        head,
        decoder,
        Likelihood::BernoulliLogits,
    )
}

/// A conv VAE of the user's own: Conv2d, ReLU, linear heads; Linear, ConvTranspose2d,
/// Sigmoid; Bernoulli on probabilities.
fn user_conv_vae<F: Float>(c: usize, side: usize, latent: usize, rng: &mut ChaCha8Rng) -> latent::Result<VaeModel<F>> {
    let s2 = ConvOptions::default().stride(2).padding(1);
    let half = side / 2;
    let encoder = Sequential::new()
        .push(Conv2d::new("enc.conv", c, 4, (3, 3), s2, rng))
        .push(ActivationLayer::new(Activation::Relu))
        .push(Flatten::new());
    let head = PosteriorHead::linear(("enc.mu", "enc.logvar"), 4 * half * half, latent, rng);
    let decoder = Sequential::new()
        .push(Linear::new("dec.fc", latent, 4 * half * half, true, rng))
        .push(Unflatten::new(&[4, half, half]))
        .push(ConvTranspose2d::new(
            "dec.deconv",
            4,
            c,
            (3, 3),
            s2.output_padding(1),
            rng,
        ))
        .push(ActivationLayer::new(Activation::Sigmoid));
    VaeModel::new([c, side, side], latent, encoder, head, decoder, Likelihood::Bernoulli)
}

fn params_of<M: Module<f32>>(m: &mut M) -> Vec<Vec<f32>> {
    let mut v = Vec::new();
    m.visit_params(&mut |p| v.push(p.value.iter().copied().collect()));
    v
}

fn quiet<'h>() -> Trainer<'h, f32> {
    Trainer::new().progress(false).evaluation(None)
}

#[test]
fn a_resumed_run_is_the_uninterrupted_run_to_the_bit() {
    let train = blobs(96, 1, 8, 1);
    let dir = std::env::temp_dir().join(format!("latent-train-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (whole, part) = (dir.join("whole.safetensors"), dir.join("part.safetensors"));
    let build = |rng: &mut ChaCha8Rng| mlp_vae::<f32>(8, 16, 3, rng);
    let run = |epochs, ck: &std::path::Path, resume: bool| {
        let mut t = quiet()
            .epochs(epochs)
            .batch(20)
            .seed(5)
            .name("mlp VAE on blobs")
            .checkpoint(ck, 1)
            // A warm-up that is a function of the step, so a resumed run repeats it.
            .on_step(|s| s.set_beta((s.step as f64 / 10.0).min(1.0)));
        if resume {
            t = t.resume(ck);
        }
        t.fit(build, &train, None).unwrap()
    };
    let mut a = run(3, &whole, false);
    run(1, &part, false);
    let mut b = run(3, &part, true);
    assert_eq!(b.first_epoch, 1);
    assert_eq!(params_of(&mut a.model), params_of(&mut b.model));
    assert_eq!(a.history.epochs[1..].len(), b.history.epochs.len());
    for (x, y) in a.history.epochs[1..].iter().zip(&b.history.epochs) {
        assert_eq!(
            (x.epoch, x.loss, x.recon, x.kl, x.beta),
            (y.epoch, y.loss, y.recon, y.kl, y.beta)
        );
    }
    assert_eq!(a.rng, b.rng);
    // A checkpoint of another run is refused, naming both.
    let err = quiet()
        .epochs(3)
        .batch(20)
        .name("another run")
        .resume(&part)
        .fit(build, &train, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("mlp VAE on blobs") && err.contains("another run"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kept_checkpoints_are_the_run_at_their_epochs() {
    let train = blobs(60, 1, 8, 3);
    let dir = std::env::temp_dir().join(format!("latent-train-kept-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = dir.join("run.ckpt.safetensors");
    let build = |rng: &mut ChaCha8Rng| mlp_vae::<f32>(8, 16, 3, rng);
    let trainer = |epochs| quiet().epochs(epochs).batch(20).seed(9).name("kept").checkpoint(&ck, 3);
    let mut whole = trainer(3).keep_checkpoints_at([1, 2]).fit(build, &train, None).unwrap();
    let kept = latent::train::kept_checkpoint_path(&ck, 1);
    assert_eq!(kept, dir.join("run.ckpt.epoch1.safetensors"));
    assert!(latent::train::kept_checkpoint_path(&ck, 2).exists());
    assert!(!latent::train::kept_checkpoint_path(&ck, 3).exists());
    // Going on from the copy kept after epoch 1 ends where the whole run ended.
    let mut resumed = trainer(3).resume(&kept).fit(build, &train, None).unwrap();
    assert_eq!(resumed.first_epoch, 1);
    assert_eq!(params_of(&mut whole.model), params_of(&mut resumed.model));
    // Without a checkpoint path there is nothing to keep: an error, not silence.
    let err = quiet()
        .epochs(1)
        .batch(20)
        .keep_checkpoints_at([1])
        .fit(build, &train, None);
    assert!(err.err().unwrap().to_string().contains("checkpoint"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hooks_schedule_beta_change_the_learning_rate_and_stop_early() {
    let train = blobs(60, 1, 8, 2);
    let mut seen_steps = Vec::new();
    let fitted = quiet()
        .epochs(5)
        .batch(20)
        .loss(LossConfig {
            objective: Objective::Elbo { samples: 1, beta: 0.0 },
            kl: KlEstimator::Closed,
            reduction: Reduction::Mean,
        })
        .adam(AdamConfig::new(1e-2))
        .on_step(|s| {
            seen_steps.push((s.epoch, s.step_in_epoch, s.step, s.last.is_some()));
            // beta = 4 with a linear warm-up over the first epoch.
            s.set_beta(4.0 * (s.step as f64 / s.steps_per_epoch as f64).min(1.0));
        })
        .on_epoch(|e| {
            e.adam.lr *= 0.5;
            if e.record.epoch == 2 {
                e.stop();
            }
        })
        .fit(|rng| mlp_vae::<f32>(8, 8, 2, rng), &train, None)
        .unwrap();
    assert!(fitted.stopped_early);
    let h = &fitted.history;
    assert_eq!(h.epochs.len(), 2);
    assert_eq!(h.steps.len(), 6);
    assert_eq!(h.epochs[0].beta, Some(4.0 * 2.0 / 3.0));
    assert_eq!(h.epochs[1].beta, Some(4.0));
    assert_eq!(h.epochs[0].lr, 1e-2f32 as f64);
    assert_eq!(h.epochs[1].lr, 5e-3f32 as f64);
    assert_eq!(fitted.optimizer.config.lr, 2.5e-3);
    assert_eq!(seen_steps.len(), 6);
    assert_eq!(seen_steps[0], (0, 0, 0, false));
    assert_eq!(seen_steps[4], (1, 1, 4, true));
    // The CSV has the header and one line per epoch, with the VAE's terms.
    let csv = h.to_csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "epoch,loss,recon,kl,seconds,lr,beta,skipped");
    assert_eq!(lines.len(), 3);
    let fields: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(fields[0], "2");
    assert_eq!(fields[1].parse::<f64>().unwrap(), h.epochs[1].loss);
    assert_eq!(fields[6], "4");
    let path = std::env::temp_dir().join(format!("latent-history-{}.csv", std::process::id()));
    h.write_csv(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), csv);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_non_finite_loss_stops_the_run_or_skips_the_batch_as_asked() {
    let train = blobs(60, 1, 8, 3);
    let poisoned = |rng: &mut ChaCha8Rng| {
        let mut m = mlp_vae::<f32>(8, 8, 2, rng)?;
        m.decoder.visit_params(&mut |p| p.value.fill(f32::NAN));
        Ok(m)
    };
    let err = quiet()
        .epochs(2)
        .batch(20)
        .fit(poisoned, &train, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("training stopped at epoch 1, batch 0") && err.contains("non-finite"),
        "{err}"
    );
    let err = quiet()
        .epochs(2)
        .batch(20)
        .non_finite(NonFinitePolicy::SkipBatch(4))
        .fit(poisoned, &train, None)
        .err()
        .unwrap()
        .to_string();
    // Three batches of the first epoch and one of the second are skipped, the fifth stops.
    assert!(err.contains("training stopped at epoch 2, batch 1"), "{err}");
}

#[test]
fn a_collapse_restarts_from_a_new_initialisation_and_gives_up_after_the_attempts() {
    let train = blobs(60, 1, 8, 4);
    let build = |rng: &mut ChaCha8Rng| mlp_vae::<f32>(8, 8, 2, rng);
    let mut builds = 0;
    // Any spread counts as a collapse: every attempt restarts, and the last is an error.
    let err = quiet()
        .batch(20)
        .collapse(Some(CollapsePolicy {
            check_step: 2,
            threshold: f64::INFINITY,
            attempts: 3,
        }))
        .fit(
            |rng: &mut ChaCha8Rng| {
                builds += 1;
                build(rng)
            },
            &train,
            None,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("collapsed in each of 3 initialisations"), "{err}");
    assert_eq!(builds, 3);
    // A healthy start is checked and kept.
    let fitted = quiet()
        .epochs(1)
        .batch(20)
        .collapse(Some(CollapsePolicy::default()))
        .fit(build, &train, None)
        .unwrap();
    assert_eq!(fitted.attempts, 1);
}

#[test]
fn the_autoencoders_train_through_the_same_loop_and_are_evaluated() {
    let train = blobs(200, 1, 12, 5);
    let test = blobs(40, 1, 12, 6);
    let eval = Some(EvalConfig {
        chunk: 16,
        ..EvalConfig::default()
    });
    let fitted = quiet()
        .epochs(4)
        .batch(25)
        .adam(AdamConfig::new(1e-2))
        .evaluation(eval.clone())
        .fit(|rng| LinearAe::<f32>::new(144, 4, rng), &train, Some(&test))
        .unwrap();
    let h = &fitted.history;
    assert!(h.epochs[3].loss < 0.8 * h.epochs[0].loss, "{h:?}");
    assert!(h.epochs.iter().all(|e| e.recon.is_none() && e.beta.is_none()));
    let ev = fitted.evaluation.unwrap();
    assert!(ev.vae.is_none() && ev.mse > 0.0 && ev.mse < h.epochs[0].loss);
    assert_eq!(ev.codes.dim(), (40, 4));
    let fitted = quiet()
        .epochs(3)
        .batch(25)
        .evaluation(eval)
        .fit(|rng| ConvAe::<f32>::new([1, 12, 12], 4, 4, 3, rng), &train, Some(&test))
        .unwrap();
    assert!(fitted.history.epochs[2].loss < fitted.history.epochs[0].loss);
    assert_eq!(fitted.evaluation.unwrap().reconstructions.shape(), &[16, 1, 12, 12]);
}

/// The user-built conv VAE: trained through `Trainer` with its batches cut across two
/// threads, its loss falls and it is evaluated; the same data-parallel step in f64
/// matches finite differences on every parameter.
#[test]
fn a_user_built_conv_vae_trains_data_parallel_and_its_step_matches_finite_differences() {
    let train = blobs(160, 2, 8, 7);
    let test = blobs(30, 2, 8, 8);
    let fitted = quiet()
        .epochs(4)
        .batch(32)
        .adam(AdamConfig::new(3e-3))
        .loss(LossConfig {
            objective: Objective::Elbo { samples: 2, beta: 1.0 },
            kl: KlEstimator::Closed,
            reduction: Reduction::Mean,
        })
        .evaluation(Some(EvalConfig {
            iwae_k: 8,
            iwae_images: 10,
            chunk: 16,
            iwae_chunk: 5,
        }))
        .fit(|rng| user_conv_vae::<f32>(2, 8, 3, rng), &train, Some(&test))
        .unwrap();
    let h = &fitted.history;
    assert!(h.epochs[3].loss < h.epochs[0].loss, "{h:?}");
    let v = fitted.evaluation.as_ref().unwrap().vae.clone().unwrap();
    let iwae = v.iwae.unwrap();
    assert!((iwae.k, iwae.images) == (8, 10) && iwae.mean.is_finite());
    assert!((v.recon + v.kl + v.bound).abs() < 1e-3 * v.recon.abs());

    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut model = user_conv_vae::<f64>(2, 8, 3, &mut rng).unwrap();
    let mut par = vae::DataParallel::vae_in_parts(&model, 2);
    assert_eq!(par.parts(), 2);
    let x = common::rand_array(&[17, 2, 8, 8], 10)
        .mapv(|v| 0.5 + 0.45 * v)
        .into_dimensionality::<Ix4>()
        .unwrap();
    let cfg = LossConfig {
        objective: Objective::Iwae { samples: 3 },
        kl: KlEstimator::Closed,
        reduction: Reduction::Mean,
    };
    let eps = vae::sample_noise::<f64, _>(17, 3, 3, &mut rng);
    par.loss_and_grad(&mut model, x.view(), eps.view(), &cfg).unwrap();
    let mut grads = Vec::new();
    model.visit_params(&mut |p| grads.push((p.name.clone(), p.value.clone(), p.grad.clone())));
    for (i, (name, value, grad)) in grads.into_iter().enumerate() {
        let e = fd_check_h(&value, &grad, 4, 1e-5, |vp| {
            let mut m = model.clone();
            let mut j = 0;
            m.visit_params(&mut |p| {
                if j == i {
                    p.value.assign(vp);
                }
                j += 1;
            });
            vae::loss_and_grad(&mut m, x.view(), eps.view(), &cfg).unwrap().loss
        });
        assert!(e < 1e-6, "d{name}: {e:.2e}");
    }
}

/// Static binarization is one fixed draw per seed (pixels 0 or 1, about as many ones as
/// the intensities' sum); dynamic binarization draws from the run's generator, so a
/// resumed run is still the uninterrupted one.
#[test]
fn binarization_is_seeded_and_a_binarized_run_resumes_to_the_bit() {
    let data = blobs(50, 1, 8, 11);
    let (a, b, c) = (data.binarized(1), data.binarized(1), data.binarized(2));
    assert_eq!(a.images, b.images);
    assert_ne!(a.images, c.images);
    assert!(a.images.iter().all(|&v| v == 0.0 || v == 1.0));
    let (ones, mass) = (a.images.sum() as f64, data.images.sum() as f64);
    assert!(
        (ones - mass).abs() < 4.0 * mass.sqrt(),
        "{ones} ones for {mass} of intensity"
    );
    let dir = std::env::temp_dir().join(format!("latent-train-binarized-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = dir.join("ck.safetensors");
    let run = |epochs, resume: bool| {
        let mut t = quiet()
            .epochs(epochs)
            .batch(10)
            .seed(3)
            .binarize(true)
            .checkpoint(&ck, 1);
        if resume {
            t = t.resume(&ck);
        }
        t.fit(|rng| VaeModel::<f32>::mlp([1, 8, 8], [8, 8], 2, rng), &data, None)
            .unwrap()
    };
    let mut whole = run(2, false);
    run(1, false);
    let mut resumed = run(2, true);
    assert_eq!(params_of(&mut whole.model), params_of(&mut resumed.model));
    // Without binarization the same seed trains another model.
    let mut plain = quiet()
        .epochs(2)
        .batch(10)
        .seed(3)
        .fit(|rng| VaeModel::<f32>::mlp([1, 8, 8], [8, 8], 2, rng), &data, None)
        .unwrap();
    assert_ne!(params_of(&mut whole.model), params_of(&mut plain.model));
    std::fs::remove_dir_all(dir).unwrap();
}

/// The two-stochastic-layer VAE trains through the same loop, binarized, on IWAE, and is
/// evaluated (its bound, an IWAE estimate, the codes of its first layer).
#[test]
fn the_two_layer_vae_trains_through_the_trainer() {
    let train = blobs(120, 1, 8, 12);
    let test = blobs(20, 1, 8, 13).binarized(0);
    let fitted = quiet()
        .epochs(4)
        .batch(20)
        .adam(AdamConfig::new(3e-3))
        .binarize(true)
        .loss(LossConfig::iwae(3))
        .evaluation(Some(EvalConfig {
            iwae_k: 10,
            iwae_images: 20,
            chunk: 8,
            iwae_chunk: 4,
        }))
        .fit(
            |rng| latent::models::Hvae2::<f32>::new([1, 8, 8], (16, 4), (8, 2), rng),
            &train,
            Some(&test),
        )
        .unwrap();
    let h = &fitted.history;
    assert!(h.epochs[3].loss < h.epochs[0].loss, "{h:?}");
    let ev = fitted.evaluation.unwrap();
    let v = ev.vae.unwrap();
    assert!(
        v.iwae.unwrap().mean >= v.bound - 1e-6 * v.bound.abs(),
        "IWAE-10 below the ELBO"
    );
    assert!((v.recon + v.kl + v.bound).abs() < 1e-6 * v.recon.abs());
    assert_eq!(ev.codes.dim(), (20, 4));
}
