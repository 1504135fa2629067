//! `unetlab precision`: what f16, bf16 and int8 do to a config's forward.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use unetlab_bench::prepare_process;
use unetlab_model::{example_inputs, max_abs, BlockMaximum, Precision, UnetModel};
use unetlab_spec::Config;
use unetlab_train::sample::TrainedRun;

use crate::export::proxy_config;
use crate::table::Table;

/// f16's largest finite value.
pub const F16_MAX: f32 = 65_504.0;

/// Measure what f16, bf16 and int8 do to a forward.
///
/// For each config (seeded random weights, or --weights) and each training run (--run: its proxy
/// UNet with the EMA weights), on a seeded batch of the config's example inputs:
/// - f16 and bf16: the forward with weights and activations in that type (as `unetlab bench
///   --dtype` runs it) against f32: max |Δ|, max |Δ| relative to max |output|, and RMS error
///   relative to the output's RMS;
/// - the largest activation magnitude in each block, computed in f32, and its headroom to f16's
///   largest value (65,504);
/// - int8: every conv and linear computed as a QDQ graph does (weights per output channel,
///   inputs per tensor, symmetric, ranges calibrated on another seeded batch of example inputs;
///   biases and everything else f32) against the same forward in f32.
#[derive(clap::Args)]
pub struct PrecisionArgs {
    /// Preset names or YAML configs (seeded random weights unless --weights).
    configs: Vec<String>,
    /// Weights with diffusers names, for a single config.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Training runs (`unetlab train` directories): their proxy UNets with the EMA weights.
    #[arg(long = "run")]
    runs: Vec<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Latent height = width (default: each config's).
    #[arg(long)]
    latent_size: Option<usize>,
    /// Text tokens (default: each config's).
    #[arg(long)]
    tokens: Option<usize>,
    /// Batch of the evaluation inputs and of the calibration inputs.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// CPU threads (default: all).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the reports as JSON (with every block).
    #[arg(long)]
    json: bool,
}

/// An output's error against the f32 forward.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OutputError {
    /// Largest absolute difference.
    pub max_abs: f32,
    /// `max_abs` / the f32 output's largest magnitude.
    pub relative: f32,
    /// RMS of the difference / RMS of the f32 output.
    pub rms_relative: f32,
    /// Non-finite values in the output (f16 overflow shows here).
    pub non_finite: usize,
}

/// A block's largest f32 activation.
#[derive(Debug, Clone, Serialize)]
pub struct BlockHeadroom {
    /// Module path.
    pub block: String,
    /// Largest |activation|.
    pub max_abs: f32,
    /// f16's largest value / `max_abs`.
    pub f16_headroom: f32,
}

/// One config's precision report.
#[derive(Debug, Clone, Serialize)]
pub struct PrecisionReport {
    /// Config name.
    pub name: String,
    /// Its hash.
    pub config_hash: String,
    /// Where the weights came from.
    pub weights: String,
    /// Latent size of the inputs.
    pub latent_size: usize,
    /// Text tokens of the inputs.
    pub tokens: usize,
    /// Batch of the inputs.
    pub batch: usize,
    /// Largest |output| in f32.
    pub output_max_abs: f32,
    /// f16 forward against f32.
    pub f16: OutputError,
    /// bf16 forward against f32.
    pub bf16: OutputError,
    /// int8 convs and linears against f32.
    pub int8: OutputError,
    /// Conv and linear calls quantized.
    pub int8_quantized_ops: usize,
    /// The block with the least f16 headroom.
    pub tightest_block: BlockHeadroom,
    /// Every block, in forward order.
    pub blocks: Vec<BlockHeadroom>,
}

/// Runs `unetlab precision`.
pub fn run(args: &PrecisionArgs) -> Result<()> {
    prepare_process(args.threads).map_err(|e| anyhow!(e))?;
    if args.configs.is_empty() && args.runs.is_empty() {
        bail!("give at least one config or --run");
    }
    if args.weights.is_some() && (args.configs.len() != 1 || !args.runs.is_empty()) {
        bail!("--weights belongs to exactly one config (and no --run)");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let device = Device::Cpu;
    let mut models: Vec<(Config, UnetModel, String)> = Vec::new();
    for reference in &args.configs {
        let config = Config::load(reference)?;
        let (model, weights) = match &args.weights {
            Some(w) => (
                UnetModel::load(config.spec.clone(), w, &device, DType::F32)?,
                w.display().to_string(),
            ),
            None => (
                UnetModel::init(config.spec.clone(), args.seed, &device, DType::F32)?,
                format!("random init, seed {}", args.seed),
            ),
        };
        models.push((config, model, weights));
    }
    for dir in &args.runs {
        let run = TrainedRun::open(dir)?;
        let config = proxy_config(&run)?;
        let model = run.model.unet.to_dtype(DType::F32)?;
        models.push((config, model, format!("EMA weights of {}", dir.display())));
    }

    let mut reports = Vec::new();
    for (config, model, weights) in &models {
        let bar = ProgressBar::new(FORWARDS.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} forwards: {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(config.name.clone());
        let report = measure(config, model, weights.clone(), args, &device, &bar);
        bar.finish_and_clear();
        reports.push(report?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", table(&reports));
    }
    Ok(())
}

/// The forwards of one config, in order.
const FORWARDS: [&str; 6] = [
    "f32",
    "f16",
    "bf16",
    "f32 watched",
    "f32 calibration",
    "int8",
];

/// The six [`FORWARDS`] of one config.
fn measure(
    config: &Config,
    model: &UnetModel,
    weights: String,
    args: &PrecisionArgs,
    device: &Device,
    bar: &ProgressBar,
) -> Result<PrecisionReport> {
    let spec = &config.spec;
    let latent_size = args.latent_size.unwrap_or(spec.latent_size);
    let tokens = args.tokens.unwrap_or(spec.text_tokens);
    unetlab_spec::check_latent_size(spec.levels.len(), latent_size)
        .map_err(|m| anyhow!("--latent-size {m}"))?;
    let inputs = example_inputs(spec, args.batch, latent_size, tokens, 1, device)?;
    let calibration = example_inputs(spec, args.batch, latent_size, tokens, 2, device)?;
    let step = |i: usize| {
        bar.set_position(i as u64);
        bar.set_message(FORWARDS.get(i).copied().unwrap_or("done"));
    };

    step(0);
    let reference = model.forward(&inputs)?;
    step(1);
    let f16 = model.to_dtype(DType::F16)?.forward(&inputs)?;
    step(2);
    let bf16 = model.to_dtype(DType::BF16)?.forward(&inputs)?;
    step(3);
    let (watched, probe) = model.forward_probed(&inputs, Precision::Float)?;
    let blocks: Vec<BlockHeadroom> = probe.block_maxima().iter().map(headroom).collect();
    step(4);
    let (_, calibrated) = model.forward_probed(&calibration, Precision::Float)?;
    let ranges = calibrated.input_ranges().to_vec();
    step(5);
    let (int8, _) = model.forward_probed(
        &inputs,
        Precision::Int8 {
            ranges: ranges.clone(),
        },
    )?;
    step(6);

    let tightest_block = blocks
        .iter()
        .min_by(|a, b| a.f16_headroom.total_cmp(&b.f16_headroom))
        .cloned()
        .ok_or_else(|| anyhow!("{}: the forward entered no block", config.name))?;
    Ok(PrecisionReport {
        name: config.name.clone(),
        config_hash: config.hash(),
        weights,
        latent_size,
        tokens,
        batch: args.batch,
        output_max_abs: max_abs(&reference)?,
        f16: output_error(&f16, &reference)?,
        bf16: output_error(&bf16, &reference)?,
        int8: output_error(&int8, &watched)?,
        int8_quantized_ops: ranges.len(),
        tightest_block,
        blocks,
    })
}

fn headroom(b: &BlockMaximum) -> BlockHeadroom {
    BlockHeadroom {
        block: b.path.clone(),
        max_abs: b.max_abs,
        f16_headroom: F16_MAX / b.max_abs,
    }
}

/// `output`'s error against `reference` (both compared in f32).
pub fn output_error(output: &Tensor, reference: &Tensor) -> Result<OutputError> {
    let output = output.to_dtype(DType::F32)?.flatten_all()?;
    let reference = reference.to_dtype(DType::F32)?.flatten_all()?;
    let values = output.to_vec1::<f32>()?;
    let non_finite = values.iter().filter(|v| !v.is_finite()).count();
    let diff = (&output - &reference)?;
    let rms = |t: &Tensor| -> Result<f32> { Ok(t.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt()) };
    let max = max_abs(&diff)?;
    Ok(OutputError {
        max_abs: max,
        relative: max / max_abs(&reference)?,
        rms_relative: rms(&diff)? / rms(&reference)?,
        non_finite,
    })
}

fn table(reports: &[PrecisionReport]) -> String {
    let mut t = Table::new([
        "config",
        "weights",
        "max |out|",
        "f16 max |Δ| (rel)",
        "bf16 max |Δ| (rel)",
        "int8 max |Δ| (rel)",
        "int8 RMS rel",
        "largest activation (block)",
        "f16 headroom",
    ]);
    let error = |e: &OutputError| {
        let overflow = match e.non_finite {
            0 => String::new(),
            n => format!(", {n} non-finite"),
        };
        format!("{:.2e} ({:.2e}{overflow})", e.max_abs, e.relative)
    };
    for r in reports {
        t.row(vec![
            r.name.clone(),
            r.weights.clone(),
            format!("{:.3}", r.output_max_abs),
            error(&r.f16),
            error(&r.bf16),
            error(&r.int8),
            format!("{:.2e}", r.int8.rms_relative),
            format!(
                "{:.1} ({})",
                r.tightest_block.max_abs, r.tightest_block.block
            ),
            format!("{:.0}x", r.tightest_block.f16_headroom),
        ]);
    }
    t.render()
}
