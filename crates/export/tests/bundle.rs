//! Bundles: complete, reproducible, written atomically, and checked on load.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use unetlab_export::proto::ElemType;
use unetlab_export::{write_bundle, Bundle, ExportError, ExportOptions};
use unetlab_model::UnetModel;
use unetlab_spec::Config;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn config(name: &str) -> Config {
    Config::load(
        repo(&format!("configs/fixtures/{name}.yaml"))
            .to_str()
            .unwrap(),
    )
    .unwrap()
}

fn options() -> ExportOptions {
    ExportOptions {
        dtype: ElemType::F32,
        opset: 17,
        latent_size: 8,
        tokens: 5,
        dynamic_shapes: true,
        int8: false,
        external_data: false,
        force: false,
        weights: "random init, seed 3".into(),
        command: "test".into(),
        latency: None,
    }
}

fn export(name: &str, out: &Path, options: &ExportOptions) -> Result<(), ExportError> {
    let config = config(name);
    let model = UnetModel::init(config.spec.clone(), 3, &Device::Cpu, DType::F32).unwrap();
    write_bundle(&config, &model, None, options, out).map(|_| ())
}

fn bundle_error(dir: &Path) -> String {
    Bundle::open(dir).unwrap_err().to_string()
}

#[test]
fn bundles_are_complete_and_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    export("every-choice", &a, &options()).unwrap();
    export("every-choice", &b, &options()).unwrap();
    let (ma, mb) = (
        Bundle::open(&a).unwrap().manifest,
        Bundle::open(&b).unwrap().manifest,
    );
    let files: Vec<&str> = ma.files.keys().map(String::as_str).collect();
    assert_eq!(
        files,
        [
            "README.md",
            "config.json",
            "config.yaml",
            "example_io.safetensors",
            "model.onnx",
            "model.safetensors"
        ]
    );
    assert_eq!(
        ma.files, mb.files,
        "the same export twice gives the same bytes"
    );

    // The bundled config is the original network, and the card names its cost and provenance.
    let bundle = Bundle::open(&a).unwrap();
    let original = config("every-choice");
    assert_eq!(bundle.config.spec, original.spec);
    assert_eq!(bundle.manifest.config_hash, original.hash());
    let cost = unetlab_cost::count(
        &original.spec,
        unetlab_cost::Conditions {
            batch: 1,
            latent_size: 8,
            tokens: 5,
        },
    )
    .unwrap();
    assert_eq!(bundle.manifest.parameters, cost.params());
    assert_eq!(bundle.manifest.macs, cost.macs.total());
    let card = std::fs::read_to_string(a.join("README.md")).unwrap();
    assert!(card.contains(&cost.params().to_string()), "{card}");
    assert!(card.contains("random init, seed 3"), "{card}");
    // Not a diffusers network, and the bundle says why instead of writing diffusers/.
    assert!(!a.join("diffusers").exists());
    assert!(bundle
        .manifest
        .diffusers
        .as_ref()
        .unwrap_err()
        .contains("separable"));
    // The weights carry the config hash; loading them checks names and shapes.
    let model = bundle.load_model(&Device::Cpu, DType::F32).unwrap();
    assert_eq!(
        model.params.len(),
        unetlab_model::declared_params(&original.spec)
            .unwrap()
            .len()
    );
}

#[test]
fn diffusers_networks_get_a_loadable_diffusers_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sd");
    export(
        "tiny-sd",
        &out,
        &ExportOptions {
            latent_size: 16,
            ..options()
        },
    )
    .unwrap();
    let link = out.join("diffusers/diffusion_pytorch_model.safetensors");
    assert_eq!(
        std::fs::read(&link).unwrap(),
        std::fs::read(out.join("model.safetensors")).unwrap()
    );
    let (imported, _) = Config::from_diffusers_file(&out.join("diffusers/config.json")).unwrap();
    assert_eq!(imported.spec.levels, config("tiny-sd").spec.levels);
    assert_eq!(imported.spec.mid, config("tiny-sd").spec.mid);
}

#[test]
fn external_data_holds_the_weights_outside_the_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let (inline, external) = (tmp.path().join("inline"), tmp.path().join("ext"));
    export("every-choice", &inline, &options()).unwrap();
    export(
        "every-choice",
        &external,
        &ExportOptions {
            external_data: true,
            ..options()
        },
    )
    .unwrap();
    let inline = Bundle::open(&inline).unwrap().manifest;
    let external = Bundle::open(&external).unwrap().manifest;
    // Every weight of 1 KiB or more moves out; smaller ones (norm scales, biases) stay inline.
    let spec = config("every-choice").spec;
    let large: Vec<u64> = unetlab_model::declared_params(&spec)
        .unwrap()
        .iter()
        .map(|p| 4 * p.numel())
        .filter(|&b| b >= 1024)
        .collect();
    // Each moved tensor gains a reference (location, offset, length) of under 100 bytes.
    let (count, large) = (large.len() as u64, large.iter().sum::<u64>());
    assert!(
        large > 2 * external.parameters,
        "the test needs large weights"
    );
    let data = external.files["model.onnx.data"].bytes;
    assert!(
        data >= large,
        "{data} bytes of data for {large} bytes of large weights"
    );
    let moved = inline.files["model.onnx"].bytes - external.files["model.onnx"].bytes;
    assert!(
        moved >= large - 100 * count,
        "only {moved} of {large} bytes ({count} tensors) left the graph"
    );
}

#[test]
fn altered_bundles_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    export("every-choice", &out, &options()).unwrap();

    let onnx = out.join("model.onnx");
    let original = std::fs::read(&onnx).unwrap();
    let mut changed = original.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&onnx, &changed).unwrap();
    assert!(
        bundle_error(&out).contains("model.onnx was modified"),
        "{}",
        bundle_error(&out)
    );
    std::fs::write(&onnx, &original).unwrap();
    Bundle::open(&out).unwrap();

    // A different config with a manifest entry updated to match: the config hash catches it.
    let yaml_path = out.join("config.yaml");
    let yaml = std::fs::read_to_string(&yaml_path).unwrap();
    let other = yaml.replacen("in_channels: 4", "in_channels: 5", 1);
    assert_ne!(other, yaml);
    std::fs::write(&yaml_path, &other).unwrap();
    let manifest_path = out.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let entry = unetlab_export::bundle::FileEntry {
        bytes: other.len() as u64,
        sha256: unetlab_files::sha256_hex(other.as_bytes()),
    };
    manifest["files"]["config.yaml"] = serde_json::to_value(entry).unwrap();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let err = bundle_error(&out);
    assert!(err.contains("config.yaml hashes to"), "{err}");

    // Files outside the bundle are never read, even when the manifest records their hash.
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, "x").unwrap();
    let entry = unetlab_export::bundle::FileEntry {
        bytes: 1,
        sha256: unetlab_files::sha256_hex(b"x"),
    };
    for name in ["../outside.txt", outside.to_str().unwrap()] {
        let mut tampered = manifest.clone();
        tampered["files"][name] = serde_json::to_value(&entry).unwrap();
        std::fs::write(&manifest_path, tampered.to_string()).unwrap();
        let err = bundle_error(&out);
        assert!(err.contains("outside the bundle"), "{name}: {err}");
    }
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    std::fs::remove_file(out.join("example_io.safetensors")).unwrap();
    assert!(bundle_error(&out).contains("example_io.safetensors is missing"));
    std::fs::remove_file(&manifest_path).unwrap();
    assert!(bundle_error(&out).contains("not a unetlab bundle"));
}

#[test]
fn exports_are_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    // A failing export (an opset the exporter refuses, found after the first files are written)
    // leaves neither the bundle nor its staging directory.
    let err = export(
        "every-choice",
        &out,
        &ExportOptions {
            opset: 99,
            ..options()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("opset 99"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    export("every-choice", &out, &options()).unwrap();
    let before = Bundle::open(&out).unwrap().manifest;
    // An existing bundle is kept unless forced ...
    let err = export("tiny-sd", &out, &options()).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(Bundle::open(&out).unwrap().manifest, before);
    // ... and a failed forced export keeps the old bundle intact.
    let forced = ExportOptions {
        force: true,
        ..options()
    };
    export(
        "every-choice",
        &out,
        &ExportOptions {
            opset: 99,
            ..forced.clone()
        },
    )
    .unwrap_err();
    assert_eq!(Bundle::open(&out).unwrap().manifest, before);
    export(
        "tiny-sd",
        &out,
        &ExportOptions {
            latent_size: 16,
            ..forced
        },
    )
    .unwrap();
    assert_eq!(Bundle::open(&out).unwrap().manifest.name, "tiny-sd");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn a_runtime_latency_goes_into_the_card_and_the_bundle_stays_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    export("every-choice", &out, &options()).unwrap();
    let mut bundle = Bundle::open(&out).unwrap();
    let latency = unetlab_export::Latency {
        median_s: 0.123,
        runs: 5,
        setting: "ONNX Runtime 1.32.0, CPU, batch 1".into(),
    };
    bundle.record_latency(latency.clone()).unwrap();
    let reopened = Bundle::open(&out).unwrap();
    assert_eq!(
        reopened.manifest.runtime_latencies,
        std::slice::from_ref(&latency)
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains(
            "| measured latency | 0.123 s median of 5 runs (ONNX Runtime 1.32.0, CPU, batch 1) |"
        ),
        "{card}"
    );
    assert!(!out.join(".manifest.json.partial").exists());
    assert!(!out.join(".README.md.partial").exists());

    // A crash between the manifest's rename and the card's leaves the new card staged beside
    // the old one: opening finishes the update. A staged card that the manifest does not record
    // (a crash before the commit) is left alone, and the bundle opens as it was.
    let before = std::fs::read(out.join("README.md")).unwrap();
    let mut bundle = Bundle::open(&out).unwrap();
    let second = unetlab_export::Latency {
        median_s: 0.5,
        ..latency.clone()
    };
    bundle.record_latency(second.clone()).unwrap();
    let after = std::fs::read(out.join("README.md")).unwrap();
    std::fs::rename(out.join("README.md"), out.join(".README.md.partial")).unwrap();
    std::fs::write(out.join("README.md"), &before).unwrap();
    let reopened = Bundle::open(&out).unwrap();
    assert_eq!(reopened.manifest.runtime_latencies, [latency, second]);
    assert_eq!(std::fs::read(out.join("README.md")).unwrap(), after);
    assert!(!out.join(".README.md.partial").exists());
    std::fs::write(
        out.join(".README.md.partial"),
        b"an update that never committed",
    )
    .unwrap();
    Bundle::open(&out).unwrap();
    assert_eq!(std::fs::read(out.join("README.md")).unwrap(), after);
    assert!(out.join(".README.md.partial").exists());
}
