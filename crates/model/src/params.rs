//! Parameters: seeded initialisation, diffusers-named safetensors in and out.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use unetlab_cost::ParamInfo;
use unetlab_graph::Init;

use crate::error::ModelError;

/// Every parameter of a model by its diffusers name, as trainable [`Var`]s.
#[derive(Debug)]
pub struct ParamStore {
    vars: BTreeMap<String, Var>,
    dtype: DType,
    device: Device,
}

/// A stable 64-bit hash of a parameter name (FNV-1a), so each tensor's random stream depends only
/// on the seed and its name, not on declaration order.
fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl ParamStore {
    /// Fresh parameters: ones/zeros for norms, uniform ±1/√fan_in for conv and linear (PyTorch's
    /// defaults), from a ChaCha8 stream per tensor keyed by `seed` and the tensor's name.
    pub fn init(
        declared: &[ParamInfo],
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        // Tensors in parallel: each has its own stream, so the values do not depend on the order
        // (SD-sized models spend most of their start-up here).
        let vars = declared
            .par_iter()
            .map(|p| {
                let n: usize = p.shape.iter().product();
                let values: Vec<f32> = match p.init {
                    Init::Zeros => vec![0.0; n],
                    Init::Ones => vec![1.0; n],
                    Init::FanIn(fan_in) => {
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(name_stream(&p.name));
                        let bound = 1.0 / (fan_in as f32).sqrt();
                        (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                    }
                };
                let t = Tensor::from_vec(values, p.shape.as_slice(), device)?.to_dtype(dtype)?;
                Ok((p.name.clone(), Var::from_tensor(&t)?))
            })
            .collect::<Result<BTreeMap<_, _>, ModelError>>()?;
        Ok(ParamStore {
            vars,
            dtype,
            device: device.clone(),
        })
    }

    /// Loads exactly the declared parameters from a safetensors file, converting to `dtype`.
    /// Missing, unexpected and mis-shaped tensors are errors naming the tensor.
    pub fn load(
        declared: &[ParamInfo],
        path: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
                file: file.clone(),
                message: e.to_string(),
            })?;
        let names: std::collections::HashSet<&str> =
            declared.iter().map(|p| p.name.as_str()).collect();
        let mut unexpected: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| !names.contains(*n))
            .map(str::to_string)
            .collect();
        unexpected.sort();
        let missing: Vec<&ParamInfo> = declared
            .iter()
            .filter(|p| st.tensor(&p.name).is_err())
            .collect();
        if let Some(first) = missing.first() {
            return Err(ModelError::MissingTensor {
                file,
                name: first.name.clone(),
                expected: first.shape.clone(),
                more: match missing.len() {
                    1 => String::new(),
                    n => format!(" and {} more", n - 1),
                },
            });
        }
        if let Some(first) = unexpected.first() {
            return Err(ModelError::UnexpectedTensors {
                file,
                count: unexpected.len(),
                first: first.clone(),
            });
        }
        let mut vars = BTreeMap::new();
        for p in declared {
            let view = st.tensor(&p.name).expect("checked present");
            if view.shape() != p.shape.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    file,
                    name: p.name.clone(),
                    expected: p.shape.clone(),
                    found: view.shape().to_vec(),
                });
            }
            if !matches!(
                view.dtype(),
                safetensors::Dtype::F32
                    | safetensors::Dtype::F16
                    | safetensors::Dtype::BF16
                    | safetensors::Dtype::F64
            ) {
                return Err(ModelError::UnsupportedDtype {
                    file,
                    name: p.name.clone(),
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let t = view.load(device)?.to_dtype(dtype)?;
            vars.insert(p.name.clone(), Var::from_tensor(&t)?);
        }
        Ok(ParamStore {
            vars,
            dtype,
            device: device.clone(),
        })
    }

    /// Parameters from named tensors (e.g. EMA weights or a checkpoint), all converted to `dtype`
    /// on `device`.
    pub fn from_tensors(
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let vars = tensors
            .into_iter()
            .map(|(name, t)| {
                Ok((
                    name,
                    Var::from_tensor(&t.to_device(device)?.to_dtype(dtype)?)?,
                ))
            })
            .collect::<Result<BTreeMap<_, _>, ModelError>>()?;
        Ok(ParamStore {
            vars,
            dtype,
            device: device.clone(),
        })
    }

    /// A copy of every parameter in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self, ModelError> {
        let tensors = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()));
        Self::from_tensors(tensors, &self.device, dtype)
    }

    /// Writes every parameter under its diffusers name, with `metadata` in the header. The file
    /// appears atomically (written beside it, then renamed).
    pub fn save(&self, path: &Path, metadata: HashMap<String, String>) -> Result<(), ModelError> {
        let tensors: Vec<(&str, &Tensor)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_tensor()))
            .collect();
        crate::device::write_safetensors(path, &tensors, metadata)
    }

    /// The parameter `name`, checked against the declared `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let var = self
            .vars
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: "model".into(),
                name: name.to_string(),
                expected: shape.to_vec(),
                more: String::new(),
            })?;
        if var.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                file: "model".into(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: var.dims().to_vec(),
            });
        }
        Ok(var.as_tensor().clone())
    }

    /// Parameters sorted by name (the order optimizers and files use).
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The device parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype parameters are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}
