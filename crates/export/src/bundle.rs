//! Inference bundles: one directory with everything needed to run a config elsewhere.
//!
//! ```text
//! BUNDLE/
//!   config.yaml, config.json   the resolved config (extends flattened, every default explicit)
//!   model.safetensors          weights, diffusers names; metadata `unetlab`: config, hash, version
//!   model.onnx[, .data]        the UNet graph (external data when the weights pass 2 GB)
//!   example_io.safetensors     test vectors: inputs (batch 2) and the candle model's output, and
//!                              for dynamic graphs `dynamic.*` at batch 3, another latent height,
//!                              width and token count
//!   diffusers/config.json      when the network is a diffusers UNet2DConditionModel, with
//!   diffusers/diffusion_pytorch_model.safetensors -> ../model.safetensors
//!   README.md                  model card
//!   manifest.json              what is where: sizes and SHA-256 of every file, shapes, the command
//! ```
//!
//! A bundle is written into a hidden sibling directory and renamed into place, so a failed or
//! killed export never leaves a half-written bundle under the requested name. [`Bundle::open`]
//! re-checks every file's hash, the config against its hash, and the weights against the config.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use unetlab_cost::{count, text_encoder_params, Conditions};
use unetlab_graph::{text_encoder_forward, TextEncoderSpec};
use unetlab_model::{
    example_inputs_sized, max_abs, max_abs_diff, write_safetensors, CandleOps, ParamStore,
    Precision, UnetModel,
};
use unetlab_spec::diffusers::diffusers_from_spec;
use unetlab_spec::explicit::{explicit_value, explicit_yaml};
use unetlab_spec::Config;

use crate::card::model_card;
use crate::error::ExportError;
use crate::onnx::{input_type, onnx_model, text_encoder_onnx, GraphShape, OnnxOptions};
use crate::proto::{Dim, ElemType, Initializer, Model, TensorBytes, ValueInfo};

/// Format name in `manifest.json`.
pub const FORMAT: &str = "unetlab-bundle/1";
/// Batch of the bundled test vector (2, so a runtime must honour the dynamic batch).
pub const EXAMPLE_BATCH: usize = 2;
/// Name of the f32 model's output in an int8 bundle's test vectors (beside `output`, the int8
/// computation's).
pub const F32_OUTPUT: &str = "output_f32";
/// Name prefix of a dynamic graph's second test vector (batch 3, a taller latent, more tokens).
pub const DYNAMIC_PREFIX: &str = "dynamic.";
/// Initializers move to `model.onnx.data` when they total more than this (protobuf's 2 GiB limit,
/// less room for the graph).
pub const EXTERNAL_DATA_THRESHOLD: usize = (2 << 30) - (64 << 20);

/// The safetensors metadata key of a bundle's weights: a JSON object with `config_hash`,
/// `config` (the resolved YAML), `dtype` and unetlab `version`.
pub const WEIGHTS_METADATA_KEY: &str = "unetlab";

/// A measured latency, for the model card and manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median seconds per forward.
    pub median_s: f64,
    /// Timed runs.
    pub runs: usize,
    /// Where and how: runtime, device, dtype, threads, batch, latent size.
    pub setting: String,
}

/// One file of a bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A graph input or output: name, element type and shape (open sizes by name: `"batch"`,
/// `"height"`, `"width"`, `"tokens"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorSignature {
    /// Name.
    pub name: String,
    /// `f32` or `f16`.
    pub dtype: String,
    /// Dimensions: numbers, or the names of open sizes.
    pub shape: Vec<serde_json::Value>,
}

impl TensorSignature {
    fn of(v: &ValueInfo) -> TensorSignature {
        TensorSignature {
            name: v.name.clone(),
            dtype: dtype_name(v.elem_type).into(),
            shape: v
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => serde_json::json!(n),
                    Dim::Named(s) => serde_json::json!(s),
                })
                .collect(),
        }
    }
}

/// How an int8 bundle was quantized, and what it costs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Int8Summary {
    /// What the activation ranges were calibrated on.
    pub calibration: String,
    /// Convs and linears quantized.
    pub quantized_ops: usize,
    /// Largest |int8 output − f32 output| on the test vector.
    pub max_abs_error: f32,
    /// `max_abs_error` / the f32 output's largest magnitude.
    pub relative_error: f32,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// unetlab version that wrote the bundle.
    pub unetlab_version: String,
    /// Config name.
    pub name: String,
    /// [`Config::hash`] of the bundled config.
    pub config_hash: String,
    /// Weight and activation type: `f32` or `f16`.
    pub dtype: String,
    /// ONNX opset.
    pub opset: i64,
    /// Latent height = width of the test vector and the MAC count (the only one a static graph
    /// takes).
    pub latent_size: usize,
    /// Text tokens of the test vector (the only count a static graph takes).
    pub tokens: usize,
    /// For int8 bundles (`dtype` `int8`): the quantization and its error against f32.
    #[serde(default)]
    pub int8: Option<Int8Summary>,
    /// Whether the graph takes any latent height and width (multiples of `2^(levels−1)`) and token
    /// count; false for `--static` graphs and bundles written before dynamic shapes.
    #[serde(default)]
    pub dynamic_shapes: bool,
    /// Graph inputs.
    pub inputs: Vec<TensorSignature>,
    /// Graph output.
    pub output: TensorSignature,
    /// Parameter count.
    pub parameters: u64,
    /// Multiply-accumulates per sample at `latent_size` (the paper's "GFLOPs" are G of these).
    pub macs: u64,
    /// Where the weights came from (`seed 0`, a file).
    pub weights: String,
    /// Whether this is a diffusers UNet2DConditionModel (`diffusers/`), or why not.
    pub diffusers: Result<String, String>,
    /// candle latency measured at export, if any.
    pub latency: Option<Latency>,
    /// Latencies measured on the bundle afterwards by other runtimes (`Bundle::record_latency`:
    /// ONNX Runtime on model.onnx, by `cargo xtask onnx-check --full`).
    #[serde(default)]
    pub runtime_latencies: Vec<Latency>,
    /// The text encoder, for bundles of trained proxy runs (with `tokenizer.json`).
    pub text_encoder: Option<TextEncoderSpec>,
    /// The training run's summary (`run.json`), for bundles of trained proxy runs.
    pub training: Option<serde_json::Value>,
    /// The command that wrote the bundle.
    pub command: String,
    /// Every file but this one, by relative path.
    pub files: BTreeMap<String, FileEntry>,
}

/// The text side of a trained proxy run, bundled so the bundle alone can generate.
pub struct TextEncoderPart<'a> {
    /// The encoder's size.
    pub spec: TextEncoderSpec,
    /// Its weights.
    pub params: &'a ParamStore,
    /// The run's `tokenizer.json`.
    pub tokenizer: &'a Path,
    /// The run's summary (`run.json`): recipe, data, losses.
    pub training: serde_json::Value,
}

/// How a bundle is made.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Element type of weights and activations.
    pub dtype: ElemType,
    /// ONNX opset.
    pub opset: i64,
    /// Latent height = width of the test vector, the MAC count and a static graph.
    pub latent_size: usize,
    /// Text tokens of the test vector and a static graph.
    pub tokens: usize,
    /// A graph for any latent height, width and token count (else fixed at the sizes above).
    pub dynamic_shapes: bool,
    /// Quantize every conv and linear to int8 in the graph (QDQ; `dtype` must be f32): weights
    /// per output channel, inputs per tensor with ranges calibrated on a seeded batch of example
    /// inputs. The test vector's output is then the int8 computation's.
    pub int8: bool,
    /// Put the ONNX weights in `model.onnx.data` even below [`EXTERNAL_DATA_THRESHOLD`].
    pub external_data: bool,
    /// Replace an existing bundle at the destination.
    pub force: bool,
    /// Where the weights came from, for the card.
    pub weights: String,
    /// The command line, for the card.
    pub command: String,
    /// A latency measured beforehand, for the card.
    pub latency: Option<Latency>,
}

/// The short name of an element type in manifests and on the command line.
pub fn dtype_name(elem: ElemType) -> &'static str {
    match elem {
        ElemType::F32 => "f32",
        ElemType::F16 => "f16",
        ElemType::I64 => "i64",
        ElemType::I8 => "int8",
    }
}

/// Writes the bundle of `config` with `model`'s weights to `out`, atomically. The model's dtype
/// must be the export dtype.
pub fn write_bundle(
    config: &Config,
    model: &UnetModel,
    text: Option<&TextEncoderPart>,
    options: &ExportOptions,
    out: &Path,
) -> Result<Manifest, ExportError> {
    let bundle_error = |message: String| ExportError::Bundle {
        dir: out.to_path_buf(),
        message,
    };
    if out.exists() && !options.force {
        return Err(bundle_error(
            "already exists (pass --force to replace it)".into(),
        ));
    }
    if !matches!(options.dtype, ElemType::F32 | ElemType::F16) {
        return Err(bundle_error(format!(
            "{} weights: a bundle is f32 or f16 (int8 quantizes an f32 one)",
            dtype_name(options.dtype)
        )));
    }
    if options.int8 && options.dtype != ElemType::F32 {
        return Err(bundle_error(
            "int8 quantizes an f32 model: export with f32 weights".into(),
        ));
    }
    if model.params.dtype() != crate::onnx::candle_dtype(options.dtype) {
        return Err(bundle_error(format!(
            "the model is {:?} but the export dtype is {}",
            model.params.dtype(),
            dtype_name(options.dtype)
        )));
    }
    let staging = sibling(out, "partial")?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(ExportError::io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(ExportError::io(&staging))?;
    let written = fill(config, model, text, options, &staging);
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if out.exists() {
        let old = sibling(out, "old")?;
        std::fs::rename(out, &old).map_err(ExportError::io(out))?;
        std::fs::rename(&staging, out).map_err(ExportError::io(out))?;
        std::fs::remove_dir_all(&old).map_err(ExportError::io(&old))?;
    } else {
        std::fs::rename(&staging, out).map_err(ExportError::io(out))?;
    }
    Ok(manifest)
}

/// A hidden directory beside `out` for staging (`.NAME.partial-PID`).
fn sibling(out: &Path, what: &str) -> Result<PathBuf, ExportError> {
    let name = out
        .file_name()
        .ok_or_else(|| ExportError::Bundle {
            dir: out.to_path_buf(),
            message: "the output must name a directory".into(),
        })?
        .to_string_lossy();
    Ok(out.with_file_name(format!(".{name}.{what}-{}", std::process::id())))
}

/// Writes every file of the bundle into `dir`.
fn fill(
    config: &Config,
    model: &UnetModel,
    text: Option<&TextEncoderPart>,
    options: &ExportOptions,
    dir: &Path,
) -> Result<Manifest, ExportError> {
    let spec = &config.spec;
    let hash = config.hash();
    let yaml = explicit_yaml(config);
    write_file(&dir.join("config.yaml"), yaml.as_bytes())?;
    let json = serde_json::to_string_pretty(&explicit_value(config)).expect("JSON always prints");
    write_file(&dir.join("config.json"), json.as_bytes())?;

    let diffusers = diffusers_from_spec(spec).map(|diffusers_config| {
        let sub = dir.join("diffusers");
        (sub, diffusers_config)
    });
    let diffusers = match diffusers {
        Ok((sub, diffusers_config)) => {
            std::fs::create_dir_all(&sub).map_err(ExportError::io(&sub))?;
            let text = serde_json::to_string_pretty(&diffusers_config).expect("JSON always prints");
            write_file(&sub.join("config.json"), text.as_bytes())?;
            let link = sub.join("diffusion_pytorch_model.safetensors");
            symlink("../model.safetensors", &link)?;
            Ok("diffusers/".to_string())
        }
        Err(reason) => Err(reason),
    };

    // One metadata key, so the file is byte-for-byte reproducible (safetensors writes its
    // metadata map in hash order).
    let record = serde_json::json!({
        "config_hash": hash,
        "config": yaml,
        "dtype": dtype_name(options.dtype),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let metadata = HashMap::from([(WEIGHTS_METADATA_KEY.to_string(), record.to_string())]);
    model.save(&dir.join("model.safetensors"), metadata)?;

    let int8_ranges = options
        .int8
        .then(|| calibrate(model, options))
        .transpose()?;
    let (mut example, int8) = example_io(model, options, int8_ranges.as_deref())?;
    if let Some(text) = text {
        example.extend(text_example_io(text)?);
    }
    let refs: Vec<(&str, &Tensor)> = example.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write_safetensors(&dir.join("example_io.safetensors"), &refs, HashMap::new())?;

    let onnx_options = OnnxOptions {
        shape: graph_shape(options),
        opset: options.opset,
        dtype: options.dtype,
        int8_ranges,
    };
    let mut graph = onnx_model(spec, &model.params, onnx_options)?;
    let inputs: Vec<TensorSignature> = graph.inputs.iter().map(TensorSignature::of).collect();
    let output = TensorSignature::of(&graph.outputs[0]);
    graph.metadata = vec![
        ("unetlab.config_hash".into(), hash.clone()),
        ("unetlab.config".into(), yaml),
    ];
    write_onnx(graph, dir, "model.onnx", options.external_data)?;
    if let Some(text) = text {
        write_text_encoder(text, options, &hash, dir)?;
    }

    let costs = count(
        spec,
        Conditions {
            batch: 1,
            latent_size: options.latent_size,
            tokens: options.tokens,
        },
    )
    .map_err(unetlab_model::ModelError::from)?;
    let mut manifest = Manifest {
        format: FORMAT.into(),
        unetlab_version: env!("CARGO_PKG_VERSION").into(),
        name: config.name.clone(),
        config_hash: hash,
        dtype: match options.int8 {
            true => "int8".into(),
            false => dtype_name(options.dtype).into(),
        },
        opset: options.opset,
        latent_size: options.latent_size,
        tokens: options.tokens,
        dynamic_shapes: options.dynamic_shapes,
        int8,
        inputs,
        output,
        parameters: costs.params(),
        macs: costs.macs.total(),
        weights: options.weights.clone(),
        diffusers,
        latency: options.latency.clone(),
        runtime_latencies: Vec::new(),
        text_encoder: text.map(|t| t.spec),
        training: text.map(|t| t.training.clone()),
        command: options.command.clone(),
        files: BTreeMap::new(),
    };
    write_file(
        &dir.join("README.md"),
        model_card(config, &manifest).as_bytes(),
    )?;
    manifest.files = hash_files(dir)?;
    let text = serde_json::to_string_pretty(&manifest).expect("JSON always prints");
    write_file(&dir.join("manifest.json"), text.as_bytes())?;
    Ok(manifest)
}

/// The graph shape `options` ask for.
fn graph_shape(options: &ExportOptions) -> GraphShape {
    match options.dynamic_shapes {
        true => GraphShape::Dynamic,
        false => GraphShape::Static {
            latent_size: options.latent_size,
            tokens: options.tokens,
        },
    }
}

/// Named tensors of a test vector, the output last.
type Vector = Vec<(String, Tensor)>;

/// What the int8 ranges are calibrated on: a batch of example inputs with its own seed.
const CALIBRATION: (usize, u64) = (EXAMPLE_BATCH, 2);

/// The largest |input| of every conv and linear on the calibration batch (f32).
fn calibrate(model: &UnetModel, options: &ExportOptions) -> Result<Vec<f32>, ExportError> {
    let (batch, seed) = CALIBRATION;
    let device = model.params.device().clone();
    let size = options.latent_size;
    let inputs =
        example_inputs_sized(&model.spec, batch, [size; 2], options.tokens, seed, &device)?;
    let (_, probe) = model.forward_probed(&inputs, Precision::Float)?;
    Ok(probe.input_ranges().to_vec())
}

/// The test vectors: seeded example inputs at batch [`EXAMPLE_BATCH`] in the graph's input types,
/// and the candle model's output on them (under int8, its int8 computation's, with the error
/// against f32); for dynamic graphs also a second vector named [`DYNAMIC_PREFIX`]`*` at batch 3,
/// a latent one unit taller (`2^(levels−1)`) and 5 more tokens.
fn example_io(
    model: &UnetModel,
    options: &ExportOptions,
    int8_ranges: Option<&[f32]>,
) -> Result<(Vector, Option<Int8Summary>), ExportError> {
    let size = options.latent_size;
    let [batch, tokens] = [EXAMPLE_BATCH, options.tokens];
    let (mut tensors, f32_output) =
        test_vector(model, options, batch, [size; 2], tokens, 0, int8_ranges)?;
    let int8 = match (int8_ranges, f32_output) {
        (Some(ranges), Some(reference)) => {
            let output = &tensors.last().expect("the output comes last").1;
            let max_abs_error = max_abs_diff(output, &reference)?;
            let largest = max_abs(&reference)?;
            let (calibration_batch, calibration_seed) = CALIBRATION;
            Some(Int8Summary {
                calibration: format!(
                    "largest |input| of each conv and linear on {calibration_batch} example inputs (seed {calibration_seed}) at the test vector's size"
                ),
                quantized_ops: ranges.len(),
                max_abs_error,
                relative_error: max_abs_error / largest,
            })
        }
        _ => None,
    };
    if options.dynamic_shapes {
        let unit = 1 << (model.spec.levels.len() - 1);
        let latent = [size + unit, size];
        let (resized, _) = test_vector(model, options, 3, latent, tokens + 5, 1, int8_ranges)?;
        tensors.extend(
            resized
                .into_iter()
                .map(|(name, t)| (format!("{DYNAMIC_PREFIX}{name}"), t)),
        );
    }
    Ok((tensors, int8))
}

/// Seeded inputs of one shape and the candle model's output on them, last; under int8 the int8
/// computation's output, with the f32 output before it ([`F32_OUTPUT`]) and returned beside.
fn test_vector(
    model: &UnetModel,
    options: &ExportOptions,
    batch: usize,
    latent: [usize; 2],
    tokens: usize,
    seed: u64,
    int8_ranges: Option<&[f32]>,
) -> Result<(Vector, Option<Tensor>), ExportError> {
    let device = model.params.device().clone();
    let inputs = example_inputs_sized(&model.spec, batch, latent, tokens, seed, &device)?;
    let inputs = inputs.try_map(|name, t| {
        t.to_dtype(crate::onnx::candle_dtype(input_type(name, options.dtype)))
    })?;
    let output = model.forward(&inputs)?;
    let (output, f32_output) = match int8_ranges {
        Some(ranges) => {
            let precision = Precision::Int8 {
                ranges: ranges.to_vec(),
            };
            let (int8, _) = model.forward_probed(&inputs, precision)?;
            (int8, Some(output))
        }
        None => (output, None),
    };
    let mut tensors: Vec<(String, Tensor)> = inputs
        .named()
        .into_iter()
        .map(|(name, t)| (name.to_string(), t.to_device(&Device::Cpu)))
        .map(|(name, t)| t.map(|t| (name, t)))
        .collect::<Result<_, _>>()?;
    if let Some(reference) = &f32_output {
        tensors.push((F32_OUTPUT.into(), reference.to_device(&Device::Cpu)?));
    }
    tensors.push(("output".into(), output.to_device(&Device::Cpu)?));
    Ok((tensors, f32_output))
}

/// `text_encoder.safetensors`, `text_encoder.onnx` and `tokenizer.json`.
fn write_text_encoder(
    text: &TextEncoderPart,
    options: &ExportOptions,
    hash: &str,
    dir: &Path,
) -> Result<(), ExportError> {
    let record = serde_json::json!({"config_hash": hash, "text_encoder": text.spec});
    let metadata = HashMap::from([(WEIGHTS_METADATA_KEY.to_string(), record.to_string())]);
    text.params
        .save(&dir.join("text_encoder.safetensors"), metadata)?;
    let tokenizer = dir.join("tokenizer.json");
    std::fs::copy(text.tokenizer, &tokenizer).map_err(ExportError::io(text.tokenizer))?;
    let onnx_options = OnnxOptions {
        shape: graph_shape(options),
        opset: options.opset,
        dtype: ElemType::F32,
        int8_ranges: None,
    };
    let graph = text_encoder_onnx(&text.spec, text.params, onnx_options)?;
    write_onnx(graph, dir, "text_encoder.onnx", false)
}

/// The text encoder's test vector: a fixed one-hot batch and the candle outputs on it.
fn text_example_io(text: &TextEncoderPart) -> Result<Vec<(String, Tensor)>, ExportError> {
    let s = text.spec;
    let mut one_hot = vec![0f32; EXAMPLE_BATCH * s.tokens * s.vocab];
    for b in 0..EXAMPLE_BATCH {
        for t in 0..s.tokens {
            let id = (b * 31 + t * 7) % s.vocab;
            one_hot[(b * s.tokens + t) * s.vocab + id] = 1.0;
        }
    }
    let device = text.params.device().clone();
    let input = Tensor::from_vec(one_hot, (EXAMPLE_BATCH, s.tokens, s.vocab), &device)?;
    let (hidden, pooled) =
        text_encoder_forward(&mut CandleOps::new(text.params), &text.spec, &input)?;
    Ok(vec![
        ("text.tokens_one_hot".into(), input),
        ("text.hidden_states".into(), hidden),
        ("text.pooled".into(), pooled),
    ])
}

/// Writes `model.onnx`, moving the weights to `model.onnx.data` when asked or when they would
/// pass protobuf's 2 GB limit.
fn write_onnx(mut graph: Model, dir: &Path, file: &str, external: bool) -> Result<(), ExportError> {
    let raw_bytes: usize = graph
        .initializers
        .iter()
        .map(|t| match &t.bytes {
            TensorBytes::Raw(b) => b.len(),
            TensorBytes::External { .. } => 0,
        })
        .sum();
    if external || raw_bytes > EXTERNAL_DATA_THRESHOLD {
        let data_name = format!("{file}.data");
        let path = dir.join(&data_name);
        let file = std::fs::File::create(&path).map_err(ExportError::io(&path))?;
        let mut data = std::io::BufWriter::new(file);
        let mut offset = 0u64;
        for t in &mut graph.initializers {
            move_external(t, &data_name, &mut data, &mut offset).map_err(ExportError::io(&path))?;
        }
        data.flush().map_err(ExportError::io(&path))?;
    }
    write_file(&dir.join(file), &graph.encode())
}

/// Appends a weight's bytes to the external data file (4 KiB-aligned) and points the initializer
/// there; small constants stay inline.
fn move_external(
    t: &mut Initializer,
    location: &str,
    data: &mut impl Write,
    offset: &mut u64,
) -> std::io::Result<()> {
    let TensorBytes::Raw(raw) = &t.bytes else {
        return Ok(());
    };
    if raw.len() < 1024 {
        return Ok(());
    }
    let padding = offset.next_multiple_of(4096) - *offset;
    data.write_all(&vec![0; padding as usize])?;
    *offset += padding;
    let length = raw.len() as u64;
    data.write_all(raw)?;
    t.bytes = TensorBytes::External {
        location: location.into(),
        offset: *offset,
        length,
    };
    *offset += length;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    std::fs::write(path, bytes).map_err(ExportError::io(path))
}

#[cfg(unix)]
fn symlink(target: &str, link: &Path) -> Result<(), ExportError> {
    std::os::unix::fs::symlink(target, link).map_err(ExportError::io(link))
}

#[cfg(not(unix))]
fn symlink(target: &str, link: &Path) -> Result<(), ExportError> {
    let source = link.parent().expect("in a directory").join(target);
    std::fs::copy(&source, link)
        .map(|_| ())
        .map_err(ExportError::io(link))
}

/// Size and SHA-256 of every regular file under `dir` (symlinks and the manifest excluded).
fn hash_files(dir: &Path) -> Result<BTreeMap<String, FileEntry>, ExportError> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(ExportError::io(&d))? {
            let entry = entry.map_err(ExportError::io(&d))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(ExportError::io(&path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let rel = path
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .replace('\\', "/");
                if rel != "manifest.json" {
                    files.insert(rel, file_entry(&path)?);
                }
            }
        }
    }
    Ok(files)
}

fn file_entry(path: &Path) -> Result<FileEntry, ExportError> {
    let (bytes, sha256) = unetlab_files::sha256_file(path).map_err(ExportError::io(path))?;
    Ok(FileEntry { bytes, sha256 })
}

/// A checked bundle.
#[derive(Debug)]
pub struct Bundle {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its config, rebuilt from `config.yaml`.
    pub config: Config,
}

impl Bundle {
    /// Opens and checks a bundle: the manifest's format, every file's size and SHA-256, the
    /// config against its hash, and the weights' recorded hash. Errors say which check failed.
    pub fn open(dir: &Path) -> Result<Bundle, ExportError> {
        let fail = |message: String| ExportError::Bundle {
            dir: dir.to_path_buf(),
            message,
        };
        let manifest_path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
            fail(format!(
                "no readable manifest.json ({e}): not a unetlab bundle"
            ))
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| fail(format!("manifest.json is not a bundle manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(fail(format!("format {} is not {FORMAT}", manifest.format)));
        }
        finish_card_update(dir, &manifest)?;
        for (name, want) in &manifest.files {
            // A manifest names files inside its bundle: nothing absolute, nothing through `..`.
            let inside = Path::new(name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside || name.is_empty() {
                return Err(fail(format!(
                    "the manifest names {name:?}, outside the bundle"
                )));
            }
            let path = dir.join(name);
            if !path.is_file() {
                return Err(fail(format!("{name} is missing")));
            }
            let found = file_entry(&path)?;
            if found != *want {
                return Err(fail(format!(
                    "{name} was modified: {} bytes, sha256 {}, the manifest records {} bytes, sha256 {}",
                    found.bytes, found.sha256, want.bytes, want.sha256
                )));
            }
        }
        let mut required = vec!["config.yaml", "model.safetensors", "model.onnx"];
        if manifest.text_encoder.is_some() {
            required.extend([
                "text_encoder.safetensors",
                "text_encoder.onnx",
                "tokenizer.json",
            ]);
        }
        for required in required {
            if !manifest.files.contains_key(required) {
                return Err(fail(format!("the manifest lists no {required}")));
            }
        }
        let yaml_path = dir.join("config.yaml");
        let yaml = std::fs::read_to_string(&yaml_path).map_err(ExportError::io(&yaml_path))?;
        let config = Config::from_yaml(&yaml, &yaml_path.display().to_string(), Some(dir))?;
        if config.hash() != manifest.config_hash {
            return Err(fail(format!(
                "config.yaml hashes to {}, the manifest records {}",
                config.hash(),
                manifest.config_hash
            )));
        }
        let weights_hash = weights_config_hash(&dir.join("model.safetensors"))?;
        if weights_hash.as_deref() != Some(manifest.config_hash.as_str()) {
            return Err(fail(format!(
                "model.safetensors was written for config {}, the bundle's config is {}",
                weights_hash.as_deref().unwrap_or("(none recorded)"),
                manifest.config_hash
            )));
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            config,
        })
    }

    /// The bundle's weights as a candle model in `dtype`, checked name by name and shape by shape.
    pub fn load_model(&self, device: &Device, dtype: DType) -> Result<UnetModel, ExportError> {
        Ok(UnetModel::load(
            self.config.spec.clone(),
            &self.dir.join("model.safetensors"),
            device,
            dtype,
        )?)
    }

    /// The bundled text encoder and the path of its tokenizer, if the bundle has them.
    pub fn load_text_encoder(
        &self,
        device: &Device,
    ) -> Result<Option<(TextEncoderSpec, ParamStore, PathBuf)>, ExportError> {
        let Some(spec) = self.manifest.text_encoder else {
            return Ok(None);
        };
        let weights = self.dir.join("text_encoder.safetensors");
        check_text_encoder(&spec, &weights).map_err(|message| ExportError::Bundle {
            dir: self.dir.clone(),
            message,
        })?;
        let declared = text_encoder_params(&spec).map_err(unetlab_model::ModelError::from)?;
        let params = ParamStore::load(&declared, &weights, device, DType::F32)?;
        Ok(Some((spec, params, self.dir.join("tokenizer.json"))))
    }

    /// Adds a latency measured by another runtime on this bundle to its manifest and model card.
    /// Both are staged; the manifest's rename is the commit, then the card's follows. A crash
    /// before the first rename leaves the old bundle; one between them leaves the new card
    /// staged beside a manifest that records it, which [`Bundle::open`] renames into place.
    pub fn record_latency(&mut self, latency: Latency) -> Result<(), ExportError> {
        self.manifest.runtime_latencies.push(latency);
        let staged_card = self.dir.join(STAGED_CARD.0);
        write_file(
            &staged_card,
            model_card(&self.config, &self.manifest).as_bytes(),
        )?;
        self.manifest
            .files
            .insert("README.md".into(), file_entry(&staged_card)?);
        let text = serde_json::to_string_pretty(&self.manifest).expect("JSON always prints");
        let staged_manifest = self.dir.join(".manifest.json.partial");
        write_file(&staged_manifest, text.as_bytes())?;
        for (staged, name) in [
            (staged_manifest, "manifest.json"),
            (staged_card, STAGED_CARD.1),
        ] {
            let path = self.dir.join(name);
            std::fs::rename(&staged, &path).map_err(ExportError::io(&path))?;
        }
        Ok(())
    }

    /// The bundled test vector (inputs and `output`).
    pub fn example_io(&self, device: &Device) -> Result<HashMap<String, Tensor>, ExportError> {
        Ok(candle_core::safetensors::load(
            self.dir.join("example_io.safetensors"),
            device,
        )?)
    }
}

/// The model card staged by [`Bundle::record_latency`] and its name once in place.
const STAGED_CARD: (&str, &str) = (".README.md.partial", "README.md");

/// Completes a [`Bundle::record_latency`] interrupted after its commit: a staged card whose
/// contents the manifest records replaces the card (a staged card the manifest does not record
/// is an update that never committed, and stays where it is).
fn finish_card_update(dir: &Path, manifest: &Manifest) -> Result<(), ExportError> {
    let (staged, card) = (dir.join(STAGED_CARD.0), dir.join(STAGED_CARD.1));
    let Some(want) = manifest.files.get(STAGED_CARD.1) else {
        return Ok(());
    };
    if staged.is_file() && file_entry(&staged)? == *want {
        std::fs::rename(&staged, &card).map_err(ExportError::io(&card))?;
    }
    Ok(())
}

/// Checks the manifest's text encoder against the tensors of its weights before the encoder is
/// walked: a manifest claiming 2^40 layers would be walked for ever, 0 heads would divide by zero.
fn check_text_encoder(spec: &TextEncoderSpec, weights: &Path) -> Result<(), String> {
    let bytes = std::fs::read(weights).map_err(|e| format!("{}: {e}", weights.display()))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("text_encoder.safetensors is not a safetensors file: {e}"))?;
    let tensors = metadata.tensors();
    let shape = |name: &str| tensors.get(name).map(|t| t.shape.clone());
    let layers = (0..)
        .take_while(|i| {
            let prefix = format!("layers.{i}.");
            tensors.keys().any(|k| k.starts_with(&prefix))
        })
        .count();
    let mismatch = |what: &str, manifest: String, file: String| {
        Err(format!(
            "the manifest's text encoder has {what} {manifest}, text_encoder.safetensors {file}"
        ))
    };
    let embedding = vec![spec.width, spec.vocab];
    if shape("token_embedding.weight").as_ref() != Some(&embedding) {
        return mismatch(
            "[width, vocab]",
            format!("{embedding:?}"),
            format!("{:?}", shape("token_embedding.weight")),
        );
    }
    let positions = vec![spec.tokens, spec.width];
    if shape("position_embedding").as_ref() != Some(&positions) {
        return mismatch(
            "[tokens, width]",
            format!("{positions:?}"),
            format!("{:?}", shape("position_embedding")),
        );
    }
    if spec.layers != layers {
        return mismatch("layers", spec.layers.to_string(), layers.to_string());
    }
    if spec.heads == 0 || !spec.width.is_multiple_of(spec.heads) {
        return Err(format!(
            "the manifest's text encoder has {} heads, which do not divide its width {}",
            spec.heads, spec.width
        ));
    }
    Ok(())
}

/// The config hash recorded in a safetensors file's [`WEIGHTS_METADATA_KEY`] metadata.
fn weights_config_hash(path: &Path) -> Result<Option<String>, ExportError> {
    let mut file = std::fs::File::open(path).map_err(ExportError::io(path))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(ExportError::io(path))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Ok(None);
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(ExportError::io(path))?;
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap_or_default();
    let record: serde_json::Value = header["__metadata__"][WEIGHTS_METADATA_KEY]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    Ok(record["config_hash"].as_str().map(str::to_string))
}
