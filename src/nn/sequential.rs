//! A chain of layers: forward in order, backward in reverse.

use ndarray::{ArrayD, ArrayViewMutD};

use super::{Layer, Mode, Module, Param};
use crate::{Error, Float, Result};

/// Layers applied one after the other.
#[derive(Default)]
pub struct Sequential<F> {
    layers: Vec<Box<dyn Layer<F>>>,
}

impl<F: Float> Clone for Sequential<F> {
    fn clone(&self) -> Self {
        Sequential {
            layers: self.layers.iter().map(|l| l.clone_layer()).collect(),
        }
    }
}

impl<F: Float> Sequential<F> {
    /// An empty chain.
    pub fn new() -> Self {
        Sequential { layers: Vec::new() }
    }

    /// Appends a layer.
    pub fn push(mut self, layer: impl Layer<F> + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl<F: Float> Module<F> for Sequential<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        for l in &mut self.layers {
            l.visit_params(f);
        }
    }

    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, ArrayViewMutD<F>)) {
        for l in &mut self.layers {
            l.visit_buffers(f);
        }
    }

    fn visit_counters(&mut self, f: &mut dyn FnMut(&str, &mut u64)) {
        for l in &mut self.layers {
            l.visit_counters(f);
        }
    }
}

impl<F: Float> Layer<F> for Sequential<F> {
    fn spec(&self) -> super::LayerSpec {
        super::LayerSpec::Sequential(self.layers.iter().map(|l| l.spec()).collect())
    }

    fn couples_batch(&self) -> bool {
        self.layers.iter().any(|l| l.couples_batch())
    }

    fn forward(&mut self, mut x: ArrayD<F>, mode: Mode) -> Result<ArrayD<F>> {
        for l in &mut self.layers {
            x = l.forward(x, mode)?;
        }
        Ok(x)
    }

    /// Backward through every layer; the first layer computes its input gradient only if
    /// `need_dx` (the image's gradient is rarely wanted, and it is a whole GEMM).
    fn backward(&mut self, mut dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        for (i, l) in self.layers.iter_mut().enumerate().rev() {
            match l.backward(dy, i > 0 || need_dx)? {
                Some(d) => dy = d,
                None if i == 0 => return Ok(None),
                None => return Err(Error::InvalidArgument(format!("layer {i} returned no input gradient"))),
            }
        }
        Ok(Some(dy))
    }
}

/// Sets every parameter of `module` from `get(name)`; an error names any parameter that
/// `get` does not have or whose shape differs.
pub fn load_params<F: Float>(
    module: &mut (impl Module<F> + ?Sized),
    mut get: impl FnMut(&str) -> Option<ArrayD<F>>,
) -> Result<()> {
    let mut err = None;
    module.visit_params(&mut |p| {
        if err.is_some() {
            return;
        }
        match get(&p.name) {
            Some(v) => {
                if let Err(e) = p.assign(v) {
                    err = Some(e);
                }
            }
            None => err = Some(Error::InvalidArgument(format!("no value for parameter {}", p.name))),
        }
    });
    err.map_or(Ok(()), Err)
}
