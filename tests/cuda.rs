//! Each GPU kernel against its CPU counterpart on random inputs (the `cuda` feature).
//! Layers run through [`GpuSequential`] against the same CPU [`Sequential`] (forward,
//! input gradient, every parameter gradient, BatchNorm's running statistics); the VAE
//! kernels (sample, KL, likelihoods, bounds) through [`VaeTrainer`] against
//! `vae::loss_and_grad` on the three notebook models; Adam against `optim::adam_update`.
//! Without a usable GPU every test says so and passes.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use latent::cuda::{Gpu, GpuSequential, VaeTrainer};
use latent::device::{select, Device, DeviceRequest};
use latent::models::VaeModel;
use latent::nn::{
    Activation, ActivationLayer, BatchNorm2d, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Layer, Linear, Mode,
    Module, PixelBias, Sequential, Unflatten,
};
use latent::optim::{Adam, AdamConfig};
use latent::vae::{self, KlEstimator, LossConfig, Objective, Vae};
use ndarray::{Array2, Array3, Array4, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};

type Rng64 = rand_chacha::ChaCha8Rng;

/// Relative error of f32 kernels against the CPU: products and sums in other orders.
const KERNEL_TOL: f64 = 1e-5;

fn gpu() -> Option<Arc<Gpu>> {
    match select(DeviceRequest::Cuda) {
        Ok((Device::Cuda(ctx), _)) => Some(Arc::new(Gpu::new(ctx).expect("a usable GPU compiles the kernels"))),
        Ok(_) => unreachable!("--device cuda never gives the CPU"),
        Err(e) => {
            // Written to the stream itself, past the test harness's capture of eprintln!,
            // so that a skipped test is visible in a plain `cargo test`.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: GPU kernel test without a GPU ({e})");
            None
        }
    }
}

fn rel(what: &str, a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite GPU values");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

fn check(what: &str, gpu: &ArrayD<f32>, cpu: &ArrayD<f32>, tol: f64) {
    let e = rel(what, gpu, cpu);
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:e}");
}

fn random(shape: &[usize], rng: &mut Rng64) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(-1.0f32..1.0))
}

fn grads(m: &mut (impl Module<f32> + ?Sized)) -> Vec<ArrayD<f32>> {
    let mut g = Vec::new();
    m.visit_params(&mut |p| g.push(p.grad.clone()));
    g
}

/// The network on the CPU and on the GPU: forward, backward (dx and every parameter's
/// gradient), then the running statistics, all against the CPU's.
fn compare(name: &str, mut net: Sequential<f32>, x_shape: &[usize], seed: u64) {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng64::seed_from_u64(seed);
    let x = random(x_shape, &mut rng);
    let mut on_gpu = GpuSequential::new(gpu, &mut net).unwrap();
    let y_gpu = on_gpu.forward(x.view()).unwrap();
    let y_cpu = net.forward(x.clone(), Mode::Train).unwrap();
    check(&format!("{name} forward"), &y_gpu, &y_cpu, KERNEL_TOL);
    let dy = random(y_cpu.shape(), &mut rng);
    let dx_gpu = on_gpu.backward(dy.view(), true).unwrap().unwrap();
    net.zero_grad();
    let dx_cpu = net.backward(dy, true).unwrap().unwrap();
    check(&format!("{name} dx"), &dx_gpu, &dx_cpu, KERNEL_TOL);
    for (i, (g, c)) in on_gpu.grads().unwrap().iter().zip(grads(&mut net)).enumerate() {
        check(&format!("{name} parameter {i} gradient"), g, &c, KERNEL_TOL);
    }
    let mut cpu_buffers = Vec::new();
    net.visit_buffers(&mut |_, v| cpu_buffers.push(v.to_owned()));
    on_gpu.download_into(&mut net).unwrap();
    let mut gpu_buffers = Vec::new();
    net.visit_buffers(&mut |_, v| gpu_buffers.push(v.to_owned()));
    for (i, (g, c)) in gpu_buffers.iter().zip(&cpu_buffers).enumerate() {
        check(&format!("{name} buffer {i}"), g, c, KERNEL_TOL);
    }
}

fn rng(seed: u64) -> Rng64 {
    Rng64::seed_from_u64(seed)
}

#[test]
fn conv2d_im2col_col2im_and_bias_match_the_cpu() {
    let r = &mut rng(1);
    let s2 = ConvOptions::default().stride(2);
    let net = Sequential::new().push(Conv2d::new("c", 1, 16, (4, 4), s2, r));
    compare("conv2d 1->16 k4 s2 (DCGAN)", net, &[5, 1, 28, 28], 2);
    let net = Sequential::new().push(Conv2d::new("c", 6, 7, (5, 5), ConvOptions::default(), r));
    compare("conv2d 6->7 k5", net, &[3, 6, 12, 12], 3);
    let odd = ConvOptions {
        stride: (2, 1),
        padding: (1, 0),
        dilation: (1, 2),
        bias: false,
        ..ConvOptions::default()
    };
    let net = Sequential::new().push(Conv2d::new("c", 3, 4, (2, 3), odd, r));
    compare("conv2d 3->4 k2x3 s(2,1) p(1,0) d(1,2), no bias", net, &[2, 3, 9, 11], 4);
}

#[test]
fn conv_transpose2d_matches_the_cpu() {
    let r = &mut rng(5);
    let s2 = ConvOptions::default().stride(2);
    let net = Sequential::new().push(ConvTranspose2d::new("t", 8, 12, (3, 3), s2, r));
    compare("convT 8->12 k3 s2 from 1x1 (DCGAN)", net, &[4, 8, 1, 1], 6);
    let net = Sequential::new().push(ConvTranspose2d::new("t", 6, 1, (4, 4), s2, r));
    compare("convT 6->1 k4 s2 13->28 (DCGAN)", net, &[3, 6, 13, 13], 7);
    let up = ConvOptions::default().stride(2).padding(1).output_padding(1);
    let net = Sequential::new().push(ConvTranspose2d::new("t", 5, 3, (3, 3), up, r));
    compare("convT 5->3 k3 s2 p1 op1 (strided VAE)", net, &[2, 5, 7, 7], 8);
    let odd = ConvOptions {
        stride: (1, 2),
        padding: (0, 1),
        dilation: (2, 1),
        bias: false,
        ..ConvOptions::default()
    };
    let net = Sequential::new().push(ConvTranspose2d::new("t", 3, 4, (3, 2), odd, r));
    compare("convT 3->4 k3x2 s(1,2) p(0,1) d(2,1), no bias", net, &[2, 3, 5, 6], 9);
}

#[test]
fn batch_norm_with_and_without_rectifiers_matches_the_cpu() {
    for (i, act) in [None, Some(Activation::Relu), Some(Activation::LeakyRelu(0.2))]
        .into_iter()
        .enumerate()
    {
        let mut bn = BatchNorm2d::new("bn", 5);
        if let Some(a) = act {
            bn = bn.with_rectifier(a).unwrap();
        }
        // Non-trivial gamma, beta and running statistics.
        let r = &mut rng(10 + i as u64);
        bn.weight.value = random(&[5], r).mapv(|v| 1.0 + 0.5 * v);
        bn.bias.value = random(&[5], r);
        bn.running_mean = random(&[5], r).into_dimensionality().unwrap();
        let net = Sequential::new().push(bn);
        compare(&format!("batch norm {act:?}"), net, &[6, 5, 7, 9], 20 + i as u64);
    }
}

#[test]
fn activations_match_the_cpu() {
    for (i, act) in [
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Sigmoid,
        Activation::Tanh,
    ]
    .into_iter()
    .enumerate()
    {
        let net = Sequential::new().push(ActivationLayer::new(act));
        compare(&format!("{act:?}"), net, &[3, 2, 5, 7], 30 + i as u64);
    }
}

#[test]
fn linear_pixel_bias_and_reshapes_match_the_cpu() {
    let r = &mut rng(40);
    let net = Sequential::new()
        .push(Linear::new("a", 13, 7, true, r))
        .push(ActivationLayer::new(Activation::Relu))
        .push(Linear::new("b", 7, 5, false, r));
    compare("linear, relu, linear without bias", net, &[9, 13], 41);
    // Several channels, so that Flatten and Unflatten reorder CNHW and NCHW; a pixel bias
    // after an activation, so that it must copy the kept output instead of writing over it.
    let mut bias = PixelBias::new("pb", &[3, 6, 6]);
    bias.bias.value = random(&[3, 6, 6], r);
    let net = Sequential::new()
        .push(Conv2d::new("c", 2, 3, (3, 3), ConvOptions::default(), r))
        .push(ActivationLayer::new(Activation::Tanh))
        .push(bias)
        .push(Flatten::new())
        .push(Linear::new("l", 108, 48, true, r))
        .push(Unflatten::new(&[3, 4, 4]))
        .push(ConvTranspose2d::new("t", 3, 2, (3, 3), ConvOptions::default(), r));
    compare(
        "conv, tanh, pixel bias, flatten, linear, unflatten, convT",
        net,
        &[4, 2, 8, 8],
        42,
    );
}

#[test]
fn adam_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let r = &mut rng(50);
    let n = 10_000;
    let mut p: Vec<f32> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
    let g: Vec<f32> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
    let mut m: Vec<f32> = (0..n).map(|_| r.random_range(-0.1..0.1)).collect();
    let mut v: Vec<f32> = (0..n).map(|_| r.random_range(0.0..0.01)).collect();
    let cfg = AdamConfig::new(2e-3f32).weight_decay(1e-5);
    let arr = |x: &[f32]| ArrayD::from_shape_vec(IxDyn(&[x.len()]), x.to_vec()).unwrap();
    let (mut pc, gc, mut mc, mut vc) = (arr(&p), arr(&g), arr(&m), arr(&v));
    latent::optim::adam_update(&cfg, 7, &mut pc, &gc, &mut mc, &mut vc);
    gpu.adam_round_trip(&cfg, 7, &mut p, &g, &mut m, &mut v).unwrap();
    check("adam p", &arr(&p), &pc, KERNEL_TOL);
    check("adam m", &arr(&m), &mc, KERNEL_TOL);
    check("adam v", &arr(&v), &vc, KERNEL_TOL);
}

/// One step of `make()`'s model on the CPU and on the GPU from the same values, images
/// and noise: the loss parts, every gradient and (after the update) the running statistics.
fn compare_vae(name: &str, make: &dyn Fn() -> VaeModel<f32>, cfg: LossConfig, b: usize, tol: f64) {
    let Some(gpu) = gpu() else { return };
    let mut cpu = make();
    let mut on_gpu_model = make();
    let r = &mut rng(60);
    let [c, h, w] = cpu.image_shape();
    let x = Array4::from_shape_simple_fn((b, c, h, w), || r.random_range(0.0f32..1.0));
    let eps = Array3::from_shape_simple_fn((b, cfg.objective.samples(), cpu.latent_dim()), || {
        r.random_range(-2.0f32..2.0)
    });
    let opt = Adam::new(AdamConfig::new(1e-3));
    let mut trainer = VaeTrainer::new(gpu, &mut on_gpu_model, cfg, &opt).unwrap();
    let stats = trainer.step(x.as_slice().unwrap(), eps.view()).unwrap();
    let parts = vae::loss_and_grad(&mut cpu, x.view(), eps.view(), &cfg).unwrap();
    for (what, g, c) in [
        ("loss", stats.loss, parts.loss),
        ("bound", stats.bound, parts.bound),
        ("recon", stats.recon, parts.recon),
        ("kl", stats.kl, parts.kl),
    ] {
        let e = ((g - c) as f64).abs() / (c as f64).abs().max(1e-6);
        eprintln!("{name} {what}: GPU {g} CPU {c} ({e:.1e})");
        assert!(e <= tol, "{name} {what}: GPU {g} against CPU {c}");
    }
    let names: Vec<String> = {
        let mut v = Vec::new();
        cpu.visit_params(&mut |p| v.push(p.name.clone()));
        v
    };
    let gpu_grads = trainer.grads().unwrap();
    let cpu_grads = grads(&mut cpu);
    let norm = |a: &ArrayD<f32>| a.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let total = cpu_grads.iter().map(|g| norm(g).powi(2)).sum::<f64>().sqrt();
    for ((n, g), c) in names.iter().zip(&gpu_grads).zip(&cpu_grads) {
        if norm(c) <= ZERO_GRAD * total {
            // A bias followed by train-mode BatchNorm: its exact gradient is zero, and each
            // side holds rounding noise (about 2e-8 of the whole gradient), so compare sizes.
            let ratio = norm(g) / total;
            eprintln!("{name} d/d {n}: zero in exact arithmetic; GPU {ratio:.1e} of the whole gradient");
            assert!(
                ratio <= ZERO_GRAD,
                "{name} d/d {n}: GPU {ratio:.2e} of the whole gradient"
            );
        } else {
            check(&format!("{name} d/d {n}"), g, c, tol);
        }
    }
    let mut opt_gpu = Adam::new(AdamConfig::new(1e-3));
    trainer.download_into(&mut on_gpu_model, &mut opt_gpu).unwrap();
    assert_eq!(opt_gpu.steps(), 1);
    let bufs = |m: &mut VaeModel<f32>| {
        let mut v = Vec::new();
        m.visit_buffers(&mut |_, a| v.push(a.to_owned()));
        let mut counts = Vec::new();
        m.visit_counters(&mut |_, c| counts.push(*c));
        (v, counts)
    };
    let (gb, gc) = bufs(&mut on_gpu_model);
    let (cb, cc) = bufs(&mut cpu);
    assert_eq!(gc, cc, "{name}: BatchNorm batch counts");
    for (i, (g, c)) in gb.iter().zip(&cb).enumerate() {
        check(&format!("{name} buffer {i}"), g, c, tol);
    }
}

/// A gradient this small against the whole gradient is rounding noise around an exact zero.
const ZERO_GRAD: f64 = 1e-6;

/// A whole model's step chains a dozen kernels; on an H100 its largest relative error
/// was 4.8e-6, so it is held to the kernels' own tolerance.
const MODEL_TOL: f64 = KERNEL_TOL;

#[test]
fn conv_vae_step_matches_the_cpu() {
    let make = || VaeModel::conv([1, 28, 28], 5, 4, 5, &mut rng(70)).unwrap();
    let cfg = make().recipe();
    compare_vae("ConvVAE (MC KL, Gaussian, mean)", &make, cfg, 6, MODEL_TOL);
    let iwae = LossConfig {
        objective: Objective::Iwae { samples: 3 },
        ..cfg
    };
    compare_vae("ConvVAE IWAE-3", &make, iwae, 4, MODEL_TOL);
}

#[test]
fn dcgan_vae_step_matches_the_cpu() {
    let make = || VaeModel::dcgan([1, 28, 28], 4, 4, 6, &mut rng(71)).unwrap();
    let cfg = make().recipe();
    compare_vae("DCGAN VAE (closed KL, BCE, sum)", &make, cfg, 8, MODEL_TOL);
    let beta = LossConfig {
        objective: Objective::Elbo { samples: 2, beta: 0.5 },
        kl: KlEstimator::MonteCarlo,
        ..cfg
    };
    compare_vae("DCGAN VAE ELBO-2, beta 0.5, MC KL", &make, beta, 5, MODEL_TOL);
}

#[test]
fn strided_vae_step_matches_the_cpu() {
    let make = || VaeModel::strided([1, 28, 28], 6, &mut rng(72)).unwrap();
    let cfg = make().recipe();
    compare_vae("strided VAE (linear heads, SSE, sum)", &make, cfg, 7, MODEL_TOL);
}

#[test]
fn a_non_finite_loss_is_an_error_and_nothing_is_updated() {
    let Some(gpu) = gpu() else { return };
    let mut model = VaeModel::<f32>::dcgan([1, 28, 28], 4, 4, 6, &mut rng(80)).unwrap();
    let mut first = true;
    model.visit_params(&mut |p| {
        if first {
            p.value.fill(f32::NAN);
            first = false;
        }
    });
    let cfg = model.recipe();
    let opt = Adam::new(AdamConfig::new(1e-3));
    let mut trainer = VaeTrainer::new(gpu, &mut model, cfg, &opt).unwrap();
    let x = Array2::from_elem((3, 784), 0.5f32);
    let eps = Array3::zeros((3, 1, 4));
    let err = trainer.step(x.as_slice().unwrap(), eps.view()).unwrap_err().to_string();
    assert!(err.contains("VAE loss"), "{err}");
    assert_eq!(trainer.steps(), 0);
}

#[test]
fn a_step_on_images_kept_on_the_gpu_equals_one_on_uploaded_images() {
    let Some(gpu) = gpu() else { return };
    let r = &mut rng(90);
    let data = Array2::from_shape_simple_fn((20, 784), || r.random_range(0.0f32..1.0));
    let images = gpu.upload_images(data.view()).unwrap();
    let idx = [17usize, 3, 3, 9, 0];
    let x = data.select(ndarray::Axis(0), &idx);
    let eps = Array3::from_shape_simple_fn((idx.len(), 1, 4), || r.random_range(-2.0f32..2.0));
    let make = || VaeModel::<f32>::dcgan([1, 28, 28], 4, 4, 6, &mut rng(91)).unwrap();
    let (mut m1, mut m2) = (make(), make());
    let cfg = m1.recipe();
    let opt = Adam::new(AdamConfig::new(1e-3));
    let mut t1 = VaeTrainer::new(gpu.clone(), &mut m1, cfg, &opt).unwrap();
    let mut t2 = VaeTrainer::new(gpu.clone(), &mut m2, cfg, &opt).unwrap();
    let s1 = t1.step(x.as_slice().unwrap(), eps.view()).unwrap();
    let s2 = t2.step_rows(&images, &idx, eps.view()).unwrap();
    assert_eq!(s1, s2);
    assert!(t2
        .step_rows(&images, &[20], eps.slice(ndarray::s![..1, .., ..]))
        .is_err());
}

/// The DCGAN VAE scored with the Bernoulli on logits (its sigmoid outputs read as
/// logits), so that the likelihood kernels' fourth form is held against the CPU too.
#[test]
fn bernoulli_on_logits_matches_the_cpu() {
    let make = || {
        VaeModel::dcgan([1, 28, 28], 4, 4, 6, &mut rng(73))
            .unwrap()
            .with_likelihood(vae::Likelihood::BernoulliLogits)
    };
    let cfg = make().recipe();
    compare_vae("DCGAN VAE on logits", &make, cfg, 5, MODEL_TOL);
}

/// AntixK's VanillaVAE (stride-2 convolutions, BatchNorm with LeakyReLU(0.01), a Tanh
/// output), small: its GPU plan is read off its layers like every preset's.
#[test]
fn vanilla_vae_step_matches_the_cpu() {
    let params = latent::models::VanillaVaeParams {
        image: [3, 16, 16],
        latent: 4,
        hidden: vec![4, 8],
    };
    let make = || params.build::<f32, _>(&mut rng(74)).unwrap();
    let cfg = make().recipe();
    compare_vae("VanillaVAE (linear heads, MSE, mean)", &make, cfg, 6, MODEL_TOL);
}

/// A model of the user's own, in none of the notebooks: an MLP encoder and decoder with
/// Tanh, linear heads, Bernoulli on logits, beta = 4. Nothing in it mentions the GPU.
#[test]
fn a_user_built_mlp_vae_step_matches_the_cpu() {
    let make = || {
        let r = &mut rng(75);
        let encoder = Sequential::new()
            .push(Flatten::new())
            .push(Linear::new("encoder.0", 784, 32, true, r))
            .push(ActivationLayer::new(Activation::Tanh));
        let head = vae::PosteriorHead::linear(("fc_mu", "fc_logvar"), 32, 5, r);
        let decoder = Sequential::new()
            .push(Linear::new("decoder.0", 5, 32, true, r))
            .push(ActivationLayer::new(Activation::Tanh))
            .push(Linear::new("decoder.2", 32, 784, true, r))
            .push(Unflatten::new(&[1, 28, 28]));
        VaeModel::new([1, 28, 28], 5, encoder, head, decoder, vae::Likelihood::BernoulliLogits).unwrap()
    };
    let cfg = LossConfig {
        objective: Objective::Elbo { samples: 2, beta: 4.0 },
        kl: KlEstimator::Closed,
        reduction: latent::loss::Reduction::Mean,
    };
    compare_vae("user-built MLP VAE (beta 4, logits)", &make, cfg, 5, MODEL_TOL);
}
