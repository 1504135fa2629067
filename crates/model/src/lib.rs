//! The candle interpreter of the UNet forward.
//!
//! [`UnetModel`] pairs a resolved spec with its parameters ([`ParamStore`]) and runs
//! `unetlab_graph::unet_forward` through [`CandleOps`]. Which parameters exist, with which names and
//! shapes, is taken from the cost interpreter's walk of the same forward, so the candle model
//! cannot declare anything the counter does not count.

mod device;
mod error;
mod inputs;
pub mod kernels;
mod ops;
mod params;
pub mod probe;
pub mod profile;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use unetlab_cost::{count, Conditions, ParamInfo};
use unetlab_graph::{unet_forward, UnetInputs, F32_INPUTS};
use unetlab_spec::UnetSpec;

pub use device::{parse_device, parse_dtype, write_safetensors};
pub use error::ModelError;
pub use inputs::{example_inputs, example_inputs_sized, size_conditioning, standard_normal};
pub use ops::CandleOps;
pub use params::ParamStore;
pub use probe::{BlockMaximum, Precision, Probe};

/// Runs `f` on a thread of the compute pool (rayon's global pool, which candle's and unetlab's
/// CPU kernels share), so that their parallel loops start from inside the pool: started from
/// another thread, each one hands its work over and wakes a sleeping thread, which costs more
/// than a small op itself.
pub fn on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The largest absolute elementwise difference of two tensors of one shape (compared in f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    max_abs(&(a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?)
}

/// The largest absolute value of a tensor, in f32.
pub fn max_abs(x: &Tensor) -> candle_core::Result<f32> {
    x.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

/// The parameters `spec` declares, in declaration order (a walk of the forward on shapes).
pub fn declared_params(spec: &UnetSpec) -> Result<Vec<ParamInfo>, ModelError> {
    let smallest = 1 << spec.levels.len().saturating_sub(1);
    let conditions = Conditions {
        batch: 1,
        latent_size: smallest,
        tokens: 1,
    };
    Ok(count(spec, conditions)?.parameters)
}

/// A runnable UNet.
#[derive(Debug)]
pub struct UnetModel {
    /// The network.
    pub spec: UnetSpec,
    /// Its parameters.
    pub params: ParamStore,
}

impl UnetModel {
    /// Seeded random initialisation: the same seed gives bit-identical weights.
    pub fn init(
        spec: UnetSpec,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let params = ParamStore::init(&declared_params(&spec)?, seed, device, dtype)?;
        Ok(UnetModel { spec, params })
    }

    /// Loads diffusers-named weights (e.g. a `diffusion_pytorch_model.safetensors`).
    pub fn load(
        spec: UnetSpec,
        weights: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let params = ParamStore::load(&declared_params(&spec)?, weights, device, dtype)?;
        Ok(UnetModel { spec, params })
    }

    /// The same network with its weights in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self, ModelError> {
        Ok(UnetModel {
            spec: self.spec.clone(),
            params: self.params.to_dtype(dtype)?,
        })
    }

    /// Saves the weights under diffusers names.
    pub fn save(&self, path: &Path, metadata: HashMap<String, String>) -> Result<(), ModelError> {
        self.params.save(path, metadata)
    }

    /// One UNet evaluation for inference (no autograd graph). Inputs are converted to the model's
    /// dtype; timesteps and time ids stay f32.
    pub fn forward(&self, inputs: &UnetInputs<Tensor>) -> Result<Tensor, ModelError> {
        on_compute_threads(|| {
            unet_forward(
                &mut CandleOps::new(&self.params),
                &self.spec,
                &self.cast_inputs(inputs)?,
            )
        })
    }

    /// One UNet evaluation watched by a [`Probe`] (block maxima, conv/linear input ranges), with
    /// convs and linears computed at `precision`; returns the output and the probe.
    pub fn forward_probed(
        &self,
        inputs: &UnetInputs<Tensor>,
        precision: Precision,
    ) -> Result<(Tensor, Probe<'_>), ModelError> {
        let inputs = self.cast_inputs(inputs)?;
        on_compute_threads(|| {
            let mut probe = Probe::new(&self.params, precision);
            let output = unet_forward(&mut probe, &self.spec, &inputs)?;
            Ok((output, probe))
        })
    }

    /// One UNet evaluation that records the autograd graph, so `backward` reaches every parameter.
    pub fn forward_train(&self, inputs: &UnetInputs<Tensor>) -> Result<Tensor, ModelError> {
        unet_forward(
            &mut CandleOps::trainable(&self.params),
            &self.spec,
            &self.cast_inputs(inputs)?,
        )
    }

    /// Inputs converted to the model's dtype (timesteps and time ids stay f32).
    pub fn cast_inputs(
        &self,
        inputs: &UnetInputs<Tensor>,
    ) -> Result<UnetInputs<Tensor>, ModelError> {
        let dtype = self.params.dtype();
        Ok(inputs.try_map(|name, t| {
            t.to_dtype(if F32_INPUTS.contains(&name) {
                DType::F32
            } else {
                dtype
            })
        })?)
    }
}
