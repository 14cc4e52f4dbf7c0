//! One training step (forward, backward, Adam) of each notebook VAE at its recipe's batch
//! size, and the ConvVAE at batch 1, as `vae::DataParallel` runs it. `cargo bench --bench vae`

use criterion::{criterion_group, criterion_main, Criterion};
use latent::models::VaeModel;
use latent::optim::{Adam, AdamConfig};
use latent::vae;
use ndarray::Array4;
use rand::{Rng, SeedableRng};

fn step(c: &mut Criterion, name: &str, model: &mut VaeModel<f32>, batch: usize, lr: f32) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let x = Array4::from_shape_simple_fn((batch, 1, 28, 28), || rng.random_range(0.0f32..1.0));
    let cfg = model.recipe();
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
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
