//! Writing configs back out: the explicit YAML rebuilds every config exactly, and the diffusers
//! config of the SD presets and fixtures equals the reference diffusers configs field by field.

use std::path::{Path, PathBuf};

use unetlab_spec::diffusers::diffusers_from_spec;
use unetlab_spec::explicit::explicit_yaml;
use unetlab_spec::{presets, Config};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn reference_json(rel: &str) -> serde_json::Value {
    let path = repo("../shared/reference").join(rel);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every preset and every config file under configs/ (including fixtures).
fn all_configs() -> Vec<Config> {
    let mut configs: Vec<Config> = presets::NAMES
        .iter()
        .map(|n| Config::load(n).unwrap())
        .collect();
    for dir in ["configs", "configs/fixtures"] {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                configs.push(Config::load(path.to_str().unwrap()).unwrap());
            }
        }
    }
    configs
}

#[test]
fn explicit_yaml_rebuilds_every_config_without_extends() {
    let configs = all_configs();
    assert!(configs.len() >= 15, "found only {} configs", configs.len());
    for config in configs {
        let yaml = explicit_yaml(&config);
        let doc: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
        assert!(doc.get("extends").is_none(), "{}: {yaml}", config.name);
        let back = Config::from_yaml(&yaml, "explicit.yaml", None)
            .unwrap_or_else(|e| panic!("{}: {e}\n{yaml}", config.name));
        assert_eq!(back.spec, config.spec, "{}", config.name);
        assert_eq!(back.hash(), config.hash());
        assert_eq!(back.name, config.name);
        assert_eq!(back.paper, config.paper);
        assert_eq!(back.description, config.description);
    }
}

#[test]
fn explicit_yaml_spells_out_inherited_options() {
    // md-lite extends mobilediffusion and sets almost nothing itself; the explicit form must carry
    // every stage's attention and feed-forward choices.
    let yaml = explicit_yaml(&Config::load("md-lite").unwrap());
    let doc: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
    let levels = doc["unet"]["levels"].as_sequence().unwrap();
    assert_eq!(levels.len(), 3);
    for level in levels {
        for dir in ["down", "up"] {
            let stage = &level[dir];
            for key in ["self", "cross", "shared_kv", "kernel"] {
                assert!(!stage["attention"][key].is_null(), "{dir}.attention.{key}");
            }
            assert!(!stage["feed_forward"]["mult"].is_null());
            assert!(stage["transformer_depth"].is_sequence());
        }
        assert!(!level["conv"].is_null());
    }
}

/// The network-defining fields of a diffusers config, compared as numbers where numeric.
fn assert_same_fields(ours: &serde_json::Value, reference: &serde_json::Value, what: &str) {
    let ours = ours.as_object().unwrap();
    for (key, value) in ours {
        if key.starts_with('_') {
            continue;
        }
        let want = &reference[key];
        let same = if key == "attention_head_dim" {
            // Only levels with transformers have heads; diffusers' entry elsewhere is unused.
            let per_level = |v: &serde_json::Value| -> Vec<u64> {
                match v {
                    serde_json::Value::Array(list) => {
                        list.iter().map(|h| h.as_u64().unwrap()).collect()
                    }
                    h => vec![
                        h.as_u64().unwrap();
                        reference["block_out_channels"].as_array().unwrap().len()
                    ],
                }
            };
            let down = reference["down_block_types"].as_array().unwrap();
            let (a, b) = (per_level(value), per_level(want));
            (0..a.len()).all(|i| down[i] == "DownBlock2D" && i + 1 < a.len() || a[i] == b[i])
        } else {
            match (value, want) {
                (serde_json::Value::Number(a), serde_json::Value::Number(b)) => {
                    a.as_f64() == b.as_f64()
                }
                (a, b) => a == b,
            }
        };
        assert!(same, "{what}: `{key}` is {value}, the reference has {want}");
    }
    // Every network-defining field of the reference that differs from diffusers' default is written.
    for key in [
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "attention_head_dim",
        "cross_attention_dim",
        "transformer_layers_per_block",
        "use_linear_projection",
    ] {
        assert!(ours.contains_key(key), "{what}: `{key}` missing");
    }
}

#[test]
fn sd_presets_export_their_reference_diffusers_configs() {
    for (preset, reference) in [
        ("sd15", "diffusers/sd15.config.json"),
        ("sd21", "diffusers/sd21.config.json"),
        ("sdxl", "diffusers/sdxl.config.json"),
        (
            "configs/fixtures/tiny-sd.yaml",
            "fixtures/tiny-sd/config.json",
        ),
        (
            "configs/fixtures/tiny-sdxl.yaml",
            "fixtures/tiny-sdxl/config.json",
        ),
    ] {
        let reference_path = repo("../shared/reference").join(reference);
        let config = Config::load(repo(preset).to_str().unwrap())
            .or_else(|_| Config::load(preset))
            .unwrap();
        let ours = diffusers_from_spec(&config.spec).unwrap_or_else(|e| panic!("{preset}: {e}"));
        assert_eq!(ours["_class_name"], "UNet2DConditionModel");
        assert_same_fields(&ours, &reference_json(reference), preset);
        // And importing the reference gives the same network as importing ours.
        let (from_reference, _) = Config::from_diffusers_file(&reference_path).unwrap();
        assert_eq!(from_reference.spec.levels, config.spec.levels, "{preset}");
    }
}

#[test]
fn mobilediffusion_choices_are_not_diffusers_and_say_why() {
    let err = diffusers_from_spec(&Config::load("mobilediffusion").unwrap().spec).unwrap_err();
    assert!(err.contains("separable"), "{err}");
    assert!(err.contains("transformer blocks"), "{err}");
    let err = diffusers_from_spec(
        &Config::load(repo("configs/fixtures/every-choice.yaml").to_str().unwrap())
            .unwrap()
            .spec,
    )
    .unwrap_err();
    assert!(err.starts_with("not a diffusers"), "{err}");
    // One choice is enough: SD 1.5 with shared K/V is no longer a diffusers UNet.
    let yaml = "extends: sd15\nunet:\n  attention:\n    shared_kv: true\n";
    let shared = Config::from_yaml(yaml, "shared.yaml", None).unwrap();
    assert!(diffusers_from_spec(&shared.spec).is_err());
}
