//! What a layer is, written out as data: its kind and hyper-parameters, without its
//! values. A backend that runs the same model elsewhere (the CUDA trainer in
//! `latent::cuda`) builds its own layers from these and takes the values from
//! [`super::Module::visit_params`], which visits each layer's parameters in the order
//! listed here.

use super::{Activation, ConvOptions};

/// One layer's description; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSpec {
    /// `Conv2d`: parameters `weight [out, in, kh, kw]`, then `bias [out]` if `opts.bias`.
    Conv2d {
        /// Input channels.
        in_ch: usize,
        /// Output channels.
        out_ch: usize,
        /// `(kh, kw)`.
        kernel: (usize, usize),
        /// Stride, padding, dilation, bias.
        opts: ConvOptions,
    },
    /// `ConvTranspose2d`: parameters `weight [in, out, kh, kw]`, then `bias [out]` if `opts.bias`.
    ConvTranspose2d {
        /// Input channels.
        in_ch: usize,
        /// Output channels.
        out_ch: usize,
        /// `(kh, kw)`.
        kernel: (usize, usize),
        /// Stride, padding, dilation, output padding, bias.
        opts: ConvOptions,
    },
    /// `BatchNorm2d` (parameters `weight`, `bias`; buffers `running_mean`, `running_var`),
    /// with the rectifier it applies in the same pass, if any.
    BatchNorm2d {
        /// Channels.
        channels: usize,
        /// Added to the variance.
        eps: f64,
        /// Weight of a new batch in the running statistics.
        momentum: f64,
        /// ReLU or LeakyReLU applied to the output, if any.
        rectifier: Option<Activation>,
    },
    /// An element-wise activation (no parameters).
    Activation(Activation),
    /// `Linear`: parameters `weight [out, in]`, then `bias [out]` if `bias`.
    Linear {
        /// Input width.
        in_features: usize,
        /// Output width.
        out_features: usize,
        /// Whether there is a bias.
        bias: bool,
    },
    /// The notebooks' per-pixel bias: parameter `bias` of one sample's shape.
    PixelBias {
        /// One sample's shape.
        shape: Vec<usize>,
    },
    /// `[n, ...] -> [n, prod(...)]`.
    Flatten,
    /// `[n, prod(shape)] -> [n, shape...]`.
    Unflatten {
        /// The per-sample shape restored.
        shape: Vec<usize>,
    },
    /// Layers run in order.
    Sequential(Vec<LayerSpec>),
    /// A layer that does not describe itself (the type name): no backend can run it.
    Opaque(&'static str),
}

impl LayerSpec {
    /// The shapes of the parameters the layer holds, in visiting order.
    pub fn param_shapes(&self) -> Vec<Vec<usize>> {
        let with_bias = |w: Vec<usize>, bias: bool, out: usize| {
            let mut v = vec![w];
            if bias {
                v.push(vec![out]);
            }
            v
        };
        match self {
            LayerSpec::Conv2d {
                in_ch,
                out_ch,
                kernel,
                opts,
            } => with_bias(vec![*out_ch, *in_ch, kernel.0, kernel.1], opts.bias, *out_ch),
            LayerSpec::ConvTranspose2d {
                in_ch,
                out_ch,
                kernel,
                opts,
            } => with_bias(vec![*in_ch, *out_ch, kernel.0, kernel.1], opts.bias, *out_ch),
            LayerSpec::BatchNorm2d { channels, .. } => vec![vec![*channels], vec![*channels]],
            LayerSpec::Linear {
                in_features,
                out_features,
                bias,
            } => with_bias(vec![*out_features, *in_features], *bias, *out_features),
            LayerSpec::PixelBias { shape } => vec![shape.clone()],
            LayerSpec::Sequential(layers) => layers.iter().flat_map(LayerSpec::param_shapes).collect(),
            LayerSpec::Activation(_) | LayerSpec::Flatten | LayerSpec::Unflatten { .. } | LayerSpec::Opaque(_) => {
                Vec::new()
            }
        }
    }

    /// Whether the layer's training output for one sample depends on the other samples
    /// of its batch: BatchNorm (batch statistics), and, to be safe, a layer that does not
    /// describe itself.
    pub fn couples_batch(&self) -> bool {
        match self {
            LayerSpec::BatchNorm2d { .. } | LayerSpec::Opaque(_) => true,
            LayerSpec::Sequential(layers) => layers.iter().any(LayerSpec::couples_batch),
            _ => false,
        }
    }

    /// The layers in order, with nested [`LayerSpec::Sequential`]s flattened.
    pub fn flattened(&self) -> Vec<LayerSpec> {
        match self {
            LayerSpec::Sequential(layers) => layers.iter().flat_map(LayerSpec::flattened).collect(),
            other => vec![other.clone()],
        }
    }
}
