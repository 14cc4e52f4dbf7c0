//! Parity with PyTorch: every fixture file whose `kind` this crate implements is checked,
//! in f64 (relative error ≤ 1e-10) and in f32 (≤ 1e-4). Adding a case is dropping a file
//! into tests/fixtures/torch.

mod common;

use common::{Fixture, Report};
use latent::loss::{self, Reduction};
use latent::models::{ConvAe, VaeModel};
use latent::nn::{
    activation_backward, activation_forward, batch_norm2d_backward, batch_norm2d_forward, conv2d_backward,
    conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward, linear_backward, linear_forward, Activation,
    ConvAlgorithm, ConvOptions, Mode,
};
use latent::nn::{load_params, Module};
use latent::optim::{adam_update, AdamConfig};
use latent::vae::{self, DiagGaussian, Likelihood, Vae};
use latent::Float;
use ndarray::{Array1, Array2, ArrayD, Axis, Ix1, Ix2, Ix3, Ix4};
use rand::SeedableRng;

fn linear<F: Float>(fx: &Fixture, r: &mut Report) {
    let x = fx.get::<F>("x").into_dimensionality::<Ix2>().unwrap();
    let w = fx.get::<F>("w").into_dimensionality::<Ix2>().unwrap();
    let b = fx
        .has("b")
        .then(|| fx.get::<F>("b").into_dimensionality::<Ix1>().unwrap());
    let dy = fx.get::<F>("dy").into_dimensionality::<Ix2>().unwrap();
    let mut y = Array2::zeros((x.nrows(), w.nrows()));
    linear_forward(x.view(), w.view(), b.as_ref().map(|b| b.view()), y.view_mut());
    r.check(&fx.file, "y", &y.into_dyn(), &fx.get("y"));
    let mut dx = Array2::zeros(x.raw_dim());
    let mut dw = Array2::zeros(w.raw_dim());
    let mut db = b.as_ref().map(|b| ndarray::Array1::zeros(b.raw_dim()));
    linear_backward(
        x.view(),
        w.view(),
        dy.view(),
        Some(dx.view_mut()),
        dw.view_mut(),
        db.as_mut().map(|d| d.view_mut()),
    );
    r.check(&fx.file, "dx", &dx.into_dyn(), &fx.get("dx"));
    r.check(&fx.file, "dw", &dw.into_dyn(), &fx.get("dw"));
    if let Some(db) = db {
        r.check(&fx.file, "db", &db.into_dyn(), &fx.get("db"));
    }
}

fn loss_case<F: Float>(fx: &Fixture, r: &mut Report) {
    let (p, t) = (fx.get::<F>("pred"), fx.get::<F>("target"));
    let red: Reduction = fx.setting_str("reduction").parse().unwrap();
    let (value, grad) = match fx.setting_str("name").as_str() {
        "mse" => (
            loss::mse_loss(p.view(), t.view(), red),
            loss::mse_grad(p.view(), t.view(), red),
        ),
        "bce" => (
            loss::bce_loss(p.view(), t.view(), red),
            loss::bce_grad(p.view(), t.view(), red),
        ),
        "bce_with_logits" => (
            loss::bce_with_logits_loss(p.view(), t.view(), red),
            loss::bce_with_logits_grad(p.view(), t.view(), red),
        ),
        other => panic!("{}: unknown loss {other}", fx.file),
    };
    r.scalar(&fx.file, "loss", value.unwrap(), *fx.get::<F>("loss").first().unwrap());
    r.check(&fx.file, "dpred", &grad.unwrap(), &fx.get("dpred"));
}

fn adam<F: Float>(fx: &Fixture, r: &mut Report) {
    let cfg = AdamConfig {
        lr: F::lit(fx.setting_f64("lr")),
        beta1: F::lit(fx.setting_f64("beta1")),
        beta2: F::lit(fx.setting_f64("beta2")),
        eps: F::lit(fx.setting_f64("eps")),
        weight_decay: F::lit(fx.setting_f64("weight_decay")),
    };
    let mut p: ArrayD<F> = fx.get("p0");
    let grads = fx.get::<F>("grads");
    let mut m = ArrayD::zeros(p.raw_dim());
    let mut v = ArrayD::zeros(p.raw_dim());
    let mut traj = Vec::new();
    for (t, g) in grads.axis_iter(Axis(0)).enumerate() {
        adam_update(&cfg, t as u64 + 1, &mut p, &g.to_owned(), &mut m, &mut v);
        traj.push(p.clone());
    }
    let views: Vec<_> = traj.iter().map(|a| a.view()).collect();
    r.check(
        &fx.file,
        "trajectory",
        &ndarray::stack(Axis(0), &views).unwrap(),
        &fx.get("trajectory"),
    );
}

fn conv_opts(fx: &Fixture) -> ConvOptions {
    let n = |k: &str| fx.settings[k].as_u64().map_or(0, |v| v as usize);
    ConvOptions::default()
        .stride(n("stride"))
        .padding(n("padding"))
        .dilation(n("dilation"))
        .output_padding(n("output_padding"))
        .bias(fx.settings["bias"].as_bool().unwrap())
}

/// Each convolution fixture through every algorithm that takes it: the reference loops
/// and im2col always, the
/// Fourier and kernel-row paths where the stride is 1, and Winograd where besides the dilation is 1 and
/// the padded plane on the unfolded side (the input of a convolution, the output of a
/// transposed one) is at most 6 a side (the file name of a report gains the algorithm).
fn conv<F: Float>(fx: &Fixture, r: &mut Report) {
    let opts = conv_opts(fx);
    conv_with::<F>(fx, opts.algorithm(ConvAlgorithm::Reference), r);
    conv_with::<F>(fx, opts.algorithm(ConvAlgorithm::Unfold), r);
    if opts.stride == (1, 1) {
        conv_with::<F>(fx, opts.algorithm(ConvAlgorithm::Fourier), r);
        conv_with::<F>(fx, opts.algorithm(ConvAlgorithm::KernelRows), r);
        let unfolded = if fx.kind == "conv_transpose2d" { "y" } else { "x" };
        let shape = fx.get::<F>(unfolded).shape().to_vec();
        let fits = shape[2] + 2 * opts.padding.0 <= 6 && shape[3] + 2 * opts.padding.1 <= 6;
        if opts.dilation == (1, 1) && fits {
            conv_with::<F>(fx, opts.algorithm(ConvAlgorithm::Winograd), r);
        }
    }
}

fn conv_with<F: Float>(fx: &Fixture, opts: ConvOptions, r: &mut Report) {
    let transposed = fx.kind == "conv_transpose2d";
    let file = format!("{} ({:?})", fx.file, opts.algorithm);
    let kernel: Vec<usize> = fx.settings["kernel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let x = fx.get::<F>("x").into_dimensionality::<Ix4>().unwrap();
    let w = fx.get::<F>("w").into_dimensionality::<Ix4>().unwrap();
    assert_eq!(&w.shape()[2..], &kernel[..], "{}: kernel setting", fx.file);
    let b = fx
        .has("b")
        .then(|| fx.get::<F>("b").into_dimensionality::<Ix1>().unwrap());
    let dy = fx.get::<F>("dy").into_dimensionality::<Ix4>().unwrap();
    let bv = b.as_ref().map(|b| b.view());
    let y = if transposed {
        conv_transpose2d_forward(x.view(), w.view(), bv, &opts)
    } else {
        conv2d_forward(x.view(), w.view(), bv, &opts)
    }
    .unwrap();
    r.check(&file, "y", &y.into_dyn(), &fx.get("y"));
    let mut dw = ndarray::Array4::zeros(w.raw_dim());
    let mut db = b.as_ref().map(|b| ndarray::Array1::zeros(b.raw_dim()));
    let dbv = db.as_mut().map(|d| d.view_mut());
    let dx = if transposed {
        conv_transpose2d_backward(x.view(), w.view(), dy.view(), &opts, true, dw.view_mut(), dbv)
    } else {
        conv2d_backward(x.view(), w.view(), dy.view(), &opts, true, dw.view_mut(), dbv)
    }
    .unwrap()
    .unwrap();
    r.check(&file, "dx", &dx.into_dyn(), &fx.get("dx"));
    r.check(&file, "dw", &dw.into_dyn(), &fx.get("dw"));
    if let Some(db) = db {
        r.check(&file, "db", &db.into_dyn(), &fx.get("db"));
    }
}

fn activation<F: Float>(fx: &Fixture, r: &mut Report) {
    let act = match fx.setting_str("name").as_str() {
        "relu" => Activation::Relu,
        "leaky_relu" => Activation::LeakyRelu(fx.setting_f64("negative_slope")),
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        other => panic!("{}: unknown activation {other}", fx.file),
    };
    let (x, dy) = (fx.get::<F>("x"), fx.get::<F>("dy"));
    let y = activation_forward(act, x.view());
    let saved = if act.backward_uses_output() { y.view() } else { x.view() };
    let dx = activation_backward(act, saved, dy.view());
    r.check(&fx.file, "y", &y, &fx.get("y"));
    r.check(&fx.file, "dx", &dx, &fx.get("dx"));
}

fn batch_norm<F: Float>(fx: &Fixture, r: &mut Report) {
    let (momentum, eps) = (F::lit(fx.setting_f64("momentum")), F::lit(fx.setting_f64("eps")));
    let gamma = fx.get::<F>("gamma").into_dimensionality::<Ix1>().unwrap();
    let beta = fx.get::<F>("beta").into_dimensionality::<Ix1>().unwrap();
    let mut rm = fx.get::<F>("running_mean_in").into_dimensionality::<Ix1>().unwrap();
    let mut rv = fx.get::<F>("running_var_in").into_dimensionality::<Ix1>().unwrap();
    for (mode, xs, dys, ys, dxs) in [
        (Mode::Train, "x", "dy", "y", "dx"),
        (Mode::Eval, "x_eval", "dy_eval", "y_eval", "dx_eval"),
    ] {
        let x = fx.get::<F>(xs).into_dimensionality::<Ix4>().unwrap();
        let dy = fx.get::<F>(dys).into_dimensionality::<Ix4>().unwrap();
        let (y, cache) = batch_norm2d_forward(
            x.view(),
            gamma.view(),
            beta.view(),
            rm.view_mut(),
            rv.view_mut(),
            momentum,
            eps,
            mode,
        )
        .unwrap();
        let mut dg = ndarray::Array1::zeros(gamma.raw_dim());
        let mut db = ndarray::Array1::zeros(gamma.raw_dim());
        let dx =
            batch_norm2d_backward(x.view(), gamma.view(), &cache, dy.view(), dg.view_mut(), db.view_mut()).unwrap();
        r.check(&fx.file, ys, &y.into_dyn(), &fx.get(ys));
        r.check(&fx.file, dxs, &dx.into_dyn(), &fx.get(dxs));
        if mode == Mode::Train {
            r.check(&fx.file, "dgamma", &dg.into_dyn(), &fx.get("dgamma"));
            r.check(&fx.file, "dbeta", &db.into_dyn(), &fx.get("dbeta"));
            r.check(
                &fx.file,
                "running_mean_out",
                &rm.clone().into_dyn(),
                &fx.get("running_mean_out"),
            );
            r.check(
                &fx.file,
                "running_var_out",
                &rv.clone().into_dyn(),
                &fx.get("running_var_out"),
            );
        }
    }
}

fn model_conv_ae<F: Float>(fx: &Fixture, r: &mut Report) {
    let k = fx.setting_f64("K") as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut ae = ConvAe::<F>::cis522(k, &mut rng).unwrap();
    load_params(&mut ae, |name| {
        fx.has(&format!("param.{name}"))
            .then(|| fx.get(&format!("param.{name}")))
    })
    .unwrap();
    let x = fx.get::<F>("x").into_dimensionality::<Ix4>().unwrap();
    let (loss, recon) = ae.loss_and_grad(x.view()).unwrap();
    r.scalar(&fx.file, "loss", loss, *fx.get::<F>("loss").first().unwrap());
    r.check(&fx.file, "recon", &recon.into_dyn(), &fx.get("recon"));
    let mut grads = Vec::new();
    ae.visit_params(&mut |p| grads.push((p.name.clone(), p.grad.clone())));
    let expected = fx.names().filter(|n| n.starts_with("grad.")).count();
    assert_eq!(grads.len(), expected, "{}: parameter count", fx.file);
    for (name, g) in grads {
        r.check(&fx.file, &format!("grad.{name}"), &g, &fx.get(&format!("grad.{name}")));
    }
}

fn get2<F: Float>(fx: &Fixture, name: &str) -> Array2<F> {
    fx.get::<F>(name).into_dimensionality::<Ix2>().unwrap()
}

fn scalar_of<F: Float>(fx: &Fixture, name: &str) -> F {
    *fx.get::<F>(name).first().unwrap()
}

fn log_p_x_gaussian<F: Float>(fx: &Fixture, r: &mut Report) {
    let x = get2::<F>(fx, "x");
    let mu_xs = fx.get::<F>("mu_xs").into_dimensionality::<Ix3>().unwrap();
    let ls = scalar_of::<F>(fx, "log_sig_x");
    let v = vae::log_p_x_gaussian(x.view(), mu_xs.view(), ls).unwrap();
    r.scalar(&fx.file, "value", v, scalar_of(fx, "value"));
    let (dmu, dls) = vae::log_p_x_gaussian_backward(x.view(), mu_xs.view(), ls, F::one()).unwrap();
    r.check(&fx.file, "dmu_xs", &dmu.into_dyn(), &fx.get("dmu_xs"));
    r.scalar(&fx.file, "dlog_sig_x", dls, scalar_of(fx, "dlog_sig_x"));
}

fn kl_closed_diag<F: Float>(fx: &Fixture, r: &mut Report) {
    let q = DiagGaussian::new(get2::<F>(fx, "mu"), get2::<F>(fx, "logvar")).unwrap();
    r.check(&fx.file, "kl", &vae::kl_diag(&q).into_dyn(), &fx.get("kl"));
    let dkl = fx.get::<F>("dkl").into_dimensionality::<Ix1>().unwrap();
    let (mut dmu, mut dlv) = (Array2::zeros(q.mu.raw_dim()), Array2::zeros(q.mu.raw_dim()));
    vae::kl_diag_backward(&q, dkl.view(), &mut dmu, &mut dlv).unwrap();
    r.check(&fx.file, "dmu", &dmu.into_dyn(), &fx.get("dmu"));
    r.check(&fx.file, "dlogvar", &dlv.into_dyn(), &fx.get("dlogvar"));
}

fn kl_mc_isotropic<F: Float>(fx: &Fixture, r: &mut Report) {
    let phi = get2::<F>(fx, "phi");
    let eps = fx.get::<F>("eps").into_dimensionality::<Ix3>().unwrap();
    let q = DiagGaussian::from_isotropic(phi.view()).unwrap();
    let zs = q.rsample(eps.view()).unwrap();
    r.check(&fx.file, "zs", &zs.clone().into_dyn(), &fx.get("zs"));
    let v = vae::kl_mc_isotropic(phi.view(), zs.view()).unwrap();
    r.scalar(&fx.file, "value", v, scalar_of(fx, "value"));
    // Total gradient: the direct partial plus the path through the reparameterised zs.
    let (mut dphi, dzs) = vae::kl_mc_isotropic_backward(phi.view(), zs.view(), F::one()).unwrap();
    let (mut dmu, mut dlv) = (Array2::zeros(q.mu.raw_dim()), Array2::zeros(q.mu.raw_dim()));
    q.rsample_backward(eps.view(), dzs.view(), &mut dmu, &mut dlv).unwrap();
    dphi += &DiagGaussian::isotropic_grad(dmu.view(), dlv.view());
    r.check(&fx.file, "dphi", &dphi.into_dyn(), &fx.get("dphi"));
    // The same estimate from the per-sample log ratio used by the ELBO and IWAE.
    let ratio = vae::log_ratio(&q, eps.view(), zs.view()).unwrap();
    r.scalar(
        &fx.file,
        "value via log_ratio",
        ratio.mean().unwrap(),
        scalar_of(fx, "value"),
    );
}

fn iwae_linear_gaussian<F: Float>(fx: &Fixture, r: &mut Report) {
    let x = get2::<F>(fx, "x");
    let w = get2::<F>(fx, "W");
    let c = fx.get::<F>("c").into_dimensionality::<Ix1>().unwrap();
    let eps = fx.get::<F>("eps").into_dimensionality::<Ix3>().unwrap();
    let q = DiagGaussian::new(get2::<F>(fx, "mu"), get2::<F>(fx, "logvar")).unwrap();
    let (b, k, kd) = eps.dim();
    let like = Likelihood::Gaussian {
        log_sig_x: F::lit(fx.setting_f64("sigma_x").ln()),
        normalised: true,
    };
    // The decoder of this case: mean = W z + c.
    let z = q.rsample(eps.view()).unwrap();
    let z2 = z.view().into_shape_with_order((b * k, kd)).unwrap();
    let mean = (z2.dot(&w.t()) + &c).into_shape_with_order((b, k, x.ncols())).unwrap();
    let ll = vae::log_likelihood(like, x.view(), mean.view()).unwrap();
    let log_w = &ll - &vae::log_ratio(&q, eps.view(), z.view()).unwrap();
    r.check(&fx.file, "log_w", &log_w.clone().into_dyn(), &fx.get("log_w"));
    let iwae = vae::log_mean_exp(log_w.view());
    r.check(&fx.file, "iwae", &iwae.into_dyn(), &fx.get("iwae"));
    let elbo: Array1<F> = log_w.mean_axis(Axis(1)).unwrap();
    r.check(&fx.file, "elbo", &elbo.into_dyn(), &fx.get("elbo"));
    // Backward: normalised importance weights, then the likelihood, decoder, log ratio
    // and the reparameterisation.
    let diwae = fx.get::<F>("diwae").into_dimensionality::<Ix1>().unwrap();
    let wts = vae::log_mean_exp_backward(log_w.view(), diwae.view()).unwrap();
    let (dmean, _) = vae::log_likelihood_backward(like, x.view(), mean.view(), wts.view()).unwrap();
    let dmean2 = dmean.into_shape_with_order((b * k, x.ncols())).unwrap();
    let mut dz = dmean2.dot(&w).into_shape_with_order((b, k, kd)).unwrap();
    let (mut dmu, mut dlv) = (Array2::zeros(q.mu.raw_dim()), Array2::zeros(q.mu.raw_dim()));
    dz += &vae::log_ratio_backward(z.view(), wts.mapv(|v| -v).view(), &mut dlv).unwrap();
    q.rsample_backward(eps.view(), dz.view(), &mut dmu, &mut dlv).unwrap();
    r.check(&fx.file, "dmu", &dmu.into_dyn(), &fx.get("dmu"));
    r.check(&fx.file, "dlogvar", &dlv.into_dyn(), &fx.get("dlogvar"));
}

/// Every parameter's gradient against the case's `grad.NAME`, and their count. A bias
/// followed by BatchNorm has an exactly zero gradient, compared against the scale of its
/// layer's weight gradient instead of relatively.
fn check_grads<F: Float>(fx: &Fixture, r: &mut Report, model: &mut impl Module<F>) {
    let mut grads = Vec::new();
    model.visit_params(&mut |p| grads.push((p.name.clone(), p.grad.clone())));
    let expected = fx.names().filter(|n| n.starts_with("grad.")).count();
    assert_eq!(grads.len(), expected, "{}: parameter count", fx.file);
    for (name, g) in &grads {
        let theirs = fx.get::<F>(&format!("grad.{name}"));
        let weight_grad = name
            .strip_suffix(".bias")
            .and_then(|prefix| grads.iter().find(|(n, _)| *n == format!("{prefix}.weight")))
            .map(|(_, w)| common::norm(w));
        match weight_grad {
            // A bias followed by BatchNorm: its gradient is exactly zero.
            Some(scale) if common::norm(&theirs) < 1e-9 * scale => {
                r.check_scaled(&fx.file, &format!("grad.{name} (zero)"), g, &theirs, scale)
            }
            _ => r.check(&fx.file, &format!("grad.{name}"), g, &theirs),
        }
    }
}

/// What a model case checks after its step, beyond the loss and the gradients.
type ModelCheck<'a, F> = dyn FnMut(&mut VaeModel<F>, &vae::LossParts<F>, &mut Report) + 'a;

/// Loads `param.*`, runs one training-mode loss and backward, and checks the loss, the
/// named intermediates, every gradient and every buffer after the step.
fn vae_model<F: Float>(
    fx: &Fixture,
    r: &mut Report,
    model: &mut VaeModel<F>,
    eps: ndarray::Array3<F>,
    objective: Option<vae::Objective>,
    check: &mut ModelCheck<'_, F>,
) {
    load_params(model, |name| {
        fx.has(&format!("param.{name}"))
            .then(|| fx.get(&format!("param.{name}")))
    })
    .unwrap();
    let x = fx.get::<F>("x");
    let [c, h, w] = model.image_shape();
    let x = x.into_shape_with_order((eps.dim().0, c, h, w)).unwrap();
    let mut cfg = model.recipe();
    cfg.objective = objective.unwrap_or(vae::Objective::Elbo {
        samples: eps.dim().1,
        beta: 1.0,
    });
    let parts = vae::loss_and_grad(model, x.view(), eps.view(), &cfg).unwrap();
    r.scalar(&fx.file, "loss", parts.loss, scalar_of(fx, "loss"));
    check(model, &parts, r);
    check_grads(fx, r, model);
    let mut buffers = Vec::new();
    model.visit_buffers(&mut |name, v| buffers.push((name.to_string(), v.to_owned())));
    let expected = fx.names().filter(|n| n.starts_with("buffer_after.")).count();
    assert_eq!(buffers.len(), expected, "{}: buffer count", fx.file);
    for (name, v) in buffers {
        r.check(
            &fx.file,
            &format!("buffer_after.{name}"),
            &v,
            &fx.get(&format!("buffer_after.{name}")),
        );
    }
}

fn model_conv_vae<F: Float>(fx: &Fixture, r: &mut Report) {
    let k = fx.setting_f64("K") as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut m = VaeModel::<F>::conv_cis522(k, &mut rng).unwrap();
    let eps = fx.get::<F>("eps").into_dimensionality::<Ix3>().unwrap();
    vae_model(fx, r, &mut m, eps, None, &mut |m, parts, r| {
        r.check(
            &fx.file,
            "phi",
            &m.last_encoding().unwrap().clone().into_dyn(),
            &fx.get("phi"),
        );
        r.scalar(&fx.file, "kl_mc", parts.kl, scalar_of(fx, "kl_mc"));
        r.scalar(&fx.file, "log_p_x", -parts.recon, scalar_of(fx, "log_p_x"));
    });
    // mu_xs for both samples: decode the same codes again.
    let phi = m.last_encoding().unwrap().clone();
    let eps = fx.get::<F>("eps").into_dimensionality::<Ix3>().unwrap();
    let z = DiagGaussian::from_isotropic(phi.view())
        .unwrap()
        .rsample(eps.view())
        .unwrap();
    let (b, n, kd) = z.dim();
    let mu_xs = vae::decode_images(&mut m, z.view().into_shape_with_order((b * n, kd)).unwrap()).unwrap();
    r.check(
        &fx.file,
        "mu_xs",
        &mu_xs.into_shape_with_order((b, n, 784)).unwrap().into_dyn(),
        &fx.get("mu_xs"),
    );
}

fn model_dcgan_vae<F: Float>(fx: &Fixture, r: &mut Report) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut m = VaeModel::<F>::dcgan(
        [1, 28, 28],
        fx.setting_f64("z_dim") as usize,
        fx.setting_f64("enc_hidden") as usize,
        fx.setting_f64("dec_hidden") as usize,
        &mut rng,
    )
    .unwrap();
    let eps = get2::<F>(fx, "eps").insert_axis(Axis(1));
    let x = fx.get::<F>("x").into_dimensionality::<Ix4>().unwrap();
    let b = F::lit(x.shape()[0] as f64);
    vae_model(fx, r, &mut m, eps, None, &mut |_, parts, r| {
        r.check(&fx.file, "recon", &parts.output.clone().into_dyn(), &fx.get("recon"));
        r.scalar(&fx.file, "bce", parts.recon * b, scalar_of(fx, "bce"));
        r.scalar(&fx.file, "kl", parts.kl * b, scalar_of(fx, "kl"));
        r.check(
            &fx.file,
            "mean",
            &parts.posterior.mu.clone().into_dyn(),
            &fx.get("mean"),
        );
        r.check(&fx.file, "std", &parts.posterior.std().into_dyn(), &fx.get("std"));
    });
}

fn model_strided_vae<F: Float>(fx: &Fixture, r: &mut Report) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut m = VaeModel::<F>::strided([1, 28, 28], fx.setting_f64("latent") as usize, &mut rng).unwrap();
    let eps = get2::<F>(fx, "eps").insert_axis(Axis(1));
    let x = fx.get::<F>("x").into_dimensionality::<Ix4>().unwrap();
    let b = F::lit(x.shape()[0] as f64);
    vae_model(fx, r, &mut m, eps, None, &mut |_, parts, r| {
        r.check(&fx.file, "x_hat", &parts.output.clone().into_dyn(), &fx.get("x_hat"));
        r.scalar(&fx.file, "sse", parts.recon * b, scalar_of(fx, "sse"));
        r.scalar(&fx.file, "kl", parts.kl * b, scalar_of(fx, "kl"));
        r.check(&fx.file, "mu", &parts.posterior.mu.clone().into_dyn(), &fx.get("mu"));
        r.check(
            &fx.file,
            "logvar",
            &parts.posterior.logvar.clone().into_dyn(),
            &fx.get("logvar"),
        );
    });
}

/// Burda et al.'s one-stochastic-layer MLP VAE, on the ELBO, IWAE or IWAE with the DReG
/// encoder gradient: the posterior, the samples, the decoder's logits for every sample,
/// the log-weights (and DReG's normalised weights), the loss and every gradient.
fn model_mlp_vae<F: Float>(fx: &Fixture, r: &mut Report) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let x_dim = fx.setting_f64("x_dim") as usize;
    let hidden = fx.setting_vec("hidden");
    let z_dim = fx.setting_f64("z_dim") as usize;
    let mut m = VaeModel::<F>::mlp([1, 1, x_dim], [hidden[0], hidden[1]], z_dim, &mut rng).unwrap();
    let eps = fx.get::<F>("eps").into_dimensionality::<ndarray::Ix3>().unwrap();
    let k = eps.dim().1;
    let objective = match fx.setting_str("objective").as_str() {
        "elbo" => vae::Objective::Elbo { samples: k, beta: 1.0 },
        "iwae" => vae::Objective::Iwae { samples: k },
        "iwae_dreg" => vae::Objective::IwaeDreg { samples: k },
        other => panic!("{}: unknown objective {other}", fx.file),
    };
    let x = fx
        .get::<F>("x")
        .into_shape_with_order((eps.dim().0, 1, 1, x_dim))
        .unwrap();
    let eps_c = eps.clone();
    vae_model(fx, r, &mut m, eps, Some(objective), &mut |m, parts, r| {
        let q = &parts.posterior;
        r.check(&fx.file, "mu", &q.mu.clone().into_dyn(), &fx.get("mu"));
        r.check(&fx.file, "logvar", &q.logvar.clone().into_dyn(), &fx.get("logvar"));
        let z = q.rsample(eps_c.view()).unwrap();
        r.check(&fx.file, "z", &z.clone().into_dyn(), &fx.get("z"));
        let (b, k, kd) = z.dim();
        let logits = m
            .decode(
                z.view().into_shape_with_order((b * k, kd)).unwrap(),
                latent::nn::Mode::Eval,
            )
            .unwrap()
            .into_shape_with_order((b, k, x_dim))
            .unwrap();
        r.check(&fx.file, "logits", &logits.clone().into_dyn(), &fx.get("logits"));
        let x2 = x.view().into_shape_with_order((b, x_dim)).unwrap();
        let ll = vae::log_likelihood(Likelihood::BernoulliLogits, x2, logits.view()).unwrap();
        let log_w = &ll - &vae::log_ratio(q, eps_c.view(), z.view()).unwrap();
        r.check(&fx.file, "log_w", &log_w.clone().into_dyn(), &fx.get("log_w"));
        if fx.has("w_tilde") {
            let w = vae::log_mean_exp_backward(log_w.view(), ndarray::Array1::ones(b).view()).unwrap();
            r.check(&fx.file, "w_tilde", &w.into_dyn(), &fx.get("w_tilde"));
        }
    });
}

/// Burda et al.'s two-stochastic-layer VAE on the ELBO, IWAE or IWAE with the DReG
/// encoder gradient: the log-weights (and DReG's normalised weights), the loss and every
/// gradient by name.
fn model_hvae2<F: Float>(fx: &Fixture, r: &mut Report) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let n = |key: &str| fx.setting_f64(key) as usize;
    let x_dim = n("x_dim");
    let mut m =
        latent::models::Hvae2::<F>::new([1, 1, x_dim], (n("hx"), n("h1_dim")), (n("hh"), n("h2_dim")), &mut rng)
            .unwrap();
    load_params(&mut m, |name| {
        fx.has(&format!("param.{name}"))
            .then(|| fx.get(&format!("param.{name}")))
    })
    .unwrap();
    let eps1 = fx.get::<F>("eps1").into_dimensionality::<ndarray::Ix3>().unwrap();
    let eps2 = fx.get::<F>("eps2").into_dimensionality::<ndarray::Ix3>().unwrap();
    let (b, k, _) = eps1.dim();
    let x = fx.get::<F>("x").into_shape_with_order((b, 1, 1, x_dim)).unwrap();
    let objective = match fx.setting_str("objective").as_str() {
        "elbo" => vae::Objective::Elbo { samples: k, beta: 1.0 },
        "iwae" => vae::Objective::Iwae { samples: k },
        "iwae_dreg" => vae::Objective::IwaeDreg { samples: k },
        other => panic!("{}: unknown objective {other}", fx.file),
    };
    let log_w = m.log_weights(x.view(), eps1.view(), eps2.view()).unwrap();
    r.check(&fx.file, "log_w", &log_w.clone().into_dyn(), &fx.get("log_w"));
    if fx.has("w_tilde") {
        let w = vae::log_mean_exp_backward(log_w.view(), ndarray::Array1::ones(b).view()).unwrap();
        r.check(&fx.file, "w_tilde", &w.into_dyn(), &fx.get("w_tilde"));
    }
    let out = m.loss_and_grad(x.view(), eps1.view(), eps2.view(), objective).unwrap();
    r.scalar(&fx.file, "loss", out.loss, scalar_of(fx, "loss"));
    check_grads(fx, r, &mut m);
}

/// Runs `case` in both precisions; returns false for a kind this crate does not know.
fn run(fx: &Fixture, r: &mut Report) -> bool {
    macro_rules! both {
        ($f:ident) => {{
            $f::<f64>(fx, r);
            $f::<f32>(fx, r);
            true
        }};
    }
    match fx.kind.as_str() {
        "linear" => both!(linear),
        "loss" => both!(loss_case),
        "adam" => both!(adam),
        "conv2d" | "conv_transpose2d" => both!(conv),
        "activation" => both!(activation),
        "batch_norm2d" => both!(batch_norm),
        "model_conv_ae" => both!(model_conv_ae),
        "log_p_x_gaussian" => both!(log_p_x_gaussian),
        "kl_closed_diag" => both!(kl_closed_diag),
        "kl_mc_isotropic" => both!(kl_mc_isotropic),
        "iwae_linear_gaussian" => both!(iwae_linear_gaussian),
        "model_conv_vae" => both!(model_conv_vae),
        "model_dcgan_vae" => both!(model_dcgan_vae),
        "model_strided_vae" => both!(model_strided_vae),
        "model_mlp_vae" => both!(model_mlp_vae),
        "model_hvae2" => both!(model_hvae2),
        _ => false,
    }
}

#[test]
fn every_known_fixture_matches_pytorch() {
    let mut report = Report::default();
    let mut unknown = Vec::new();
    let mut ran = 0;
    for fx in Fixture::all() {
        if run(&fx, &mut report) {
            ran += 1;
        } else {
            unknown.push(format!("{} ({})", fx.file, fx.kind));
        }
    }
    eprintln!("parity: {ran} fixture files checked ({} comparisons)", report.checked);
    if !unknown.is_empty() {
        eprintln!("parity: kinds not implemented yet, not checked: {}", unknown.join(", "));
    }
    report.finish();
}
