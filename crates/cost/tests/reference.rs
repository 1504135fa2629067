//! The cost interpreter against diffusers: exact counts from `shared/reference/counts.json` and the
//! exact parameter names and shapes of the reference fixtures' state dicts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use unetlab_cost::{count, Conditions, CostReport};
use unetlab_spec::Config;

fn reference() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference")
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn counts() -> Value {
    let text = std::fs::read_to_string(reference().join("counts.json"))
        .expect("shared/reference/counts.json");
    serde_json::from_str(&text).unwrap()
}

fn counted(preset: &str, latent_size: usize) -> CostReport {
    let config = Config::load(preset).unwrap();
    count(
        &config.spec,
        Conditions {
            batch: 1,
            latent_size,
            tokens: 77,
        },
    )
    .unwrap()
}

fn int(v: &Value) -> u64 {
    v.as_u64().expect("an integer")
}

#[test]
fn parameter_and_tensor_counts_equal_diffusers() {
    let counts = counts();
    for preset in ["sd15", "sd21", "sdxl"] {
        let r = counted(preset, 64);
        assert_eq!(
            r.params(),
            int(&counts[preset]["params"]),
            "{preset} params"
        );
        assert_eq!(
            r.tensors() as u64,
            int(&counts[preset]["tensors"]),
            "{preset} tensors"
        );
    }
    // The absolute numbers the issue names, in case the reference file ever changes.
    assert_eq!(counted("sd15", 64).params(), 859_520_964);
    assert_eq!(counted("sd21", 64).params(), 865_910_724);
    assert_eq!(counted("sdxl", 64).params(), 2_567_463_684);
}

#[test]
fn parameters_by_top_level_block_equal_diffusers() {
    let counts = counts();
    for preset in ["sd15", "sd21", "sdxl"] {
        let ours: BTreeMap<String, u64> = counted(preset, 64)
            .breakdown(1)
            .into_iter()
            .filter(|b| b.params > 0)
            .map(|b| (b.path, b.params))
            .collect();
        let theirs: BTreeMap<String, u64> = counts[preset]["params_by_block"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), int(v)))
            .collect();
        assert_eq!(ours, theirs, "{preset}");
    }
}

#[test]
fn macs_by_kind_equal_torch_flop_counter() {
    let counts = counts();
    for (preset, latent) in [("sd15", 64), ("sd21", 64), ("sdxl", 128)] {
        let r = counted(preset, latent);
        let by_kind = &counts[preset][format!("macs_by_kind_latent_{latent}")];
        assert_eq!(r.macs.conv, int(&by_kind["conv"]), "{preset} conv");
        assert_eq!(r.macs.linear, int(&by_kind["linear"]), "{preset} linear");
        assert_eq!(
            r.macs.attention,
            int(&by_kind["attention"]),
            "{preset} attention"
        );
        assert_eq!(r.macs.total(), int(&by_kind["total"]), "{preset} total");
    }
    for (preset, latent) in [("sd15", 64), ("sd21", 64), ("sdxl", 64), ("sdxl", 128)] {
        let flops = int(&counts[preset]["torch_flop_counter"][format!("latent_{latent}")]);
        assert_eq!(
            counted(preset, latent).flops(),
            flops,
            "{preset} @ {latent}"
        );
    }
}

/// Names and shapes from a safetensors header (8-byte little-endian length, then JSON).
fn safetensors_shapes(path: &PathBuf) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| int(d) as usize)
                .collect();
            (k, shape)
        })
        .collect()
}

/// A reference fixture's config and weights: the diffusers ones (configs under `configs/fixtures/`)
/// and `tiny-md`, whose config and weights come from its independent PyTorch implementation.
fn fixture_files(name: &str) -> (PathBuf, PathBuf) {
    let dir = reference().join("fixtures").join(name);
    if name == "tiny-md" {
        (dir.join("config.yaml"), dir.join("weights.safetensors"))
    } else {
        (
            workspace().join(format!("configs/fixtures/{name}.yaml")),
            dir.join("diffusion_pytorch_model.safetensors"),
        )
    }
}

#[test]
fn fixture_configs_declare_exactly_the_reference_state_dicts() {
    for name in ["tiny-sd", "tiny-sdxl", "tiny-md"] {
        let (config, weights) = fixture_files(name);
        let config = Config::load(config.to_str().unwrap()).unwrap();
        let r = count(
            &config.spec,
            Conditions {
                batch: 2,
                latent_size: 16,
                tokens: 7,
            },
        )
        .unwrap();
        let ours: BTreeMap<String, Vec<usize>> = r
            .parameters
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect();
        let theirs = safetensors_shapes(&weights);
        let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
        let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, unexpected {extra:?}"
        );
        assert_eq!(ours, theirs, "{name}: shapes differ");
        assert_eq!(
            r.parameters.len(),
            ours.len(),
            "{name}: a name was declared twice"
        );
        let elements: u64 = theirs
            .values()
            .map(|shape| shape.iter().product::<usize>() as u64)
            .sum();
        assert_eq!(r.params(), elements, "{name}: parameter count");
    }
}

#[test]
fn sd15_has_the_paper_table_1_block_counts() {
    // MobileDiffusion Table 1: SD-1.5 has 22 conv blocks and 16 SA + 16 CA; SDXL 17 conv blocks.
    let sd15 = Config::load("sd15").unwrap().spec;
    assert_eq!(sd15.res_block_count(), 22);
    assert_eq!(
        (sd15.self_attention_count(), sd15.cross_attention_count()),
        (16, 16)
    );
    assert_eq!(Config::load("sdxl").unwrap().spec.res_block_count(), 17);
}
