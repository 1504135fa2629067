//! Grouped-query attention checked independently of the forward that implements it: a network
//! with `kv_heads` K/V heads must compute exactly what the multi-head network computes when each
//! of its K/V projections is the grouped one's, repeated for the query heads it serves.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use unetlab_model::{example_inputs, max_abs_diff, UnetModel};
use unetlab_spec::{Config, UnetSpec};

fn spec(attention: &str) -> UnetSpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let yaml = format!(
        "extends: ../../configs/fixtures/tiny-sd.yaml\nunet: {{attention: {attention}, proj: linear}}\n"
    );
    Config::from_yaml(&yaml, "variant.yaml", Some(dir))
        .unwrap()
        .spec
}

/// `[kv·d, in]` → `[H·d, in]`: K/V head `i` serves query heads `i·g .. (i+1)·g`.
fn repeat_heads(w: &Tensor, kv: usize, heads: usize) -> Tensor {
    let (rows, inputs) = w.dims2().unwrap();
    let d = rows / kv;
    let w = w.reshape((kv, 1, d, inputs)).unwrap();
    let copies = vec![&w; heads / kv];
    Tensor::cat(&copies, 1)
        .unwrap()
        .reshape((heads * d, inputs))
        .unwrap()
}

#[test]
fn grouped_query_attention_equals_multi_head_with_repeated_kv_weights() {
    let dir = tempfile::tempdir().unwrap();
    for (kv, shared) in [(1, false), (2, false), (2, true)] {
        let options = format!("{{heads: 4, kv_heads: {kv}, shared_kv: {shared}}}");
        let grouped = UnetModel::init(spec(&options), 7, &Device::Cpu, DType::F32).unwrap();
        let full = spec(&format!("{{heads: 4, shared_kv: {shared}}}"));
        assert_ne!(grouped.spec, full, "kv_heads {kv} was ignored");

        let mut repeated: HashMap<String, Tensor> = HashMap::new();
        let mut expanded = 0;
        for (name, var) in grouped.params.vars() {
            let t = var.as_tensor().clone();
            let t = if name.ends_with("to_k.weight") || name.ends_with("to_v.weight") {
                expanded += 1;
                repeat_heads(&t, kv, 4)
            } else {
                t
            };
            repeated.insert(name.to_string(), t);
        }
        assert!(expanded > 0);
        let path = dir.path().join(format!("mha-{kv}-{shared}.safetensors"));
        candle_core::safetensors::save(&repeated, &path).unwrap();
        let multi_head = UnetModel::load(full, &path, &Device::Cpu, DType::F32).unwrap();

        let inputs = example_inputs(&grouped.spec, 2, 16, 9, 3, &Device::Cpu).unwrap();
        let ours = grouped.forward(&inputs).unwrap();
        let reference = multi_head.forward(&inputs).unwrap();
        let diff = max_abs_diff(&ours, &reference).unwrap();
        assert!(diff <= 1e-5, "kv {kv} shared {shared}: max |Δ| = {diff}");
        let trained = grouped.forward_train(&inputs).unwrap();
        let diff = max_abs_diff(&trained, &reference).unwrap();
        assert!(diff <= 1e-5, "training path, kv {kv}: max |Δ| = {diff}");
    }
}
