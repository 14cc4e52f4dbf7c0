//! Figures that compare models through their codes ([`Codec`]): reconstructions,
//! interpolations, codes by class, decoded noise; and the training curves and PCA's
//! spectrum beside them.

use std::path::Path;

use ndarray::{s, Array2, Array3, ArrayView1, ArrayView2, Axis};
use rand::Rng;

use super::codec::Codec;
use crate::pca::Pca;
use crate::plot::{image_grid, scatter_by_class, LineChart, Series};
use crate::train::History;
use crate::{Error, Float, Result};

/// A model with its label, as the comparison figures take it.
pub type Labelled<'a> = (String, &'a mut dyn Codec);

/// Rows of pixels as `[c, h, w]` images.
fn as_images(x: ArrayView2<f32>, [c, h, w]: [usize; 3]) -> Result<Vec<Array3<f32>>> {
    if x.ncols() != c * h * w {
        return Err(Error::shape(
            "figure images",
            format!("rows of {c} x {h} x {w} pixels"),
            x.shape(),
        ));
    }
    Ok(x.axis_iter(Axis(0))
        .map(|r| r.to_owned().into_shape_with_order((c, h, w)).expect("c * h * w"))
        .collect())
}

/// Image rows labelled, drawn as one grid.
fn grid(path: &Path, title: &str, rows: &[(String, Vec<Array3<f32>>)]) -> Result<()> {
    let rows: Vec<_> = rows
        .iter()
        .map(|(l, v)| (l.clone(), v.iter().map(|a| a.view()).collect()))
        .collect();
    image_grid(path, title, &rows)
}

/// The images `originals` (`[n, pixels]` of `shape`) above each model's reconstruction.
pub fn reconstruction_grid(
    path: &Path,
    title: &str,
    originals: ArrayView2<f32>,
    shape: [usize; 3],
    models: &mut [Labelled],
) -> Result<()> {
    let mut rows = vec![("original".to_string(), as_images(originals, shape)?)];
    for (label, model) in models.iter_mut() {
        let codes = model.encode_rows(originals)?;
        rows.push((
            label.clone(),
            as_images(model.decode_rows(codes.view())?.view(), shape)?,
        ));
    }
    grid(path, title, &rows)
}

/// `steps` images from `a` to `b`: blended in pixel space, and decoded from the blend of
/// each model's codes of the two.
pub fn code_interpolation(
    path: &Path,
    title: &str,
    (a, b): (ArrayView1<f32>, ArrayView1<f32>),
    shape: [usize; 3],
    steps: usize,
    models: &mut [Labelled],
) -> Result<()> {
    let blend = |h: &Array2<f32>| -> Array2<f32> {
        Array2::from_shape_fn((steps, h.ncols()), |(i, j)| {
            let t = i as f32 / (steps.max(2) - 1) as f32;
            (1.0 - t) * h[[0, j]] + t * h[[1, j]]
        })
    };
    let pair = ndarray::stack(Axis(0), &[a, b]).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let mut rows = vec![("pixels".to_string(), as_images(blend(&pair).view(), shape)?)];
    for (label, model) in models.iter_mut() {
        let h = model.encode_rows(pair.view())?;
        rows.push((
            label.clone(),
            as_images(model.decode_rows(blend(&h).view())?.view(), shape)?,
        ));
    }
    grid(path, title, &rows)
}

/// The codes `[n, K]` of labelled images, coloured by class: as they are when K <= 2,
/// else on their top two principal components.
pub fn codes_by_class(
    path: &Path,
    title: &str,
    codes: ArrayView2<f32>,
    labels: &[u8],
    class_names: &[&str],
) -> Result<()> {
    let k = codes.ncols();
    let (pts, axes): (Vec<(f64, f64)>, _) = if k <= 2 {
        let pts = codes
            .rows()
            .into_iter()
            .map(|r| (r[0] as f64, r.get(1).map_or(0.0, |&v| v as f64)))
            .collect();
        (pts, ("z1", "z2"))
    } else {
        let proj = Pca::params(2).fit(codes)?.transform(codes)?;
        let pts = proj.rows().into_iter().map(|r| (r[0] as f64, r[1] as f64)).collect();
        (pts, ("principal component 1", "principal component 2"))
    };
    let labels = labels
        .get(..codes.nrows())
        .ok_or_else(|| Error::InvalidArgument(format!("{} codes but {} labels", codes.nrows(), labels.len())))?;
    scatter_by_class(path, title, axes, &pts, labels, class_names)
}

/// 25 images decoded from codes drawn from N(0, I), five rows of five.
pub fn decoded_noise<R: Rng + ?Sized>(
    path: &Path,
    title: &str,
    model: &mut dyn Codec,
    k: usize,
    shape: [usize; 3],
    rng: &mut R,
) -> Result<()> {
    let z = Array2::from_shape_simple_fn((25, k), || f32::sample_normal(rng));
    let imgs = as_images(model.decode_rows(z.view())?.view(), shape)?;
    let rows: Vec<_> = imgs.chunks(5).map(|c| (String::new(), c.to_vec())).collect();
    grid(path, title, &rows)
}

/// The loss after every step of each run, and a horizontal reference line (PCA's error,
/// say) across the longest run; a log scale on request.
pub fn training_curves(
    path: &Path,
    title: &str,
    runs: &[(String, &History)],
    reference: Option<(String, f64)>,
    log_y: bool,
) -> Result<()> {
    let mut series: Vec<Series> = runs
        .iter()
        .map(|(name, h)| Series {
            name: name.clone(),
            points: h.steps.clone(),
        })
        .collect();
    if let Some((name, y)) = reference {
        let end = runs
            .iter()
            .filter_map(|(_, h)| h.epochs.last().map(|e| e.epoch as f64))
            .fold(1.0, f64::max);
        series.push(Series {
            name,
            points: vec![(0.0, y), (end, y)],
        });
    }
    LineChart {
        title: title.into(),
        x_label: "epoch".into(),
        y_label: if log_y { "MSE per pixel (log scale)" } else { "loss" }.into(),
        series,
        log_y,
        marker: None,
        legend_lower_right: false,
    }
    .save(path)
}

/// The cumulative share of the variance explained by PCA's top components (up to 200),
/// with `k` marked.
pub fn explained_variance(path: &Path, title: &str, pca: &Pca, k: usize) -> Result<()> {
    let cum: Vec<(f64, f64)> = pca
        .spectrum()
        .iter()
        .take(200)
        .scan(0.0, |acc, &v| {
            *acc += v / pca.total_variance();
            Some(*acc)
        })
        .enumerate()
        .map(|(i, c)| ((i + 1) as f64, c))
        .collect();
    let at_k = cum.get(k.saturating_sub(1)).map_or(0.0, |p| p.1);
    LineChart {
        title: title.into(),
        x_label: "K".into(),
        y_label: "fraction of variance".into(),
        series: vec![Series {
            name: "cumulative explained variance".into(),
            points: cum,
        }],
        log_y: false,
        marker: Some((k as f64, format!("K = {k}: {:.1}%", 100.0 * at_k))),
        legend_lower_right: true,
    }
    .save(path)
}

/// A trained autoencoder for [`pca_vs_autoencoders`]: the model, its run's history and
/// its test error.
pub type Trained<'a> = (&'a mut dyn Codec, &'a History, f64);

/// The figures of the PCA-against-autoencoders comparison, into `out` as
/// `pca_vs_ae_*.png`: the training curves against PCA's training error, the
/// reconstructions of eight test images, PCA's spectrum, an interpolation between two
/// test images of different classes, and for the conv AE its test codes by class and its
/// decoder on noise. `(pca, test MSE, train MSE)`; the autoencoders where they trained.
#[allow(clippy::too_many_arguments)]
pub fn pca_vs_autoencoders<R: Rng + ?Sized>(
    out: &Path,
    test: &crate::data::Dataset,
    class_names: &[&str],
    (pca, pca_test, pca_train): (&mut Pca, f64, f64),
    linear: Option<Trained>,
    conv: Option<(Trained, &crate::train::Evaluation<f32>)>,
    title: &str,
    rng: &mut R,
) -> Result<()> {
    let k = pca.k();
    let shape: [usize; 3] = test.images.shape()[1..].try_into().expect("[c, h, w]");
    let mut runs = Vec::new();
    let mut models: Vec<Labelled> = Vec::new();
    if let Some((model, history, mse)) = linear {
        runs.push(("linear AE (training batches)".to_string(), history));
        models.push((format!("linear AE ({mse:.4})"), model));
    }
    let mut conv_codes = None;
    if let Some(((model, history, mse), eval)) = conv {
        runs.push(("conv AE (training batches)".to_string(), history));
        models.push((format!("conv AE ({mse:.4})"), model));
        conv_codes = Some(eval.codes.view());
    }
    if !runs.is_empty() {
        let reference = Some((format!("PCA, K = {k} (training set)"), pca_train));
        let path = out.join("pca_vs_ae_loss.png");
        // The conv AE ends three times below PCA's line and starts ten times above it.
        training_curves(&path, &format!("Autoencoder training, K = {k}"), &runs, reference, true)?;
    }
    let spectrum_title = format!("{title}: fraction of variance explained by the top K components");
    explained_variance(&out.join("pca_vs_ae_spectrum.png"), &spectrum_title, pca, k)?;
    let mut all: Vec<Labelled> = vec![(format!("PCA ({pca_test:.4})"), pca)];
    all.extend(models);
    let originals = test.flat().slice_move(s![..8.min(test.len()), ..]);
    let recon_title = format!("Test images and reconstructions, K = {k} (test MSE)");
    reconstruction_grid(
        &out.join("pca_vs_ae_recon.png"),
        &recon_title,
        originals,
        shape,
        &mut all,
    )?;
    let a = 0;
    let b = (1..test.len()).find(|&i| test.labels[i] != test.labels[a]).unwrap_or(1);
    let flat = test.flat();
    let title = format!("Interpolating test image {a} into test image {b} (11 steps)");
    let path = out.join("pca_vs_ae_interpolation.png");
    code_interpolation(&path, &title, (flat.row(a), flat.row(b)), shape, 11, &mut all[1..])?;
    if let Some(codes) = conv_codes {
        let title = format!("Conv AE test codes (K = {k}) on their top two principal components");
        let labels = test.labels.as_slice().expect("contiguous");
        codes_by_class(&out.join("pca_vs_ae_latent.png"), &title, codes, labels, class_names)?;
        // Images decoded from z ~ N(0, I): an autoencoder is no generative model.
        let conv = &mut *all.last_mut().expect("the conv AE").1;
        let path = out.join("pca_vs_ae_samples.png");
        decoded_noise(&path, "Conv AE decoder on z ~ N(0, I)", conv, k, shape, rng)?;
    }
    Ok(())
}
