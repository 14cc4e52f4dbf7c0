//! Where training runs: the CPU, or (with the `cuda` feature) an NVIDIA GPU.
//!
//! The `cuda` feature loads libcuda, cuBLAS and NVRTC at run time (cudarc's dynamic
//! loading), so it builds on any machine. [`select`] checks that the three libraries can
//! be opened *before* any other CUDA call (cudarc panics on a missing library otherwise),
//! then creates a context on GPU 0. With no usable GPU, [`DeviceRequest::Auto`] falls back
//! to the CPU with a one-line reason and [`DeviceRequest::Cuda`] is an error.

use crate::{Error, Result};

/// What the user asked for (`--device auto|cpu|cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The GPU when one is usable, else the CPU.
    Auto,
    /// The CPU, even when a GPU is present.
    Cpu,
    /// The GPU, or an error.
    Cuda,
}

impl std::str::FromStr for DeviceRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda),
            _ => Err(Error::InvalidArgument(format!(
                "device '{s}': expected auto, cpu or cuda"
            ))),
        }
    }
}

/// The device chosen.
#[derive(Debug, Clone)]
pub enum Device {
    /// The CPU (rayon threads).
    Cpu,
    /// A CUDA GPU.
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<cudarc::driver::CudaContext>),
}

impl Device {
    /// Whether this is the CPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }
}

/// Chooses the device for `request`; the string says what was chosen and, on a fallback,
/// why (print it: the issue of a silent CPU run is worse than a line of output).
pub fn select(request: DeviceRequest) -> Result<(Device, String)> {
    if request == DeviceRequest::Cpu {
        return Ok((Device::Cpu, "device: CPU (asked for with --device cpu)".into()));
    }
    match probe_gpu() {
        Ok((device, name)) => Ok((device, format!("device: {name}"))),
        Err(why) if request == DeviceRequest::Auto => Ok((Device::Cpu, format!("device: CPU (no usable GPU: {why})"))),
        Err(why) => Err(Error::Device(format!("--device cuda: no usable GPU: {why}"))),
    }
}

#[cfg(not(feature = "cuda"))]
fn probe_gpu() -> std::result::Result<(Device, String), String> {
    Err("this build has no GPU support; rebuild with --features cuda".into())
}

#[cfg(feature = "cuda")]
fn probe_gpu() -> std::result::Result<(Device, String), String> {
    // SAFETY: each probe only tries to open a shared library with libloading; no CUDA
    // function is called before all three are known to be loadable.
    let present = unsafe {
        [
            ("the CUDA driver (libcuda)", cudarc::driver::sys::is_culib_present()),
            ("cuBLAS", cudarc::cublas::sys::is_culib_present()),
            ("NVRTC", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    if let Some((missing, _)) = present.iter().find(|(_, ok)| !ok) {
        return Err(format!("{missing} cannot be loaded"));
    }
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| format!("no CUDA device 0: {e}"))?;
    let name = ctx.name().unwrap_or_else(|_| "CUDA device 0".into());
    Ok((Device::Cuda(ctx), format!("GPU 0, {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_cpu_is_always_available() {
        assert_eq!("cpu".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cpu);
        assert!("tpu".parse::<DeviceRequest>().unwrap_err().to_string().contains("tpu"));
        let (d, msg) = select(DeviceRequest::Cpu).unwrap();
        assert!(d.is_cpu() && msg.contains("CPU"));
    }

    /// On a machine without a GPU (CI), auto falls back with a reason and cuda is an
    /// error; on one with a GPU, both pick it.
    #[test]
    fn auto_falls_back_and_cuda_fails_loudly_without_a_gpu() {
        let (auto, msg) = select(DeviceRequest::Auto).unwrap();
        match select(DeviceRequest::Cuda) {
            Ok((d, _)) => assert!(!d.is_cpu() && !auto.is_cpu(), "{msg}"),
            Err(e) => {
                eprintln!("no GPU here: {e}");
                assert!(auto.is_cpu());
                assert!(msg.contains("no usable GPU"), "{msg}");
                assert!(e.to_string().contains("--device cuda"), "{e}");
            }
        }
    }
}
