//! `unetlab bench`: latency of one UNet forward on this machine.

use anyhow::{anyhow, bail, Result};
use unetlab_bench::{bench, progress_bar, BenchOptions, BenchResult, DeviceArgs};
use unetlab_spec::Config;

use crate::table::{mebibytes, Table};

/// Time one UNet forward: warm-up, then timed runs; median, p10, p90 and achieved GFLOP/s.
///
/// Weights are seeded random (latency does not depend on their values). Runs stop at --runs, or at
/// --max-seconds once 3 are done. FLOPs come from the cost interpreter (2 × MACs).
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Presets or YAML config files.
    #[arg(required = true)]
    configs: Vec<String>,
    #[command(flatten)]
    run_on: DeviceArgs,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
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
    /// Also time each top-level block (conv_in, down_blocks.i, mid_block, up_blocks.i, ...).
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
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut results = Vec::new();
    for reference in &args.configs {
        let config = Config::load(reference)?;
        let opts = BenchOptions {
            batch: args.batch,
            latent_size: args.latent_size.unwrap_or(config.spec.latent_size),
            tokens: args.tokens.unwrap_or(config.spec.text_tokens),
            warmup: args.warmup,
            runs: args.runs,
            max_seconds: args.max_seconds,
            per_block: args.per_block,
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
            m.cpu_model, m.cpus, m.threads, m.candle_version, r.warmup, r.tokens
        ));
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
