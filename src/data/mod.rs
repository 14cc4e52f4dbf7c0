//! Data sets: MNIST and Fashion-MNIST from IDX files (gzipped or not, with checksums),
//! folders of images ([`ImageFolder`]), NumPy arrays ([`NpyImages`]) and arrays in memory
//! ([`Dataset::from_arrays`]), all as one [`Dataset`]; a seeded train/test split,
//! shuffling and batching.
//!
//! Every data set is held in memory as `f32` NCHW (`4 * n * c * h * w` bytes: MNIST's
//! 60,000 images take 188 MB, 100,000 RGB images of 64x64 take 4.9 GB). That is the line:
//! the loaders refuse, before decoding, a set whose `f32` pixels would pass
//! [`MAX_IN_MEMORY_BYTES`] (an error giving the size, not an out-of-memory kill); a set
//! larger than memory would need a streaming loader, which the crate does not have.
//!
//! Both data sets share the IDX format: a big-endian header (magic `0x0000_0803` for
//! images, `0x0000_0801` for labels, then the dimensions) followed by raw bytes. The reader
//! checks every field against the file's length before allocating, so a corrupt header
//! cannot ask for more memory than the file can fill.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use ndarray::{Array1, Array2, Array4, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::{Error, Result};

mod arrays;
mod image_folder;
mod shapes;

pub use arrays::{ArrayLayout, NpyImages};
pub use image_folder::{Colour, ImageFolder};
pub use shapes::{shapes, SHAPES};

/// The most pixel data, in bytes of `f32`, a loader holds in memory (16 GiB); see the
/// module docs.
pub const MAX_IN_MEMORY_BYTES: u64 = 16 << 30;

/// An error if `n` images of `[c, h, w]` would pass [`MAX_IN_MEMORY_BYTES`] as `f32`.
pub(crate) fn check_fits(what: &Path, n: usize, [c, h, w]: [usize; 3]) -> Result<()> {
    let bytes = 4 * n as u64 * (c * h * w) as u64;
    if bytes > MAX_IN_MEMORY_BYTES {
        return Err(Error::data(
            what,
            format!(
                "{n} images of {c}x{h}x{w} take {:.1} GB as f32, more than the {} GB held in memory \
                 (resize them smaller, or use part of them)",
                bytes as f64 / 1e9,
                MAX_IN_MEMORY_BYTES as f64 / 1e9
            ),
        ));
    }
    Ok(())
}

/// Which data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    /// Handwritten digits (LeCun, Cortes, Burges).
    Mnist,
    /// Zalando's clothing images in MNIST's format.
    FashionMnist,
}

impl DatasetKind {
    /// Where the files are looked for when no folder is given:
    /// 1. `$LATENT_DATA_DIR/mnist` or `$LATENT_DATA_DIR/fashion-mnist`, if the variable is set;
    /// 2. for MNIST, the copy in the repository (`data/mnist` beside `Cargo.toml`: there in
    ///    a clone, left out of the published package);
    /// 3. for Fashion-MNIST, Debian's `dataset-fashion-mnist` folder.
    ///
    /// A folder that is not there is reported by [`Dataset::load`] with where to get the files.
    pub fn default_dir(self) -> PathBuf {
        if let Some(root) = std::env::var_os("LATENT_DATA_DIR") {
            return PathBuf::from(root).join(self.folder_name());
        }
        match self {
            DatasetKind::Mnist => Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist"),
            DatasetKind::FashionMnist => PathBuf::from("/usr/share/datasets/fashion-mnist"),
        }
    }

    /// The folder name under `LATENT_DATA_DIR`: `mnist` or `fashion-mnist`.
    fn folder_name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// Where to get the four files, for the message of a missing folder.
    fn where_to_get(self) -> &'static str {
        match self {
            DatasetKind::Mnist => {
                "the four files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
                 t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) are at \
                 https://ossci-datasets.s3.amazonaws.com/mnist/ (torchvision's mirror)"
            }
            DatasetKind::FashionMnist => {
                "apt-get install dataset-fashion-mnist fills /usr/share/datasets/fashion-mnist, or \
                 the four files are at https://github.com/zalandoresearch/fashion-mnist"
            }
        }
    }

    /// The data set's name, as printed: `MNIST` or `Fashion-MNIST`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "MNIST",
            DatasetKind::FashionMnist => "Fashion-MNIST",
        }
    }

    /// The class names, index = label.
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            DatasetKind::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::FashionMnist => [
                "T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot",
            ],
        }
    }

    /// MD5 of the four decompressed files, in the order train images, train labels, test
    /// images, test labels. MNIST's are the canonical published ones; Fashion-MNIST's
    /// upstream lists only checksums of its `.gz` files, which change with the compressor,
    /// so these are of the decompressed files (identical in every copy).
    fn checksums(self) -> [&'static str; 4] {
        match self {
            DatasetKind::Mnist => [
                "6bbc9ace898e44ae57da46a324031adb",
                "a25bea736e30d166cdddb491f175f624",
                "2646ac647ad5339dbf082846283269ea",
                "27ae3e4e09519cfbb04c329615203637",
            ],
            DatasetKind::FashionMnist => [
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "9018921c3c673c538a1fc5bad174d6f9",
                "8181f5470baa50b63fa0f6fddb340f0a",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ],
        }
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion" | "fashion-mnist" | "fashion_mnist" => Ok(DatasetKind::FashionMnist),
            _ => Err(Error::InvalidArgument(format!(
                "unknown dataset '{s}' (expected mnist or fashion)"
            ))),
        }
    }
}

/// Training or test part of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 60 000 training images.
    Train,
    /// The 10 000 test images.
    Test,
}

impl Split {
    fn stems(self) -> (&'static str, &'static str) {
        match self {
            Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

/// Whether to compare the files with their canonical checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Compare the MD5 of each decompressed file with the canonical one (the default).
    Checksums,
    /// Only check the IDX structure (for subsets or re-encodings of the data).
    StructureOnly,
}

/// Images as `f32` (`[0, 1]` for MNIST's bytes / 255 and for 8-bit image files), shape
/// `(n, c, h, w)`, with a label per image and the names of the classes.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `(n, c, h, w)`, NCHW as in PyTorch.
    pub images: Array4<f32>,
    /// One label per image, an index into `classes`.
    pub labels: Array1<u8>,
    /// The class names, index = label (MNIST's digits, an image folder's subfolders).
    pub classes: Vec<String>,
}

impl Dataset {
    /// Loads one split of `kind` from `dir` (or [`DatasetKind::default_dir`]), checking
    /// checksums. Each file is looked up as `NAME.gz`, then as the uncompressed `NAME`.
    pub fn load(kind: DatasetKind, dir: Option<&Path>, split: Split) -> Result<Dataset> {
        Self::load_with(kind, dir, split, Verify::Checksums)
    }

    /// As [`Dataset::load`], choosing whether checksums are compared.
    pub fn load_with(kind: DatasetKind, dir: Option<&Path>, split: Split, verify: Verify) -> Result<Dataset> {
        let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| kind.default_dir());
        if !dir.is_dir() {
            return Err(Error::data(
                &dir,
                format!(
                    "{} folder not found: give the folder, or set LATENT_DATA_DIR to a folder holding {}/; {}",
                    kind.name(),
                    kind.folder_name(),
                    kind.where_to_get()
                ),
            ));
        }
        let (img_stem, lbl_stem) = split.stems();
        let sums = kind.checksums();
        let (img_sum, lbl_sum) = match split {
            Split::Train => (sums[0], sums[1]),
            Split::Test => (sums[2], sums[3]),
        };
        let want = |s| (verify == Verify::Checksums).then_some(s);
        let (img_path, img_bytes) = read_idx_file(&dir, img_stem, want(img_sum), 3)?;
        let (lbl_path, lbl_bytes) = read_idx_file(&dir, lbl_stem, want(lbl_sum), 1)?;
        let (dims, pixels) = parse_idx(&img_path, &img_bytes, 0x0803, 3)?;
        let (ldims, labels) = parse_idx(&lbl_path, &lbl_bytes, 0x0801, 1)?;
        if dims[0] != ldims[0] {
            return Err(Error::data(
                &lbl_path,
                format!("{} labels but {} has {} images", ldims[0], img_path.display(), dims[0]),
            ));
        }
        if let Some(bad) = labels.iter().find(|&&l| l > 9) {
            return Err(Error::data(&lbl_path, format!("label {bad} outside 0..=9")));
        }
        let images = Array4::from_shape_vec(
            (dims[0], 1, dims[1], dims[2]),
            pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        )
        .expect("length checked by parse_idx");
        Ok(Dataset {
            images,
            labels: Array1::from(labels.to_vec()),
            classes: kind.class_names().iter().map(|s| s.to_string()).collect(),
        })
    }

    /// A data set from arrays in memory: images `(n, c, h, w)` and one label per image,
    /// the classes named `"0"`, `"1"`, ... up to the largest label (see
    /// [`Dataset::with_classes`]). An error if the counts differ, if there are no images,
    /// or if a pixel is NaN or infinite (naming the first).
    pub fn from_arrays(images: Array4<f32>, labels: Array1<u8>) -> Result<Dataset> {
        if images.shape()[0] != labels.len() {
            return Err(Error::shape(
                "Dataset::from_arrays labels",
                format!("{} labels (one per image)", images.shape()[0]),
                labels.shape(),
            ));
        }
        if images.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "Dataset::from_arrays: no pixels (images of shape {:?})",
                images.shape()
            )));
        }
        if let Some(((i, c, y, x), v)) = images.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "Dataset::from_arrays: image {i} has the value {v} at channel {c}, row {y}, column {x}"
            )));
        }
        let classes = labels.iter().max().map_or(1, |&m| m as usize + 1);
        Ok(Dataset {
            images,
            labels,
            classes: (0..classes).map(|c| c.to_string()).collect(),
        })
    }

    /// The same data with `names` for its classes: an error if a label has no name.
    pub fn with_classes(mut self, names: Vec<String>) -> Result<Dataset> {
        if let Some(&bad) = self.labels.iter().find(|&&l| l as usize >= names.len()) {
            return Err(Error::InvalidArgument(format!(
                "label {bad} has no name among the {} classes given",
                names.len()
            )));
        }
        self.classes = names;
        Ok(self)
    }

    /// One image's shape, `[c, h, w]`.
    pub fn image_shape(&self) -> [usize; 3] {
        let s = self.images.shape();
        [s[1], s[2], s[3]]
    }

    /// The class names as `&str`, for the figures.
    pub fn class_names(&self) -> Vec<&str> {
        self.classes.iter().map(String::as_str).collect()
    }

    /// The images at `indices`, in that order, as a new data set (same classes).
    pub fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            images: self.images.select(Axis(0), indices),
            labels: self.labels.select(Axis(0), indices),
            classes: self.classes.clone(),
        }
    }

    /// A seeded random split into `(train, test)` with `round(test_fraction * n)` test
    /// images (at least one of each), as `torch.utils.data.random_split` does: the same
    /// seed gives the same split.
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        use rand::SeedableRng;
        let n = self.len();
        let test = (test_fraction * n as f64).round() as usize;
        if !(0.0..1.0).contains(&test_fraction) || test == 0 || test >= n {
            return Err(Error::InvalidArgument(format!(
                "test fraction {test_fraction} of {n} images leaves {test} test and {} training images; \
                 both need at least one",
                n.saturating_sub(test)
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        Ok((self.select(&order[test..]), self.select(&order[..test])))
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image (`channels * rows * cols`).
    pub fn dim(&self) -> usize {
        self.images.shape()[1..].iter().product()
    }

    /// The images as a `(n, pixels)` matrix view (no copy).
    pub fn flat(&self) -> ArrayView2<'_, f32> {
        let n = self.len();
        let d = self.dim();
        self.images
            .view()
            .into_shape_with_order((n, d))
            .expect("images are contiguous")
    }

    /// A statically binarized copy: each pixel set to 1 with probability its intensity, in
    /// one draw from `seed` (Burda et al.'s test set is binarized once this way, so every
    /// model is scored on the same binary images). Larochelle's fixed binarized MNIST file
    /// is another such draw, not this one.
    pub fn binarized(&self, seed: u64) -> Dataset {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut images = self.images.clone();
        binarize_in_place(images.as_slice_mut().expect("contiguous images"), &mut rng);
        Dataset {
            images,
            labels: self.labels.clone(),
            classes: self.classes.clone(),
        }
    }

    /// Writes the images as 8-bit PNG files into `dir`, one subfolder per class named as
    /// the class (`dir/<class>/<index>.png`), the layout [`ImageFolder`] reads back: grey
    /// for one channel, RGB for three (other channel counts are an error). Pixels are
    /// clamped to [0, 1] and rounded to 1/255.
    pub fn write_image_folder(&self, dir: &Path) -> Result<()> {
        let [c, h, w] = self.image_shape();
        let colour = match c {
            1 => image::ColorType::L8,
            3 => image::ColorType::Rgb8,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "write_image_folder: images of {c} channels; PNG files are written for 1 or 3"
                )))
            }
        };
        for name in &self.classes {
            let sub = dir.join(name);
            std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
        }
        let digits = self.len().to_string().len();
        for (i, (im, &label)) in self.images.outer_iter().zip(&self.labels).enumerate() {
            let mut bytes = Vec::with_capacity(c * h * w);
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..c {
                        bytes.push((im[[ch, y, x]].clamp(0.0, 1.0) * 255.0).round() as u8);
                    }
                }
            }
            let path = dir
                .join(&self.classes[label as usize])
                .join(format!("{i:0digits$}.png"));
            image::save_buffer(&path, &bytes, w as u32, h as u32, colour)
                .map_err(|e| Error::data(&path, format!("cannot be written: {e}")))?;
        }
        Ok(())
    }

    /// The first `n` images (or all of them), as a new data set.
    pub fn head(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images.slice(ndarray::s![..n, .., .., ..]).to_owned(),
            labels: self.labels.slice(ndarray::s![..n]).to_owned(),
            classes: self.classes.clone(),
        }
    }

    /// Copies the images at `indices` into `out` (`(indices.len(), pixels)`), the gather
    /// step of a shuffled batch.
    pub fn gather_flat(&self, indices: &[usize], out: &mut Array2<f32>) {
        let flat = self.flat();
        let d = self.dim();
        if out.dim() != (indices.len(), d) {
            *out = Array2::zeros((indices.len(), d));
        }
        use rayon::prelude::*;
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(indices.par_iter())
            .for_each(|(mut row, &i)| row.assign(&flat.row(i)));
    }
}

/// Sets each value `p` (an intensity in [0, 1]) to 1 with probability `p`, else 0: a
/// Bernoulli draw per pixel from `rng`, in order.
pub fn binarize_in_place<F: crate::Float, R: Rng + ?Sized>(pixels: &mut [F], rng: &mut R) {
    for p in pixels {
        let u = F::lit(rng.random::<f64>());
        *p = if u < *p { F::one() } else { F::zero() };
    }
}

/// The batches of one epoch: a permutation of `0..n` (seeded shuffle) cut into chunks of
/// `batch` (the last one shorter, as PyTorch's `DataLoader` with `drop_last=False`).
pub fn epoch_batches<R: Rng + ?Sized>(n: usize, batch: usize, shuffle: Option<&mut R>) -> Result<Vec<Vec<usize>>> {
    if n == 0 {
        return Err(Error::InvalidArgument("the data set is empty".into()));
    }
    if batch == 0 {
        return Err(Error::InvalidArgument("batch size must be at least 1".into()));
    }
    if batch > n {
        return Err(Error::InvalidArgument(format!(
            "batch size {batch} is larger than the data set ({n} images)"
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(rng) = shuffle {
        order.shuffle(rng);
    }
    Ok(order.chunks(batch).map(<[usize]>::to_vec).collect())
}

/// Largest file the reader accepts once decompressed (MNIST's largest is 47 MB).
const MAX_IDX_BYTES: u64 = 1 << 30;

/// Decompresses an IDX file of `ndim` dimensions, reading no more than its header
/// declares (plus one byte, to detect trailing data), so that memory stays bounded by the
/// declared size however the stream inflates.
pub fn decompress_idx(path: &Path, reader: impl Read, ndim: usize) -> Result<Vec<u8>> {
    let corrupt = |e: std::io::Error| Error::data(path, format!("not a valid gzip stream (truncated or corrupt): {e}"));
    let mut dec = flate2::read::GzDecoder::new(reader);
    let header = 4 + 4 * ndim;
    let mut bytes = Vec::new();
    (&mut dec)
        .take(header as u64)
        .read_to_end(&mut bytes)
        .map_err(corrupt)?;
    if bytes.len() < header {
        return Ok(bytes); // parse_idx names the short header
    }
    let declared = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as u64)
        .try_fold(1u64, |acc, d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| Error::data(path, "header declares more than 1 GiB: not an MNIST-sized IDX file"))?;
    dec.take(declared + 1).read_to_end(&mut bytes).map_err(corrupt)?;
    Ok(bytes)
}

/// Reads `dir/stem.gz` (or `dir/stem`), decompressing and checking the MD5 when asked.
fn read_idx_file(dir: &Path, stem: &str, md5: Option<&str>, ndim: usize) -> Result<(PathBuf, Vec<u8>)> {
    let gz = dir.join(format!("{stem}.gz"));
    let raw = dir.join(stem);
    let (path, bytes) = if gz.exists() {
        let file = File::open(&gz).map_err(|e| Error::io(&gz, e))?;
        let bytes = decompress_idx(&gz, std::io::BufReader::new(file), ndim)?;
        (gz, bytes)
    } else if raw.exists() {
        let bytes = std::fs::read(&raw).map_err(|e| Error::io(&raw, e))?;
        (raw, bytes)
    } else {
        return Err(Error::data(
            &gz,
            format!("file not found (nor uncompressed {})", raw.display()),
        ));
    };
    if bytes.len() as u64 > MAX_IDX_BYTES {
        return Err(Error::data(
            &path,
            "decompresses to more than 1 GiB: not an MNIST-sized IDX file",
        ));
    }
    if let Some(expected) = md5 {
        let found = format!("{:x}", Md5::digest(&bytes));
        if found != expected {
            return Err(Error::Checksum {
                path,
                expected: expected.to_string(),
                found,
            });
        }
    }
    Ok((path, bytes))
}

/// Parses an IDX buffer of unsigned bytes: checks the magic number and that the declared
/// dimensions match the payload length exactly. Returns the dimensions and the payload.
pub fn parse_idx<'a>(path: &Path, bytes: &'a [u8], magic: u32, ndim: usize) -> Result<(Vec<usize>, &'a [u8])> {
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::data(
            path,
            format!("{} bytes is too short for an IDX header ({header} bytes)", bytes.len()),
        ));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    let found = word(0);
    if found != magic {
        return Err(Error::data(
            path,
            format!(
                "wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x} ({})",
                idx_kind(magic)
            ),
        ));
    }
    let dims: Vec<usize> = (1..=ndim).map(|i| word(i) as usize).collect();
    let payload = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let have = bytes.len() - header;
    match payload {
        Some(p) if p == have => Ok((dims, &bytes[header..])),
        Some(p) if p > have => Err(Error::data(
            path,
            format!("truncated: header declares {dims:?} = {p} bytes of data, file has {have}"),
        )),
        Some(p) => Err(Error::data(
            path,
            format!(
                "{} trailing bytes after the {p} bytes that header {dims:?} declares",
                have - p
            ),
        )),
        None => Err(Error::data(path, format!("header dimensions {dims:?} overflow"))),
    }
}

fn idx_kind(magic: u32) -> &'static str {
    match magic {
        0x0803 => "images: unsigned bytes, 3 dimensions",
        0x0801 => "labels: unsigned bytes, 1 dimension",
        _ => "IDX",
    }
}
