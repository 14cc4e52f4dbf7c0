//! PCA fit on MNIST's 60 000 training images: moments, decomposition, both together.
//! `cargo bench --bench pca`

use criterion::{criterion_group, criterion_main, Criterion};
use latent::data::{Dataset, DatasetKind, Split};
use latent::pca::{eigh_descending, Moments, Pca, Solver};

fn bench(c: &mut Criterion) {
    latent::runtime::Runtime::training().apply();
    let train = Dataset::load(DatasetKind::Mnist, None, Split::Train).expect("MNIST");
    let x = train.flat();
    let mut g = c.benchmark_group("pca_mnist_60000x784");
    g.sample_size(20);
    g.bench_function("moments", |b| {
        b.iter(|| {
            let mut m = Moments::new(784);
            m.update(x).unwrap();
            m
        })
    });
    g.bench_function("moments_image_order", |b| {
        b.iter(|| {
            let mut m = Moments::new(784).with_image_shape(28, 28).unwrap();
            m.update(x).unwrap();
            m
        })
    });
    let mut m = Moments::new(784);
    m.update(x).unwrap();
    let cov = m.covariance().unwrap();
    g.bench_function("eigh_784", |b| b.iter(|| eigh_descending(&cov).unwrap()));
    let params = Pca::params(20).image_shape(28, 28);
    g.bench_function("fit_k20_eigh", |b| b.iter(|| params.fit(x).unwrap()));
    g.bench_function("fit_k20_randomized", |b| {
        b.iter(|| {
            params
                .solver(Solver::Randomized {
                    oversample: 20,
                    power_iters: 8,
                    seed: 0,
                })
                .fit(x)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
