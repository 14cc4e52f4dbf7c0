//! Finite-difference gradient checks in f64 for every layer, loss and model so far.

mod common;

use common::{fd_check, rand_array};
use latent::loss::{self, Reduction};
use latent::models::{ConvAe, LinearAe};
use latent::nn::PixelBias;
use latent::nn::{
    Activation, ActivationLayer, BatchNorm2d, Conv2d, ConvAlgorithm, ConvOptions, ConvTranspose2d, Layer, Linear, Mode,
    Module,
};
use ndarray::{ArrayD, Ix2};
use rand::{Rng, SeedableRng};

const TOL: f64 = 1e-6;

/// Checks dx and every parameter gradient of `layer` for `loss = sum(y * dy)`, with
/// forward in train mode.
fn check_layer(name: &str, layer: &mut dyn Layer<f64>, x: ArrayD<f64>) {
    check_layer_in(name, layer, x, Mode::Train)
}

/// As [`check_layer`], with the forward and the objective in `mode`.
fn check_layer_in(name: &str, layer: &mut dyn Layer<f64>, x: ArrayD<f64>, mode: Mode) {
    let y = layer.forward(x.clone(), mode).unwrap();
    let dy = rand_array(y.shape(), 99);
    layer.zero_grad();
    let dx = layer.backward(dy.clone(), true).unwrap().unwrap();
    let objective = |layer: &mut dyn Layer<f64>, x: &ArrayD<f64>| {
        let y = layer.forward(x.clone(), mode).unwrap();
        (&y * &dy).sum()
    };
    let e = fd_check(&x, &dx, 60, |xp| objective(layer, xp));
    assert!(e < TOL, "{name}: dx finite-difference error {e:.2e}");
    let mut params = Vec::new();
    layer.visit_params(&mut |p| params.push((p.name.clone(), p.value.clone(), p.grad.clone())));
    for (i, (pname, value, grad)) in params.into_iter().enumerate() {
        let e = fd_check(&value, &grad, 60, |vp| {
            let mut j = 0;
            layer.visit_params(&mut |p| {
                if j == i {
                    p.value.assign(vp);
                }
                j += 1;
            });
            let out = objective(layer, &x);
            let mut j = 0;
            layer.visit_params(&mut |p| {
                if j == i {
                    p.value.assign(&value);
                }
                j += 1;
            });
            out
        });
        assert!(e < TOL, "{name}: d{pname} finite-difference error {e:.2e}");
    }
}

#[test]
fn linear_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for &(n, i, o, bias) in &[(4, 7, 5, true), (3, 6, 4, false), (1, 30, 2, true)] {
        let mut layer = Linear::<f64>::new("lin", i, o, bias, &mut rng);
        check_layer("Linear", &mut layer, rand_array(&[n, i], 3));
    }
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    // (n, c, h, w, out, kernel, stride, padding, dilation, bias)
    for &(n, c, h, w, o, k, s, p, d, bias) in &[
        (2, 2, 7, 7, 3, (3, 3), 1, 0, 1, true),
        (3, 1, 8, 6, 2, (3, 2), 2, 1, 1, false),
        (2, 2, 9, 9, 2, (3, 3), 1, 2, 2, true),
        (2, 3, 10, 10, 2, (4, 4), 2, 0, 1, true),
        // The kernel covers the plane: a fully connected layer, one GEMM over the batch.
        (3, 2, 3, 2, 4, (3, 2), 1, 0, 1, true),
    ] {
        for algo in algorithms(s) {
            let opts = ConvOptions::default()
                .stride(s)
                .padding(p)
                .dilation(d)
                .bias(bias)
                .algorithm(algo);
            let mut layer = Conv2d::<f64>::new("conv", c, o, k, opts, &mut rng);
            check_layer(
                &format!("Conv2d {opts:?} k{k:?}"),
                &mut layer,
                rand_array(&[n, c, h, w], 6),
            );
        }
    }
}

#[test]
fn conv_transpose2d_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    // (n, c, h, w, out, kernel, stride, padding, output_padding, dilation)
    for &(n, c, h, w, o, k, s, p, op, d) in &[
        (2, 3, 4, 4, 2, (3, 3), 2, 1, 1, 1),
        (2, 2, 3, 5, 3, (4, 4), 2, 0, 0, 1),
        (1, 2, 4, 4, 2, (3, 2), 1, 1, 0, 2),
        (2, 4, 3, 3, 1, (5, 5), 1, 0, 0, 1),
        (2, 2, 4, 3, 2, (3, 3), 3, 1, 2, 1),
        (2, 2, 4, 4, 2, (3, 3), 1, 2, 1, 2),
        // From a 1x1 code (the DCGAN VAE's first layer): one GEMM over the batch.
        (3, 4, 1, 1, 3, (3, 3), 2, 0, 0, 1),
    ] {
        for algo in algorithms(s) {
            let opts = ConvOptions::default()
                .stride(s)
                .padding(p)
                .output_padding(op)
                .dilation(d)
                .algorithm(algo);
            let mut layer = ConvTranspose2d::<f64>::new("convt", c, o, k, opts, &mut rng);
            check_layer(
                &format!("ConvTranspose2d {opts:?} k{k:?}"),
                &mut layer,
                rand_array(&[n, c, h, w], 7),
            );
        }
    }
}

/// The reference loops, im2col, and the Fourier and kernel-row paths where the stride
/// allows them.
fn algorithms(stride: usize) -> Vec<ConvAlgorithm> {
    if stride == 1 {
        vec![
            ConvAlgorithm::Reference,
            ConvAlgorithm::Unfold,
            ConvAlgorithm::Fourier,
            ConvAlgorithm::KernelRows,
        ]
    } else {
        vec![ConvAlgorithm::Reference, ConvAlgorithm::Unfold]
    }
}

/// The Winograd path, on planes that fit its one tile (output + kernel - 1 at most 6 a
/// side): a padded Conv2d with a non-square kernel, and transposed convolutions of the
/// DCGAN VAE's 4x4-from-3x3 shape and with padding.
#[test]
fn winograd_convolutions_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    let winograd = ConvOptions::default().algorithm(ConvAlgorithm::Winograd);
    let mut conv = Conv2d::<f64>::new("conv", 2, 3, (3, 2), winograd.padding(1), &mut rng);
    check_layer("Conv2d Winograd", &mut conv, rand_array(&[2, 2, 4, 4], 16));
    for (c, h, o, k, p) in [(3, 3, 2, 4, 0), (2, 4, 3, 3, 1)] {
        let mut convt = ConvTranspose2d::<f64>::new("convt", c, o, (k, k), winograd.padding(p), &mut rng);
        check_layer(
            &format!("ConvTranspose2d Winograd k{k} p{p}"),
            &mut convt,
            rand_array(&[2, c, h, h], 17),
        );
    }
}

#[test]
fn batch_norm2d_gradients_match_finite_differences_in_both_modes() {
    // Train mode: the batch statistics depend on x, which the check sees because the
    // objective re-runs forward in train mode (the running statistics drift, y does not).
    let x = rand_array(&[3, 2, 4, 5], 12);
    let mut bn = BatchNorm2d::<f64>::new("bn", 2);
    bn.weight.value = rand_array(&[2], 13) + 1.5;
    bn.bias.value = rand_array(&[2], 14);
    check_layer_in("BatchNorm2d train", &mut bn, x.clone(), Mode::Train);
    // The running statistics (Frozen: Eval's values, with what backward needs kept), made
    // non-trivial.
    bn.running_mean = ndarray::arr1(&[0.3, -0.2]);
    bn.running_var = ndarray::arr1(&[0.5, 2.0]);
    check_layer_in("BatchNorm2d frozen", &mut bn, x, Mode::Frozen);
}

/// BatchNorm2d with a rectifier in the same pass, both rectifiers and both modes (beta
/// spread around zero, so that the rectifier's input takes both signs).
#[test]
fn batch_norm2d_with_a_rectifier_matches_finite_differences_in_both_modes() {
    for act in [Activation::Relu, Activation::LeakyRelu(0.2)] {
        let x = rand_array(&[3, 2, 4, 5], 15);
        let mut bn = BatchNorm2d::<f64>::new("bn", 2).with_rectifier(act).unwrap();
        bn.weight.value = rand_array(&[2], 16) + 1.5;
        bn.bias.value = rand_array(&[2], 17) * 0.5;
        check_layer_in(&format!("BatchNorm2d + {act:?} train"), &mut bn, x.clone(), Mode::Train);
        bn.running_mean = ndarray::arr1(&[0.3, -0.2]);
        bn.running_var = ndarray::arr1(&[0.5, 2.0]);
        check_layer_in(&format!("BatchNorm2d + {act:?} frozen"), &mut bn, x, Mode::Frozen);
    }
}

#[test]
fn pixel_bias_gradients_match_finite_differences() {
    let mut layer = PixelBias::<f64>::new("bias", &[2, 3, 4]);
    layer.bias.value = rand_array(&[2, 3, 4], 21);
    check_layer("PixelBias", &mut layer, rand_array(&[3, 2, 3, 4], 22));
}

/// The whole conv autoencoder (per-pixel biases, two convs, Flatten, Linear both ways,
/// Unflatten, two transposed convs) on a small instance: every parameter's gradient of
/// the MSE loss against central differences.
#[test]
fn conv_ae_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let mut ae = ConvAe::<f64>::new([1, 7, 7], 3, 2, 3, &mut rng).unwrap();
    let mut rng2 = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    ae.visit_params(&mut |p| p.value.mapv_inplace(|v| v + 0.05 * rng2.random_range(-1.0..1.0)));
    let x = rand_array(&[2, 1, 7, 7], 23)
        .mapv(|v| (v + 1.0) / 2.0)
        .into_dimensionality::<ndarray::Ix4>()
        .unwrap();
    ae.loss_and_grad(x.view()).unwrap();
    let mut grads = Vec::new();
    ae.visit_params(&mut |p| grads.push((p.name.clone(), p.value.clone(), p.grad.clone())));
    assert_eq!(grads.len(), 14);
    for (i, (name, value, grad)) in grads.into_iter().enumerate() {
        let e = fd_check(&value, &grad, 25, |vp| {
            let mut j = 0;
            ae.visit_params(&mut |p| {
                if j == i {
                    p.value.assign(vp);
                }
                j += 1;
            });
            let y = ae.reconstruct(x.view()).unwrap();
            let mut j = 0;
            ae.visit_params(&mut |p| {
                if j == i {
                    p.value.assign(&value);
                }
                j += 1;
            });
            loss::mse_loss(y.view(), x.view(), Reduction::Mean).unwrap()
        });
        assert!(e < TOL, "ConvAe d{name}: {e:.2e}");
    }
}

#[test]
fn activation_gradients_match_finite_differences() {
    // Inputs kept away from ReLU's kink at 0, where the derivative is undefined.
    let x = rand_array(&[3, 11], 9).mapv(|v| if v.abs() < 0.05 { v + 0.1 } else { v } * 3.0);
    for act in [
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Sigmoid,
        Activation::Tanh,
    ] {
        check_layer(&format!("{act:?}"), &mut ActivationLayer::<f64>::new(act), x.clone());
    }
}

#[test]
fn loss_gradients_match_finite_differences() {
    let t01 = rand_array(&[3, 5], 7).mapv(|v| (v + 1.0) / 2.0);
    let p = rand_array(&[3, 5], 8);
    let prob = p.mapv(|v| 0.1 + 0.8 * (v + 1.0) / 2.0);
    for red in [Reduction::Mean, Reduction::Sum] {
        let g = loss::mse_grad(p.view(), t01.view(), red).unwrap();
        let e = fd_check(&p, &g, 15, |pp| loss::mse_loss(pp.view(), t01.view(), red).unwrap());
        assert!(e < TOL, "mse {red:?}: {e:.2e}");
        let g = loss::bce_grad(prob.view(), t01.view(), red).unwrap();
        let e = fd_check(&prob, &g, 15, |pp| loss::bce_loss(pp.view(), t01.view(), red).unwrap());
        assert!(e < TOL, "bce {red:?}: {e:.2e}");
        let logits = &p * 8.0;
        let g = loss::bce_with_logits_grad(logits.view(), t01.view(), red).unwrap();
        let e = fd_check(&logits, &g, 15, |pp| {
            loss::bce_with_logits_loss(pp.view(), t01.view(), red).unwrap()
        });
        assert!(e < TOL, "bce_with_logits {red:?}: {e:.2e}");
    }
}

#[test]
fn bce_with_logits_is_finite_for_huge_logits() {
    let z = ndarray::arr1(&[-1e4f64, 1e4, 0.0]).into_dyn();
    let t = ndarray::arr1(&[1.0f64, 0.0, 1.0]).into_dyn();
    let v = loss::bce_with_logits_loss(z.view(), t.view(), Reduction::Sum).unwrap();
    assert!((v - (2e4 + 2f64.ln())).abs() < 1e-9, "{v}");
}

#[test]
fn linear_ae_gradients_match_finite_differences() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut ae = LinearAe::<f64>::new(12, 3, &mut rng).unwrap();
    // 70 rows: more than one data-parallel part, so the gradient reduction is checked too.
    let x = rand_array(&[70, 12], 4).into_dimensionality::<Ix2>().unwrap();
    ae.loss_and_grad(x.view()).unwrap();
    let mut grads = Vec::new();
    ae.visit_params(&mut |p| grads.push((p.name.clone(), p.value.clone(), p.grad.clone())));
    assert_eq!(grads.len(), 4);
    for (i, (name, value, grad)) in grads.into_iter().enumerate() {
        let mut probe = ae.clone();
        let e = fd_check(&value, &grad, 40, |vp| {
            let mut j = 0;
            probe.visit_params(&mut |p| {
                if j == i {
                    p.value.assign(vp);
                }
                j += 1;
            });
            let y = probe.reconstruct(x.view()).unwrap();
            loss::mse_loss(y.view(), x.view(), Reduction::Mean).unwrap()
        });
        assert!(e < TOL, "LinearAe d{name}: {e:.2e}");
    }
}

/// The training loss is the MSE of the model's own reconstruction, and in f32 the step stays
/// close to the f64 one where it is hardest: after training has taken the error three
/// orders of magnitude below the data's mean square (so that the residual is a small
/// difference of large numbers). In f64 to 1e-12; in f32 the loss to 1e-6 (measured
/// 1.5e-7) and each gradient to 1e-3 of its size (measured at most 1.2e-4). A faster step
/// that expanded the squared error through the linear decoder instead of forming the
/// reconstruction failed this at 8.6e-5, and was not kept.
#[test]
fn linear_ae_loss_is_the_mse_of_its_reconstruction() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let mut ae = LinearAe::<f64>::new(12, 3, &mut rng).unwrap();
    let x = rand_array(&[70, 12], 9)
        .mapv(|v| (v + 1.0) / 2.0)
        .into_dimensionality::<Ix2>()
        .unwrap();
    let l = ae.loss_and_grad(x.view()).unwrap();
    let y = ae.reconstruct(x.view()).unwrap();
    let mse = loss::mse_loss(y.view(), x.view(), Reduction::Mean).unwrap();
    assert!(((l - mse) / mse).abs() < 1e-12, "{l} vs {mse}");

    // Data near a 4-dimensional subspace in 40, in [0, 1]; an f32 model of width 4 trained on it.
    let (n, d, k) = (300, 40, 4);
    let basis = rand_array(&[k, d], 10).into_dimensionality::<Ix2>().unwrap();
    let codes = rand_array(&[n, k], 11).into_dimensionality::<Ix2>().unwrap();
    let noise = rand_array(&[n, d], 12).into_dimensionality::<Ix2>().unwrap();
    let x64 = (codes.dot(&basis) * 0.1 + noise * 0.02).mapv(|v| (v + 0.5).clamp(0.0, 1.0));
    let x32 = x64.mapv(|v| v as f32);
    let mut ae32 = LinearAe::<f32>::new(d, k, &mut rng).unwrap();
    let mut opt = latent::optim::Adam::new(latent::optim::AdamConfig::new(1e-2));
    let first = ae32.train_step(x32.view(), &mut opt).unwrap() as f64;
    for _ in 0..1500 {
        ae32.train_step(x32.view(), &mut opt).unwrap();
    }
    let l32 = ae32.loss_and_grad(x32.view()).unwrap() as f64;
    let mean_sq = x64.mapv(|v| v * v).mean().unwrap();
    assert!(
        l32 < 0.05 * first && l32 < 0.01 * mean_sq,
        "trained: {first} -> {l32}, data {mean_sq}"
    );
    let mut ae64 = LinearAe::<f64>::new(d, k, &mut rng).unwrap();
    let mut values = Vec::new();
    ae32.visit_params(&mut |p| values.push(p.value.mapv(f64::from)));
    let mut i = 0;
    ae64.visit_params(&mut |p| {
        p.value.assign(&values[i]);
        i += 1;
    });
    let x_in = x32.mapv(f64::from);
    let l64 = ae64.loss_and_grad(x_in.view()).unwrap();
    let y64 = ae64.reconstruct(x_in.view()).unwrap();
    let mse64 = loss::mse_loss(y64.view(), x_in.view(), Reduction::Mean).unwrap();
    assert!(((l64 - mse64) / mse64).abs() < 1e-12, "{l64} vs {mse64}");
    assert!(((l32 - mse64) / mse64).abs() < 1e-6, "f32 loss {l32} vs {mse64}");
    let (mut g32, mut g64) = (Vec::new(), Vec::new());
    ae32.visit_params(&mut |p| g32.push((p.name.clone(), p.grad.mapv(f64::from))));
    ae64.visit_params(&mut |p| g64.push(p.grad.clone()));
    for ((name, a), b) in g32.iter().zip(&g64) {
        let e = (a - b).mapv(|v| v * v).sum().sqrt() / b.mapv(|v| v * v).sum().sqrt();
        assert!(e < 1e-3, "d{name}: f32 against f64 {e:.2e}");
    }
}

/// A batch given as row indices into a data set is the same step as the gathered batch,
/// to the last bit; an index outside the data is an error.
#[test]
fn linear_ae_step_on_row_indices_equals_the_gathered_batch() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut a = LinearAe::<f64>::new(12, 3, &mut rng).unwrap();
    let mut b = a.clone();
    let data = rand_array(&[90, 12], 6).into_dimensionality::<Ix2>().unwrap();
    let rows: Vec<usize> = (0..70).map(|i| (i * 37 + 11) % 90).collect();
    let gathered = data.select(ndarray::Axis(0), &rows);
    let la = a.loss_and_grad(gathered.view()).unwrap();
    let lb = b.loss_and_grad_rows(data.view(), &rows).unwrap();
    assert_eq!(la.to_bits(), lb.to_bits());
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    a.visit_params(&mut |p| ga.push(p.grad.clone()));
    b.visit_params(&mut |p| gb.push(p.grad.clone()));
    assert_eq!(ga, gb);
    let err = b.loss_and_grad_rows(data.view(), &[3, 90]).unwrap_err().to_string();
    assert!(err.contains("row 90"), "{err}");
}

/// The collapse the notebook warns about: when every ReLU after the second encoder conv
/// is dead, the code is constant over the batch and `code_spread` says so; a healthy
/// encoder's codes vary.
#[test]
fn conv_ae_reports_a_collapsed_code() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
    let mut ae = ConvAe::<f64>::new([1, 7, 7], 3, 2, 3, &mut rng).unwrap();
    let x = rand_array(&[4, 1, 7, 7], 24)
        .mapv(|v| (v + 1.0) / 2.0)
        .into_dimensionality::<ndarray::Ix4>()
        .unwrap();
    ae.loss_and_grad(x.view()).unwrap();
    assert!(ae.code_spread().unwrap() > 1e-3, "a healthy encoder's codes vary");
    ae.visit_params(&mut |p| {
        if p.name == "enc_conv_2.bias" {
            p.value.fill(-1e3);
        }
    });
    ae.loss_and_grad(x.view()).unwrap();
    assert_eq!(ae.code_spread().unwrap(), 0.0, "dead ReLUs: constant code");
}

/// A batch of one splits each product over the threads (there are fewer images than
/// threads); inside a larger batch each image's product runs on one thread. Both give the
/// same outputs and gradients (the weight gradient sums the same terms in another order).
#[test]
fn a_batch_of_one_splits_its_products_and_agrees_with_the_batch() {
    use latent::nn::{conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward};
    use ndarray::{s, Array4, Ix4};
    let close = |a: &Array4<f64>, b: &Array4<f64>, what: &str| {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(err <= 1e-12 * scale, "{what}: {err:.2e} of {scale:.2e}");
    };
    let opts = ConvOptions::default().padding(1).algorithm(ConvAlgorithm::Unfold);
    // Per image 16 x 200 x 324 multiply-adds: above the size at which products split.
    for transposed in [false, true] {
        let (x, w) = if transposed {
            (rand_array(&[3, 16, 16, 16], 31), rand_array(&[16, 8, 5, 5], 32))
        } else {
            (rand_array(&[3, 8, 20, 20], 31), rand_array(&[16, 8, 5, 5], 32))
        };
        let (x, w) = (
            x.into_dimensionality::<Ix4>().unwrap(),
            w.into_dimensionality::<Ix4>().unwrap(),
        );
        let forward = |x: &Array4<f64>| {
            if transposed {
                conv_transpose2d_forward(x.view(), w.view(), None, &opts).unwrap()
            } else {
                conv2d_forward(x.view(), w.view(), None, &opts).unwrap()
            }
        };
        let backward = |x: &Array4<f64>, dy: &Array4<f64>| {
            let mut dw = Array4::<f64>::zeros(w.raw_dim());
            let dx = if transposed {
                conv_transpose2d_backward(x.view(), w.view(), dy.view(), &opts, true, dw.view_mut(), None)
            } else {
                conv2d_backward(x.view(), w.view(), dy.view(), &opts, true, dw.view_mut(), None)
            };
            (dx.unwrap().unwrap(), dw)
        };
        let y = forward(&x);
        let dy = rand_array(y.shape(), 33).into_dimensionality::<Ix4>().unwrap();
        let (dx, dw) = backward(&x, &dy);
        let mut dw_sum = Array4::<f64>::zeros(w.raw_dim());
        for i in 0..3 {
            let xi = x.slice(s![i..i + 1, .., .., ..]).to_owned();
            let dyi = dy.slice(s![i..i + 1, .., .., ..]).to_owned();
            close(&forward(&xi), &y.slice(s![i..i + 1, .., .., ..]).to_owned(), "forward");
            let (dxi, dwi) = backward(&xi, &dyi);
            close(&dxi, &dx.slice(s![i..i + 1, .., .., ..]).to_owned(), "dx");
            dw_sum += &dwi;
        }
        close(&dw_sum, &dw, "dw");
    }
}

/// The conv AE's data-parallel step (the batch cut into 3 parts, each on its own copy)
/// computes the one-piece step: the same loss, reconstructions, code spread and
/// gradients up to the order of the sums over images, and the same parameters after
/// two Adam steps (the copies follow the model).
#[test]
fn conv_ae_data_parallel_steps_equal_whole_batch_steps() {
    use latent::data_parallel::DataParallel;
    use latent::optim::{Adam, AdamConfig};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut ae = ConvAe::<f64>::new([1, 7, 7], 3, 2, 3, &mut rng).unwrap();
    let mut twin = ae.clone();
    let mut par = DataParallel::conv_ae_in_parts(&ae, 3);
    let x = rand_array(&[26, 1, 7, 7], 25)
        .mapv(|v| (v + 1.0) / 2.0)
        .into_dimensionality::<ndarray::Ix4>()
        .unwrap();
    let rel = |a: &ArrayD<f64>, b: &ArrayD<f64>| {
        (a - b).mapv(|v| v * v).sum().sqrt() / b.mapv(|v| v * v).sum().sqrt().max(1e-300)
    };
    let (loss_a, y_a) = par.loss_and_grad(&mut ae, x.view()).unwrap();
    let (loss_b, y_b) = twin.loss_and_grad(x.view()).unwrap();
    assert!((loss_a - loss_b).abs() < 1e-13 * loss_b);
    assert!(rel(&y_a.into_dyn(), &y_b.into_dyn()) < 1e-14);
    let (sa, sb) = (ae.code_spread().unwrap(), twin.code_spread().unwrap());
    assert!((sa - sb).abs() < 1e-13 * sb, "code spread {sa} vs {sb}");
    let mut grads = Vec::new();
    twin.visit_params(&mut |p| grads.push(p.grad.clone()));
    let mut i = 0;
    ae.visit_params(&mut |p| {
        assert!(
            rel(&p.grad, &grads[i]) < 1e-12,
            "{}: {:.2e}",
            p.name,
            rel(&p.grad, &grads[i])
        );
        i += 1;
    });
    let (mut opt_a, mut opt_b) = (Adam::new(AdamConfig::new(1e-2)), Adam::new(AdamConfig::new(1e-2)));
    for _ in 0..2 {
        par.train_step(&mut ae, x.view(), &mut opt_a).unwrap();
        twin.train_step(x.view(), &mut opt_b).unwrap();
    }
    let mut values = Vec::new();
    twin.visit_params(&mut |p| values.push(p.value.clone()));
    let mut i = 0;
    ae.visit_params(&mut |p| {
        assert!(rel(&p.value, &values[i]) < 1e-10, "{} after two steps", p.name);
        i += 1;
    });
}
