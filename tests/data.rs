//! The MNIST loader: the real files load and check out; every kind of damage gives an
//! error that names the file and what is wrong.

mod common;

use std::io::Write;
use std::path::Path;

use latent::data::{epoch_batches, Dataset, DatasetKind, Split, Verify};
use latent::Error;
use rand::SeedableRng;

#[test]
fn mnist_test_split_loads_with_checksums() {
    let ds = Dataset::load(DatasetKind::Mnist, None, Split::Test).unwrap();
    assert_eq!(ds.images.shape(), &[10000, 1, 28, 28]);
    assert_eq!(ds.labels.len(), 10000);
    let (lo, hi) = ds
        .images
        .iter()
        .fold((1.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
    assert_eq!((lo, hi), (0.0, 1.0));
    // The test set's class counts are well known: 980 zeros ... 1009 nines.
    let mut counts = [0usize; 10];
    ds.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    assert_eq!(ds.labels[0], 7);
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(payload);
    v
}

/// Writes a tiny data set of `n` 2x3 images and `m` labels into a fresh directory.
fn tiny(dir: &Path, n: u32, m: u32, img_magic: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let pixels: Vec<u8> = (0..n * 6).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..m).map(|i| (i % 10) as u8).collect();
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte.gz"),
        gz(&idx(img_magic, &[n, 2, 3], &pixels)),
    )
    .unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gz(&idx(0x801, &[m], &labels))).unwrap();
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("latent-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn load_err(dir: &Path) -> String {
    Dataset::load_with(DatasetKind::Mnist, Some(dir), Split::Test, Verify::StructureOnly)
        .unwrap_err()
        .to_string()
}

#[test]
fn structurally_valid_files_load_without_checksums() {
    let d = tmp("ok");
    tiny(&d, 4, 4, 0x803);
    let ds = Dataset::load_with(DatasetKind::Mnist, Some(&d), Split::Test, Verify::StructureOnly).unwrap();
    assert_eq!(ds.images.shape(), &[4, 1, 2, 3]);
    assert_eq!(ds.images[[0, 0, 0, 1]], 37.0 / 255.0);
    // The same files are not the canonical MNIST: a checksum error names the file.
    let e = Dataset::load(DatasetKind::Mnist, Some(&d), Split::Test).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("t10k-images-idx3-ubyte.gz"), "{e}");
}

#[test]
fn uncompressed_files_are_read_too() {
    let d = tmp("raw");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("t10k-images-idx3-ubyte"),
        idx(0x803, &[1, 2, 3], &[0, 1, 2, 3, 4, 255]),
    )
    .unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx(0x801, &[1], &[3])).unwrap();
    let ds = Dataset::load_with(DatasetKind::Mnist, Some(&d), Split::Test, Verify::StructureOnly).unwrap();
    assert_eq!(ds.images[[0, 0, 1, 2]], 1.0);
}

#[test]
fn missing_directory_and_file_are_named() {
    let e = load_err(Path::new("/nonexistent/latent-data"));
    assert!(e.contains("/nonexistent/latent-data") && e.contains("not found"), "{e}");
    // It says how to point at the files and where to get them.
    assert!(
        e.contains("LATENT_DATA_DIR") && e.contains("t10k-images-idx3-ubyte.gz"),
        "{e}"
    );
    let d = tmp("missing");
    tiny(&d, 2, 2, 0x803);
    std::fs::remove_file(d.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("t10k-labels-idx1-ubyte.gz") && e.contains("not found"),
        "{e}"
    );
}

#[test]
fn truncated_gzip_is_reported() {
    let d = tmp("trunc");
    tiny(&d, 50, 50, 0x803);
    let p = d.join("t10k-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("t10k-images-idx3-ubyte.gz") && e.contains("gzip"), "{e}");
}

#[test]
fn corrupt_gzip_is_reported() {
    let d = tmp("corrupt");
    tiny(&d, 3, 3, 0x803);
    std::fs::write(d.join("t10k-labels-idx1-ubyte.gz"), b"this is not gzip at all").unwrap();
    let e = load_err(&d);
    assert!(e.contains("t10k-labels-idx1-ubyte.gz") && e.contains("gzip"), "{e}");
}

#[test]
fn wrong_magic_is_reported() {
    let d = tmp("magic");
    tiny(&d, 3, 3, 0x801);
    let e = load_err(&d);
    assert!(e.contains("t10k-images-idx3-ubyte.gz") && e.contains("magic"), "{e}");
}

#[test]
fn header_payload_mismatch_is_reported() {
    let d = tmp("short");
    std::fs::create_dir_all(&d).unwrap();
    // Header says 1000 images, file holds one: rejected before any large allocation.
    std::fs::write(
        d.join("t10k-images-idx3-ubyte.gz"),
        gz(&idx(0x803, &[1000, 28, 28], &[0; 784])),
    )
    .unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte.gz"), gz(&idx(0x801, &[1], &[0]))).unwrap();
    let e = load_err(&d);
    assert!(e.contains("truncated") && e.contains("t10k-images"), "{e}");
}

#[test]
fn count_mismatch_is_reported() {
    let d = tmp("count");
    tiny(&d, 5, 4, 0x803);
    let e = load_err(&d);
    assert!(e.contains("4 labels") && e.contains("5 images"), "{e}");
}

#[test]
fn fashion_mnist_missing_directory_says_how_to_install() {
    let e = Dataset::load(
        DatasetKind::FashionMnist,
        Some(Path::new("/nonexistent/fashion")),
        Split::Test,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    if !DatasetKind::FashionMnist.default_dir().is_dir() {
        let e = Dataset::load(DatasetKind::FashionMnist, None, Split::Test).unwrap_err();
        assert!(e.to_string().contains("apt-get install dataset-fashion-mnist"), "{e}");
    } else {
        let ds = Dataset::load(DatasetKind::FashionMnist, None, Split::Test).unwrap();
        assert_eq!(ds.images.shape(), &[10000, 1, 28, 28]);
    }
}

#[test]
fn batches_cover_every_index_once_and_are_seeded() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let b = epoch_batches(103, 10, Some(&mut rng)).unwrap();
    assert_eq!(b.len(), 11);
    assert_eq!(b.last().unwrap().len(), 3);
    let mut all: Vec<usize> = b.concat();
    assert_ne!(all, (0..103).collect::<Vec<_>>(), "shuffled");
    all.sort();
    assert_eq!(all, (0..103).collect::<Vec<_>>());
    let mut rng2 = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    assert_eq!(epoch_batches(103, 10, Some(&mut rng2)).unwrap(), b);
    let none: Option<&mut rand_chacha::ChaCha8Rng> = None;
    assert!(epoch_batches(5, 6, none)
        .unwrap_err()
        .to_string()
        .contains("larger than the data set"));
    let none: Option<&mut rand_chacha::ChaCha8Rng> = None;
    assert!(epoch_batches(0, 1, none).unwrap_err().to_string().contains("empty"));
}

/// A header declaring 1 GiB that inflates from a few bytes is refused before it is read,
/// and a stream longer than its header declares reads only one byte past the declaration.
#[test]
fn decompression_is_bounded_by_the_declared_size() {
    let path = Path::new("bomb.gz");
    let huge = gz(&idx(0x803, &[60_000, 1000, 1000], &[0; 64]));
    let e = latent::data::decompress_idx(path, &huge[..], 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 1 GiB"), "{e}");
    let long = gz(&idx(0x801, &[4], &[1; 100_000]));
    let bytes = latent::data::decompress_idx(path, &long[..], 1).unwrap();
    assert_eq!(bytes.len(), 8 + 4 + 1);
    let e = latent::data::parse_idx(path, &bytes, 0x801, 1).unwrap_err().to_string();
    assert!(e.contains("trailing"), "{e}");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(common::fuzz_cases(400)))]

        /// Random bytes, and valid files with bytes flipped, inserted or removed (before or
        /// after compression), through the whole loader: an error or a data set, never a
        /// panic, and a data set only if the labels and images agree.
        #[test]
        fn idx_gzip_reader_never_panics(
            random in prop::collection::vec(any::<u8>(), 0..300),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
            compressed in any::<bool>(),
            target_images in any::<bool>(),
        ) {
            let path = Path::new("fuzz.gz");
            let _ = latent::data::decompress_idx(path, &random[..], 3);
            let _ = latent::data::parse_idx(path, &random, 0x803, 3);
            let pixels: Vec<u8> = (0..5 * 6).map(|i| (i * 37 % 256) as u8).collect();
            let plain = if target_images {
                idx(0x803, &[5, 2, 3], &pixels)
            } else {
                idx(0x801, &[5], &[1, 2, 3, 4, 5])
            };
            let mut file = if compressed { gz(&plain) } else { plain };
            for (at, byte, op) in edits {
                let i = at.index(file.len().max(1)).min(file.len().saturating_sub(1));
                match op {
                    0 if !file.is_empty() => file[i] = byte,
                    1 => file.insert(i, byte),
                    _ if !file.is_empty() => { file.remove(i); }
                    _ => {}
                }
            }
            if !compressed {
                file = gz(&file);
            }
            let dir = tmp("fuzz");
            tiny(&dir, 5, 5, 0x803);
            let name = if target_images { "t10k-images-idx3-ubyte.gz" } else { "t10k-labels-idx1-ubyte.gz" };
            std::fs::write(dir.join(name), &file).unwrap();
            if let Ok(ds) = Dataset::load_with(DatasetKind::Mnist, Some(&dir), Split::Test, Verify::StructureOnly) {
                prop_assert_eq!(ds.images.shape()[0], ds.labels.len());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
