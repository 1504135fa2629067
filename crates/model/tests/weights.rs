//! Seeded initialisation, safetensors round trips, and every way a weights file can be wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use unetlab_model::{declared_params, UnetModel};
use unetlab_spec::{Config, UnetSpec};

fn tiny() -> UnetSpec {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/fixtures/tiny-sd.yaml");
    Config::load(path.to_str().unwrap()).unwrap().spec
}

fn tensors(model: &UnetModel) -> HashMap<String, Vec<f32>> {
    model
        .params
        .vars()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_gives_bit_identical_weights_and_another_seed_does_not() {
    let a = tensors(&UnetModel::init(tiny(), 7, &Device::Cpu, DType::F32).unwrap());
    let b = tensors(&UnetModel::init(tiny(), 7, &Device::Cpu, DType::F32).unwrap());
    let c = tensors(&UnetModel::init(tiny(), 8, &Device::Cpu, DType::F32).unwrap());
    assert_eq!(a.len(), declared_params(&tiny()).unwrap().len());
    for (name, values) in &a {
        assert!(
            values
                .iter()
                .zip(&b[name])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}"
        );
    }
    let w = "down_blocks.0.resnets.0.conv1.weight";
    assert_ne!(a[w], c[w]);
    // PyTorch's default init: uniform in ±1/√fan_in; norms start at one / zero.
    let bound = 1.0 / ((32 * 9) as f32).sqrt();
    assert!(a[w].iter().all(|x| x.abs() <= bound) && a[w].iter().any(|x| x.abs() > 0.9 * bound));
    assert!(a["conv_norm_out.weight"].iter().all(|&x| x == 1.0));
    assert!(a["conv_norm_out.bias"].iter().all(|&x| x == 0.0));
}

#[test]
fn save_then_load_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let model = UnetModel::init(tiny(), 3, &Device::Cpu, DType::F32).unwrap();
    model
        .save(
            &path,
            HashMap::from([("unetlab.test".to_string(), "yes".to_string())]),
        )
        .unwrap();
    let loaded = UnetModel::load(tiny(), &path, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(tensors(&model), tensors(&loaded));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file is left"
    );
}

fn write(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

fn load_err(path: &Path) -> String {
    match UnetModel::load(tiny(), path, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loaded bad weights from {}", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_unexpected_misshaped_and_corrupt_weights_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    UnetModel::init(tiny(), 1, &Device::Cpu, DType::F32)
        .unwrap()
        .save(&good, HashMap::new())
        .unwrap();
    let all = candle_core::safetensors::load(&good, &Device::Cpu).unwrap();

    let mut missing = all.clone();
    missing.remove("mid_block.attentions.0.proj_in.weight");
    write(&dir.path().join("missing.safetensors"), &missing);
    let e = load_err(&dir.path().join("missing.safetensors"));
    assert!(
        e.contains("missing tensor `mid_block.attentions.0.proj_in.weight`")
            && e.contains("[64, 64, 1, 1]"),
        "{e}"
    );

    let mut extra = all.clone();
    extra.insert(
        "mid_block.attentions.0.extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    write(&dir.path().join("extra.safetensors"), &extra);
    let e = load_err(&dir.path().join("extra.safetensors"));
    assert!(
        e.contains("unexpected tensor") && e.contains("mid_block.attentions.0.extra.weight"),
        "{e}"
    );

    let mut misshaped = all.clone();
    misshaped.insert(
        "conv_in.weight".into(),
        Tensor::zeros((32, 4, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    write(&dir.path().join("shape.safetensors"), &misshaped);
    let e = load_err(&dir.path().join("shape.safetensors"));
    assert!(
        e.contains("`conv_in.weight` has shape [32, 4, 1, 1], the config declares [32, 4, 3, 3]"),
        "{e}"
    );

    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(
        dir.path().join("truncated.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = load_err(&dir.path().join("truncated.safetensors"));
    assert!(e.contains("not a valid safetensors file"), "{e}");
    std::fs::write(
        dir.path().join("garbage.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json",
    )
    .unwrap();
    assert!(
        load_err(&dir.path().join("garbage.safetensors")).contains("not a valid safetensors file")
    );
    assert!(load_err(&dir.path().join("absent.safetensors")).contains("absent.safetensors"));

    let mut ints = all;
    ints.insert(
        "conv_in.bias".into(),
        Tensor::zeros(32, DType::U32, &Device::Cpu).unwrap(),
    );
    write(&dir.path().join("ints.safetensors"), &ints);
    assert!(load_err(&dir.path().join("ints.safetensors")).contains("unsupported dtype"));
}
