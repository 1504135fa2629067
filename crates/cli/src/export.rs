//! `unetlab export`: an inference bundle (resolved config, safetensors, ONNX, test vector, card).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use unetlab_bench::{bench, prepare_process, progress_bar, BenchOptions, MIN_RUNS};
use unetlab_export::bundle::dtype_name;
use unetlab_export::onnx::{candle_dtype, OPSETS};
use unetlab_export::proto::ElemType;
use unetlab_export::{write_bundle, ExportOptions, Latency, Manifest, TextEncoderPart};
use unetlab_model::UnetModel;
use unetlab_spec::Config;
use unetlab_train::sample::TrainedRun;

use crate::table::{mebibytes, Table};

/// Export a config for inference: a bundle directory that runs without unetlab.
///
/// The bundle holds config.yaml/config.json (resolved: extends flattened, every default explicit),
/// model.safetensors (diffusers names; config and hash in the metadata), model.onnx (the same
/// forward, walked symbolically: any batch, latent height and width (multiples of 2^(levels−1))
/// and token count unless --static, decomposed norms so ONNX Runtime and candle-onnx both run it),
/// example_io.safetensors (a batch-2 test vector with unetlab's output, and for dynamic graphs a
/// second one at batch 3, a taller latent and more tokens), diffusers/ when the network is a diffusers UNet2DConditionModel, README.md (a
/// model card with a measured latency) and manifest.json (sizes and SHA-256 of every file).
/// The bundle appears atomically: a failed export leaves nothing under --out.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// A preset name or YAML config file.
    #[arg(required_unless_present = "run", conflicts_with = "run")]
    config: Option<String>,
    /// Weights with diffusers names (default: seeded random weights).
    #[arg(long, conflicts_with_all = ["seed", "run"])]
    weights: Option<PathBuf>,
    /// A run directory of `unetlab train`: exports its proxy UNet with the EMA weights, plus the
    /// text encoder and tokenizer, so the bundle alone can generate.
    #[arg(long, conflicts_with = "seed")]
    run: Option<PathBuf>,
    /// Seed of the random weights when no --weights are given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The bundle directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Weights and activations: f32, f16 (timestep and time_ids stay f32), or int8: the f32
    /// graph with every conv and linear quantized as QDQ (int8 weights per output channel, int8
    /// inputs per tensor with ranges calibrated on a seeded batch of example inputs); the test
    /// vector then holds the int8 output and the card its error against f32.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// ONNX opset (17 to 21).
    #[arg(long, default_value_t = 17)]
    opset: i64,
    /// Latent height = width of the test vector, the MAC count and the latency, and with --static
    /// of the graph (default: the config's latent_size).
    #[arg(long)]
    latent_size: Option<usize>,
    /// Text tokens of the test vector, and with --static of the graph (default: the config's
    /// text.tokens).
    #[arg(long)]
    tokens: Option<usize>,
    /// Fix the graph's latent size and token count (--latent-size, --tokens) for runtimes that
    /// want static shapes; the batch stays dynamic.
    #[arg(long = "static")]
    static_shapes: bool,
    /// Timed candle forwards for the model card's latency (batch 1, this machine's CPU); 0 skips.
    #[arg(long, default_value_t = 3)]
    bench_runs: usize,
    /// CPU threads for candle (default: all).
    #[arg(long)]
    threads: Option<usize>,
    /// Store ONNX weights in model.onnx.data (automatic above 2 GB).
    #[arg(long)]
    external_data: bool,
    /// Replace an existing bundle at --out.
    #[arg(long)]
    force: bool,
    /// Print the manifest as JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

/// Runs `unetlab export`.
pub fn run(args: &ExportArgs) -> Result<()> {
    prepare_process(args.threads).map_err(|e| anyhow!(e))?;
    let (dtype, int8) = checked_flags(args)?;
    let device = Device::Cpu;
    let candle = candle_dtype(dtype);
    let trained = args.run.as_deref().map(TrainedRun::open).transpose()?;
    let config = match (&trained, &args.config) {
        (Some(run), _) => proxy_config(run)?,
        (None, Some(reference)) => Config::load(reference)?,
        (None, None) => unreachable!("clap requires a config or --run"),
    };
    let latent_size = args.latent_size.unwrap_or(config.spec.latent_size);
    let tokens = match &trained {
        Some(run) => {
            if args.tokens.is_some_and(|t| t != run.model.text_spec.tokens) {
                bail!(
                    "--tokens: the run's text encoder has {} tokens",
                    run.model.text_spec.tokens
                );
            }
            run.model.text_spec.tokens
        }
        None => args.tokens.unwrap_or(config.spec.text_tokens),
    };
    unetlab_spec::check_latent_size(config.spec.levels.len(), latent_size)
        .map_err(|m| anyhow!("--latent-size {m}"))?;
    if tokens == 0 {
        bail!("--tokens must be at least 1");
    }

    let (model, weights) = match (&trained, &args.weights) {
        (Some(run), _) => (
            run.model.unet.to_dtype(candle)?,
            format!("EMA weights of training run {}", run.dir.display()),
        ),
        (None, Some(w)) => (
            UnetModel::load(config.spec.clone(), w, &device, candle)
                .with_context(|| format!("loading {}", w.display()))?,
            format!("{}", w.display()),
        ),
        (None, None) => (
            UnetModel::init(config.spec.clone(), args.seed, &device, candle)?,
            format!("random init, seed {}", args.seed),
        ),
    };

    let latency = (args.bench_runs > 0)
        .then(|| candle_latency(&config, args, latent_size, tokens, candle))
        .transpose()?;

    let options = ExportOptions {
        dtype,
        opset: args.opset,
        latent_size,
        tokens,
        dynamic_shapes: !args.static_shapes,
        int8,
        external_data: args.external_data,
        force: args.force,
        weights,
        command: command_line(),
        latency,
    };
    eprintln!(
        "{}: writing bundle ({} weights, opset {}, {} shapes)",
        config.name,
        if int8 { "int8" } else { dtype_name(dtype) },
        args.opset,
        if args.static_shapes {
            "static"
        } else {
            "dynamic"
        }
    );
    let tokenizer = trained.as_ref().map(|run| run.dir.join("tokenizer.json"));
    let text = match (&trained, &tokenizer) {
        (Some(run), Some(tokenizer)) => Some(TextEncoderPart {
            spec: run.model.text_spec,
            params: &run.model.text,
            tokenizer,
            training: serde_json::to_value(&run.summary)?,
        }),
        _ => None,
    };
    let manifest = write_bundle(&config, &model, text.as_ref(), &options, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        print!("{}", summary(&manifest, &args.out));
    }
    Ok(())
}

/// The element type of `--dtype` and whether it asks for int8, after checking the flags that
/// need no files.
fn checked_flags(args: &ExportArgs) -> Result<(ElemType, bool)> {
    let (dtype, int8) = match args.dtype.as_str() {
        "f32" => (ElemType::F32, false),
        "f16" => (ElemType::F16, false),
        "int8" => (ElemType::F32, true),
        other => bail!("--dtype {other}: an export is f32, f16 or int8"),
    };
    if !OPSETS.contains(&args.opset) {
        bail!(
            "--opset {}: supported opsets are {} to {}",
            args.opset,
            OPSETS.start(),
            OPSETS.end()
        );
    }
    if args.bench_runs != 0 && args.bench_runs < MIN_RUNS {
        bail!("--bench-runs must be 0 (skip) or at least {MIN_RUNS}");
    }
    if args.out.exists() && !args.force {
        bail!(
            "{} already exists (pass --force to replace it)",
            args.out.display()
        );
    }
    Ok((dtype, int8))
}

/// The config a trained run's bundle describes: its proxy, named after the full-size config.
pub(crate) fn proxy_config(run: &TrainedRun) -> Result<Config> {
    Ok(Config {
        name: format!("{}-proxy", run.config.name),
        description: Some(format!(
            "the unetlab proxy of {} trained for {} steps on {}",
            run.config.name,
            run.summary.steps,
            serde_json::to_string(&run.summary.data)?
        )),
        origin: run.dir.display().to_string(),
        paper: None,
        spec: run.model.unet.spec.clone(),
    })
}

/// unetlab's own latency at batch 1, for the model card.
fn candle_latency(
    config: &Config,
    args: &ExportArgs,
    latent_size: usize,
    tokens: usize,
    candle: DType,
) -> Result<Latency> {
    let opts = BenchOptions {
        batch: 1,
        latent_size,
        tokens,
        warmup: 1,
        runs: args.bench_runs,
        max_seconds: 600.0,
        per_block: false,
        profile: false,
        dtype: candle,
        device: Device::Cpu,
        device_name: "cpu".into(),
        seed: args.seed,
    };
    let (bar, mut update) = progress_bar(&format!("{}: timing", config.name));
    let result = bench(config, &opts, &mut update);
    bar.finish_and_clear();
    let r = result?;
    Ok(Latency {
        median_s: r.median_s,
        runs: r.times_s.len(),
        setting: format!(
            "unetlab candle {}, {}, batch 1, {}x{} latent, {} ({} threads)",
            r.machine.candle_version,
            r.dtype,
            latent_size,
            latent_size,
            r.machine.cpu(),
            r.machine.threads
        ),
    })
}

/// The command line as typed (for the model card).
fn command_line() -> String {
    let mut words: Vec<String> = std::env::args().collect();
    if let Some(first) = words.first_mut() {
        *first = "unetlab".into();
    }
    words
        .iter()
        .map(|w| {
            if w.contains(|c: char| c.is_whitespace() || c == '"') {
                format!("'{w}'")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn summary(m: &Manifest, out: &std::path::Path) -> String {
    let mut t = Table::new(["file", "size (MiB)", "sha256"]);
    for (name, f) in &m.files {
        t.row(vec![
            name.clone(),
            mebibytes(f.bytes),
            f.sha256[..16].to_string(),
        ]);
    }
    let diffusers = match &m.diffusers {
        Ok(dir) => format!("diffusers UNet2DConditionModel in {dir}"),
        Err(why) => format!("no diffusers config ({why})"),
    };
    let latency = m.latency.as_ref().map_or("not measured".into(), |l| {
        format!("{:.3} s median of {} ({})", l.median_s, l.runs, l.setting)
    });
    format!(
        "{}\n{}: {:.1} M params, {:.1} G MACs at {}x{}, {}; {diffusers}.\ncandle latency: {latency}\n",
        t.render(),
        out.display(),
        m.parameters as f64 / 1e6,
        m.macs as f64 / 1e9,
        m.latent_size,
        m.latent_size,
        m.dtype,
    )
}
