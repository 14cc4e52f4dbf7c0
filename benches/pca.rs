//! PCA fit on MNIST's 60 000 training images: moments, decomposition, both together.
//! `cargo bench --bench pca`

use criterion::{criterion_group, criterion_main, Criterion};
use latent::data::{Dataset, DatasetKind, Split};
use latent::pca::{eigh_descending, Moments, Pca, Solver};

fn bench(c: &mut Criterion) {
    latent::denormals::flush_denormals();
    latent::memory::keep_freed_memory();
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
    let mut m = Moments::new(784);
    m.update(x).unwrap();
    let cov = m.covariance().unwrap();
    g.bench_function("eigh_784", |b| b.iter(|| eigh_descending(&cov).unwrap()));
    g.bench_function("fit_k20_eigh", |b| b.iter(|| Pca::params(20).fit(x).unwrap()));
    g.bench_function("fit_k20_randomized", |b| {
        b.iter(|| {
            Pca::params(20)
                .solver(Solver::Randomized {
                    oversample: 10,
                    power_iters: 4,
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
