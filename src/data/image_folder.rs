//! A folder of images as a [`Dataset`], laid out as torchvision's `ImageFolder` has it:
//! one subfolder per class (labels from the subfolder names, sorted), or a flat folder of
//! images that is one unlabelled class.
//!
//! Files ending in `.png`, `.jpg`, `.jpeg` or `.bmp` (any case) are read; other files and
//! names starting with a dot are skipped, as torchvision skips what it cannot load. Pixels
//! become `f32` in `[0, 1]` (8-bit values / 255, 16-bit ones / 65535); an alpha channel is
//! dropped.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::DynamicImage;
use ndarray::{Array1, Array4};
use rayon::prelude::*;

use super::{check_fits, Dataset};
use crate::{Error, Result};

/// Which channels the images are read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Colour {
    /// As the files are: RGB if any file has colour, else grey (one channel).
    #[default]
    AsFiles,
    /// One channel (colour files converted to luma with Rec. 709's weights, 0.2126 R +
    /// 0.7152 G + 0.0722 B; PIL's `convert("L")` uses Rec. 601's, 0.299, 0.587, 0.114).
    Grey,
    /// Three channels (grey files repeated in each).
    Rgb,
}

/// The options of reading a folder of images; [`ImageFolder::load`] reads it.
///
/// ```no_run
/// use latent::data::{Colour, ImageFolder};
/// # fn main() -> latent::Result<()> {
/// // Every image resized so that its shorter side is 64, then cropped to its central
/// // 64x64, in colour: torchvision's `Resize(64)` then `CenterCrop(64)`.
/// let data = ImageFolder::new("photos/").colour(Colour::Rgb).resize_and_crop(64, 64).load()?;
/// let (train, test) = data.split(0.1, 0)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    colour: Colour,
    size: Option<(usize, usize)>,
    crop: bool,
}

impl ImageFolder {
    /// The folder at `root`, read as the files are (colour, size).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageFolder {
            root: root.into(),
            colour: Colour::AsFiles,
            size: None,
            crop: false,
        }
    }

    /// Reads the images with these channels.
    pub fn colour(mut self, colour: Colour) -> Self {
        self.colour = colour;
        self
    }

    /// Resizes every image to `height x width` (bilinear, with antialiasing when
    /// shrinking; the aspect ratio is not kept), as torchvision's `Resize((h, w))`.
    /// Without a size, every image must have the same one.
    pub fn resize(mut self, height: usize, width: usize) -> Self {
        self.size = Some((height, width));
        self.crop = false;
        self
    }

    /// Scales every image, keeping its aspect ratio, until it covers `height x width`,
    /// then keeps that central part: torchvision's `Resize` then `CenterCrop`.
    pub fn resize_and_crop(mut self, height: usize, width: usize) -> Self {
        self.size = Some((height, width));
        self.crop = true;
        self
    }

    /// Reads every image. An error names the file or folder at fault: a folder that does
    /// not exist or holds no images, an image that cannot be decoded (unreadable,
    /// truncated, not an image), images of different sizes when no size is given, more
    /// than 256 classes, or more pixels than are held in memory
    /// ([`super::MAX_IN_MEMORY_BYTES`]).
    pub fn load(&self) -> Result<Dataset> {
        if self.size.is_some_and(|(h, w)| h == 0 || w == 0) {
            return Err(Error::InvalidArgument(format!(
                "{}: a resize to {:?} has no pixels",
                self.root.display(),
                self.size
            )));
        }
        let (classes, files) = list(&self.root)?;
        let decoded: Vec<DynamicImage> = files.par_iter().map(|(path, _)| decode(path)).collect::<Result<_>>()?;
        let colour = match self.colour {
            Colour::AsFiles if decoded.iter().any(|im| im.color().has_color()) => Colour::Rgb,
            Colour::AsFiles => Colour::Grey,
            chosen => chosen,
        };
        let channels = if colour == Colour::Rgb { 3 } else { 1 };
        let (h, w) = match self.size {
            Some(size) => size,
            None => {
                let (w0, h0) = (decoded[0].width(), decoded[0].height());
                if let Some(i) = decoded.iter().position(|im| (im.width(), im.height()) != (w0, h0)) {
                    return Err(Error::data(
                        &files[i].0,
                        format!(
                            "is {}x{} but {} is {w0}x{h0}: give a size to resize them to",
                            decoded[i].width(),
                            decoded[i].height(),
                            files[0].0.display()
                        ),
                    ));
                }
                (h0 as usize, w0 as usize)
            }
        };
        check_fits(&self.root, files.len(), [channels, h, w])?;
        let plane = channels * h * w;
        let mut pixels = vec![0f32; files.len() * plane];
        pixels
            .par_chunks_mut(plane)
            .zip(decoded.par_iter())
            .for_each(|(out, im)| self.fill(im, colour, (h, w), out));
        let images = Array4::from_shape_vec((files.len(), channels, h, w), pixels).expect("sized");
        let labels = Array1::from_iter(files.iter().map(|(_, label)| *label));
        Ok(Dataset {
            images,
            labels,
            classes,
        })
    }

    /// One image resized (and cropped) to `(h, w)` with `colour`'s channels, written
    /// channel by channel (CHW) into `out`.
    fn fill(&self, im: &DynamicImage, colour: Colour, (h, w): (usize, usize), out: &mut [f32]) {
        let sized = match self.size {
            None => Cow::Borrowed(im),
            Some(_) if self.crop => {
                // Scale so that the image covers h x w, then take the centre.
                let scale = (h as f64 / im.height() as f64).max(w as f64 / im.width() as f64);
                let sw = ((im.width() as f64 * scale).round() as u32).max(w as u32);
                let sh = ((im.height() as f64 * scale).round() as u32).max(h as u32);
                let scaled = im.resize_exact(sw, sh, FilterType::Triangle);
                Cow::Owned(scaled.crop_imm((sw - w as u32) / 2, (sh - h as u32) / 2, w as u32, h as u32))
            }
            Some(_) => Cow::Owned(im.resize_exact(w as u32, h as u32, FilterType::Triangle)),
        };
        let plane = h * w;
        match colour {
            Colour::Rgb => {
                let rgb = sized.to_rgb32f();
                for (i, px) in rgb.pixels().enumerate() {
                    for c in 0..3 {
                        out[c * plane + i] = px[c];
                    }
                }
            }
            _ => {
                let grey = imageops::grayscale(&sized.to_rgb32f());
                for (o, px) in out.iter_mut().zip(grey.pixels()) {
                    *o = px[0];
                }
            }
        }
    }
}

/// Whether `path` names an image file this reader takes.
fn is_image(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    !hidden && path.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg" | "bmp"))
}

/// The entries of `dir`, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in read {
        paths.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    paths.sort();
    Ok(paths)
}

/// Image files with their labels.
type Labelled = Vec<(PathBuf, u8)>;

/// The class names and the `(file, label)` pairs of the folder at `root`.
fn list(root: &Path) -> Result<(Vec<String>, Labelled)> {
    if !root.is_dir() {
        return Err(Error::data(root, "no such folder"));
    }
    let entries = sorted_entries(root)?;
    let subfolders: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_none_or(|n| n.starts_with('.'))
        })
        .collect();
    let mut classes = Vec::new();
    let mut files = Vec::new();
    if subfolders.is_empty() {
        // A flat folder: one class, named after the folder.
        let name = root
            .file_name()
            .map_or("images".into(), |n| n.to_string_lossy().into_owned());
        classes.push(name);
        files.extend(entries.into_iter().filter(|p| is_image(p)).map(|p| (p, 0)));
    } else {
        if subfolders.len() > 256 {
            return Err(Error::data(
                root,
                format!("{} class folders; at most 256 are supported", subfolders.len()),
            ));
        }
        for (label, dir) in subfolders.into_iter().enumerate() {
            classes.push(dir.file_name().expect("a folder name").to_string_lossy().into_owned());
            let images = sorted_entries(dir)?.into_iter().filter(|p| is_image(p));
            files.extend(images.map(|p| (p, label as u8)));
        }
    }
    if files.is_empty() {
        return Err(Error::data(
            root,
            "holds no images (.png, .jpg, .jpeg or .bmp), directly or one folder down",
        ));
    }
    Ok((classes, files))
}

/// Decodes one file, or an error naming it.
fn decode(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    image::load_from_memory(&bytes).map_err(|e| Error::data(path, format!("cannot be decoded as an image: {e}")))
}
