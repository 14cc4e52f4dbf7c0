//! The notebooks' models, with PyTorch `state_dict` parameter names.

mod conv_ae;
mod linear_ae;

pub use conv_ae::ConvAe;
pub use linear_ae::LinearAe;
