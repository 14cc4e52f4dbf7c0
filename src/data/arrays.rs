//! NumPy arrays as a [`Dataset`]: a `.npy` file of images (labels from a second one), or a
//! `.npz` archive holding both, as `np.save`, `np.savez` and `np.savez_compressed` write
//! them.
//!
//! Images are `[n, h, w]` (grey), or rank 4 in either channel order (see [`ArrayLayout`]);
//! `uint8` values are scaled to `[0, 1]` (/ 255), `float32` and `float64` ones are taken
//! as they are. Labels are integers (`uint8` to `int64`) from 0 to 255, one per image.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array4, ArrayD, Axis, IxDyn, OwnedRepr};
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpyExt, ReadNpzError, ReadableElement};

use super::{check_fits, Dataset};
use crate::{Error, Result};

/// How a rank-4 image array is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArrayLayout {
    /// Channels last (`[n, h, w, c]`, NumPy's and PIL's order) when the last axis has 1, 3
    /// or 4 entries; else channels first (`[n, c, h, w]`, PyTorch's) when the second has;
    /// else an error asking for the layout.
    #[default]
    Auto,
    /// `[n, h, w, c]`.
    ChannelsLast,
    /// `[n, c, h, w]`.
    ChannelsFirst,
}

/// Where the arrays are: [`NpyImages::npy`] or [`NpyImages::npz`], then
/// [`NpyImages::load`].
///
/// ```no_run
/// use latent::data::{ArrayLayout, NpyImages};
/// # fn main() -> latent::Result<()> {
/// // x_train.npy holds uint8 [n, 32, 32, 3], y_train.npy the labels.
/// let data = NpyImages::npy("x_train.npy").labels("y_train.npy").load()?;
/// // An archive from np.savez("cells.npz", images=x, labels=y), channels first.
/// let cells = NpyImages::npz("cells.npz").layout(ArrayLayout::ChannelsFirst).load()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NpyImages {
    source: Source,
    layout: ArrayLayout,
}

#[derive(Debug, Clone)]
enum Source {
    Npy {
        images: PathBuf,
        labels: Option<PathBuf>,
    },
    Npz {
        path: PathBuf,
        images: Option<String>,
        labels: Option<String>,
    },
}

/// The names looked for in an archive when none is given, in order.
const IMAGE_NAMES: [&str; 4] = ["images", "x", "X", "data"];
const LABEL_NAMES: [&str; 4] = ["labels", "y", "Y", "targets"];

impl NpyImages {
    /// Images from a `.npy` file, every one of class 0 unless [`NpyImages::labels`] is given.
    pub fn npy(images: impl Into<PathBuf>) -> Self {
        NpyImages {
            source: Source::Npy {
                images: images.into(),
                labels: None,
            },
            layout: ArrayLayout::Auto,
        }
    }

    /// Images and labels from a `.npz` archive: the arrays named `images`, `x`, `X` or
    /// `data`, and `labels`, `y`, `Y` or `targets` (none: every image of class 0), unless
    /// [`NpyImages::names`] says which.
    pub fn npz(path: impl Into<PathBuf>) -> Self {
        NpyImages {
            source: Source::Npz {
                path: path.into(),
                images: None,
                labels: None,
            },
            layout: ArrayLayout::Auto,
        }
    }

    /// The labels' `.npy` file (for [`NpyImages::npy`]).
    pub fn labels(mut self, path: impl Into<PathBuf>) -> Self {
        if let Source::Npy { labels, .. } = &mut self.source {
            *labels = Some(path.into());
        }
        self
    }

    /// The names of the image and label arrays in the archive (for [`NpyImages::npz`]).
    pub fn names(mut self, images_name: &str, labels_name: Option<&str>) -> Self {
        if let Source::Npz { images, labels, .. } = &mut self.source {
            *images = Some(images_name.to_string());
            *labels = labels_name.map(str::to_string);
        }
        self
    }

    /// How a rank-4 image array is laid out (default [`ArrayLayout::Auto`]).
    pub fn layout(mut self, layout: ArrayLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Reads the arrays. An error names the file: unreadable, not NumPy's format, an
    /// element type or rank that is not supported, NaN or infinite pixels, labels that
    /// do not match the images in count or are not integers in 0..=255, or more pixels
    /// than are held in memory ([`super::MAX_IN_MEMORY_BYTES`]).
    pub fn load(&self) -> Result<Dataset> {
        let (where_, images, labels) = match &self.source {
            Source::Npy { images, labels } => {
                let x = read_npy(images, pixels_of)?;
                let y = labels.as_ref().map(|p| read_npy(p, labels_of).map(|y| (p.clone(), y)));
                (images.clone(), x, y.transpose()?)
            }
            Source::Npz { path, images, labels } => {
                let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
                let mut npz = NpzReader::new(Cursor::new(bytes))
                    .map_err(|e| Error::data(path, format!("not a .npz archive: {e}")))?;
                let names = npz.names().map_err(|e| Error::data(path, e.to_string()))?;
                // np.savez stores `name` as `name.npy`; NpzReader takes either.
                let find = |wanted: &[&str]| {
                    wanted
                        .iter()
                        .find(|w| names.iter().any(|n| n == *w || *n == format!("{w}.npy")))
                        .map(|w| w.to_string())
                };
                let image_name = match images {
                    Some(n) => n.clone(),
                    None => find(&IMAGE_NAMES).ok_or_else(|| {
                        Error::data(
                            path,
                            format!("has no array named {IMAGE_NAMES:?} (it holds {names:?}): name the images"),
                        )
                    })?,
                };
                let label_name = match labels {
                    Some(n) => Some(n.clone()),
                    None => find(&LABEL_NAMES),
                };
                let at = |name: &str| path.join(name);
                let x = read_npz(&mut npz, path, &image_name, pixels_of)?;
                let y = match label_name {
                    Some(n) => Some((at(&n), read_npz(&mut npz, path, &n, labels_of)?)),
                    None => None,
                };
                (at(&image_name), x, y)
            }
        };
        let images = self.to_nchw(&where_, images)?;
        let n = images.shape()[0];
        let labels = match labels {
            Some((path, y)) if y.len() != n => {
                return Err(Error::data(&path, format!("{} labels for {n} images", y.len())));
            }
            Some((_, y)) => y,
            None => Array1::zeros(n),
        };
        // from_arrays finds a NaN or an infinity and names its place; this names the file.
        Dataset::from_arrays(images, labels).map_err(|e| match e {
            Error::NonFinite(what) => Error::data(&where_, what),
            other => other,
        })
    }

    /// The images as `[n, c, h, w]`, from any rank and layout this reader takes.
    fn to_nchw(&self, path: &Path, x: ArrayD<f32>) -> Result<Array4<f32>> {
        let s = x.shape().to_vec();
        let four = match s.len() {
            3 => x.insert_axis(Axis(1)),
            4 => {
                let is_c = |v: usize| matches!(v, 1 | 3 | 4);
                let last = match self.layout {
                    ArrayLayout::ChannelsLast => true,
                    ArrayLayout::ChannelsFirst => false,
                    ArrayLayout::Auto if is_c(s[3]) => true,
                    ArrayLayout::Auto if is_c(s[1]) => false,
                    ArrayLayout::Auto => {
                        return Err(Error::data(
                            path,
                            format!("images of shape {s:?}: neither axis 1 nor axis 3 looks like channels (1, 3 or 4); give the layout"),
                        ));
                    }
                };
                if last {
                    x.permuted_axes(IxDyn(&[0, 3, 1, 2]))
                } else {
                    x
                }
            }
            r => {
                return Err(Error::data(
                    path,
                    format!("images of rank {r} (shape {s:?}): expected [n, h, w], [n, h, w, c] or [n, c, h, w]"),
                ));
            }
        };
        let four = four.into_dimensionality::<ndarray::Ix4>().expect("rank 4");
        if four.is_empty() {
            return Err(Error::data(path, format!("no pixels (shape {s:?})")));
        }
        let (n, c, h, w) = four.dim();
        check_fits(path, n, [c, h, w])?;
        Ok(four.as_standard_layout().into_owned())
    }
}

/// An array as read, by element type.
enum Numeric {
    U8(ArrayD<u8>),
    Int(ArrayD<i64>),
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
}

/// Reads one array as a given element type: a `.npy` file's bytes or an archive's entry.
trait ReadAs {
    fn read_as<T: ReadableElement>(&mut self) -> std::result::Result<ArrayD<T>, ReadNpyError>;
}

struct NpyBytes<'a>(&'a [u8]);

impl ReadAs for NpyBytes<'_> {
    fn read_as<T: ReadableElement>(&mut self) -> std::result::Result<ArrayD<T>, ReadNpyError> {
        ArrayD::<T>::read_npy(self.0)
    }
}

struct NpzEntry<'a> {
    npz: &'a mut NpzReader<Cursor<Vec<u8>>>,
    name: &'a str,
}

impl ReadAs for NpzEntry<'_> {
    fn read_as<T: ReadableElement>(&mut self) -> std::result::Result<ArrayD<T>, ReadNpyError> {
        match self.npz.by_name::<OwnedRepr<T>, IxDyn>(self.name) {
            Ok(a) => Ok(a),
            Err(ReadNpzError::Npy(e)) => Err(e),
            Err(ReadNpzError::Zip(e)) => Err(ReadNpyError::Io(std::io::Error::other(e))),
        }
    }
}

/// `Some(array)` if it holds `T`, `None` if it holds another type.
fn attempt<T: ReadableElement>(r: &mut impl ReadAs) -> std::result::Result<Option<ArrayD<T>>, ReadNpyError> {
    match r.read_as::<T>() {
        Ok(a) => Ok(Some(a)),
        Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The array in whichever supported element type it holds; of another type, the error
/// that names its descriptor.
fn numeric(r: &mut impl ReadAs) -> std::result::Result<Numeric, ReadNpyError> {
    if let Some(a) = attempt::<u8>(r)? {
        return Ok(Numeric::U8(a));
    }
    if let Some(a) = attempt::<f32>(r)? {
        return Ok(Numeric::F32(a));
    }
    if let Some(a) = attempt::<f64>(r)? {
        return Ok(Numeric::F64(a));
    }
    if let Some(a) = attempt::<i64>(r)? {
        return Ok(Numeric::Int(a));
    }
    if let Some(a) = attempt::<i32>(r)? {
        return Ok(Numeric::Int(a.mapv(i64::from)));
    }
    if let Some(a) = attempt::<i16>(r)? {
        return Ok(Numeric::Int(a.mapv(i64::from)));
    }
    if let Some(a) = attempt::<u16>(r)? {
        return Ok(Numeric::Int(a.mapv(i64::from)));
    }
    if let Some(a) = attempt::<i8>(r)? {
        return Ok(Numeric::Int(a.mapv(i64::from)));
    }
    if let Some(a) = attempt::<u32>(r)? {
        return Ok(Numeric::Int(a.mapv(i64::from)));
    }
    // The last attempt's error names the descriptor of what the file holds.
    r.read_as::<u64>()
        .map(|a| Numeric::Int(a.mapv(|v| i64::try_from(v).unwrap_or(i64::MAX))))
}

/// Pixels as `f32`: `uint8` scaled to `[0, 1]`, floats as they are.
fn pixels_of(path: &Path, a: Numeric) -> Result<ArrayD<f32>> {
    match a {
        Numeric::U8(a) => Ok(a.mapv(|v| v as f32 / 255.0)),
        Numeric::F32(a) => Ok(a),
        Numeric::F64(a) => Ok(a.mapv(|v| v as f32)),
        Numeric::Int(_) => Err(Error::data(
            path,
            "images of a wider integer type: give uint8, float32 or float64",
        )),
    }
}

/// Labels: integers of rank 1, each in 0..=255.
fn labels_of(path: &Path, a: Numeric) -> Result<Array1<u8>> {
    let a = match a {
        Numeric::U8(a) => a.mapv(i64::from),
        Numeric::Int(a) => a,
        Numeric::F32(_) | Numeric::F64(_) => {
            return Err(Error::data(path, "labels are floating point: give integers"));
        }
    };
    if a.ndim() != 1 {
        return Err(Error::data(
            path,
            format!("labels of shape {:?}: expected [n]", a.shape()),
        ));
    }
    if let Some(bad) = a.iter().find(|&&v| !(0..=255).contains(&v)) {
        return Err(Error::data(path, format!("label {bad} is outside 0..=255")));
    }
    Ok(a.iter().map(|&v| v as u8).collect())
}

/// Reads a `.npy` file and converts it with `convert`, or an error naming it.
fn read_npy<T>(path: &Path, convert: fn(&Path, Numeric) -> Result<T>) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let a = numeric(&mut NpyBytes(&bytes)).map_err(|e| npy_error(path, e))?;
    convert(path, a)
}

/// Reads the archive's array `name` and converts it, or an error naming both.
fn read_npz<T>(
    npz: &mut NpzReader<Cursor<Vec<u8>>>,
    path: &Path,
    name: &str,
    convert: fn(&Path, Numeric) -> Result<T>,
) -> Result<T> {
    let at = path.join(name);
    let a = numeric(&mut NpzEntry { npz, name }).map_err(|e| npy_error(&at, e))?;
    convert(&at, a)
}

/// A reading error in words, naming the file.
fn npy_error(path: &Path, e: ReadNpyError) -> Error {
    let what = match e {
        ReadNpyError::WrongDescriptor(d) => {
            format!("holds elements of type {d}: images must be uint8, float32 or float64, labels integers")
        }
        ReadNpyError::MissingData => "is truncated (fewer values than its header declares)".into(),
        ReadNpyError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "is not a NumPy array (it ends before a NumPy header does), or is truncated".into()
        }
        ReadNpyError::Io(e) => format!("cannot be read: {e}"),
        other => format!("is not a NumPy array: {other}"),
    };
    Error::data(path, what)
}
