//! Backward reaches every parameter, for a config with every design choice on and for each alone.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use unetlab_graph::UnetInputs;
use unetlab_model::{example_inputs, UnetModel};
use unetlab_spec::{Config, UnetSpec};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../configs/fixtures/{name}.yaml"));
    path.to_str().unwrap().to_string()
}

fn variant(base: &str, overrides: &str) -> UnetSpec {
    let yaml = format!("extends: {}\n{overrides}", fixture(base));
    Config::from_yaml(&yaml, "variant.yaml", None).unwrap().spec
}

/// Deterministic, non-trivial values of a given shape.
fn wave(dims: &[usize], phase: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f64 * 0.37 + phase).sin()) as f32)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn inputs(spec: &UnetSpec) -> UnetInputs<Tensor> {
    let (size, tokens) = (spec.latent_size.min(8), spec.text_tokens.min(5));
    example_inputs(spec, 2, size, tokens, 5, &Device::Cpu).unwrap()
}

fn assert_every_parameter_gets_a_gradient(label: &str, spec: UnetSpec) {
    let model = UnetModel::init(spec.clone(), 11, &Device::Cpu, DType::F32).unwrap();
    let out = model.forward_train(&inputs(&spec)).unwrap();
    let target = wave(out.dims(), 0.5);
    let loss = (out - target).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut dead = Vec::new();
    for (name, var) in model.params.vars() {
        let Some(g) = grads.get(var.as_tensor()) else {
            dead.push(format!("{name}: no gradient"));
            continue;
        };
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        if !g.iter().all(|x| x.is_finite()) {
            dead.push(format!("{name}: non-finite gradient"));
        } else if g.iter().all(|&x| x == 0.0) {
            dead.push(format!("{name}: zero gradient"));
        }
    }
    assert!(dead.is_empty(), "{label}: {dead:#?}");
}

#[test]
fn every_choice_at_once() {
    let spec = Config::load(&fixture("every-choice")).unwrap().spec;
    assert_every_parameter_gets_a_gradient("every-choice", spec);
}

#[test]
fn each_choice_alone() {
    let cases = [
        ("baseline", "tiny-sd", ""),
        ("shared K/V", "tiny-sd", "unet: {attention: {shared_kv: true}}"),
        ("ReLU attention", "tiny-sd", "unet: {attention: {kernel: relu}}"),
        ("swish", "tiny-sd", "unet: {feed_forward: {activation: swish}}"),
        ("FF mult 3", "tiny-sd", "unet: {feed_forward: {mult: 3}}"),
        ("cross-attention only", "tiny-sd", "unet: {attention: {self: false}}"),
        ("self-attention only", "tiny-sd", "unet: {attention: {cross: false}}"),
        ("separable convs", "tiny-sd", "unet: {conv: separable}"),
        ("pruned res blocks", "tiny-sd", "unet:\n  levels: {0: {down: {res_blocks: 1}, up: {res_blocks: 2}}}"),
        ("linear projections", "tiny-sd", "unet: {proj: linear}"),
        ("transformers moved", "tiny-sd", "unet:\n  levels: {0: {down: {transformer_depth: 0}, up: {transformer_depth: [0, 0, 2]}}}"),
        ("text_time embedding", "tiny-sdxl", ""),
    ];
    for (label, base, overrides) in cases {
        assert_every_parameter_gets_a_gradient(label, variant(base, overrides));
    }
}
