//! `cargo xtask ablate`: count and time every config, then write tables, plots and `run.json`.

mod cache;
mod output;
mod study;

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use unetlab_bench::{bench, progress_bar, BenchOptions, BenchResult, DeviceArgs, Machine};
use unetlab_cost::{count, Conditions, CostReport};
use unetlab_spec::Config;

use cache::{BenchConditions, Cache};

/// How much measuring to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Budget {
    /// Minutes for everything (CI): the smallest latent each config allows (at least 8), 3 runs, no warm-up.
    Smoke,
    /// The reference run: 64x64 latents (512 px, the paper's setting), 1 warm-up, 3 runs.
    Quick,
    /// Tighter numbers: 64x64 latents, 2 warm-ups, 10 runs.
    Full,
}

impl Budget {
    fn latent_size(self, levels: usize) -> usize {
        match self {
            Budget::Smoke => (1usize << levels.saturating_sub(1)).max(8),
            Budget::Quick | Budget::Full => 64,
        }
    }

    /// (warm-up, runs, max seconds)
    fn timing(self) -> (usize, usize, f64) {
        match self {
            Budget::Smoke => (0, 3, 5.0),
            Budget::Quick => (1, 3, 60.0),
            Budget::Full => (2, 10, 300.0),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Budget::Smoke => "smoke",
            Budget::Quick => "quick",
            Budget::Full => "full",
        }
    }
}

/// Count, time (and, once training lands, train) every config; write results/<study>/.
#[derive(clap::Args)]
pub struct AblateArgs {
    /// Config files (e.g. configs/*.yaml), preset names, or study files (ablations/*.yaml).
    #[arg(required = true)]
    files: Vec<String>,
    /// Study name: the output folder results/<study> (default: the study file's name, else "ablate").
    #[arg(long)]
    study: Option<String>,
    /// How much to measure.
    #[arg(long, value_enum, default_value_t = Budget::Quick)]
    budget: Budget,
    /// Output folder (default: results/<study> in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    run_on: DeviceArgs,
    /// Measure again even what is cached.
    #[arg(long)]
    force: bool,
}

/// Everything measured for one config.
pub struct Row {
    pub config: Config,
    pub cost: CostReport,
    pub bench: Result<BenchResult, String>,
}

/// Runs `cargo xtask ablate`.
pub fn run(args: &AblateArgs, workspace: PathBuf) -> Result<()> {
    let (device, dtype) = args.run_on.open().map_err(|e| anyhow!(e))?;
    let plan = study::plan(&args.files)?;
    let study = args
        .study
        .clone()
        .or(plan.study.as_ref().map(|s| s.0.clone()))
        .unwrap_or_else(|| "ablate".into());
    let description = plan.study.as_ref().and_then(|s| s.1.clone());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace.join("results").join(&study));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cache = Cache::open(&out)?;
    let configs = plan
        .configs
        .iter()
        .map(|r| Config::load(r).with_context(|| format!("loading {r}")))
        .collect::<Result<Vec<_>>>()?;

    // Recorded before measuring, so edits made while it runs cannot be attributed to it.
    let (commit, started) = (crate::provenance::commit(), crate::provenance::now_utc());
    let machine = Machine::current();
    let (warmup, runs, max_seconds) = args.budget.timing();
    let mut rows = Vec::new();
    for (i, config) in configs.into_iter().enumerate() {
        let latent_size = args.budget.latent_size(config.spec.levels.len());
        let tokens = config.spec.text_tokens;
        let cost = count(
            &config.spec,
            Conditions {
                batch: 1,
                latent_size,
                tokens,
            },
        )?;
        let conditions = BenchConditions {
            latent_size,
            batch: 1,
            tokens,
            dtype: args.run_on.dtype.clone(),
            device: args.run_on.device.clone(),
            threads: machine.threads,
            warmup,
            runs,
            max_seconds,
            per_block: true,
            cpu_model: machine.cpu_model.clone(),
            unetlab_version: machine.unetlab_version.clone(),
        };
        let hash = config.hash();
        let label = format!("[{}/{}] {}", i + 1, plan.configs.len(), config.name);
        let bench = match cache.get(&hash, &conditions).filter(|_| !args.force) {
            Some(cached) => {
                eprintln!("{label}: cached");
                Ok(cached)
            }
            None => {
                let opts = BenchOptions {
                    batch: 1,
                    latent_size,
                    tokens,
                    warmup,
                    runs,
                    max_seconds,
                    per_block: true,
                    dtype,
                    device: device.clone(),
                    device_name: args.run_on.device.clone(),
                    seed: 0,
                };
                let (bar, mut update) = progress_bar(&label);
                let result = bench(&config, &opts, &mut update);
                bar.finish_and_clear();
                match result {
                    Ok(r) => {
                        cache.put(&hash, &conditions, &r)?;
                        eprintln!(
                            "{label}: median {:.3} s ({:.1} GFLOP/s)",
                            r.median_s, r.achieved_gflops_per_s
                        );
                        Ok(r)
                    }
                    Err(e) => {
                        eprintln!("{label}: FAILED: {e}");
                        Err(e.to_string())
                    }
                }
            }
        };
        rows.push(Row {
            config,
            cost,
            bench,
        });
    }

    output::write(
        &out,
        (&study, description.as_deref()),
        &rows,
        &plan.tables,
        args,
        &machine,
        (&commit, &started),
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
