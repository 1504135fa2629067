//! Latency of one UNet forward on this hardware.
//!
//! Protocol: seeded random weights, deterministic inputs, `warmup` untimed forwards, then timed
//! forwards until `runs` are done, or until `max_seconds` have passed and at least 3 are done.
//! Reported: median, p10, p90 (linear interpolation), achieved GFLOP/s (the cost interpreter's FLOPs
//! ÷ median), peak RSS, and the machine. `per_block` adds separate timed forwards that synchronise
//! the device at every block boundary (res block, transformer stack, sampler, embedding, in/out
//! conv) and report each block's median.

mod device_args;
mod machine;
mod process;
mod progress;

use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use unetlab_cost::{count, Conditions};
use unetlab_graph::{unet_forward, Place};
use unetlab_model::kernels::FrozenWeights;
use unetlab_model::profile::{self, Pass};
use unetlab_model::{example_inputs, CandleOps, ModelError, UnetModel};
use unetlab_provenance::{Code, Provenance};
use unetlab_spec::Config;

pub use device_args::DeviceArgs;
pub use machine::{peak_rss_bytes, Machine, SIMD_FLAGS};
pub use process::prepare_process;
pub use progress::progress_bar;

/// How to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Batch size.
    pub batch: usize,
    /// Latent height = width.
    pub latent_size: usize,
    /// Text tokens.
    pub tokens: usize,
    /// Untimed forwards first.
    pub warmup: usize,
    /// Timed forwards wanted.
    pub runs: usize,
    /// Stop timing after this many seconds once at least 3 runs are done.
    pub max_seconds: f64,
    /// Also time each block (res block, transformer stack, sampler, embedding, in/out conv).
    pub per_block: bool,
    /// Also time each kind of op over as many forwards as were timed ([`BenchResult::profile`]).
    pub profile: bool,
    /// Weights and activations dtype.
    pub dtype: DType,
    /// Where to run.
    pub device: Device,
    /// The device as the user named it (`cpu`, `cuda:0`).
    pub device_name: String,
    /// Seed of the random weights and inputs.
    pub seed: u64,
}

/// Minimum timed runs before `max_seconds` may stop the loop.
pub const MIN_RUNS: usize = 3;

/// Median time of one block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockTime {
    /// The block's module path (`conv_in`, `down_blocks.1.resnets.0`, ...), or `(between
    /// blocks)` for ops outside any block (the skip connections' concatenations, for one).
    pub block: String,
    /// Where the block sits in the structure (direction and level of a stage; the kind of the
    /// embeddings and in/out convs; nothing for time between blocks).
    #[serde(default)]
    pub place: Place,
    /// Median seconds over the per-block runs.
    pub median_s: f64,
}

/// One kind of op's share of a forward (`unetlab bench --profile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindTime {
    /// The kind (conv 3x3, linear, attention core, ...).
    pub kind: String,
    /// Mean seconds per forward.
    pub seconds: f64,
    /// Calls per forward.
    pub calls: f64,
    /// FLOPs per forward (0 for kinds without matrix products).
    pub flops: u64,
}

impl KindTime {
    /// The kind's rate, GFLOP/s (`None` without FLOPs).
    pub fn gflops_per_s(&self) -> Option<f64> {
        (self.flops > 0 && self.seconds > 0.0).then(|| self.flops as f64 / self.seconds / 1e9)
    }
}

/// One benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// Config name.
    pub config: String,
    /// Config hash.
    pub hash: String,
    /// Batch size.
    pub batch: usize,
    /// Latent size.
    pub latent_size: usize,
    /// Text tokens.
    pub tokens: usize,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// The device as named.
    pub device: String,
    /// Untimed forwards run first.
    pub warmup: usize,
    /// Every timed forward, in seconds.
    pub times_s: Vec<f64>,
    /// Median of `times_s`.
    pub median_s: f64,
    /// 10th percentile.
    pub p10_s: f64,
    /// 90th percentile.
    pub p90_s: f64,
    /// FLOPs of one forward (2 × MACs from the cost interpreter).
    pub flops: u64,
    /// `flops / median_s / 1e9`.
    pub achieved_gflops_per_s: f64,
    /// Peak resident memory of the process after the benchmark.
    pub peak_rss_bytes: Option<u64>,
    /// Per-block medians (empty unless asked for).
    pub per_block: Vec<BlockTime>,
    /// Mean time per forward by kind of op, largest first (with `profile`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<KindTime>,
    /// This machine's f32 GEMM rate (with `profile`): the roofline of the kinds' rates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemm_peak_gflops_per_s: Option<f64>,
    /// The machine.
    pub machine: Machine,
    /// The build that measured it, and when.
    pub provenance: Provenance,
}

/// Where a benchmark is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// Creating the weights.
    Init,
    /// Warm-up forward `i` of `n` (1-based).
    Warmup(usize, usize),
    /// Timed forward `i` done, of at most `n`, taking `seconds`.
    Run(usize, usize, f64),
    /// Per-block forward `i` of `n` done.
    Block(usize, usize),
    /// Profiled forward `i` of `n` done.
    Profile(usize, usize),
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The cost interpreter failed.
    #[error(transparent)]
    Cost(#[from] unetlab_cost::CostError),
}

/// Linear-interpolation percentile (`q` in 0..=1) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The name `--dtype` takes for a dtype.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// Benchmarks one forward of `config`.
pub fn bench(
    config: &Config,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<BenchResult, BenchError> {
    let spec = &config.spec;
    if opts.runs < MIN_RUNS {
        return Err(BenchError::Options(format!(
            "--runs must be at least {MIN_RUNS}"
        )));
    }
    unetlab_spec::check_latent_size(spec.levels.len(), opts.latent_size)
        .map_err(|m| BenchError::Options(format!("{}: latent size {m}", config.name)))?;
    let conditions = Conditions {
        batch: opts.batch,
        latent_size: opts.latent_size,
        tokens: opts.tokens,
    };
    let flops = count(spec, conditions)?.flops();

    progress(Progress::Init);
    let model = UnetModel::init(spec.clone(), opts.seed, &opts.device, opts.dtype)?;
    let inputs = example_inputs(
        spec,
        opts.batch,
        opts.latent_size,
        opts.tokens,
        opts.seed,
        &opts.device,
    )?;
    let inputs = model.cast_inputs(&inputs)?;
    // The weights stay as they are: kernels prepare what they derive from them once, in the
    // warm-up, as inference runtimes do when they load a model.
    let _frozen = FrozenWeights::new();
    let forward = || -> Result<Duration, BenchError> {
        let start = Instant::now();
        let out = model.forward(&inputs)?;
        opts.device.synchronize().map_err(ModelError::from)?;
        drop(out);
        Ok(start.elapsed())
    };

    for i in 0..opts.warmup {
        progress(Progress::Warmup(i + 1, opts.warmup));
        forward()?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < opts.runs {
        let t = forward()?.as_secs_f64();
        times.push(t);
        progress(Progress::Run(times.len(), opts.runs, t));
        if times.len() >= MIN_RUNS && started.elapsed().as_secs_f64() >= opts.max_seconds {
            break;
        }
    }
    let s = sorted(&times);
    let median = percentile(&s, 0.5);

    let per_block = if opts.per_block {
        time_blocks(&model, &inputs, times.len(), progress)?
    } else {
        Vec::new()
    };
    let (profile, gemm_peak_gflops_per_s) = if opts.profile {
        let kinds = time_kinds(times.len(), progress, || forward().map(drop))?;
        (kinds, Some(unetlab_model::kernels::peak_gflops_per_s()))
    } else {
        (Vec::new(), None)
    };

    Ok(BenchResult {
        config: config.name.clone(),
        hash: config.hash(),
        batch: opts.batch,
        latent_size: opts.latent_size,
        tokens: opts.tokens,
        dtype: dtype_name(opts.dtype).into(),
        device: opts.device_name.clone(),
        warmup: opts.warmup,
        median_s: median,
        p10_s: percentile(&s, 0.1),
        p90_s: percentile(&s, 0.9),
        times_s: times,
        flops,
        achieved_gflops_per_s: flops as f64 / median / 1e9,
        peak_rss_bytes: peak_rss_bytes(),
        per_block,
        profile,
        gemm_peak_gflops_per_s,
        machine: Machine::current(),
        provenance: Provenance::now(Code::Latency),
    })
}

/// `runs` forwards with block timing; each block's median, plus the time outside every block.
/// Runs `forward` `runs` times with the profile on: the mean time, calls and FLOPs per forward
/// of each kind of op, largest first.
fn time_kinds(
    runs: usize,
    progress: &mut dyn FnMut(Progress),
    mut forward: impl FnMut() -> Result<(), BenchError>,
) -> Result<Vec<KindTime>, BenchError> {
    profile::enable(true);
    let ran: Result<(), BenchError> = (0..runs).try_for_each(|i| {
        forward()?;
        progress(Progress::Profile(i + 1, runs));
        Ok(())
    });
    let totals = profile::take();
    profile::enable(false);
    ran?;
    let per_run = runs.max(1) as f64;
    let mut kinds: Vec<KindTime> = totals
        .into_iter()
        .filter(|((_, pass), _)| *pass == Pass::Forward)
        .map(|((kind, _), t)| KindTime {
            kind: kind.to_string(),
            seconds: t.seconds / per_run,
            calls: t.calls as f64 / per_run,
            flops: (t.flops as f64 / per_run).round() as u64,
        })
        .collect();
    kinds.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Ok(kinds)
}

fn time_blocks(
    model: &UnetModel,
    inputs: &unetlab_graph::UnetInputs<candle_core::Tensor>,
    runs: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<BlockTime>, BenchError> {
    let mut per_run: Vec<Vec<(String, Place, f64)>> = Vec::new();
    for i in 0..runs {
        let mut ops = CandleOps::timed(&model.params);
        let start = Instant::now();
        let out =
            unetlab_model::on_compute_threads(|| unet_forward(&mut ops, &model.spec, inputs))?;
        model
            .params
            .device()
            .synchronize()
            .map_err(ModelError::from)?;
        let total = start.elapsed().as_secs_f64();
        drop(out);
        let mut blocks: Vec<(String, Place, f64)> = ops
            .block_times()
            .iter()
            .map(|(n, place, d)| (n.clone(), *place, d.as_secs_f64()))
            .collect();
        let inside: f64 = blocks.iter().map(|(_, _, t)| t).sum();
        blocks.push((
            "(between blocks)".into(),
            Place::default(),
            (total - inside).max(0.0),
        ));
        per_run.push(blocks);
        progress(Progress::Block(i + 1, runs));
    }
    Ok(per_run[0]
        .iter()
        .enumerate()
        .map(|(b, (name, place, _))| {
            let times: Vec<f64> = per_run.iter().map(|r| r[b].2).collect();
            BlockTime {
                block: name.clone(),
                place: *place,
                median_s: percentile(&sorted(&times), 0.5),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A profiled forward's FLOPs add up to the cost interpreter's: every product is timed under
    /// one kind and counted once, on configs with every design choice (tiny-md: ReLU attention,
    /// shared K/V, SwiGLU, separable convs; every-choice), SD's and SDXL's.
    #[test]
    fn profiled_flops_add_up_to_the_cost_interpreters() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for path in [
            "../shared/reference/fixtures/tiny-md/config.yaml",
            "configs/fixtures/every-choice.yaml",
            "configs/fixtures/tiny-sd.yaml",
            "configs/fixtures/tiny-sdxl.yaml",
        ] {
            let config = Config::load(root.join(path).to_str().unwrap()).unwrap();
            let opts = BenchOptions {
                batch: 2,
                latent_size: config.spec.latent_size,
                tokens: config.spec.text_tokens,
                warmup: 0,
                runs: MIN_RUNS,
                max_seconds: 60.0,
                per_block: false,
                profile: true,
                dtype: DType::F32,
                device: Device::Cpu,
                device_name: "cpu".into(),
                seed: 0,
            };
            let r = bench(&config, &opts, &mut |_| {}).unwrap();
            let profiled: u64 = r.profile.iter().map(|k| k.flops).sum();
            assert_eq!(profiled, r.flops, "{path}: {:?}", r.profile);
            assert!(r
                .profile
                .iter()
                .any(|k| k.kind == "conv 3x3" && k.flops > 0));
            assert!(r.profile.windows(2).all(|w| w[0].seconds >= w[1].seconds));
            assert!(r.gemm_peak_gflops_per_s.is_some_and(|g| g > 0.0));
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert!((percentile(&v, 0.1) - 1.3).abs() < 1e-12);
        assert!((percentile(&v, 0.9) - 3.7).abs() < 1e-12);
        assert_eq!(percentile(&[5.0], 0.9), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
