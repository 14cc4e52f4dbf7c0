//! A model's parameters, their gradients and its buffers (BatchNorm's running statistics)
//! on the GPU, each kind in one flat buffer in the order the model visits them, so that
//! Adam is one launch and a copy back to the CPU model is one download per kind.

use ndarray::{ArrayD, ArrayViewD};

use super::gpu::{DeviceBuf, Gpu};
use crate::nn::Module;
use crate::{Error, Result};

/// Where one parameter or buffer lives in its flat buffer.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Its `state_dict` name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its first element's index.
    pub offset: usize,
}

impl Slot {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its values in the flat buffer `flat` (a download of the whole store).
    pub fn view<'a>(&self, flat: &'a [f32]) -> ArrayViewD<'a, f32> {
        ArrayViewD::from_shape(self.shape.clone(), &flat[self.offset..self.offset + self.len()])
            .expect("a slot's shape matches its length")
    }

    /// [`Slot::view`], copied.
    pub fn array(&self, flat: &[f32]) -> ArrayD<f32> {
        self.view(flat).to_owned()
    }
}

/// See the module docs.
pub struct ParamStore {
    /// Parameter values.
    pub(crate) params: DeviceBuf,
    /// Their gradients (each written whole by the backward pass that owns it).
    pub(crate) grads: DeviceBuf,
    /// Buffers (running statistics).
    pub(crate) buffers: DeviceBuf,
    /// One slot per parameter, in visiting order.
    pub param_slots: Vec<Slot>,
    /// One slot per buffer, in visiting order.
    pub buffer_slots: Vec<Slot>,
    n_params: usize,
    n_buffers: usize,
}

fn flatten(items: Vec<(String, ArrayD<f32>)>) -> (Vec<Slot>, Vec<f32>) {
    let mut slots = Vec::new();
    let mut flat = Vec::new();
    for (name, a) in items {
        slots.push(Slot {
            name,
            shape: a.shape().to_vec(),
            offset: flat.len(),
        });
        flat.extend(a.iter().copied());
    }
    (slots, flat)
}

impl ParamStore {
    /// The parameters and buffers of `model`, copied to the GPU; gradients zeroed.
    pub fn upload(gpu: &Gpu, model: &mut (impl Module<f32> + ?Sized)) -> Result<Self> {
        let mut ps = Vec::new();
        model.visit_params(&mut |p| ps.push((p.name.clone(), p.value.as_standard_layout().into_owned())));
        let mut bs = Vec::new();
        model.visit_buffers(&mut |name, v| bs.push((name.to_string(), v.as_standard_layout().into_owned())));
        let (param_slots, flat_p) = flatten(ps);
        let (buffer_slots, flat_b) = flatten(bs);
        Ok(ParamStore {
            params: gpu.upload(&flat_p)?,
            grads: gpu.zeros(flat_p.len())?,
            buffers: gpu.upload(&flat_b)?,
            n_params: flat_p.len(),
            n_buffers: flat_b.len(),
            param_slots,
            buffer_slots,
        })
    }

    /// Total number of parameter values.
    pub fn num_params(&self) -> usize {
        self.n_params
    }

    /// Writes the GPU's parameter values and buffers into `model` (the one uploaded).
    pub fn download_into(&self, gpu: &Gpu, model: &mut (impl Module<f32> + ?Sized)) -> Result<()> {
        let p = gpu.download(&self.params, self.n_params)?;
        let b = gpu.download(&self.buffers, self.n_buffers)?;
        let mut err = None;
        let mut i = 0;
        model.visit_params(&mut |param| {
            match self.param_slots.get(i) {
                Some(s) if s.shape == param.value.shape() => {
                    param.value = s.array(&p);
                }
                _ => {
                    err.get_or_insert_with(|| Error::Device(format!("parameter {} has no GPU copy", param.name)));
                }
            }
            i += 1;
        });
        let mut j = 0;
        model.visit_buffers(&mut |name, mut v| {
            match self.buffer_slots.get(j) {
                Some(s) if s.shape == v.shape() => v.assign(&s.view(&b)),
                _ => {
                    err.get_or_insert_with(|| Error::Device(format!("buffer {name} has no GPU copy")));
                }
            }
            j += 1;
        });
        err.map_or(Ok(()), Err)
    }

    /// The gradients, one array per parameter in visiting order.
    pub fn download_grads(&self, gpu: &Gpu) -> Result<Vec<ArrayD<f32>>> {
        let g = gpu.download(&self.grads, self.n_params)?;
        Ok(self.param_slots.iter().map(|s| s.array(&g)).collect())
    }
}

/// Hands out a model's slots in order while its layers are built, checking each against
/// the shape the layer expects.
pub(crate) struct SlotCursor<'a> {
    slots: &'a [Slot],
    next: usize,
}

impl<'a> SlotCursor<'a> {
    pub(crate) fn new(slots: &'a [Slot]) -> Self {
        SlotCursor { slots, next: 0 }
    }

    /// The next slot, which must have `shape`; returns its offset.
    pub(crate) fn take(&mut self, shape: &[usize], what: &str) -> Result<usize> {
        let s = self.slots.get(self.next).ok_or_else(|| {
            Error::Device(format!(
                "{what}: the model has no more parameters or buffers to give it"
            ))
        })?;
        if s.shape != shape {
            return Err(Error::shape(
                format!("{what} ({})", s.name),
                format!("{shape:?}"),
                &s.shape,
            ));
        }
        self.next += 1;
        Ok(s.offset)
    }

    /// Whether every slot was taken.
    pub(crate) fn done(&self) -> bool {
        self.next == self.slots.len()
    }
}
