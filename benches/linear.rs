//! One training step of the linear autoencoder (784 -> 20 -> 784, batch 250, Adam):
//! the unit of the `pca_vs_ae` epoch (240 steps). `cargo bench --bench linear`

use criterion::{criterion_group, criterion_main, Criterion};
use latent::models::LinearAe;
use latent::optim::{Adam, AdamConfig};
use ndarray::Array2;
use rand::{Rng, SeedableRng};

fn bench(c: &mut Criterion) {
    latent::runtime::Runtime::training().apply();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let x = Array2::from_shape_simple_fn((250, 784), || rng.random_range(0.0..1.0f32));
    let mut ae = LinearAe::<f32>::new(784, 20, &mut rng).unwrap();
    let mut opt = Adam::new(AdamConfig::new(1e-3).weight_decay(1e-5));
    c.bench_function("linear_ae_step_b250_k20", |b| {
        b.iter(|| ae.train_step(x.view(), &mut opt).unwrap())
    });
    c.bench_function("linear_ae_loss_and_grad_b250_k20", |b| {
        b.iter(|| ae.loss_and_grad(x.view()).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
