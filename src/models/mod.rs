//! The notebooks' models, with PyTorch `state_dict` parameter names.

mod linear_ae;

pub use linear_ae::LinearAe;
