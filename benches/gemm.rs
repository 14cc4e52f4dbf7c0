//! The matrix product every layer goes through (`latent::gemm`), on one thread and split
//! over all of rayon's, on square matrices: the rate this machine's cores reach, against
//! which a model's epoch can be set (its FLOPs over this rate is the time that no
//! convolution done as matrix products can beat).
//! `cargo bench --bench gemm` (criterion prints the rate as `elem/s`: FLOP/s, counting a
//! multiply-add as 2).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use latent::gemm::{gemm, gemm_par};
use ndarray::Array2;
use rand::{Rng, SeedableRng};

fn bench(c: &mut Criterion) {
    latent::runtime::Runtime::training().apply();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut g = c.benchmark_group("gemm");
    g.sample_size(20);
    // (name, m, k, n): square products, where the kernels run at their best.
    let cases = [("square_512", 512, 512, 512), ("square_1024", 1024, 1024, 1024)];
    for (name, m, k, n) in cases {
        let a = Array2::from_shape_simple_fn((m, k), || rng.random_range(-1.0f32..1.0));
        let b = Array2::from_shape_simple_fn((k, n), || rng.random_range(-1.0f32..1.0));
        let mut out = Array2::<f32>::zeros((m, n));
        g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        g.bench_function(format!("{name}_one_thread"), |bch| {
            bch.iter(|| gemm(1.0, a.view(), b.view(), 0.0, out.view_mut()))
        });
        g.bench_function(format!("{name}_all_threads"), |bch| {
            bch.iter(|| gemm_par(1.0, a.view(), b.view(), 0.0, out.view_mut()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
