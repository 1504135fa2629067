//! The candle interpreter against the reference fixtures' outputs to within 1e-4 (f32): diffusers'
//! `tiny-sd` and `tiny-sdxl`, and `tiny-md`, MobileDiffusion's design choices in an independent
//! PyTorch implementation.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use unetlab_graph::UnetInputs;
use unetlab_model::UnetModel;
use unetlab_spec::Config;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/fixtures")
        .join(name)
}

/// Every reference fixture: diffusers' two and the independent MobileDiffusion one.
const FIXTURES: [&str; 3] = ["tiny-sd", "tiny-sdxl", "tiny-md"];

fn config(name: &str) -> Config {
    let path = if name == "tiny-md" {
        fixture(name).join("config.yaml")
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../configs/fixtures/{name}.yaml"))
    };
    Config::load(path.to_str().unwrap()).unwrap()
}

fn weights(name: &str) -> PathBuf {
    let file = if name == "tiny-md" {
        "weights.safetensors"
    } else {
        "diffusion_pytorch_model.safetensors"
    };
    fixture(name).join(file)
}

fn io(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("io.safetensors"), &Device::Cpu).unwrap()
}

fn inputs(io: &HashMap<String, Tensor>) -> UnetInputs<Tensor> {
    UnetInputs {
        sample: io["sample"].clone(),
        timestep: io["timestep"].clone(),
        encoder_hidden_states: io["encoder_hidden_states"].clone(),
        text_embeds: io.get("text_embeds").cloned(),
        time_ids: io.get("time_ids").cloned(),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    unetlab_model::max_abs_diff(a, b).unwrap()
}

fn run(name: &str, dtype: DType) -> (Tensor, Tensor) {
    let model = UnetModel::load(config(name).spec, &weights(name), &Device::Cpu, dtype).unwrap();
    let io = io(name);
    (model.forward(&inputs(&io)).unwrap(), io["output"].clone())
}

#[test]
fn fixtures_match_their_references_in_f32() {
    for name in FIXTURES {
        let (ours, theirs) = run(name, DType::F32);
        assert_eq!(ours.dims(), theirs.dims());
        let diff = max_abs_diff(&ours, &theirs);
        eprintln!("{name}: max |Δ| = {diff:e}");
        assert!(diff <= 1e-4, "{name}: max |Δ| = {diff}");
    }
}

#[test]
fn the_differentiable_training_path_matches_the_references_too() {
    // Inference in f32 uses candle's fused softmax and layer norm; training uses our own.
    for name in FIXTURES {
        let model =
            UnetModel::load(config(name).spec, &weights(name), &Device::Cpu, DType::F32).unwrap();
        let io = io(name);
        let diff = max_abs_diff(&model.forward_train(&inputs(&io)).unwrap(), &io["output"]);
        assert!(diff <= 1e-4, "{name}: max |Δ| = {diff}");
    }
}

/// Half-precision tolerances, documented in README.md ("Precision"): the output is unit-scale noise,
/// and f16 keeps 11 mantissa bits, bf16 8.
const F16_TOLERANCE: f32 = 1e-2;
const BF16_TOLERANCE: f32 = 5e-2;

#[test]
fn half_precision_stays_within_the_documented_tolerance() {
    let (f32_out, _) = run("tiny-sd", DType::F32);
    for (dtype, tolerance) in [(DType::F16, F16_TOLERANCE), (DType::BF16, BF16_TOLERANCE)] {
        let (out, _) = run("tiny-sd", dtype);
        assert_eq!(out.dtype(), dtype);
        let diff = max_abs_diff(&out, &f32_out);
        eprintln!("tiny-sd {dtype:?}: max |Δ| vs f32 = {diff:e}");
        assert!(diff <= tolerance, "{dtype:?}: max |Δ| = {diff}");
        assert!(diff > 0.0, "{dtype:?} did not change the arithmetic at all");
    }
}

#[test]
fn inference_and_training_interpreters_agree_at_a_large_latent() {
    // At 64x64 the outer level has 4096 tokens, so attention runs in many blocks of query rows
    // (the kernel's own tests compare blocks with remainders against candle's composite); the
    // inference interpreter (detached parameters, candle's fused ops where no kernel applies) and
    // the training one must still agree.
    let model = UnetModel::load(
        config("tiny-sd").spec,
        &weights("tiny-sd"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let inputs = unetlab_model::example_inputs(&model.spec, 1, 64, 7, 3, &Device::Cpu).unwrap();
    let blocked = model.forward(&inputs).unwrap();
    let direct = model.forward_train(&inputs).unwrap();
    let diff = max_abs_diff(&blocked, &direct);
    assert!(diff <= 1e-5, "max |Δ| = {diff}");
}
