//! Data from what people have: image folders, NumPy arrays, arrays in memory, the seeded
//! split; every kind of bad input an error naming the file; and a colour data set written
//! here, read back as an image folder, that a VAE trains on through `Trainer`.

use std::path::{Path, PathBuf};

use latent::data::{shapes, ArrayLayout, Colour, Dataset, ImageFolder, NpyImages};
use latent::train::Trainer;
use latent::vae::VaeModel;
use ndarray::{Array, Array1, Array2, Array3, Array4};
use ndarray_npy::{NpzWriter, WriteNpyExt};

/// A fresh temporary folder for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("latent-sources-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_npy<A: ndarray_npy::WritableElement, D: ndarray::Dimension>(path: &Path, a: &Array<A, D>) {
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

fn err_of<T: std::fmt::Debug>(r: latent::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn an_image_folder_reads_back_what_was_written_with_sorted_class_names() {
    let dir = tmp("roundtrip");
    let data = shapes(3, 12, 1).unwrap();
    data.write_image_folder(&dir).unwrap();
    let read = ImageFolder::new(&dir).load().unwrap();
    // Classes from the subfolder names, sorted; files in name order within each.
    assert_eq!(read.classes, ["cross", "disc", "square", "triangle"]);
    assert_eq!(read.images.shape(), &[12, 3, 12, 12]);
    let mut want: Vec<(u8, Vec<f32>)> = data
        .labels
        .iter()
        .zip(data.images.outer_iter())
        .map(|(&l, im)| (l, im.iter().map(|v| (v * 255.0).round() / 255.0).collect()))
        .collect();
    want.sort_by_key(|(l, _)| *l);
    for (i, (label, pixels)) in want.iter().enumerate() {
        assert_eq!(read.labels[i], *label);
        let got: Vec<f32> = read.images.index_axis(ndarray::Axis(0), i).iter().copied().collect();
        for (a, b) in got.iter().zip(pixels) {
            assert!((a - b).abs() < 1e-6, "image {i}: {a} vs {b}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn colour_is_as_the_files_or_as_asked_and_sizes_as_asked() {
    let dir = tmp("colour");
    let grey = Dataset::from_arrays(
        Array4::from_shape_fn((2, 1, 10, 20), |(i, _, y, x)| ((i + y + x) % 7) as f32 / 6.0),
        Array1::zeros(2),
    )
    .unwrap();
    grey.write_image_folder(&dir).unwrap();
    // A flat folder is one class, named after the folder.
    let flat = dir.join("0");
    let read = ImageFolder::new(&flat).load().unwrap();
    assert_eq!(read.images.shape(), &[2, 1, 10, 20]);
    assert_eq!(read.classes, ["0"]);
    let rgb = ImageFolder::new(&flat).colour(Colour::Rgb).load().unwrap();
    assert_eq!(rgb.images.shape(), &[2, 3, 10, 20]);
    assert_eq!(
        rgb.images.index_axis(ndarray::Axis(1), 2),
        read.images.index_axis(ndarray::Axis(1), 0)
    );
    let resized = ImageFolder::new(&flat).resize(8, 8).load().unwrap();
    assert_eq!(resized.images.shape(), &[2, 1, 8, 8]);
    let cropped = ImageFolder::new(&flat).resize_and_crop(6, 6).load().unwrap();
    assert_eq!(cropped.images.shape(), &[2, 1, 6, 6]);
    // A colour file makes the folder RGB, and Grey asks for one channel.
    shapes(1, 10, 2)
        .unwrap()
        .write_image_folder(&dir.join("mixed"))
        .unwrap();
    assert_eq!(
        ImageFolder::new(dir.join("mixed/disc")).load().unwrap().images.shape()[1],
        3
    );
    let asked = ImageFolder::new(dir.join("mixed/disc"))
        .colour(Colour::Grey)
        .load()
        .unwrap();
    assert_eq!(asked.images.shape()[1], 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_image_folders_are_errors_naming_the_file() {
    let dir = tmp("bad-folders");
    // No such folder; a folder with no images.
    let e = err_of(ImageFolder::new(dir.join("nope")).load());
    assert!(e.contains("nope") && e.contains("no such folder"), "{e}");
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let e = err_of(ImageFolder::new(&dir).load());
    assert!(e.contains("holds no images"), "{e}");
    // A truncated PNG and a file that is not an image at all.
    shapes(1, 16, 3).unwrap().write_image_folder(&dir.join("set")).unwrap();
    let victim = dir.join("set/disc/1.png");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(ImageFolder::new(dir.join("set")).load());
    assert!(e.contains("disc/1.png") && e.contains("cannot be decoded"), "{e}");
    std::fs::write(&victim, b"hello").unwrap();
    let e = err_of(ImageFolder::new(dir.join("set")).load());
    assert!(e.contains("disc/1.png"), "{e}");
    // Images of two sizes, without a size to resize to; with one they load.
    std::fs::remove_file(&victim).unwrap();
    shapes(1, 12, 4)
        .unwrap()
        .write_image_folder(&dir.join("small"))
        .unwrap();
    std::fs::rename(dir.join("small/cross/0.png"), dir.join("set/cross/9.png")).unwrap();
    let e = err_of(ImageFolder::new(dir.join("set")).load());
    assert!(
        e.contains("cross/9.png") && e.contains("12x12") && e.contains("16x16"),
        "{e}"
    );
    assert_eq!(
        ImageFolder::new(dir.join("set")).resize(16, 16).load().unwrap().len(),
        4
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn numpy_images_in_every_layout_and_type_with_labels() {
    let dir = tmp("npy");
    // uint8, channels last: scaled by 1/255 and moved to NCHW.
    let hwc = Array4::from_shape_fn((5, 4, 6, 3), |(i, y, x, c)| (i * 50 + y * 10 + x * 3 + c) as u8);
    write_npy(&dir.join("x.npy"), &hwc);
    write_npy(&dir.join("y.npy"), &Array1::from(vec![0i64, 1, 2, 1, 0]));
    let d = NpyImages::npy(dir.join("x.npy"))
        .labels(dir.join("y.npy"))
        .load()
        .unwrap();
    assert_eq!(d.images.shape(), &[5, 3, 4, 6]);
    assert_eq!(d.images[[2, 1, 3, 5]], hwc[[2, 3, 5, 1]] as f32 / 255.0);
    assert_eq!(d.labels.to_vec(), [0, 1, 2, 1, 0]);
    assert_eq!(d.classes, ["0", "1", "2"]);
    // float32 channels first, taken as it is; float64 grey [n, h, w].
    let chw = Array4::from_shape_fn((2, 3, 5, 5), |(i, c, y, x)| (i + c + y + x) as f32 * 0.1);
    write_npy(&dir.join("chw.npy"), &chw);
    let d = NpyImages::npy(dir.join("chw.npy")).load().unwrap();
    assert_eq!(d.images, chw);
    assert_eq!(d.labels.to_vec(), [0, 0]);
    let grey = Array3::from_shape_fn((3, 4, 4), |(i, y, x)| (i * y + x) as f64 - 2.5);
    write_npy(&dir.join("grey.npy"), &grey);
    let d = NpyImages::npy(dir.join("grey.npy")).load().unwrap();
    assert_eq!(d.images.shape(), &[3, 1, 4, 4]);
    assert_eq!(d.images[[2, 0, 3, 1]], 4.5);
    // A shape Auto cannot read, made explicit.
    let odd = Array4::<f32>::zeros((2, 5, 5, 5));
    write_npy(&dir.join("odd.npy"), &odd);
    let e = err_of(NpyImages::npy(dir.join("odd.npy")).load());
    assert!(e.contains("odd.npy") && e.contains("layout"), "{e}");
    let d = NpyImages::npy(dir.join("odd.npy"))
        .layout(ArrayLayout::ChannelsFirst)
        .load()
        .unwrap();
    assert_eq!(d.images.shape(), &[2, 5, 5, 5]);
    // An archive with the usual names, compressed.
    let mut npz = NpzWriter::new_compressed(std::fs::File::create(dir.join("set.npz")).unwrap());
    npz.add_array("images", &hwc).unwrap();
    npz.add_array("labels", &Array1::from(vec![3u8, 3, 1, 0, 2])).unwrap();
    npz.finish().unwrap();
    let d = NpyImages::npz(dir.join("set.npz")).load().unwrap();
    assert_eq!(
        (d.images.shape(), d.labels.to_vec()),
        (&[5, 3, 4, 6][..], vec![3, 3, 1, 0, 2])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arrays_are_errors_naming_the_file() {
    let dir = tmp("bad-npy");
    let check = |file: &str, r: latent::Result<Dataset>, says: &str| {
        let e = err_of(r);
        assert!(e.contains(file) && e.contains(says), "{file}: {e}");
    };
    // Unsupported element type and rank.
    write_npy(&dir.join("wide.npy"), &Array3::<i16>::zeros((2, 3, 3)));
    check(
        "wide.npy",
        NpyImages::npy(dir.join("wide.npy")).load(),
        "uint8, float32 or float64",
    );
    write_npy(&dir.join("flat.npy"), &Array2::<f32>::zeros((2, 9)));
    check("flat.npy", NpyImages::npy(dir.join("flat.npy")).load(), "rank 2");
    // NaN and infinite values, named with their place.
    let mut x = Array3::<f32>::zeros((3, 2, 2));
    x[[1, 0, 1]] = f32::NAN;
    write_npy(&dir.join("nan.npy"), &x);
    check("nan.npy", NpyImages::npy(dir.join("nan.npy")).load(), "image 1");
    x[[1, 0, 1]] = f32::INFINITY;
    write_npy(&dir.join("inf.npy"), &x);
    check("inf.npy", NpyImages::npy(dir.join("inf.npy")).load(), "inf");
    // Labels: count, range, type.
    write_npy(&dir.join("x.npy"), &Array3::<u8>::zeros((3, 2, 2)));
    write_npy(&dir.join("two.npy"), &Array1::from(vec![0u8, 1]));
    check(
        "two.npy",
        NpyImages::npy(dir.join("x.npy")).labels(dir.join("two.npy")).load(),
        "2 labels for 3 images",
    );
    write_npy(&dir.join("big.npy"), &Array1::from(vec![0i64, 300, 1]));
    check(
        "big.npy",
        NpyImages::npy(dir.join("x.npy")).labels(dir.join("big.npy")).load(),
        "300",
    );
    write_npy(&dir.join("float.npy"), &Array1::from(vec![0.0f32, 1.0, 1.0]));
    check(
        "float.npy",
        NpyImages::npy(dir.join("x.npy")).labels(dir.join("float.npy")).load(),
        "integers",
    );
    // Not NumPy at all; truncated; missing.
    std::fs::write(dir.join("text.npy"), "hello").unwrap();
    check(
        "text.npy",
        NpyImages::npy(dir.join("text.npy")).load(),
        "not a NumPy array",
    );
    let bytes = std::fs::read(dir.join("x.npy")).unwrap();
    std::fs::write(dir.join("cut.npy"), &bytes[..bytes.len() - 3]).unwrap();
    check("cut.npy", NpyImages::npy(dir.join("cut.npy")).load(), "truncated");
    check(
        "missing.npy",
        NpyImages::npy(dir.join("missing.npy")).load(),
        "missing.npy",
    );
    // An archive without the usual names says what it holds.
    let mut npz = NpzWriter::new(std::fs::File::create(dir.join("names.npz")).unwrap());
    npz.add_array("pixels", &Array3::<u8>::zeros((2, 2, 2))).unwrap();
    npz.finish().unwrap();
    check("names.npz", NpyImages::npz(dir.join("names.npz")).load(), "pixels");
    let d = NpyImages::npz(dir.join("names.npz"))
        .names("pixels", None)
        .load()
        .unwrap();
    assert_eq!(d.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn arrays_in_memory_and_the_seeded_split() {
    let images = Array4::from_shape_fn((10, 1, 2, 2), |(i, _, _, _)| i as f32);
    let labels = Array1::from_iter((0..10).map(|i| (i % 3) as u8));
    let data = Dataset::from_arrays(images.clone(), labels.clone()).unwrap();
    let (train, test) = data.split(0.3, 7).unwrap();
    assert_eq!((train.len(), test.len()), (7, 3));
    // Every image once, and the same seed the same split.
    let mut seen: Vec<f32> = train
        .images
        .iter()
        .chain(test.images.iter())
        .step_by(4)
        .copied()
        .collect();
    seen.sort_by(f32::total_cmp);
    assert_eq!(seen, (0..10).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(data.split(0.3, 7).unwrap().1.images, test.images);
    assert_ne!(data.split(0.3, 8).unwrap().1.images, test.images);
    assert!(data.split(0.0, 7).is_err() && data.split(1.0, 7).is_err());
    // Mismatched counts and non-finite pixels are errors.
    assert!(Dataset::from_arrays(images.clone(), Array1::zeros(9)).is_err());
    let mut bad = images;
    bad[[4, 0, 1, 1]] = f32::NAN;
    assert!(err_of(Dataset::from_arrays(bad, labels.clone())).contains("image 4"));
    assert!(Dataset::from_arrays(Array4::zeros((10, 1, 2, 2)), labels)
        .unwrap()
        .with_classes(vec!["a".into()])
        .is_err());
}

/// Coloured shapes written here as an image folder, read back, and a VAE of three
/// channels trained on them through `Trainer`: the loss falls.
#[test]
fn a_colour_image_folder_trains_through_trainer() {
    let dir = tmp("colour-train");
    shapes(40, 12, 5).unwrap().write_image_folder(&dir).unwrap();
    let data = ImageFolder::new(&dir).load().unwrap();
    assert_eq!(data.image_shape(), [3, 12, 12]);
    let (train, test) = data.split(0.25, 0).unwrap();
    let image = train.image_shape();
    let fitted = Trainer::<f32>::new()
        .epochs(8)
        .batch(20)
        .progress(false)
        .fit(|rng| VaeModel::mlp(image, [64, 32], 4, rng), &train, Some(&test))
        .unwrap();
    let losses: Vec<f64> = fitted.history.epochs.iter().map(|e| e.loss).collect();
    assert!(
        losses.last().unwrap() < &(0.9 * losses[0]),
        "the loss did not fall: {losses:?}"
    );
    let eval = fitted.evaluation.unwrap();
    assert_eq!(eval.reconstructions.shape()[1], 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A conditional VAE on the labelled shapes: it trains through `Trainer` (labels to the
/// encoder and decoder at every step and in the evaluation), and draws a row per class.
#[test]
fn a_conditional_vae_trains_on_labelled_colour_images_and_draws_each_class() {
    let data = shapes(40, 12, 6).unwrap();
    let (train, test) = data.split(0.25, 1).unwrap();
    let image = train.image_shape();
    let mut fitted = Trainer::<f32>::new()
        .epochs(8)
        .batch(20)
        .progress(false)
        .fit(
            |rng| VaeModel::mlp_conditional(image, [64, 32], 4, 4, rng),
            &train,
            Some(&test),
        )
        .unwrap();
    let losses: Vec<f64> = fitted.history.epochs.iter().map(|e| e.loss).collect();
    assert!(losses.last().unwrap() < &(0.9 * losses[0]), "{losses:?}");
    assert!(fitted.evaluation.unwrap().vae.unwrap().iwae.is_some());
    let dir = tmp("class-samples");
    let set = latent::figures::FigureSet {
        out: &dir,
        prefix: "cvae",
        title: "conditional VAE",
    };
    let path = latent::figures::class_samples(&mut fitted.model, &test.class_names(), &set, &mut fitted.rng).unwrap();
    assert!(path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
