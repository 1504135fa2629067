//! `unetlab forward` and `unetlab convert` end to end, through the binary.

mod common;

use common::unetlab;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use unetlab_spec::Config;

fn fixture(name: &str, file: &str) -> String {
    format!("../shared/reference/fixtures/{name}/{file}")
}

fn load(path: &Path, name: &str) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .remove(name)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    unetlab_model::max_abs_diff(a, b).unwrap()
}

#[test]
fn forward_reproduces_the_diffusers_fixtures_from_either_config() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-sd", "tiny-sdxl"] {
        let yaml = format!("configs/fixtures/{name}.yaml");
        let json = fixture(name, "config.json");
        for (flag, config) in [
            ("--config", yaml.as_str()),
            ("--diffusers-config", json.as_str()),
        ] {
            let out: PathBuf = dir.path().join(format!("{name}{flag}.safetensors"));
            let run = unetlab(&[
                "forward",
                flag,
                config,
                "--weights",
                &fixture(name, "diffusion_pytorch_model.safetensors"),
                "--inputs",
                &fixture(name, "io.safetensors"),
                "--output",
                out.to_str().unwrap(),
            ]);
            assert!(
                run.status.success(),
                "{name} {flag}: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            let ours = load(&out, "output");
            let theirs = load(
                Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
                    .join(fixture(name, "io.safetensors"))
                    .as_path(),
                "output",
            );
            assert_eq!(ours.dtype(), DType::F32);
            let diff = max_abs_diff(&ours, &theirs);
            assert!(diff <= 1e-4, "{name} {flag}: max |Δ| = {diff}");
        }
    }
}

#[test]
fn forward_rejects_bad_inputs_and_weights_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let out = out.to_str().unwrap();
    let sdxl_io = fixture("tiny-sdxl", "io.safetensors");
    let sd_weights = fixture("tiny-sd", "diffusion_pytorch_model.safetensors");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    for (args, needle) in [
        (
            vec![
                "--config",
                "configs/fixtures/tiny-sdxl.yaml",
                "--inputs",
                &fixture("tiny-sd", "io.safetensors"),
            ],
            "missing tensor `text_embeds`",
        ),
        (
            vec![
                "--config",
                "configs/fixtures/tiny-sd.yaml",
                "--inputs",
                &sdxl_io,
            ],
            "`encoder_hidden_states` has shape [2, 5, 40], tiny-sd expects [2, 5, 24]",
        ),
        (
            vec![
                "--config",
                "configs/fixtures/tiny-sdxl.yaml",
                "--weights",
                &sd_weights,
                "--inputs",
                &sdxl_io,
            ],
            "missing tensor `add_embedding.linear_1.weight`",
        ),
        (
            vec![
                "--config",
                "configs/fixtures/tiny-sd.yaml",
                "--weights",
                garbage.to_str().unwrap(),
                "--inputs",
                &fixture("tiny-sd", "io.safetensors"),
            ],
            "not a valid safetensors file",
        ),
        (
            vec!["--config", "sd15", "--inputs", &sdxl_io, "--device", "tpu"],
            "unknown device 'tpu'",
        ),
        (
            vec!["--config", "sd15", "--inputs", &sdxl_io, "--dtype", "f8"],
            "unknown dtype 'f8'",
        ),
    ] {
        let mut full = vec!["forward"];
        full.extend(args.iter().copied());
        full.extend(["--output", out]);
        let run = unetlab(&full);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert!(!Path::new(out).exists(), "no output is written on failure");
}

#[test]
fn convert_writes_yaml_of_the_same_network() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("sdxl.yaml");
    let run = unetlab(&[
        "convert",
        "--from-diffusers",
        "../shared/reference/diffusers/sdxl.config.json",
        "--out",
        yaml.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let converted = Config::load(yaml.to_str().unwrap()).unwrap();
    assert_eq!(converted.spec, Config::load("sdxl").unwrap().spec);

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"block_out_channels": [32], "class_embed_type": "timestep"}"#,
    )
    .unwrap();
    let run = unetlab(&["convert", "--from-diffusers", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1));
    assert!(stderr.contains("class_embed_type"), "{stderr}");
}

/// `--to-diffusers` writes a config.json that imports back to the same network (diffusers
/// configs do not store the token count), `--explicit` YAML that loads to the same spec, and a
/// network diffusers cannot build is refused with the reason.
#[test]
fn convert_writes_diffusers_json_and_explicit_yaml_of_the_same_network() {
    let dir = tempfile::tempdir().unwrap();
    for preset in ["sd15", "sdxl"] {
        let json = dir.path().join(format!("{preset}.json"));
        let run = unetlab(&[
            "convert",
            "--to-diffusers",
            preset,
            "--out",
            json.to_str().unwrap(),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let (back, _) = Config::from_diffusers_file(&json).unwrap();
        let mut want = Config::load(preset).unwrap().spec;
        want.text_tokens = back.spec.text_tokens;
        assert_eq!(back.spec, want, "{preset}");
    }
    // (what the binary is given, from the workspace root; the same config from this test)
    for (preset, here) in [
        ("md-lite", "md-lite"),
        (
            "configs/chain-08-separable-conv.yaml",
            "../../configs/chain-08-separable-conv.yaml",
        ),
    ] {
        let run = unetlab(&["convert", "--explicit", preset]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let yaml = dir.path().join("explicit.yaml");
        std::fs::write(&yaml, &run.stdout).unwrap();
        let text = String::from_utf8_lossy(&run.stdout);
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("extends:")),
            "{text}"
        );
        let loaded = Config::load(yaml.to_str().unwrap()).unwrap();
        assert_eq!(loaded.spec, Config::load(here).unwrap().spec, "{preset}");
    }
    let run = unetlab(&["convert", "--to-diffusers", "mobilediffusion"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1));
    assert!(stderr.contains("diffusers cannot build"), "{stderr}");
    let run = unetlab(&["convert", "--explicit", "sd15", "--to-diffusers", "sd15"]);
    assert_eq!(run.status.code(), Some(2), "one form at a time");
}
