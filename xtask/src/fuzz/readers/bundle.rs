//! Inference bundles (`unetlab export`): the directory `Bundle::open` checks and loads.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use unetlab_export::proto::ElemType;
use unetlab_export::{write_bundle, Bundle, ExportError, ExportOptions, TextEncoderPart};
use unetlab_model::{ParamStore, UnetModel};
use unetlab_spec::Config;

use super::tensors::MICRO_TEXT;
use super::{micro_config, pick, tokenizer, Failure, Outcome, Target};
use crate::fuzz::case::{read_files, Files};
use crate::fuzz::mutate::{self, Safetensors};

struct Bundles {
    seed: Files,
}

/// Seed: the bundle `write_bundle` makes of the micro config with seeded weights and a text
/// encoder with its tokenizer (as `unetlab export --run` does).
pub fn build(scratch: &Path) -> Result<Box<dyn Target>> {
    let config = micro_config()?;
    let model = UnetModel::init(config.spec.clone(), 0, &Device::Cpu, DType::F32)?;
    let tokenizer_path = scratch.join("tokenizer.json");
    let tokenizer = tokenizer::trained(MICRO_TEXT.tokens)?;
    tokenizer.save(&tokenizer_path)?;
    let text_spec = unetlab_graph::TextEncoderSpec {
        vocab: tokenizer.vocab(),
        ..MICRO_TEXT
    };
    let declared = unetlab_cost::text_encoder_params(&text_spec)?;
    let text_params = ParamStore::init(&declared, 1, &Device::Cpu, DType::F32)?;
    let text = TextEncoderPart {
        spec: text_spec,
        params: &text_params,
        tokenizer: &tokenizer_path,
        training: serde_json::json!({"steps": 3}),
    };
    let options = ExportOptions {
        dtype: ElemType::F32,
        opset: 17,
        latent_size: 8,
        tokens: 4,
        dynamic_shapes: true,
        int8: false,
        external_data: false,
        force: true,
        weights: "seed 0".into(),
        command: "cargo xtask fuzz".into(),
        latency: None,
    };
    let out = scratch.join("bundle");
    write_bundle(&config, &model, Some(&text), &options, &out)?;
    Ok(Box::new(Bundles {
        seed: read_files(&out)?,
    }))
}

/// Records `bytes` as the manifest's size and hash of `name`, if the manifest parses and lists it.
fn rehash(files: &mut Files, name: &str) {
    let Some(bytes) = files.get(name) else {
        return;
    };
    let entry = serde_json::json!({
        "bytes": bytes.len(),
        "sha256": unetlab_files::sha256_hex(bytes),
    });
    let Some(manifest) = files.get("manifest.json") else {
        return;
    };
    let Ok(mut manifest) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return;
    };
    if let Some(slot) = manifest.get_mut("files").and_then(|f| f.get_mut(name)) {
        *slot = entry;
        let text = serde_json::to_string_pretty(&manifest).expect("JSON always prints");
        files.insert("manifest.json".into(), text.into_bytes());
    }
}

/// If `config.yaml` still loads, makes the manifest and the weights record its hash, so the
/// mutated config reaches the weights check.
fn rehash_config(files: &mut Files) {
    let Some(yaml) = files.get("config.yaml") else {
        return;
    };
    let Ok(config) = Config::from_yaml(&String::from_utf8_lossy(yaml), "config.yaml", None) else {
        return;
    };
    let hash = config.hash();
    if let Some(mut st) = files
        .get("model.safetensors")
        .and_then(|f| Safetensors::parse(f))
    {
        let record = serde_json::json!({"config_hash": hash}).to_string();
        st.set_metadata(unetlab_export::bundle::WEIGHTS_METADATA_KEY, record);
        files.insert("model.safetensors".into(), st.encode());
        rehash(files, "model.safetensors");
    }
    if let Some(Ok(mut manifest)) = files
        .get("manifest.json")
        .map(|m| serde_json::from_slice::<serde_json::Value>(m))
    {
        let Some(fields) = manifest.as_object_mut() else {
            return;
        };
        fields.insert("config_hash".into(), hash.into());
        let text = serde_json::to_string_pretty(&manifest).expect("JSON always prints");
        files.insert("manifest.json".into(), text.into_bytes());
    }
}

impl Target for Bundles {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        let mut files = self.seed.clone();
        let (name, bytes) = pick(rng, &self.seed);
        let name = name.clone();
        match rng.random_range(0..10) {
            0 => {
                files.remove(&name);
            }
            1 | 2 => {
                let text = String::from_utf8_lossy(&files["manifest.json"]).into_owned();
                files.insert("manifest.json".into(), mutate::json_text(rng, &text, None));
            }
            _ => {
                let mutated = if name.ends_with(".safetensors") {
                    mutate::safetensors(rng, bytes)
                } else if name.ends_with(".yaml") {
                    mutate::yaml_text(rng, &String::from_utf8_lossy(bytes), None)
                } else if name.ends_with(".json") {
                    mutate::json_text(rng, &String::from_utf8_lossy(bytes), None)
                } else {
                    let mut data = bytes.clone();
                    mutate::bytes(rng, &mut data, None);
                    data
                };
                files.insert(name.clone(), mutated);
                if rng.random_range(0..4) > 0 {
                    if name == "config.yaml" && rng.random() {
                        rehash_config(&mut files);
                    }
                    rehash(&mut files, &name);
                }
            }
        }
        files
    }

    /// What `unetlab sample --bundle` and `forward --export` read: the checked bundle, its
    /// UNet, text encoder, tokenizer and test vector.
    fn read(&self, dir: &Path) -> Outcome {
        let fail = |e: ExportError| Failure::of(&e);
        let bundle = Bundle::open(dir).map_err(fail)?;
        bundle.load_model(&Device::Cpu, DType::F32).map_err(fail)?;
        if let Some((spec, _, tokenizer)) = bundle.load_text_encoder(&Device::Cpu).map_err(fail)? {
            tokenizer::read(&tokenizer, spec.tokens)?;
        }
        bundle.example_io(&Device::Cpu).map(|_| None).map_err(fail)
    }
}
