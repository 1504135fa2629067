//! The ONNX graph is the same function as the candle model: evaluated by candle-onnx (an
//! independent ONNX evaluator) on the same inputs, every exported config agrees to 1e-4 (f32),
//! including the diffusers reference fixtures with their real weights and reference outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use unetlab_export::proto::ElemType;
use unetlab_export::{write_bundle, Bundle, ExportOptions};
use unetlab_model::{example_inputs, UnetModel};
use unetlab_spec::Config;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn options(config: &Config, latent_size: usize, tokens: usize) -> ExportOptions {
    ExportOptions {
        dtype: ElemType::F32,
        opset: 17,
        latent_size,
        tokens,
        external_data: false,
        force: false,
        weights: "test".into(),
        command: format!("test export of {}", config.name),
        latency: None,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    unetlab_model::max_abs_diff(a, b).unwrap()
}

/// Evaluates a bundle's model.onnx with candle-onnx on named inputs.
fn eval_onnx(bundle: &Path, inputs: &HashMap<String, Tensor>) -> Tensor {
    let model = candle_onnx::read_file(bundle.join("model.onnx")).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let names: Vec<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let feed: HashMap<String, Tensor> = names
        .iter()
        .map(|&n| (n.to_string(), inputs[n].clone()))
        .collect();
    let mut out = candle_onnx::simple_eval(&model, feed).unwrap();
    out.remove("output").expect("an output named `output`")
}

#[test]
fn every_design_choice_exports_to_the_same_function() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (file, latent) in [
        ("configs/fixtures/every-choice.yaml", 8),
        ("configs/fixtures/tiny-sd.yaml", 16),
        ("configs/fixtures/tiny-sdxl.yaml", 8),
    ] {
        let config = Config::load(repo(file).to_str().unwrap()).unwrap();
        let model = UnetModel::init(config.spec.clone(), 7, &Device::Cpu, DType::F32).unwrap();
        let out = dir.path().join(&config.name);
        let tokens = config.spec.text_tokens;
        write_bundle(
            &config,
            &model,
            None,
            &options(&config, latent, tokens),
            &out,
        )
        .unwrap();
        let bundle = Bundle::open(&out).unwrap();

        // The bundled test vector (batch 2) ...
        let io = bundle.example_io(&Device::Cpu).unwrap();
        let onnx = eval_onnx(&out, &io);
        let diff = max_abs_diff(&onnx, &io["output"]);
        assert!(
            diff <= 1e-4,
            "{}: candle-onnx vs candle {diff}",
            config.name
        );

        // ... and fresh inputs at another batch size (the batch is dynamic).
        let fresh = example_inputs(&config.spec, 3, latent, tokens, 99, &Device::Cpu).unwrap();
        let expected = model.forward(&fresh).unwrap();
        let feed: HashMap<String, Tensor> = fresh
            .named()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        let onnx = eval_onnx(&out, &feed);
        let diff = max_abs_diff(&onnx, &expected);
        assert!(diff <= 1e-4, "{} at batch 3: {diff}", config.name);
        assert!(
            expected
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 1e-3
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn diffusers_fixtures_through_onnx_match_diffusers_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-sd", "tiny-sdxl"] {
        let fixture = repo("../shared/reference/fixtures").join(name);
        let config = Config::load(
            repo(&format!("configs/fixtures/{name}.yaml"))
                .to_str()
                .unwrap(),
        )
        .unwrap();
        let model = UnetModel::load(
            config.spec.clone(),
            &fixture.join("diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let io =
            candle_core::safetensors::load(fixture.join("io.safetensors"), &Device::Cpu).unwrap();
        let latent = io["sample"].dims()[2];
        let tokens = io["encoder_hidden_states"].dims()[1];
        let out = dir.path().join(name);
        write_bundle(
            &config,
            &model,
            None,
            &options(&config, latent, tokens),
            &out,
        )
        .unwrap();
        let onnx = eval_onnx(&out, &io);
        let diff = max_abs_diff(&onnx, &io["output"]);
        assert!(
            diff <= 1e-4,
            "{name}: ONNX (candle-onnx) vs diffusers {diff}"
        );
    }
}

#[test]
fn the_text_encoder_exports_to_the_same_function() {
    use unetlab_export::onnx::{text_encoder_onnx, OnnxOptions};
    use unetlab_graph::{text_encoder_forward, TextEncoderSpec};
    use unetlab_model::{CandleOps, ParamStore};

    let spec = TextEncoderSpec {
        vocab: 23,
        tokens: 6,
        width: 16,
        layers: 2,
        heads: 4,
    };
    let declared = unetlab_cost::text_encoder_params(&spec).unwrap();
    let params = ParamStore::init(&declared, 5, &Device::Cpu, DType::F32).unwrap();
    let options = OnnxOptions {
        latent_size: 8,
        tokens: spec.tokens,
        opset: 17,
        dtype: ElemType::F32,
    };
    let model = text_encoder_onnx(&spec, &params, options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text_encoder.onnx");
    std::fs::write(&path, model.encode()).unwrap();

    // Three captions of one-hot tokens (batch 3: the batch is dynamic).
    let mut one_hot = vec![0f32; 3 * spec.tokens * spec.vocab];
    for b in 0..3 {
        for t in 0..spec.tokens {
            one_hot[(b * spec.tokens + t) * spec.vocab + (b * 5 + t * 3) % spec.vocab] = 1.0;
        }
    }
    let input = Tensor::from_vec(one_hot, (3, spec.tokens, spec.vocab), &Device::Cpu).unwrap();
    let (hidden, pooled) =
        text_encoder_forward(&mut CandleOps::new(&params), &spec, &input).unwrap();
    let proto = candle_onnx::read_file(&path).unwrap();
    let feed = HashMap::from([("tokens_one_hot".to_string(), input)]);
    let out = candle_onnx::simple_eval(&proto, feed).unwrap();
    assert!(max_abs_diff(&out["hidden_states"], &hidden) <= 1e-4);
    assert!(max_abs_diff(&out["pooled"], &pooled) <= 1e-4);
    assert_eq!(out["pooled"].dims(), [3, spec.width]);
}
