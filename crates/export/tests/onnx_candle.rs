//! The ONNX graph is the same function as the candle model: evaluated by candle-onnx (an
//! independent ONNX evaluator) on the same inputs, every exported config agrees to 1e-4 (f32) at
//! any batch, latent height and width and token count, including the diffusers reference
//! fixtures with their real weights and reference outputs at their own token count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use unetlab_export::proto::ElemType;
use unetlab_export::{write_bundle, Bundle, ExportOptions};
use unetlab_model::{example_inputs_sized, UnetModel};
use unetlab_spec::Config;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn options(config: &Config, latent_size: usize, tokens: usize, dynamic: bool) -> ExportOptions {
    ExportOptions {
        dtype: ElemType::F32,
        opset: 17,
        latent_size,
        tokens,
        dynamic_shapes: dynamic,
        int8: false,
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
fn try_eval_onnx(bundle: &Path, inputs: &HashMap<String, Tensor>) -> candle_core::Result<Tensor> {
    let model = candle_onnx::read_file(bundle.join("model.onnx")).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let names: Vec<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let feed: HashMap<String, Tensor> = names
        .iter()
        .map(|&n| (n.to_string(), inputs[n].clone()))
        .collect();
    let mut out = candle_onnx::simple_eval(&model, feed)?;
    Ok(out.remove("output").expect("an output named `output`"))
}

fn eval_onnx(bundle: &Path, inputs: &HashMap<String, Tensor>) -> Tensor {
    try_eval_onnx(bundle, inputs).unwrap()
}

/// The tensors of a test vector whose names start with `prefix`, without it.
fn vector(io: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    io.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .filter(|(k, _)| !k.contains('.'))
        .collect()
}

/// Seeded inputs of one shape, by name, and the candle model's output on them.
fn fresh(
    model: &UnetModel,
    batch: usize,
    latent: [usize; 2],
    tokens: usize,
) -> (HashMap<String, Tensor>, Tensor) {
    let inputs =
        example_inputs_sized(&model.spec, batch, latent, tokens, 99, &Device::Cpu).unwrap();
    let expected = model.forward(&inputs).unwrap();
    let feed = inputs
        .named()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    (feed, expected)
}

#[test]
fn every_design_choice_exports_to_the_same_function_at_any_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for file in [
        "configs/fixtures/every-choice.yaml",
        "configs/fixtures/tiny-sd.yaml",
        "configs/fixtures/tiny-sdxl.yaml",
    ] {
        let config = Config::load(repo(file).to_str().unwrap()).unwrap();
        let model = UnetModel::init(config.spec.clone(), 7, &Device::Cpu, DType::F32).unwrap();
        let out = dir.path().join(&config.name);
        let (latent, tokens) = (config.spec.latent_size, config.spec.text_tokens);
        let unit = 1 << (config.spec.levels.len() - 1);
        write_bundle(
            &config,
            &model,
            None,
            &options(&config, latent, tokens, true),
            &out,
        )
        .unwrap();
        let bundle = Bundle::open(&out).unwrap();
        assert!(bundle.manifest.dynamic_shapes);
        let sample = &bundle.manifest.inputs[0];
        assert_eq!(
            sample.shape,
            [
                serde_json::json!("batch"),
                serde_json::json!(config.spec.in_channels),
                serde_json::json!("height"),
                serde_json::json!("width"),
            ],
            "{}",
            config.name
        );

        // The bundled test vectors: batch 2 at the export size, batch 3 resized ...
        let io = bundle.example_io(&Device::Cpu).unwrap();
        for prefix in ["", "dynamic."] {
            let v = vector(&io, prefix);
            let diff = max_abs_diff(&eval_onnx(&out, &v), &v["output"]);
            assert!(diff <= 1e-4, "{} {prefix}: {diff}", config.name);
        }
        assert_eq!(
            io["dynamic.sample"].dims()[..3],
            [3, config.spec.in_channels, latent + unit]
        );
        assert_eq!(io["dynamic.encoder_hidden_states"].dims()[1], tokens + 5);

        // ... and fresh inputs: two latent sizes (one not square), two token counts, batch 1 and 3.
        for (batch, size, t) in [
            (1, [latent, latent], tokens),
            (1, [latent + 2 * unit, latent + 2 * unit], tokens + 3),
            (3, [latent, latent + unit], tokens + 3),
            (3, [latent + unit, latent], 1),
        ] {
            let (feed, expected) = fresh(&model, batch, size, t);
            let diff = max_abs_diff(&eval_onnx(&out, &feed), &expected);
            assert!(
                diff <= 1e-4,
                "{} at batch {batch}, latent {size:?}, {t} tokens: {diff}",
                config.name
            );
            assert!(unetlab_model::max_abs(&expected).unwrap() > 1e-3);
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn a_static_export_takes_any_batch_but_only_its_own_size() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        Config::load(repo("configs/fixtures/every-choice.yaml").to_str().unwrap()).unwrap();
    let model = UnetModel::init(config.spec.clone(), 7, &Device::Cpu, DType::F32).unwrap();
    let out = dir.path().join("static");
    let (latent, tokens) = (config.spec.latent_size, config.spec.text_tokens);
    write_bundle(
        &config,
        &model,
        None,
        &options(&config, latent, tokens, false),
        &out,
    )
    .unwrap();
    let bundle = Bundle::open(&out).unwrap();
    assert!(!bundle.manifest.dynamic_shapes);
    assert_eq!(
        bundle.manifest.inputs[0].shape[2],
        serde_json::json!(latent)
    );
    let io = bundle.example_io(&Device::Cpu).unwrap();
    assert!(!io.contains_key("dynamic.sample"));
    let diff = max_abs_diff(&eval_onnx(&out, &io), &io["output"]);
    assert!(diff <= 1e-4, "static graph: {diff}");
    let (feed, expected) = fresh(&model, 3, [latent, latent], tokens);
    assert!(max_abs_diff(&eval_onnx(&out, &feed), &expected) <= 1e-4);
    // Its Reshape targets are constants: another latent size cannot run through it.
    let unit = 1 << (config.spec.levels.len() - 1);
    let (feed, _) = fresh(&model, 1, [latent + unit, latent + unit], tokens);
    assert!(try_eval_onnx(&out, &feed).is_err());
}

#[test]
fn diffusers_fixtures_through_onnx_match_diffusers_outputs_at_their_own_token_count() {
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
        // Exported at the config's own sizes (77 tokens); the reference has fewer tokens.
        let (latent, tokens) = (config.spec.latent_size, config.spec.text_tokens);
        assert_ne!(io["encoder_hidden_states"].dims()[1], tokens);
        let out = dir.path().join(name);
        write_bundle(
            &config,
            &model,
            None,
            &options(&config, latent, tokens, true),
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
    use unetlab_export::onnx::{text_encoder_onnx, GraphShape, OnnxOptions};
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
        shape: GraphShape::Dynamic,
        opset: 17,
        dtype: ElemType::F32,
        int8_ranges: None,
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
