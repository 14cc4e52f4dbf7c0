//! One training step (forward, backward, Adam) of each notebook VAE at its recipe's batch
//! size, and the ConvVAE at batch 1, as `vae::DataParallel` runs it; and Burda et al.'s
//! models at their batch of 20 (the one-layer MLP VAE with k = 1 and IWAE with k = 50, the
//! two-layer IWAE with k = 5), as `examples/iwae_paper.rs` trains them. `cargo bench --bench vae`

use criterion::{criterion_group, criterion_main, Criterion};
use latent::models::{Hvae2, VaeModel};
use latent::optim::{Adam, AdamConfig};
use latent::vae;
use latent::vae::{KlEstimator, LossConfig, Objective};
use ndarray::Array4;
use rand::{Rng, SeedableRng};

fn step(c: &mut Criterion, name: &str, model: &mut VaeModel<f32>, batch: usize, lr: f32) {
    let cfg = model.recipe();
    step_with(c, name, model, batch, lr, cfg);
}

/// Binary images, as the paper's dynamically binarized MNIST.
fn binary_batch(batch: usize, rng: &mut impl Rng) -> Array4<f32> {
    Array4::from_shape_simple_fn((batch, 1, 28, 28), || if rng.random::<bool>() { 1.0 } else { 0.0 })
}

fn step_with(c: &mut Criterion, name: &str, model: &mut VaeModel<f32>, batch: usize, lr: f32, cfg: LossConfig) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let x = Array4::from_shape_simple_fn((batch, 1, 28, 28), || rng.random_range(0.0f32..1.0));
    let mut opt = Adam::new(AdamConfig::new(lr));
    // As the example trains: the batch cut into one part per thread where the model
    // allows it (not the DCGAN VAE, whose BatchNorm couples a batch; not a batch of one).
    let mut par = vae::DataParallel::vae(model);
    c.bench_function(name, |b| {
        b.iter(|| par.train_step(model, x.view(), &cfg, &mut opt, &mut rng).unwrap())
    });
}

fn bench(c: &mut Criterion) {
    latent::runtime::Runtime::training().apply();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut conv = VaeModel::<f32>::conv_cis522(20, &mut rng).unwrap();
    step(c, "conv_vae_b1", &mut conv, 1, 1e-3);
    step(c, "conv_vae_b100", &mut conv, 100, 1e-3);
    let mut strided = VaeModel::<f32>::strided([1, 28, 28], 32, &mut rng).unwrap();
    step(c, "strided_vae_b128", &mut strided, 128, 1e-3);
    let mut dcgan = VaeModel::<f32>::dcgan_coursera(32, &mut rng).unwrap();
    step(c, "dcgan_vae_b1024", &mut dcgan, 1024, 2e-3);
    // Burda et al.: Adam with eps 1e-4, batch 20, binary images.
    let burda = |objective| LossConfig {
        objective,
        kl: KlEstimator::MonteCarlo,
        reduction: latent::loss::Reduction::Mean,
    };
    let mut mlp = VaeModel::<f32>::mlp_burda(&mut rng).unwrap();
    step_with(
        c,
        "mlp_vae_k1_b20",
        &mut mlp,
        20,
        1e-3,
        burda(Objective::Elbo { samples: 1, beta: 1.0 }),
    );
    step_with(
        c,
        "mlp_iwae_k50_b20",
        &mut mlp,
        20,
        1e-3,
        burda(Objective::Iwae { samples: 50 }),
    );
    let mut two = Hvae2::<f32>::burda(&mut rng).unwrap();
    let x = binary_batch(20, &mut rng);
    let mut adam = AdamConfig::new(1e-3);
    adam.eps = 1e-4;
    let mut opt = Adam::new(adam);
    let (h1, h2) = two.latent_dims();
    c.bench_function("hvae2_iwae_k5_b20", |b| {
        b.iter(|| {
            let eps1 = vae::sample_noise::<f32, _>(20, 5, h1, &mut rng);
            let eps2 = vae::sample_noise::<f32, _>(20, 5, h2, &mut rng);
            // As the trainer runs it: the whole step on a worker of the pool.
            latent::pool::on_worker(|| {
                two.loss_and_grad(x.view(), eps1.view(), eps2.view(), Objective::Iwae { samples: 5 })
                    .unwrap();
                opt.step(&mut two).unwrap();
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
