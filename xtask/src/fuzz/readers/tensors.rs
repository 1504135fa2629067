//! safetensors files: UNet weights and training checkpoints.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use unetlab_graph::TextEncoderSpec;
use unetlab_model::UnetModel;
use unetlab_spec::UnetSpec;
use unetlab_train::checkpoint::{self, CheckpointInfo};
use unetlab_train::model::ProxyModel;
use unetlab_train::optim::{ema_init, AdamW};
use unetlab_train::{Budget, Recipe};

use super::{micro_config, Failure, Outcome, Target};
use crate::fuzz::case::Files;
use crate::fuzz::mutate;

/// The text encoder of the micro proxy model in checkpoints.
pub const MICRO_TEXT: TextEncoderSpec = TextEncoderSpec {
    vocab: 12,
    tokens: 4,
    width: 8,
    layers: 1,
    heads: 2,
};

struct Weights {
    spec: UnetSpec,
    /// The micro config's weights in f32 and in f16.
    seeds: Vec<Vec<u8>>,
}

/// Seeds: the micro config's seeded weights, saved by `UnetModel::save` in f32 and f16.
pub fn build_weights(scratch: &Path) -> Result<Box<dyn Target>> {
    let spec = micro_config()?.spec;
    let mut seeds = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        let model = UnetModel::init(spec.clone(), 0, &Device::Cpu, dtype)?;
        let path = scratch.join("model.safetensors");
        let metadata = HashMap::from([("unetlab".to_string(), r#"{"config_hash":"x"}"#.into())]);
        model.save(&path, metadata)?;
        seeds.push(std::fs::read(&path)?);
    }
    Ok(Box::new(Weights { spec, seeds }))
}

impl Target for Weights {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        let seed = self.seeds.choose(rng).expect("seeds");
        Files::from([(
            "model.safetensors".to_string(),
            mutate::safetensors(rng, seed),
        )])
    }

    fn read(&self, dir: &Path) -> Outcome {
        UnetModel::load(
            self.spec.clone(),
            &dir.join("model.safetensors"),
            &Device::Cpu,
            DType::F32,
        )
        .map(|_| None)
        .map_err(|e| Failure::of(&e))
    }
}

struct Checkpoints {
    spec: UnetSpec,
    seed: Vec<u8>,
}

/// Seed: a checkpoint of the micro proxy model (UNet and text encoder) written by
/// `checkpoint::save`, with EMA weights and AdamW moments.
pub fn build_checkpoint(scratch: &Path) -> Result<Box<dyn Target>> {
    let spec = micro_config()?.spec;
    let model = ProxyModel::init(spec.clone(), MICRO_TEXT, 0)?;
    let vars = model.named_vars();
    let optimizer = Recipe::for_budget(Budget::Smoke).optimizer;
    let adam = AdamW::new(optimizer, vars.iter().map(|(n, v)| (n.as_str(), v)))?;
    let ema = ema_init(&vars)?;
    let weights: Vec<_> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let info = CheckpointInfo {
        step: 3,
        run_hash: "fuzz".into(),
    };
    let path = scratch.join("checkpoint.safetensors");
    checkpoint::save(&path, &info, &weights, &ema, &adam)?;
    Ok(Box::new(Checkpoints {
        spec,
        seed: std::fs::read(&path)?,
    }))
}

impl Target for Checkpoints {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        Files::from([(
            "checkpoint.safetensors".to_string(),
            mutate::safetensors(rng, &self.seed),
        )])
    }

    /// What resuming a run does with a checkpoint: load it, rebuild the model from its weights
    /// and EMA weights, and AdamW from its moments.
    fn read(&self, dir: &Path) -> Outcome {
        let ck =
            checkpoint::load(&dir.join("checkpoint.safetensors")).map_err(|e| Failure::of(&e))?;
        for tensors in [&ck.weights, &ck.ema] {
            ProxyModel::from_tensors(self.spec.clone(), MICRO_TEXT, tensors)
                .map_err(|e| Failure::of(&e))?;
        }
        let optimizer = Recipe::for_budget(Budget::Smoke).optimizer;
        AdamW::from_tensors(optimizer, ck.adam_step, ck.adam_m, ck.adam_v)
            .map(|_| None)
            .map_err(|e| Failure::of(&unetlab_train::TrainError::from(e)))
    }
}
