//! Figures as PNG files (plotters, pure Rust, with an embedded DejaVu Sans font).

use std::path::Path;
use std::sync::OnceLock;

use ndarray::ArrayView3;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{Error, Result};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FONT_NAME: &str = "sans-serif";

fn ensure_font() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("embedded font is valid"));
    });
}

fn plot_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |what| Error::Plot {
        path: path.to_path_buf(),
        what,
    }
}

/// One named line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
}

/// A line chart: title, axis labels, series, optional log-scaled y and a marked x.
#[derive(Debug, Clone, Default)]
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// Log-scale the y axis.
    pub log_y: bool,
    /// A vertical dashed marker at this x, with a caption.
    pub marker: Option<(f64, String)>,
    /// Put the legend in the lower right corner instead of the upper right.
    pub legend_lower_right: bool,
}

/// The colour of class `i` (ten well-separated colours, matplotlib's `tab10`).
pub fn class_color(i: usize) -> RGBColor {
    const TAB10: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    TAB10[i % 10]
}

impl LineChart {
    /// Writes the chart to `path` (PNG, 900 x 560).
    pub fn save(&self, path: &Path) -> Result<()> {
        ensure_font();
        let err = plot_err(path);
        // Points the axes can show: finite, and positive on a log scale.
        let shown = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0);
        let pts = self.series.iter().flat_map(|s| s.points.iter()).filter(shown);
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            return Err(err("no finite points to plot".into()));
        }
        if x1 == x0 {
            x1 = x0 + 1.0;
        }
        let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(&self.title, (FONT_NAME, 24))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(80);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                // Decimals to match a linear axis's span (log axes print their ticks' digit).
                let decimals = (2.0 - (y1 - y0).max(1e-12).log10().floor()).clamp(0.0, 4.0) as usize;
                let y_fmt = |y: &f64| {
                    if self.log_y && *y > 0.0 {
                        // Ticks are one digit times a power of ten: print that digit.
                        let e = (y * (1.0 + 1e-9)).log10().floor() as i32;
                        if !(-3..=5).contains(&e) {
                            format!("{y:.0e}")
                        } else {
                            format!("{y:.*}", (-e).max(0) as usize)
                        }
                    } else {
                        format!("{y:.decimals$}")
                    }
                };
                let x_fmt = |x: &f64| {
                    if x1 - x0 >= 10.0 {
                        format!("{x:.0}")
                    } else {
                        format!("{x:.1}")
                    }
                };
                chart
                    .configure_mesh()
                    .x_label_formatter(&x_fmt)
                    .y_label_formatter(&y_fmt)
                    .y_labels(8)
                    .x_desc(&self.x_label)
                    .y_desc(&self.y_label)
                    .label_style((FONT_NAME, 15))
                    .axis_desc_style((FONT_NAME, 17))
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()
                    .map_err(|e| err(e.to_string()))?;
                for (i, s) in self.series.iter().enumerate() {
                    let c = class_color(i);
                    chart
                        .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                        .map_err(|e| err(e.to_string()))?
                        .label(s.name.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3)));
                    // A line through one point (the epoch mean of a one-epoch run) draws
                    // nothing: draw the point as a dot.
                    if s.points.len() == 1 {
                        chart
                            .draw_series(
                                s.points
                                    .iter()
                                    .filter(shown)
                                    .map(|&p| Circle::new(p, 4, c.filled())),
                            )
                            .map_err(|e| err(e.to_string()))?;
                    }
                }
                if let Some((mx, caption)) = &self.marker {
                    let (lo, hi) = (y0, y1);
                    let dashes: Vec<_> = (0..40)
                        .filter(|i| i % 2 == 0)
                        .map(|i| {
                            let f = |t: f64| {
                                if self.log_y {
                                    lo * (hi / lo).powf(t)
                                } else {
                                    lo + (hi - lo) * t
                                }
                            };
                            PathElement::new(
                                vec![(*mx, f(i as f64 / 40.0)), (*mx, f((i + 1) as f64 / 40.0))],
                                BLACK.stroke_width(1),
                            )
                        })
                        .collect();
                    chart.draw_series(dashes).map_err(|e| err(e.to_string()))?;
                    let ty = if self.log_y {
                        lo * (hi / lo).powf(0.5)
                    } else {
                        lo + (hi - lo) * 0.5
                    };
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!(" {caption}"),
                            (*mx, ty),
                            (FONT_NAME, 16),
                        )))
                        .map_err(|e| err(e.to_string()))?;
                }
                if !self.series.is_empty() {
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.85))
                        .border_style(RGBColor(180, 180, 180))
                        .label_font((FONT_NAME, 16))
                        .position(if self.legend_lower_right {
                            SeriesLabelPosition::LowerRight
                        } else {
                            SeriesLabelPosition::UpperRight
                        })
                        .draw()
                        .map_err(|e| err(e.to_string()))?;
                }
            }};
        }
        if self.log_y {
            let (lo, hi) = (y0 / 1.15, y1 * 1.15);
            let (bold, light) = log_ticks(lo, hi);
            draw!(builder
                .build_cartesian_2d(
                    x0..x1,
                    (lo..hi).log_scale().with_key_points(bold).with_light_points(light)
                )
                .map_err(|e| err(e.to_string()))?);
        } else {
            let pad = (y1 - y0).max(1e-12) * 0.05;
            draw!(builder
                .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
                .map_err(|e| err(e.to_string()))?);
        }
        root.present().map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

/// Labelled and unlabelled ticks of a log axis over `lo..hi` (`0 < lo < hi`): 1, 2 and 5
/// times each power of ten, or every multiple 1..9 where that gives fewer than four labels
/// (an axis within one decade, where plotters' own ticks label a single power of ten or
/// none), or the powers of ten alone over many decades; the multiples 1..9 as light lines.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let pick = |mults: &[f64]| -> Vec<f64> {
        (e0..=e1)
            .flat_map(|e| mults.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let every = pick(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    let bold = match pick(&[1.0, 2.0, 5.0]) {
        few if few.len() < 4 => every.clone(),
        many if many.len() > 12 => pick(&[1.0]),
        fine => fine,
    };
    (bold, every)
}

/// A grid of images, one labelled row per entry: `(label, images)`, each image
/// `[c, h, w]` with values in `[0, 1]` (clamped): grey for one channel, colour for three
/// (RGB); of other channel counts the first is drawn in grey.
pub fn image_grid(path: &Path, title: &str, rows: &[(String, Vec<ArrayView3<f32>>)]) -> Result<()> {
    ensure_font();
    let err = plot_err(path);
    let ncols = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let (_, ih, iw) = rows
        .iter()
        .flat_map(|r| r.1.first())
        .map(|im| im.dim())
        .next()
        .ok_or_else(|| err("no images to draw".into()))?;
    let scale = (96 / ih.max(iw)).max(1);
    let (cell_h, cell_w) = (ih * scale + 8, iw * scale + 8);
    let label_w = if rows.iter().all(|r| r.0.is_empty()) { 8 } else { 150 };
    let title_h = 44;
    let width = (label_w + ncols * cell_w + 8) as u32;
    let height = (title_h + rows.len() * cell_h + 8) as u32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    draw_text(&root, title, (width as i32 / 2, 22), 22, true).map_err(&err)?;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for (r, (label, images)) in rows.iter().enumerate() {
        let y = (title_h + r * cell_h) as i32;
        draw_text(&root, label, (label_w as i32 - 12, y + cell_h as i32 / 2), 17, false).map_err(&err)?;
        for (c, im) in images.iter().enumerate() {
            let x = (label_w + c * cell_w + 4) as i32;
            let top = y + 4;
            let (channels, h, w) = im.dim();
            for i in 0..h {
                for j in 0..w {
                    let colour = if channels == 3 {
                        RGBColor(byte(im[[0, i, j]]), byte(im[[1, i, j]]), byte(im[[2, i, j]]))
                    } else {
                        let g = byte(im[[0, i, j]]);
                        RGBColor(g, g, g)
                    };
                    let (px, py) = (x + (j * scale) as i32, top + (i * scale) as i32);
                    for dy in 0..scale as i32 {
                        for dx in 0..scale as i32 {
                            root.draw_pixel((px + dx, py + dy), &colour)
                                .map_err(|e| err(e.to_string()))?;
                        }
                    }
                }
            }
        }
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Text centred at `at` (or right-aligned when `centre` is false).
fn draw_text(
    area: &DrawingArea<BitMapBackend, Shift>,
    text: &str,
    at: (i32, i32),
    size: u32,
    centre: bool,
) -> std::result::Result<(), String> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let h = if centre { HPos::Center } else { HPos::Right };
    let style = TextStyle::from((FONT_NAME, size).into_font()).pos(Pos::new(h, VPos::Center));
    area.draw(&Text::new(text.to_string(), at, style))
        .map_err(|e| e.to_string())
}

/// A scatter plot of 2-D points coloured by class, with a legend of `class_names`
/// (index = label). PNG, 820 x 700.
pub fn scatter_by_class(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    points: &[(f64, f64)],
    labels: &[u8],
    class_names: &[&str],
) -> Result<()> {
    ensure_font();
    let err = plot_err(path);
    if points.len() != labels.len() || points.is_empty() {
        return Err(err(format!("{} points but {} labels", points.len(), labels.len())));
    }
    let finite = points.iter().filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in finite {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let (px, py) = (((x1 - x0) * 0.05).max(1e-9), ((y1 - y0) * 0.05).max(1e-9));
    let root = BitMapBackend::new(path, (820, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_NAME, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 16))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (class, name) in class_names.iter().enumerate() {
        let c = class_color(class);
        let pts: Vec<(f64, f64)> = points
            .iter()
            .zip(labels)
            .filter(|(_, &l)| l as usize == class)
            .map(|(&p, _)| p)
            .collect();
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 2, c.mix(0.6).filled())))
            .map_err(|e| err(e.to_string()))?
            .label(name.to_string())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font((FONT_NAME, 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Samples of one 2-D Gaussian with its mean and a `2 sigma` ellipse.
#[derive(Debug, Clone)]
pub struct GaussianSamples {
    /// The mean.
    pub centre: (f64, f64),
    /// Two standard deviations along each axis.
    pub radius: (f64, f64),
    /// The samples.
    pub points: Vec<(f64, f64)>,
}

fn bounds(points: impl Iterator<Item = (f64, f64)>) -> Option<(f64, f64, f64, f64)> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points.filter(|p| p.0.is_finite() && p.1.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    (x0 <= x1).then(|| {
        let (px, py) = (((x1 - x0) * 0.06).max(1e-6), ((y1 - y0) * 0.06).max(1e-6));
        (x0 - px, x1 + px, y0 - py, y1 + py)
    })
}

/// Samples of several 2-D Gaussians, each in its own colour with its mean (a cross) and
/// its `2 sigma` ellipse, as the CIS-522 notebook's `rsample` figure. PNG, 760 x 700.
pub fn gaussian_samples(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    groups: &[GaussianSamples],
) -> Result<()> {
    ensure_font();
    let err = plot_err(path);
    let ellipse = |g: &GaussianSamples| -> Vec<(f64, f64)> {
        (0..=120)
            .map(|i| {
                let t = i as f64 / 120.0 * std::f64::consts::TAU;
                (g.centre.0 + g.radius.0 * t.cos(), g.centre.1 + g.radius.1 * t.sin())
            })
            .collect()
    };
    let all = groups.iter().flat_map(|g| g.points.iter().copied().chain(ellipse(g)));
    let (x0, x1, y0, y1) = bounds(all).ok_or_else(|| err("no finite points to plot".into()))?;
    let root = BitMapBackend::new(path, (760, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_NAME, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 16))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, g) in groups.iter().enumerate() {
        let c = class_color(i);
        chart
            .draw_series(g.points.iter().map(|&p| Circle::new(p, 2, c.mix(0.5).filled())))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(std::iter::once(PathElement::new(ellipse(g), c.stroke_width(2))))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(std::iter::once(Cross::new(g.centre, 7, BLACK.stroke_width(2))))
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// One named series of points with symmetric error bars: `(x, y, half_width)`.
#[derive(Debug, Clone)]
pub struct ErrorSeries {
    /// Legend entry.
    pub name: String,
    /// `(x, y, half_width)`; a half width of zero draws the point alone.
    pub points: Vec<(f64, f64, f64)>,
}

/// Points with vertical error bars, one colour per series (each series shifted a little
/// along x so that bars at the same x do not hide each other). PNG, 900 x 560.
pub fn error_bars(path: &Path, title: &str, (x_label, y_label): (&str, &str), series: &[ErrorSeries]) -> Result<()> {
    ensure_font();
    let err = plot_err(path);
    let ends = series
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|&(x, y, e)| [(x, y - e), (x, y + e)]));
    let (x0, x1, y0, y1) = bounds(ends).ok_or_else(|| err("no finite points to plot".into()))?;
    let (x0, x1) = (x0 - 0.5, x1 + 0.5);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_NAME, 22))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 16))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let spread = 0.25;
    let n = series.len().max(1) as f64;
    for (i, s) in series.iter().enumerate() {
        let c = class_color(i);
        let dx = if n > 1.0 {
            spread * (i as f64 / (n - 1.0) - 0.5)
        } else {
            0.0
        };
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&(x, y, e)| ErrorBar::new_vertical(x + dx, y - e, y, y + e, c.stroke_width(2), 8)),
            )
            .map_err(|e| err(e.to_string()))?
            .label(s.name.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&(x, y, _)| Circle::new((x + dx, y), 4, c.filled())),
            )
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font((FONT_NAME, 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log_ticks;

    /// Labelled ticks lie in the range, rise, and there are enough of them to read the axis
    /// whatever its span: within one decade, over a few, over many.
    #[test]
    fn log_ticks_label_every_span() {
        for &(lo, hi, want) in &[
            (0.0208, 0.16, &[0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1][..]),
            (0.0065, 0.55, &[0.01, 0.02, 0.05, 0.1, 0.2, 0.5][..]),
            (3e-4, 2e6, &[1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6][..]),
        ] {
            let (bold, light) = log_ticks(lo, hi);
            assert_eq!(bold.len(), want.len(), "{lo}..{hi}: {bold:?}");
            for (b, w) in bold.iter().zip(want) {
                assert!((b / w - 1.0).abs() < 1e-12, "{lo}..{hi}: {bold:?}");
            }
            assert!(light.windows(2).all(|p| p[0] < p[1]));
            assert!(light.iter().all(|v| (lo..=hi).contains(v)));
            assert!(bold.iter().all(|b| light.iter().any(|l| (l / b - 1.0).abs() < 1e-12)));
        }
    }
}
