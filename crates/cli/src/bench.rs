//! `unetlab bench`: latency of one UNet forward on this machine, or with `--train` the speed of
//! proxy training steps.

use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use unetlab_bench::{
    bench, percentile, progress_bar, BenchOptions, BenchResult, DeviceArgs, Machine,
};
use unetlab_model::profile::Pass;
use unetlab_provenance::{Code, Provenance};
use unetlab_spec::Config;
use unetlab_train::step::Phases;
use unetlab_train::throughput::{time_steps, StepTimes};
use unetlab_train::{Budget, Recipe};

use crate::table::{mebibytes, Table};

/// Time one UNet forward: warm-up, then timed runs; median, p10, p90 and achieved GFLOP/s.
///
/// Weights are seeded random (latency does not depend on their values). Runs stop at --runs, or at
/// --max-seconds once 3 are done. FLOPs come from the cost interpreter (2 × MACs). The weights are
/// frozen while timing, so the kernels prepare what they derive from them once, in the warm-up,
/// as inference runtimes do when they load a model (today the Winograd transform of 3×3 convs
/// from 16×16 outputs: about 1.7 GB more memory for SD 1.5).
///
/// With --train: time proxy training steps instead (the trainer's own step on `shapes` data:
/// denoising loss, backward, clipping, AdamW, EMA; CPU, f32), --warmup untimed then --steps timed;
/// median, p10, p90, images/s, and GFLOP/s counted as 3 × the proxy UNet's forward FLOPs per
/// image (forward + backward; the text encoder is not counted). --profile adds where a step's time
/// goes, by kind of op.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Presets or YAML config files.
    #[arg(required = true)]
    configs: Vec<String>,
    #[command(flatten)]
    run_on: DeviceArgs,
    /// Time proxy training steps instead of one forward.
    #[arg(long)]
    train: bool,
    /// Timed training steps (with --train).
    #[arg(long, default_value_t = 10, requires = "train")]
    steps: usize,
    /// Also report the time per kind of op (conv 3x3, conv 1x1, depthwise, norms, attention
    /// core, linear, feed-forward in, activations, elementwise, copies). For a forward: over as
    /// many extra forwards as were timed, with each kind's GFLOP/s against this machine's GEMM
    /// peak (measured in the same run). With --train: forward and backward, with the optimizer and
    /// what no kind accounts for.
    #[arg(long)]
    profile: bool,
    /// Training recipe whose batch, data and optimizer are used (with --train).
    #[arg(long, value_enum, default_value_t = Budget::Quick, requires = "train")]
    budget: Budget,
    /// Batch size (default: 1; with --train, the recipe's batch).
    #[arg(long)]
    batch: Option<usize>,
    /// Latent height = width (default: each config's latent_size).
    #[arg(long)]
    latent_size: Option<usize>,
    /// Text tokens (default: each config's text.tokens).
    #[arg(long)]
    tokens: Option<usize>,
    /// Untimed forwards before timing.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed forwards.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Stop timing after this many seconds, once 3 runs are done.
    #[arg(long, default_value_t = 120.0)]
    max_seconds: f64,
    /// Also time each block (conv_in, each res block, transformer stack and sampler, conv_out).
    #[arg(long)]
    per_block: bool,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON (one object per config) instead of tables.
    #[arg(long)]
    json: bool,
}

/// Runs `unetlab bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let (device, dtype) = args.run_on.open().map_err(|e| anyhow!(e))?;
    if args.batch == Some(0) {
        bail!("--batch must be at least 1");
    }
    if args.train {
        return run_training(args);
    }
    let mut results = Vec::new();
    for reference in &args.configs {
        let config = Config::load(reference)?;
        let opts = BenchOptions {
            batch: args.batch.unwrap_or(1),
            latent_size: args.latent_size.unwrap_or(config.spec.latent_size),
            tokens: args.tokens.unwrap_or(config.spec.text_tokens),
            warmup: args.warmup,
            runs: args.runs,
            max_seconds: args.max_seconds,
            per_block: args.per_block,
            profile: args.profile,
            dtype,
            device: device.clone(),
            device_name: args.run_on.device.clone(),
            seed: args.seed,
        };
        let (bar, mut update) = progress_bar(&config.name);
        let result = bench(&config, &opts, &mut update);
        bar.finish_and_clear();
        results.push(result?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", render(&results));
    }
    Ok(())
}

fn render(results: &[BenchResult]) -> String {
    let mut t = Table::new([
        "config",
        "latent",
        "batch",
        "dtype",
        "device",
        "runs",
        "median (s)",
        "p10 (s)",
        "p90 (s)",
        "GFLOPs",
        "GFLOP/s",
        "peak RSS (MiB)",
    ]);
    for r in results {
        t.row(vec![
            r.config.clone(),
            format!("{0}x{0}", r.latent_size),
            r.batch.to_string(),
            r.dtype.clone(),
            r.device.clone(),
            r.times_s.len().to_string(),
            format!("{:.3}", r.median_s),
            format!("{:.3}", r.p10_s),
            format!("{:.3}", r.p90_s),
            format!("{:.1}", r.flops as f64 / 1e9),
            format!("{:.1}", r.achieved_gflops_per_s),
            r.peak_rss_bytes.map_or("n/a".into(), mebibytes),
        ]);
    }
    let mut out = t.render();
    if let Some(r) = results.first() {
        let m = &r.machine;
        out.push_str(&format!(
            "\n{} ({} CPUs, {} threads), candle {}, {} warm-up run(s), {} tokens. FLOPs = 2 × MACs (conv, linear, attention matmuls).\n",
            m.cpu(), m.cpus, m.threads, m.candle_version, r.warmup, r.tokens
        ));
    }
    for r in results.iter().filter(|r| !r.profile.is_empty()) {
        out.push_str(&render_profile(r));
    }
    for r in results.iter().filter(|r| !r.per_block.is_empty()) {
        let mut b = Table::new(["block", "median (s)", "share"]);
        let inside: f64 = r.per_block.iter().map(|x| x.median_s).sum();
        for x in &r.per_block {
            b.row(vec![
                x.block.clone(),
                format!("{:.4}", x.median_s),
                format!("{:.1} %", 100.0 * x.median_s / inside),
            ]);
        }
        out.push_str(&format!(
            "\n{}: per-block medians sum to {:.3} s against a whole-forward median of {:.3} s\n{}",
            r.config,
            inside,
            r.median_s,
            b.render()
        ));
    }
    out
}

/// A forward's time by kind of op, each kind's GFLOP/s against the GEMM peak.
fn render_profile(r: &BenchResult) -> String {
    let peak = r.gemm_peak_gflops_per_s.unwrap_or(f64::NAN);
    let mut t = Table::new([
        "kind",
        "ms per forward",
        "share",
        "calls",
        "GFLOP",
        "GFLOP/s",
        "of GEMM peak",
    ]);
    let inside: f64 = r.profile.iter().map(|k| k.seconds).sum();
    for k in &r.profile {
        let rate = k.gflops_per_s();
        t.row(vec![
            k.kind.clone(),
            format!("{:.1}", 1e3 * k.seconds),
            format!("{:.1} %", 100.0 * k.seconds / inside),
            format!("{:.0}", k.calls),
            if k.flops > 0 {
                format!("{:.2}", k.flops as f64 / 1e9)
            } else {
                String::new()
            },
            rate.map_or(String::new(), |g| format!("{g:.1}")),
            rate.map_or(String::new(), |g| format!("{:.0} %", 100.0 * g / peak)),
        ]);
    }
    format!(
        "\n{}: mean time per forward by kind of op (kinds sum to {:.3} s against a whole-forward \
         median of {:.3} s; GEMM peak {:.1} GFLOP/s: the fastest 1024³ f32 product through the \
         gemm crate on these threads, measured in this run; FLOPs are the direct computation's, and \
         3x3 convs of stride 1 on images of 16x16 and more run as Winograd F(2x2, 3x3), 2.25x fewer \
         multiplies, so their rate can pass the peak)\n{}",
        r.config,
        inside,
        r.median_s,
        peak,
        t.render()
    )
}

/// One training benchmark (`unetlab bench --train --json` prints a list of these).
#[derive(Debug, Serialize)]
struct TrainBench {
    config: String,
    batch: usize,
    warmup: usize,
    /// Every timed step, in seconds.
    times_s: Vec<f64>,
    median_s: f64,
    p10_s: f64,
    p90_s: f64,
    /// `1 / median_s`.
    steps_per_s: f64,
    /// `batch / median_s`.
    images_per_s: f64,
    /// 3 × 2 × the proxy UNet's forward MACs per image × batch.
    flops_per_step: u64,
    /// `flops_per_step / median_s / 1e9`.
    achieved_gflops_per_s: f64,
    proxy_params: u64,
    text_encoder_params: u64,
    /// Mean seconds per step by kind of op (with --profile).
    profile: Option<Vec<ProfileRow>>,
    recipe: Recipe,
    machine: Machine,
    provenance: Provenance,
}

fn run_training(args: &BenchArgs) -> Result<()> {
    if args.run_on.device != "cpu" || args.run_on.dtype != "f32" {
        bail!("--train runs on the CPU in f32 (proxy training has no other path)");
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut results = Vec::new();
    for reference in &args.configs {
        let config = Config::load(reference)?;
        let mut recipe = Recipe::for_budget(args.budget);
        if let Some(batch) = args.batch {
            recipe.batch = batch;
        }
        let bar = ProgressBar::new((args.warmup + args.steps) as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} training steps")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(config.name.clone());
        let times = time_steps(
            &config,
            &recipe,
            (args.warmup, args.steps),
            args.profile,
            &mut |done, _| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        let mut sorted = times.times_s.clone();
        sorted.sort_by(f64::total_cmp);
        let median = percentile(&sorted, 0.5);
        let flops = 6 * times.proxy_macs * recipe.batch as u64;
        results.push(TrainBench {
            config: config.name.clone(),
            batch: recipe.batch,
            warmup: args.warmup,
            median_s: median,
            p10_s: percentile(&sorted, 0.1),
            p90_s: percentile(&sorted, 0.9),
            steps_per_s: 1.0 / median,
            images_per_s: recipe.batch as f64 / median,
            flops_per_step: flops,
            achieved_gflops_per_s: flops as f64 / median / 1e9,
            proxy_params: times.params.0,
            text_encoder_params: times.params.1,
            profile: profile_rows(&times, median),
            times_s: times.times_s,
            recipe,
            machine: Machine::current(),
            provenance: Provenance::now(Code::Training),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    let mut t = Table::new([
        "config",
        "batch",
        "steps",
        "median (s)",
        "p10 (s)",
        "p90 (s)",
        "steps/s",
        "images/s",
        "GFLOP/step",
        "GFLOP/s",
    ]);
    for r in &results {
        t.row(vec![
            r.config.clone(),
            r.batch.to_string(),
            r.times_s.len().to_string(),
            format!("{:.4}", r.median_s),
            format!("{:.4}", r.p10_s),
            format!("{:.4}", r.p90_s),
            format!("{:.2}", r.steps_per_s),
            format!("{:.1}", r.images_per_s),
            format!("{:.2}", r.flops_per_step as f64 / 1e9),
            format!("{:.1}", r.achieved_gflops_per_s),
        ]);
    }
    print!("{}", t.render());
    if let Some(r) = results.first() {
        let m = &r.machine;
        println!(
            "\n{} ({} CPUs, {} threads), candle {}, {} warm-up step(s). FLOPs = 3 × 2 × the proxy UNet's \
             forward MACs per image (text encoder not counted).",
            m.cpu(), m.cpus, m.threads, m.candle_version, r.warmup
        );
    }
    for r in &results {
        let Some(rows) = &r.profile else { continue };
        let mut t = Table::new([
            "",
            "forward (ms)",
            "backward (ms)",
            "other (ms)",
            "share",
            "calls",
        ]);
        let ms = |s: Option<f64>| s.map_or(String::new(), |s| format!("{:.1}", 1e3 * s));
        for row in rows {
            t.row(vec![
                row.kind.clone(),
                ms(row.forward_s),
                ms(row.backward_s),
                ms(row.other_s),
                format!("{:.1} %", 100.0 * row.seconds() / r.median_s),
                row.calls.map_or(String::new(), |c| format!("{c:.0}")),
            ]);
        }
        println!(
            "\n{}: mean time per step by kind of op (median step {:.1} ms)\n{}",
            r.config,
            1e3 * r.median_s,
            t.render()
        );
    }
    Ok(())
}

/// Mean seconds per step of one kind of op in each pass, or of a phase outside both.
#[derive(Debug, Serialize)]
struct ProfileRow {
    kind: String,
    forward_s: Option<f64>,
    backward_s: Option<f64>,
    other_s: Option<f64>,
    /// Forward calls per step.
    calls: Option<f64>,
}

impl ProfileRow {
    fn seconds(&self) -> f64 {
        [self.forward_s, self.backward_s, self.other_s]
            .iter()
            .flatten()
            .sum()
    }
}

/// The profile as rows, most expensive first, then what the kinds leave of each phase: the
/// forward's data and loss, candle's own backward ops, the optimizer, and the rest of the step.
fn profile_rows(times: &StepTimes, median_s: f64) -> Option<Vec<ProfileRow>> {
    let totals = times.profile.as_ref()?;
    let steps = times.times_s.len().max(1) as f64;
    let mut kinds: Vec<&str> = totals.keys().map(|(k, _)| *k).collect();
    kinds.dedup();
    let per_step = |kind: &str, pass: Pass| totals.get(&(kind, pass)).map(|t| t.seconds / steps);
    let mut rows: Vec<ProfileRow> = kinds
        .iter()
        .map(|&kind| ProfileRow {
            kind: kind.to_string(),
            forward_s: per_step(kind, Pass::Forward),
            backward_s: per_step(kind, Pass::Backward),
            other_s: None,
            calls: totals
                .get(&(kind, Pass::Forward))
                .map(|t| t.calls as f64 / steps),
        })
        .collect();
    rows.sort_by(|a, b| b.seconds().total_cmp(&a.seconds()));
    let mean = |f: fn(&Phases) -> f64| times.phases.iter().map(f).sum::<f64>() / steps;
    let (forward, backward, optimizer) = (
        mean(|p| p.forward),
        mean(|p| p.backward),
        mean(|p| p.optimizer),
    );
    let spent = |pass: Pass| -> f64 { kinds.iter().filter_map(|&k| per_step(k, pass)).sum() };
    rows.extend([
        ProfileRow {
            kind: "rest of the forward (data, noise, text one-hot, loss)".into(),
            forward_s: Some(forward - spent(Pass::Forward)),
            backward_s: None,
            other_s: None,
            calls: None,
        },
        ProfileRow {
            kind: "candle's own backward ops (matmuls, elementwise, copies)".into(),
            forward_s: None,
            backward_s: Some(backward - spent(Pass::Backward)),
            other_s: None,
            calls: None,
        },
        ProfileRow {
            kind: "optimizer (gradient norm, AdamW, EMA)".into(),
            forward_s: None,
            backward_s: None,
            other_s: Some(optimizer),
            calls: None,
        },
        ProfileRow {
            kind: "median step minus mean phases".into(),
            forward_s: None,
            backward_s: None,
            other_s: Some(median_s - forward - backward - optimizer),
            calls: None,
        },
    ]);
    Some(rows)
}
