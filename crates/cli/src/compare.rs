//! `unetlab compare`: the paper's Table 1 layout for any configs, with the paper's numbers beside ours.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use unetlab_bench::{bench, progress_bar, BenchOptions, DeviceArgs};
use unetlab_cost::{count, Conditions};
use unetlab_report::{grouped_bars, scatter, Point, Series};
use unetlab_spec::paper::{row_for, GFLOPS_LATENT_SIZE};
use unetlab_spec::Config;

use crate::table::Table;

/// Compare configs in the layout of MobileDiffusion's Table 1, with the paper's numbers beside ours.
///
/// Counts are at a 64x64 latent (512 px), batch 1, 77 tokens; "G MACs" is the unit under which the
/// paper's SD 1.5 figure (392 "GFLOPs") is matched best (see configs/README.md). Latency is measured
/// on this machine unless --no-bench.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// Presets or YAML config files.
    #[arg(required = true)]
    configs: Vec<String>,
    /// Skip timing.
    #[arg(long)]
    no_bench: bool,
    /// Timed runs per config.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    run_on: DeviceArgs,
    /// Write plots (SVG and PNG) into this folder.
    #[arg(long)]
    plots: Option<PathBuf>,
}

struct Compared {
    config: Config,
    params: u64,
    gmacs: f64,
    latency: Option<f64>,
}

/// Runs `unetlab compare`.
pub fn run(args: &CompareArgs) -> Result<()> {
    let (device, dtype) = args.run_on.open().map_err(|e| anyhow!(e))?;
    let mut rows = Vec::new();
    for reference in &args.configs {
        let config = Config::load(reference)?;
        let tokens = config.spec.text_tokens;
        let conditions = Conditions {
            batch: 1,
            latent_size: GFLOPS_LATENT_SIZE,
            tokens,
        };
        let cost = count(&config.spec, conditions)?;
        let latency = if args.no_bench {
            None
        } else {
            let opts = BenchOptions {
                batch: 1,
                latent_size: GFLOPS_LATENT_SIZE,
                tokens,
                warmup: 1,
                runs: args.runs,
                max_seconds: 120.0,
                per_block: false,
                profile: false,
                dtype,
                device: device.clone(),
                device_name: args.run_on.device.clone(),
                seed: 0,
            };
            let (bar, mut update) = progress_bar(&config.name);
            let r = bench(&config, &opts, &mut update);
            bar.finish_and_clear();
            Some(r?.median_s)
        };
        rows.push(Compared {
            params: cost.params(),
            gmacs: cost.macs.total() as f64 / 1e9,
            latency,
            config,
        });
    }
    print!("{}", render(&rows, args));
    if let Some(dir) = &args.plots {
        plots(dir, &rows)?;
        eprintln!("plots in {}", dir.display());
    }
    Ok(())
}

fn pair(paper: Option<String>, ours: String) -> String {
    match paper {
        Some(p) => format!("{p} / {ours}"),
        None => format!("– / {ours}"),
    }
}

fn render(rows: &[Compared], args: &CompareArgs) -> String {
    let mut t = Table::new([
        "UNet",
        "channels",
        "conv blocks",
        "SA + CA",
        "params M",
        "GFLOPs / G MACs",
        "latency (s)",
    ]);
    for r in rows {
        let s = &r.config.spec;
        let paper = row_for(&r.config.name);
        let channels: Vec<usize> = s.levels.iter().map(|l| l.channels).collect();
        t.row(vec![
            r.config.name.clone(),
            format!("{channels:?}"),
            pair(
                paper.map(|p| p.conv_blocks.to_string()),
                s.res_block_count().to_string(),
            ),
            pair(
                paper.map(|p| format!("{}+{}", p.self_attention, p.cross_attention)),
                format!("{}+{}", s.self_attention_count(), s.cross_attention_count()),
            ),
            pair(
                paper.map(|p| format!("{:.0}", p.params_m)),
                format!("{:.1}", r.params as f64 / 1e6),
            ),
            pair(
                paper.map(|p| format!("{:.0}", p.gflops)),
                format!("{:.1}", r.gmacs),
            ),
            r.latency.map_or("–".into(), |l| format!("{l:.3}")),
        ]);
    }
    format!(
        "{}\nEach cell: paper / unetlab (– where the paper has no number). Counts at 64x64 latent, batch 1, \
         77 tokens; G MACs = conv + linear + attention matmuls. Latency: median of {} runs, {} on {}.\n",
        t.render(),
        args.runs,
        args.run_on.dtype,
        args.run_on.device
    )
}

fn plots(dir: &std::path::Path, rows: &[Compared]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let names: Vec<String> = rows.iter().map(|r| r.config.name.clone()).collect();
    grouped_bars(
        &dir.join("params_gflops"),
        "Parameters and G MACs (64x64 latent, batch 1)",
        &names,
        &[
            Series {
                name: "parameters (M)".into(),
                values: rows.iter().map(|r| r.params as f64 / 1e6).collect(),
            },
            Series {
                name: "G MACs".into(),
                values: rows.iter().map(|r| r.gmacs).collect(),
            },
        ],
        None,
    )?;
    let timed: Vec<&Compared> = rows.iter().filter(|r| r.latency.is_some()).collect();
    if !timed.is_empty() {
        let names: Vec<String> = timed.iter().map(|r| r.config.name.clone()).collect();
        grouped_bars(
            &dir.join("latency"),
            "Median latency on this machine (64x64 latent, batch 1)",
            &names,
            &[Series {
                name: "seconds".into(),
                values: timed.iter().map(|r| r.latency.unwrap_or(0.0)).collect(),
            }],
            None,
        )?;
        scatter(
            &dir.join("latency_vs_gmacs"),
            "Latency vs compute",
            "G MACs",
            "median latency (s)",
            &timed
                .iter()
                .map(|r| Point::new(r.config.name.clone(), r.gmacs, r.latency.unwrap_or(0.0)))
                .collect::<Vec<_>>(),
        )?;
    }
    Ok(())
}
