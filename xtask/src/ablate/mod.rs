//! `cargo xtask ablate`: count and time every config, then write tables, plots and `run.json`.

mod origins;
mod output;
mod ranking;
pub(crate) mod study;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use unetlab_bench::{BenchResult, DeviceArgs, Machine};
use unetlab_cost::{count, Conditions, CostReport};
use unetlab_spec::{ClaimMetric, Config, PaperNote};

use crate::cache::{cached_bench, BenchConditions, Cache, Timing};
use crate::claims::{Measured, Subject};
use crate::shard::{ShardArgs, Work};
use crate::training;
use unetlab_provenance::{now_utc, Build};

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
    pub(crate) fn latent_size(self, levels: usize) -> usize {
        match self {
            Budget::Smoke => (1usize << levels.saturating_sub(1)).max(8),
            Budget::Quick | Budget::Full => 64,
        }
    }

    /// (warm-up, runs, max seconds)
    pub(crate) fn timing(self) -> (usize, usize, f64) {
        match self {
            Budget::Smoke => (0, 3, 5.0),
            Budget::Quick => (1, 3, 60.0),
            Budget::Full => (2, 10, 300.0),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Budget::Smoke => "smoke",
            Budget::Quick => "quick",
            Budget::Full => "full",
        }
    }

    /// The training recipe of the same name.
    pub(crate) fn training(self) -> unetlab_train::Budget {
        match self {
            Budget::Smoke => unetlab_train::Budget::Smoke,
            Budget::Quick => unetlab_train::Budget::Quick,
            Budget::Full => unetlab_train::Budget::Full,
        }
    }

    /// Training seeds: two for `quick` (the seed spread that judges the claims), three for
    /// `full`, one for `smoke`.
    pub(crate) fn seeds(self) -> u64 {
        match self {
            Budget::Smoke => 1,
            Budget::Quick => 2,
            Budget::Full => 3,
        }
    }
}

/// Count, time and train every config; write `results/<study>/`.
///
/// Each config's proxy is trained under the budget's recipe by `unetlab train` (one process per
/// run, --jobs at a time) and scored (validation loss, FD, text alignment); a run that diverges
/// is a failed row and the sweep goes on. Finished measurements and runs are cached in
/// `<out>/cache/`, so an interrupted sweep resumes where it stopped.
#[derive(clap::Args)]
pub struct AblateArgs {
    /// Config files (e.g. configs/*.yaml), preset names, or study files (ablations/*.yaml).
    #[arg(required = true)]
    files: Vec<String>,
    /// Study name: the output folder `results/<study>` (default: the study file's name, else "ablate").
    #[arg(long)]
    study: Option<String>,
    /// How much to measure.
    #[arg(long, value_enum, default_value_t = Budget::Quick)]
    budget: Budget,
    /// Output folder (default: `results/<study>` in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    run_on: DeviceArgs,
    /// Measure and train again even what is cached.
    #[arg(long)]
    force: bool,
    /// Count and time only: no proxy training, no quality columns.
    #[arg(long)]
    no_train: bool,
    /// Training seeds per config, 0..N (default: 1 for `smoke`, 2 for `quick`, 3 for `full`);
    /// tables show the mean and, with several seeds, the standard deviation.
    #[arg(long)]
    seeds: Option<u64>,
    /// Give the --seeds only to these configs (names, comma-separated) and one seed to the
    /// rest: the seed spread that judges the claims, from a stated subset, at less cost.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    seeded_subset: Option<Vec<String>>,
    /// Training runs at a time (default: cores / --train-threads).
    #[arg(long)]
    jobs: Option<usize>,
    /// CPU threads per training run.
    #[arg(long, default_value_t = 1)]
    train_threads: usize,
    /// Where training runs (checkpoints, logs; resumable) are kept (default: target/ablate-runs).
    #[arg(long)]
    runs: Option<PathBuf>,
    /// Peak learning rate instead of the budget's (all runs).
    #[arg(long)]
    lr: Option<f64>,
    /// A finished `unetlab train` run (or its text encoder kept alone by `unetlab
    /// text-encoder`) whose text encoder every proxy takes and keeps frozen, training its UNet
    /// alone (`unetlab train --frozen-text-encoder`): the proxies then differ
    /// only in their UNets and learn faster (results/README.md, "frozen text encoder"). Part of
    /// every run's cache key.
    #[arg(long, value_name = "RUN", conflicts_with = "no_train")]
    frozen_text_encoder: Option<PathBuf>,
    /// Another study's folder (e.g. results/ablate-full): report the Spearman rank correlation
    /// of this study's FD and validation loss with its, over the configs both trained.
    #[arg(long, value_name = "DIR")]
    rank_against: Option<PathBuf>,
    /// After writing the outputs, remove every cache entry this run did not use: other builds'
    /// measurements and runs, other seeds and configs. Keeps a committed cache to what the
    /// study's tables show. Not with --no-train (it would remove the trained runs) or a shard.
    #[arg(long, conflicts_with = "no_train")]
    prune: bool,
    #[command(flatten)]
    sharding: ShardArgs,
}

impl AblateArgs {
    /// Whether --shard or --merge was given.
    pub fn sharded(&self) -> bool {
        self.sharding.given()
    }

    /// The study's name: --study, else the study file's, else "ablate".
    pub fn study_name(&self) -> Result<String> {
        let plan = study::plan(&self.files)?;
        Ok(study_name(self, &plan))
    }
}

fn study_name(args: &AblateArgs, plan: &study::Plan) -> String {
    args.study
        .clone()
        .or(plan.study.as_ref().map(|s| s.0.clone()))
        .unwrap_or_else(|| "ablate".into())
}

/// Everything measured for one config.
pub struct Row {
    pub config: Config,
    pub cost: CostReport,
    pub bench: Result<BenchResult, String>,
    /// Whether `bench` was read from the cache rather than measured by this run.
    pub bench_cached: bool,
    /// The proxy's runs (one per seed), or why training failed; `None` with --no-train.
    pub trained: Option<training::Trained>,
}

/// A study's config for its claims: counts exact, latency with its spread, quality per seed.
impl Subject for Row {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn paper(&self) -> Option<&PaperNote> {
        self.config.paper.as_ref()
    }

    fn measures(&self, _: ClaimMetric) -> bool {
        true
    }

    fn seed_values(&self, metric: ClaimMetric) -> Option<Vec<f64>> {
        let runs = self.trained.as_ref()?.as_ref().ok()?;
        let value = |s: &unetlab_train::RunSummary| match metric {
            ClaimMetric::ValidationLoss => Some(s.validation_loss),
            _ => {
                let q = &s.metrics.as_ref()?.quality;
                match metric {
                    ClaimMetric::Fd => Some(q.fd),
                    ClaimMetric::AttributeAlignment => Some(q.attribute_alignment),
                    ClaimMetric::TextAlignment => Some(q.text_alignment),
                    _ => None,
                }
            }
        };
        let values: Option<Vec<f64>> = runs.iter().map(|r| value(&r.summary)).collect();
        values.filter(|v| !v.is_empty())
    }

    fn counted(&self, metric: ClaimMetric) -> Option<Measured> {
        let exact = |v: u64| Measured {
            mean: v as f64,
            n: 1,
            spread: 0.0,
        };
        match metric {
            ClaimMetric::Params => Some(exact(self.cost.params())),
            ClaimMetric::Macs => Some(exact(self.cost.macs.total())),
            ClaimMetric::Latency => self.bench.as_ref().ok().map(|b| Measured {
                mean: b.median_s,
                n: 1,
                spread: (b.p90_s - b.p10_s) / 2.56,
            }),
            _ => None,
        }
    }
}

/// Runs `cargo xtask ablate`.
pub fn run(args: &AblateArgs, workspace: PathBuf) -> Result<()> {
    let (device, dtype) = args.run_on.open().map_err(|e| anyhow!(e))?;
    let plan = study::plan(&args.files)?;
    let study = study_name(args, &plan);
    let description = plan.study.as_ref().and_then(|s| s.1.clone());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace.join("results").join(&study));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cache = args.sharding.open_cache(&out)?;
    let work = args.sharding.work()?;
    work.check_prune(args.prune)?;
    let configs = plan
        .configs
        .iter()
        .map(|r| Config::load(r).with_context(|| format!("loading {r}")))
        .collect::<Result<Vec<_>>>()?;

    // Before anything is measured: a fine-tuning parent must be in the study, and the frozen
    // text encoder a finished run.
    let frozen_text_encoder = if args.no_train {
        None
    } else {
        let named: Vec<(String, &Config)> = plan.configs.iter().cloned().zip(&configs).collect();
        training::parents(&named, 1)?;
        args.frozen_text_encoder
            .as_deref()
            .map(training::FrozenTextEncoder::open)
            .transpose()?
    };
    let (build, started) = (Build::current(), now_utc());
    let machine = Machine::current();
    let total = configs.len();
    let mut rows = configs
        .into_iter()
        .enumerate()
        .map(|(i, config)| {
            let label = format!("[{}/{total}] {}", i + 1, config.name);
            measure(
                config,
                &label,
                args,
                (&cache, work),
                &machine,
                (&device, dtype),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    if work == Work::Merge {
        let missing: Vec<String> = rows
            .iter()
            .filter(|r| r.bench.is_err())
            .map(|r| format!("latency of {}", r.config.name))
            .collect();
        if !missing.is_empty() {
            bail!(
                "--merge: {} unit(s) are not in the cache ({}): {}; run their shards first",
                missing.len(),
                cache.dir().display(),
                missing.join(", ")
            );
        }
    }
    let parallelism = if args.no_train {
        None
    } else {
        Some(train_rows(
            args,
            frozen_text_encoder,
            &plan.configs,
            &mut rows,
            (&cache, work),
            &out,
            &workspace,
        )?)
    };
    if let Work::Shard(shard) = work {
        eprintln!(
            "shard {shard} done: its units are in {}; write the tables with --merge once every \
             shard is done",
            cache.dir().display()
        );
        return Ok(());
    }

    output::write(
        &out,
        (&study, description.as_deref()),
        &rows,
        &plan.tables,
        (args, parallelism),
        &machine,
        (&build, &started),
    )?;
    eprintln!("wrote {}", out.display());
    if args.prune {
        cache.prune_and_report()?;
    }
    Ok(())
}

/// Counts and times one config (or takes its timing from the cache): its row, not yet trained.
fn measure(
    config: Config,
    label: &str,
    args: &AblateArgs,
    (cache, work): (&Cache, Work),
    machine: &Machine,
    (device, dtype): (&Device, DType),
) -> Result<Row> {
    let (warmup, runs, max_seconds) = args.budget.timing();
    let latent_size = args.budget.latent_size(config.spec.levels.len());
    let cost = count(
        &config.spec,
        Conditions {
            batch: 1,
            latent_size,
            tokens: config.spec.text_tokens,
        },
    )?;
    let timing = Timing {
        latent_size,
        warmup,
        runs,
        max_seconds,
        per_block: true,
    };
    let unit = format!("latency {}", config.hash());
    let (bench, bench_cached) = if work.does(&unit) {
        match cached_bench(
            &config,
            &timing,
            (&args.run_on, device, dtype),
            (cache, args.force),
            machine,
            label,
        ) {
            Ok((result, cached)) => (Ok(result), cached),
            Err(e) => (Err(e), false),
        }
    } else if work == Work::Merge {
        let conditions = BenchConditions::new(&config, &timing, &args.run_on, machine);
        match cache.get_any_machine(&config.hash(), &conditions) {
            Some(result) => (Ok(result), true),
            None => (Err("not in the cache".to_string()), false),
        }
    } else {
        (Err("another shard's unit".to_string()), false)
    };
    Ok(Row {
        config,
        cost,
        bench,
        bench_cached,
        trained: None,
    })
}

/// Trains and scores every row's proxy (cached like the measurements); returns the jobs and
/// threads per job it ran with.
fn train_rows(
    args: &AblateArgs,
    frozen_text_encoder: Option<training::FrozenTextEncoder>,
    references: &[String],
    rows: &mut [Row],
    (cache, work): (&Cache, Work),
    out: &Path,
    workspace: &Path,
) -> Result<(usize, usize)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.train_threads.max(1);
    let plan_training = training::TrainPlan {
        budget: args.budget.training(),
        seeds: (0..args.seeds.unwrap_or(args.budget.seeds()).max(1)).collect(),
        seeded_subset: args.seeded_subset.clone(),
        jobs: args.jobs.unwrap_or((cores / threads).max(1)),
        threads,
        lr: args.lr,
        steps: None,
        runs: args
            .runs
            .clone()
            .unwrap_or_else(|| crate::tools::target_dir(workspace).join("ablate-runs")),
        evaluator_cache: crate::tools::target_dir(workspace).join("unetlab-cache"),
        force: args.force,
        work,
        frozen_text_encoder,
    };
    let configs: Vec<(String, &Config)> = references
        .iter()
        .cloned()
        .zip(rows.iter().map(|r| &r.config))
        .collect();
    let trained = training::train_all(
        &configs,
        &plan_training,
        cache,
        &out.join("samples"),
        workspace,
    )?;
    for (row, t) in rows.iter_mut().zip(trained) {
        row.trained = Some(t);
    }
    Ok((plan_training.jobs, plan_training.threads))
}
