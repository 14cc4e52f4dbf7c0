//! A colour data set that needs no download: coloured shapes (disc, square, triangle,
//! cross) on a plain background, each drawn with a random colour, size and position from
//! a seed. Small enough to train on in seconds, and in colour, so that a colour pipeline
//! (an image folder, a model of three channels, the figures) can be tried and tested
//! anywhere. [`Dataset::write_image_folder`] puts it on disk as an image folder.

use ndarray::{Array1, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Dataset;
use crate::{Error, Result};

/// The classes, in label order.
pub const SHAPES: [&str; 4] = ["cross", "disc", "square", "triangle"];

/// `per_class` images of each shape, `side x side` pixels in RGB, drawn from `seed`; the
/// classes interleaved (image `i` is of class `i % 4`).
pub fn shapes(per_class: usize, side: usize, seed: u64) -> Result<Dataset> {
    if per_class == 0 || side < 8 {
        return Err(Error::InvalidArgument(format!(
            "shapes: {per_class} images per class of side {side}: need at least 1, and a side of 8 or more"
        )));
    }
    let n = per_class * SHAPES.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut images = Array4::<f32>::zeros((n, 3, side, side));
    let s = side as f32;
    for i in 0..n {
        let class = i % SHAPES.len();
        // A dark or light background, and a saturated colour for the shape.
        let background: f32 = if rng.random::<bool>() { 0.1 } else { 0.85 };
        let colour = hue_to_rgb(rng.random::<f32>());
        let radius = s * rng.random_range(0.22..0.38);
        let cx = rng.random_range(radius..s - radius);
        let cy = rng.random_range(radius..s - radius);
        for y in 0..side {
            for x in 0..side {
                // Pixel centres, relative to the shape's centre, in units of its radius.
                let (u, v) = ((x as f32 + 0.5 - cx) / radius, (y as f32 + 0.5 - cy) / radius);
                let inside = match class {
                    0 => (u.abs() < 0.3 && v.abs() < 1.0) || (v.abs() < 0.3 && u.abs() < 1.0),
                    1 => u * u + v * v < 1.0,
                    2 => u.abs() < 0.8 && v.abs() < 0.8,
                    _ => v < 0.8 && v > -1.0 && u.abs() < (v + 1.0) / 1.8 * 0.9,
                };
                for c in 0..3 {
                    images[[i, c, y, x]] = if inside { colour[c] } else { background };
                }
            }
        }
    }
    let labels = Array1::from_iter((0..n).map(|i| (i % SHAPES.len()) as u8));
    Dataset::from_arrays(images, labels)?.with_classes(SHAPES.iter().map(|s| s.to_string()).collect())
}

/// A fully saturated colour of hue `h` in [0, 1).
fn hue_to_rgb(h: f32) -> [f32; 3] {
    let x = h * 6.0;
    [
        ((x - 3.0).abs() - 1.0).clamp(0.0, 1.0),
        (2.0 - (x - 2.0).abs()).clamp(0.0, 1.0),
        (2.0 - (x - 4.0).abs()).clamp(0.0, 1.0),
    ]
}
