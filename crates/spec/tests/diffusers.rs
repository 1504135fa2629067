//! Importing diffusers configs: the reference configs round-trip to the presets and fixtures.

use std::io::Write;
use std::path::{Path, PathBuf};

use unetlab_spec::Config;

fn reference(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference")
        .join(rel)
}

fn fixture_config(name: &str) -> Config {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../configs/fixtures/{name}.yaml"));
    Config::load(path.to_str().unwrap()).unwrap()
}

#[test]
fn sd_presets_round_trip_through_their_diffusers_configs() {
    for preset in ["sd15", "sd21", "sdxl"] {
        let (imported, yaml) =
            Config::from_diffusers_file(&reference(&format!("diffusers/{preset}.config.json")))
                .unwrap_or_else(|e| panic!("{preset}: {e}"));
        let expected = Config::load(preset).unwrap();
        assert_eq!(imported.spec, expected.spec, "{preset}");
        assert_eq!(imported.hash(), expected.hash(), "{preset}");
        // The YAML it printed is itself a valid config of the same network.
        assert_eq!(
            Config::from_yaml(&yaml, "printed.yaml", None).unwrap().spec,
            imported.spec
        );
    }
}

#[test]
fn fixture_configs_round_trip() {
    for name in ["tiny-sd", "tiny-sdxl"] {
        let (imported, _) =
            Config::from_diffusers_file(&reference(&format!("fixtures/{name}/config.json")))
                .unwrap();
        assert_eq!(imported.name, name);
        assert_eq!(imported.spec, fixture_config(name).spec, "{name}");
    }
}

fn import_modified(key: &str, value: serde_json::Value) -> String {
    let text = std::fs::read_to_string(reference("diffusers/sd15.config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json[key] = value;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(file, "{json}").unwrap();
    Config::from_diffusers_file(file.path())
        .unwrap_err()
        .to_string()
}

#[test]
fn unsupported_features_are_named_errors() {
    use serde_json::json;
    for (key, value, needle) in [
        (
            "class_embed_type",
            json!("timestep"),
            "class_embed_type: \"timestep\" is not supported",
        ),
        (
            "resnet_time_scale_shift",
            json!("scale_shift"),
            "resnet_time_scale_shift",
        ),
        ("mid_block_type", json!("UNetMidBlock2D"), "mid_block_type"),
        (
            "down_block_types",
            json!([
                "CrossAttnDownBlock2D",
                "AttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D"
            ]),
            "down_block_types[1]",
        ),
        (
            "some_future_field",
            json!(1),
            "some_future_field: unknown diffusers field",
        ),
        ("addition_embed_type", json!("text"), "addition_embed_type"),
        (
            "layers_per_block",
            json!([1, 2]),
            "layers_per_block: has 2 entries for 4 levels",
        ),
        ("act_fn", json!("gelu"), "act_fn"),
    ] {
        let err = import_modified(key, value);
        assert!(err.contains(needle), "{key}: {err}");
    }
}
