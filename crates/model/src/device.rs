//! Parsing `--device` and `--dtype` values, and writing safetensors files atomically.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::ModelError;

/// `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`. CUDA and Metal need the `cuda` / `metal` features.
pub fn parse_device(name: &str) -> Result<Device, String> {
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>()
                .map_err(|_| format!("bad device index in '{name}'"))?,
        ),
        None => (name, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(index).map_err(|e| format!("cannot open {name}: {e}")),
        "metal" => Device::new_metal(index).map_err(|e| format!("cannot open {name}: {e}")),
        _ => Err(format!(
            "unknown device '{name}' (cpu, cuda[:N], metal[:N])"
        )),
    }
}

/// `f32`, `f16` or `bf16`.
pub fn parse_dtype(name: &str) -> Result<DType, String> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(format!("unknown dtype '{name}' (f32, f16, bf16)")),
    }
}

/// Writes tensors to `path` through a temporary file beside it, so a crash never leaves half a file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(), ModelError> {
    unetlab_files::write_via_temp(
        path,
        |tmp| {
            safetensors::serialize_to_file(tensors.iter().copied(), Some(metadata), tmp).map_err(
                |e| ModelError::Safetensors {
                    file: path.display().to_string(),
                    message: e.to_string(),
                },
            )
        },
        |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        },
    )
}
