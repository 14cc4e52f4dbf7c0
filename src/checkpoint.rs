//! Weights and checkpoints as safetensors files, with PyTorch `state_dict` names.
//!
//! - [`save_weights`]: a model's parameters and buffers only (BatchNorm
//!   running statistics and `num_batches_tracked`), exactly a PyTorch `state_dict`: such a
//!   file loads into the notebook's class with `load_state_dict(strict=True)`, and a file
//!   written by `safetensors.torch.save_file(model.state_dict())` loads here.
//! - [`save_checkpoint`]: the same, plus Adam's moments
//!   (`optimizer.exp_avg.NAME`, `optimizer.exp_avg_sq.NAME`), and in the metadata the
//!   model's description, the epoch, Adam's step count and the random generator's state,
//!   so that a resumed run continues bit for bit.
//! - [`load_checkpoint`] reads either kind into a [`Checkpoint`], which restores a model
//!   ([`Checkpoint::restore_model`]) and, where the file has them, Adam's state.
//! - [`Checkpoint::tensor`]: any floating-point tensor of a file, by name (the inputs and
//!   outputs a PyTorch script saved beside its weights, say).
//!
//! Every file is written atomically: to a temporary file in the same folder, flushed to
//! disk, then renamed over the target. A crash or an error mid-write leaves the previous
//! file as it was.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::nn::Module;
use crate::optim::Adam;
use crate::{Error, Float, Result};

const FORMAT: &str = "latent-checkpoint-1";
const OPT_M: &str = "optimizer.exp_avg.";
const OPT_V: &str = "optimizer.exp_avg_sq.";

/// One tensor ready to write.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw_float<F: Float>(a: &ArrayD<F>) -> Raw {
    let mut data = Vec::with_capacity(a.len() * F::BYTES);
    for &v in a.as_standard_layout().iter() {
        v.extend_le_bytes(&mut data);
    }
    Raw {
        dtype: if F::BYTES == 4 { Dtype::F32 } else { Dtype::F64 },
        shape: a.shape().to_vec(),
        data,
    }
}

fn raw_counter(v: u64) -> Raw {
    Raw {
        dtype: Dtype::I64,
        shape: vec![],
        data: (v as i64).to_le_bytes().to_vec(),
    }
}

/// Everything of a model that a `state_dict` holds, by name.
fn model_tensors<F: Float>(model: &mut (impl Module<F> + ?Sized)) -> BTreeMap<String, Raw> {
    let mut out = BTreeMap::new();
    model.visit_params(&mut |p| {
        out.insert(p.name.clone(), raw_float(&p.value));
    });
    model.visit_buffers(&mut |name, v| {
        out.insert(name.to_string(), raw_float(&v.to_owned()));
    });
    model.visit_counters(&mut |name, v| {
        out.insert(name.to_string(), raw_counter(*v));
    });
    out
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, `fsync`, rename, and
/// an `fsync` of the folder so that the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, bytes, |f, b| f.write_all(b))
}

/// [`write_atomic`] with the write itself supplied (tests inject failures through it).
fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    write: impl FnOnce(&mut std::fs::File, &[u8]) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        write(&mut f, bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the folder is; not every platform can open one.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Saves `model`'s parameters and buffers as a PyTorch `state_dict` in safetensors format.
pub fn save_weights<F: Float>(path: &Path, model: &mut (impl Module<F> + ?Sized)) -> Result<()> {
    let tensors = model_tensors(model);
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v)), None)
        .map_err(|e| Error::data(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)
}

/// Training state stored with a checkpoint besides the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// What the model is (kind and sizes), checked when resuming.
    pub model: String,
    /// Epochs completed.
    pub epoch: usize,
    /// The random generator after those epochs.
    pub rng: ChaCha8Rng,
}

/// Saves a training checkpoint: the model's `state_dict`, Adam's moments and step count,
/// and `meta`. Atomic: a failure leaves any previous file at `path` intact.
pub fn save_checkpoint<F: Float>(
    path: &Path,
    model: &mut (impl Module<F> + ?Sized),
    opt: &Adam<F>,
    meta: &CheckpointMeta,
) -> Result<()> {
    let mut tensors = model_tensors(model);
    let (step, moments) = opt.state();
    let mut names = Vec::new();
    model.visit_params(&mut |p| names.push(p.name.clone()));
    if !moments.is_empty() && moments.len() != names.len() {
        return Err(Error::InvalidArgument(format!(
            "Adam holds {} moment pairs for a model of {} parameters",
            moments.len(),
            names.len()
        )));
    }
    for (name, (m, v)) in names.iter().zip(moments) {
        tensors.insert(format!("{OPT_M}{name}"), raw_float(m));
        tensors.insert(format!("{OPT_V}{name}"), raw_float(v));
    }
    let mut info = HashMap::new();
    info.insert("format".to_string(), FORMAT.to_string());
    info.insert("model".to_string(), meta.model.clone());
    info.insert("epoch".to_string(), meta.epoch.to_string());
    info.insert("adam_step".to_string(), step.to_string());
    info.insert(
        "rng_seed".to_string(),
        meta.rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
    );
    info.insert("rng_stream".to_string(), meta.rng.get_stream().to_string());
    info.insert("rng_word_pos".to_string(), meta.rng.get_word_pos().to_string());
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v)), Some(info))
        .map_err(|e| Error::data(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)
}

/// A tensor read back, widened to `f64` (or a counter).
#[derive(Debug, Clone)]
enum Loaded {
    Float(ArrayD<f64>),
    Counter(u64),
}

/// The contents of a weights or checkpoint file.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    tensors: BTreeMap<String, Loaded>,
    metadata: HashMap<String, String>,
}

/// Reads a checkpoint or a weights file (PyTorch's or ours). Every problem is an error naming the file:
/// unreadable, not safetensors, a tensor of an unsupported type.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_checkpoint(path, &bytes)
}

/// Parses checkpoint bytes (the file at `path`, named in errors).
pub fn parse_checkpoint(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |what: String| Error::data(path, what);
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let shape = view.shape().to_vec();
        let loaded = match view.dtype() {
            Dtype::F32 => Loaded::Float(
                ArrayD::from_shape_vec(
                    IxDyn(&shape),
                    data.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                        .collect(),
                )
                .map_err(|e| bad(format!("tensor {name}: {e}")))?,
            ),
            Dtype::F64 => Loaded::Float(
                ArrayD::from_shape_vec(
                    IxDyn(&shape),
                    data.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                )
                .map_err(|e| bad(format!("tensor {name}: {e}")))?,
            ),
            Dtype::I64 if shape.iter().product::<usize>() == 1 => {
                let v = i64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
                Loaded::Counter(u64::try_from(v).map_err(|_| bad(format!("tensor {name}: negative counter {v}")))?)
            }
            other => return Err(bad(format!("tensor {name}: unsupported type {other:?} {shape:?}"))),
        };
        tensors.insert(name, loaded);
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        tensors,
        metadata,
    })
}

impl Checkpoint {
    fn bad(&self, what: String) -> Error {
        Error::data(&self.path, what)
    }

    fn meta_field(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.bad(format!("not a latent checkpoint: no '{key}' in its metadata")))
    }

    /// Tensor names in the file.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// The floating-point tensor `name` (float32 files widened to `f64`, exactly): for
    /// reading what else a safetensors file holds, such as inputs and outputs saved beside
    /// PyTorch weights. An error naming the file and the tensor if there is none of that
    /// name, or if it is an integer counter.
    pub fn tensor(&self, name: &str) -> Result<ArrayViewD<'_, f64>> {
        match self.tensors.get(name) {
            Some(Loaded::Float(a)) => Ok(a.view()),
            Some(Loaded::Counter(_)) => Err(self.bad(format!("tensor {name} is an integer counter, not floats"))),
            None => Err(self.bad(format!("no tensor {name}"))),
        }
    }

    /// Sets `model`'s parameters, buffers and counters from the file. The file must hold
    /// exactly the model's `state_dict` (checkpoint extras aside): a missing tensor, an
    /// unexpected one or a shape mismatch is an error naming it, and the model is left
    /// unchanged.
    pub fn restore_model<F: Float>(&self, model: &mut (impl Module<F> + ?Sized)) -> Result<()> {
        // In the model's order, so that errors name the first layers first.
        let mut expected: Vec<(String, Vec<usize>)> = Vec::new();
        model.visit_params(&mut |p| expected.push((p.name.clone(), p.value.shape().to_vec())));
        model.visit_buffers(&mut |name, v| expected.push((name.to_string(), v.shape().to_vec())));
        let mut counters = Vec::new();
        model.visit_counters(&mut |name, _| counters.push(name.to_string()));
        let missing: Vec<&str> = expected
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !self.tensors.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            let shown = missing.iter().take(6).copied().collect::<Vec<_>>().join(", ");
            let more = missing.len().saturating_sub(6);
            return Err(self.bad(format!(
                "no tensor {shown}{} (a checkpoint of another model?)",
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )));
        }
        for (name, shape) in &expected {
            match self.tensors.get(name) {
                Some(Loaded::Float(a)) if a.shape() == shape.as_slice() => {}
                Some(Loaded::Float(a)) => {
                    return Err(self.bad(format!(
                        "tensor {name} has shape {:?}, the model expects {shape:?} (a checkpoint of another model or size?)",
                        a.shape()
                    )))
                }
                Some(Loaded::Counter(_)) => return Err(self.bad(format!("tensor {name} is an integer"))),
                None => {
                    return Err(self.bad(format!(
                        "no tensor {name} (a checkpoint of another model?)"
                    )))
                }
            }
        }
        let extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !k.starts_with("optimizer.") && !expected.iter().any(|(e, _)| e == *k) && !counters.contains(k))
            .collect();
        if !extra.is_empty() {
            return Err(self.bad(format!(
                "tensors the model does not have: {} (a checkpoint of another model?)",
                extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let get = |name: &str| match self.tensors.get(name) {
            Some(Loaded::Float(a)) => Some(a.mapv(F::lit)),
            _ => None,
        };
        model.visit_params(&mut |p| p.value = get(&p.name).expect("checked above"));
        model.visit_buffers(&mut |name, mut v| v.assign(&get(name).expect("checked above")));
        model.visit_counters(&mut |name, v| {
            if let Some(Loaded::Counter(c)) = self.tensors.get(name) {
                *v = *c;
            }
        });
        Ok(())
    }

    /// Sets Adam's moments and step count for `model` (whose parameters name them).
    pub fn restore_optimizer<F: Float>(&self, opt: &mut Adam<F>, model: &mut (impl Module<F> + ?Sized)) -> Result<()> {
        let step: u64 = self
            .meta_field("adam_step")?
            .parse()
            .map_err(|e| self.bad(format!("adam_step: {e}")))?;
        let mut names = Vec::new();
        model.visit_params(&mut |p| names.push((p.name.clone(), p.value.shape().to_vec())));
        let mut moments = Vec::new();
        if step > 0 {
            for (name, shape) in &names {
                let pair = [OPT_M, OPT_V].map(|prefix| match self.tensors.get(&format!("{prefix}{name}")) {
                    Some(Loaded::Float(a)) if a.shape() == shape.as_slice() => Ok(a.mapv(F::lit)),
                    _ => Err(self.bad(format!("no Adam state {prefix}{name} of shape {shape:?}"))),
                });
                let [m, v] = pair;
                moments.push((m?, v?));
            }
        }
        opt.set_state(step, moments);
        Ok(())
    }

    /// The model description, epoch and random generator state of a checkpoint.
    pub fn meta(&self) -> Result<CheckpointMeta> {
        let format = self.meta_field("format")?;
        if format != FORMAT {
            return Err(self.bad(format!("checkpoint format '{format}', expected '{FORMAT}'")));
        }
        let num = |key: &str| -> Result<u128> {
            self.meta_field(key)?
                .parse()
                .map_err(|e| self.bad(format!("{key}: {e}")))
        };
        let hex = self.meta_field("rng_seed")?;
        let mut seed = [0u8; 32];
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(self.bad("rng_seed: expected 64 hex digits".into()));
        }
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| self.bad(format!("rng_seed: {e}")))?;
        }
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::from_seed(seed);
        rng.set_stream(num("rng_stream")? as u64);
        rng.set_word_pos(num("rng_word_pos")?);
        Ok(CheckpointMeta {
            model: self.meta_field("model")?.to_string(),
            epoch: num("epoch")? as usize,
            rng,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error in the middle of a write leaves the previous file intact and no
    /// temporary file behind.
    #[test]
    fn a_failed_write_keeps_the_previous_file() {
        let dir = std::env::temp_dir().join(format!("latent-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ck.safetensors");
        write_atomic(&path, b"first version").unwrap();
        let err = write_atomic_with(&path, b"second version, longer", |f, b| {
            f.write_all(&b[..7])?;
            Err(std::io::Error::other("disk full (injected)"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first version");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "temporary file left behind: {left:?}");
        write_atomic(&path, b"third").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
