//! CPU kernels that replace candle's slowest ops on the f32 path, as candle custom ops with
//! analytic backward (tested against candle's composite ops).

pub mod activation;
pub mod bias;
pub mod conv;
pub mod depthwise;
pub mod inplace;
pub mod norm;
pub mod softmax;
#[cfg(test)]
mod testing;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};

/// The f32 contents of a contiguous CPU storage.
fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("unetlab kernel: f32 only, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => bail!("unetlab kernel: the input must be contiguous"),
    }
}

/// Runs `f` on the f32 contents of a contiguous CPU tensor, without copying them.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok(f(contiguous_f32(s, layout)?)),
        _ => bail!("unetlab kernel: CPU tensors only"),
    }
}
