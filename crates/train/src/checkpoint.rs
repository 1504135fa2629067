//! Checkpoints: one safetensors file holding weights, EMA weights and AdamW moments, with the
//! step and run identity in its metadata; written beside the old one and renamed over it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use unetlab_model::write_safetensors;

use crate::error::TrainError;
use crate::optim::AdamW;

/// The checkpoint metadata key.
const META_KEY: &str = "unetlab.train";

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Completed optimizer steps (the next step to run).
    pub step: u64,
    /// Hash of the run identity (config, recipe, data): a checkpoint only resumes its own run.
    pub run_hash: String,
}

/// Everything a run needs to continue bit-identically.
pub struct Checkpoint {
    /// Step and identity.
    pub info: CheckpointInfo,
    /// Weights by prefixed name.
    pub weights: BTreeMap<String, Tensor>,
    /// EMA weights by prefixed name.
    pub ema: BTreeMap<String, Tensor>,
    /// Optimizer moments.
    pub adam_m: BTreeMap<String, Tensor>,
    /// Optimizer second moments.
    pub adam_v: BTreeMap<String, Tensor>,
    /// Optimizer step count.
    pub adam_step: u64,
}

/// Writes a checkpoint atomically.
pub fn save(
    path: &Path,
    info: &CheckpointInfo,
    weights: &[(String, Tensor)],
    ema: &BTreeMap<String, Tensor>,
    adam: &AdamW,
) -> Result<(), TrainError> {
    let mut named: Vec<(String, &Tensor)> = Vec::new();
    named.extend(weights.iter().map(|(k, v)| (format!("model.{k}"), v)));
    named.extend(ema.iter().map(|(k, v)| (format!("ema.{k}"), v)));
    let moments = adam.moment_tensors()?;
    named.extend(moments.iter().map(|(k, m, _)| (format!("adam_m.{k}"), m)));
    named.extend(moments.iter().map(|(k, _, v)| (format!("adam_v.{k}"), v)));
    write(path, info, adam.step, &named)
}

/// Writes a checkpoint that holds some EMA weights alone (no weights, no optimizer moments):
/// what a frozen copy of part of a run needs, read back by [`load`].
pub fn save_ema_only(
    path: &Path,
    info: &CheckpointInfo,
    ema: &BTreeMap<String, Tensor>,
) -> Result<(), TrainError> {
    let named: Vec<(String, &Tensor)> = ema.iter().map(|(k, v)| (format!("ema.{k}"), v)).collect();
    write(path, info, 0, &named)
}

fn write(
    path: &Path,
    info: &CheckpointInfo,
    adam_step: u64,
    named: &[(String, &Tensor)],
) -> Result<(), TrainError> {
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let meta = serde_json::json!({"info": info, "adam_step": adam_step});
    let metadata = HashMap::from([(META_KEY.to_string(), meta.to_string())]);
    write_safetensors(path, &refs, metadata)?;
    Ok(())
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, TrainError> {
    let bad = |message: String| TrainError::Run {
        run: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a checkpoint: {e}")))?;
    let meta: serde_json::Value = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad("not a unetlab training checkpoint (no metadata)".into()))?;
    let info: CheckpointInfo = serde_json::from_value(meta["info"].clone())
        .map_err(|e| bad(format!("bad checkpoint metadata: {e}")))?;
    let adam_step = meta["adam_step"].as_u64().unwrap_or(0);
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let mut ck = Checkpoint {
        info,
        weights: BTreeMap::new(),
        ema: BTreeMap::new(),
        adam_m: BTreeMap::new(),
        adam_v: BTreeMap::new(),
        adam_step,
    };
    for (name, t) in tensors {
        let (kind, rest) = name
            .split_once('.')
            .ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
        let map = match kind {
            "model" => &mut ck.weights,
            "ema" => &mut ck.ema,
            "adam_m" => &mut ck.adam_m,
            "adam_v" => &mut ck.adam_v,
            _ => return Err(bad(format!("unexpected tensor `{name}`"))),
        };
        map.insert(rest.to_string(), t);
    }
    Ok(ck)
}
