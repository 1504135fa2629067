//! `cargo xtask search`: from a search file to a Pareto front of real configs.
//!
//! The space is walked by the file's strategy, every candidate counted by the cost interpreter in
//! parallel; latency comes from a per-block table measured on this machine (`latency.rs`: the
//! base and `compare` configs first, then the front's candidates whose blocks the table lacks,
//! then a check against whole-forward benchmarks of configs the table did not see); the outputs
//! are written by `output.rs`. Measurements are cached in `<out>/cache/` by config hash and
//! conditions, so an interrupted search resumes where it stopped.

mod latency;
mod output;
mod quality;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use unetlab_bench::Machine;
use unetlab_provenance::{now_utc, Build};
use unetlab_search::{
    evaluate_reference, Evaluated, Exploration, Explorer, Metric, SearchFile, Strategy,
};
use unetlab_spec::Config;

use crate::ablate::Budget;
use crate::shard::{ShardArgs, Work};
use crate::stats;

/// Walk a search file's space, predict latency from a measured per-block table, and write the
/// Pareto front as configs ready for `ablate`, `bench` and `export`.
///
/// Output in `results/<name>/` (or --out): candidates.{csv,parquet} (one row per distinct
/// config), front/*.yaml, pareto.{svg,png}, predictor.{svg,png} and predictor.{csv,parquet}
/// (when latency is measured), run.json and README.md. Latency measurements are cached in
/// `<out>/cache`, so an interrupted search resumes where it stopped.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// The search file (searches/*.yaml; the format is in searches/README.md).
    file: PathBuf,
    /// How much to measure: `smoke` counts and times at the smallest latent the configs allow
    /// (minutes, for tests), `quick` at the file's latent size with 1 warm-up + 3 runs, `full`
    /// with 2 warm-ups + 10 runs.
    #[arg(long, value_enum, default_value_t = Budget::Quick)]
    budget: Budget,
    /// Output folder (default: `results/<name>` in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure again even what is cached.
    #[arg(long)]
    force: bool,
    /// CPU threads for counting and timing (default: all).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the quality stage's training runs (checkpoints, logs; resumable) are kept
    /// (default: target/search-runs).
    #[arg(long)]
    runs: Option<PathBuf>,
    /// After writing the outputs, remove every cache entry this search did not use: other
    /// builds' probes, checks and training runs. Keeps a committed cache to what the outputs
    /// show. Not with a shard.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    sharding: ShardArgs,
}

impl SearchArgs {
    /// Whether --shard or --merge was given.
    pub fn sharded(&self) -> bool {
        self.sharding.given()
    }

    /// The search's name and how many stages a sharded run has: the references' probes, each
    /// round of probes for the front, the check, each quality rung (a stage with nothing left to
    /// do passes at once).
    pub fn name_and_stages(&self) -> Result<(String, usize)> {
        let file = SearchFile::load(&self.file).map_err(|e| anyhow!("{e}"))?;
        let latency = if file.latency.is_some() {
            1 + (latency::MAX_ROUNDS + 1) + 1
        } else {
            0
        };
        let rungs = file.quality.as_ref().map_or(0, |q| q.rungs);
        Ok((file.name, (latency + rungs).max(1)))
    }
}

/// A stage that cannot finish in this run: other shards' units it needs are not in the cache yet.
#[derive(Debug)]
pub struct Incomplete(pub String);

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not yet in the cache: {}", self.0)
    }
}

impl std::error::Error for Incomplete {}

/// A config outside the space, placed beside the candidates.
pub struct Reference {
    /// The config.
    pub config: Config,
    /// Counted, predicted, judged.
    pub evaluated: Evaluated,
}

/// Runs `cargo xtask search`.
pub fn run(args: &SearchArgs, workspace: PathBuf) -> Result<()> {
    let work = args.sharding.work()?;
    work.check_prune(args.prune)?;
    match search(args, workspace, work) {
        Err(e) => match (e.downcast_ref::<Incomplete>(), work) {
            (Some(waiting), Work::Shard(shard)) => {
                eprintln!(
                    "shard {shard}: did its units up to a stage that needs other shards' ({waiting}); \
                     run the shards again once they are done, then --merge"
                );
                Ok(())
            }
            (Some(missing), Work::Merge) => bail!("--merge: {missing}; run the shards first"),
            _ => Err(e),
        },
        ok => ok,
    }
}

fn search(args: &SearchArgs, workspace: PathBuf, work: Work) -> Result<()> {
    let mut file = SearchFile::load(&args.file).map_err(|e| anyhow!("{e}"))?;
    let references = reference_configs(&file)?;
    if args.budget == Budget::Smoke {
        file.latent_size = references
            .iter()
            .map(|c| args.budget.latent_size(c.spec.levels.len()))
            .max()
            .unwrap_or(file.latent_size);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace.join("results").join(&file.name));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cache = args.sharding.open_cache(&out)?;
    let (build, started) = (Build::current(), now_utc());

    let mut stage = match file.latency.clone() {
        Some(settings) => Some(latency::Stage::open(
            &settings,
            (args.budget, file.latent_size, args.threads),
            (&cache, args.force, work),
        )?),
        None => {
            unetlab_bench::DeviceArgs {
                device: "cpu".into(),
                dtype: "f32".into(),
                threads: args.threads,
            }
            .open()
            .map_err(|e| anyhow!(e))?;
            None
        }
    };
    let machine = Machine::current();
    if let Some(stage) = &mut stage {
        let mut pending = Vec::new();
        for config in &references {
            if let Err(e) = stage.probe(&file, config) {
                pending.push(e.downcast::<Incomplete>()?.0);
            }
        }
        if !pending.is_empty() {
            return Err(Incomplete(pending.join(", ")).into());
        }
    }
    resolve_limits(&mut file, &references, stage.as_ref())?;

    let mut explorer = Explorer::new(&file);
    let (mut exploration, walk_seconds) = match &mut stage {
        Some(stage) => stage.cover_front(&file, &mut explorer)?,
        None => explore(&file, &mut explorer, None),
    };
    let predictor = stage.as_ref().map(|s| s.table.predictor());
    let mut references = references
        .into_iter()
        .map(|config| {
            let measured = stage.as_ref().and_then(|s| s.measured(&config.hash()));
            let evaluated = evaluate_reference(&file, &config, predictor.as_ref(), measured)?;
            Ok(Reference { config, evaluated })
        })
        .collect::<Result<Vec<_>>>()?;
    let check = match &mut stage {
        Some(stage) => Some(stage.check(&file, &exploration)?),
        None => None,
    };
    let quality = match &file.quality {
        Some(q) => {
            let configs: Vec<Config> = references.iter().map(|r| r.config.clone()).collect();
            let setup = quality::Setup {
                budget: args.budget,
                cache: &cache,
                out: &out,
                workspace: &workspace,
                runs: args
                    .runs
                    .clone()
                    .unwrap_or_else(|| crate::tools::target_dir(&workspace).join("search-runs")),
                force: args.force,
                work,
            };
            let result = quality::run(&file, q, &exploration, &configs, &setup)?;
            record_quality(&result, &mut exploration, &mut references);
            Some(result)
        }
        None => None,
    };
    if let Work::Shard(shard) = work {
        eprintln!("shard {shard}: every stage is done; write the outputs with --merge");
        return Ok(());
    }
    output::write(
        &out,
        &file,
        &output::Found {
            exploration: &exploration,
            speed: output::Speed {
                genomes_counted: explorer.genomes_counted(),
                configs_counted: explorer.configs_counted(),
                counting_seconds: explorer.counting_seconds,
                walk_seconds,
            },
            references: &references,
            stage: stage.as_ref(),
            check: check.as_deref(),
            quality: quality.as_ref(),
        },
        (args.budget, &machine, &build, &started),
    )?;
    eprintln!("wrote {}", out.display());
    if args.prune {
        cache.prune_and_report()?;
    }
    Ok(())
}

/// Sets every limit given as a reference's value (`max_of: mobilediffusion`): its measured
/// latency (a probe), or its count.
fn resolve_limits(
    file: &mut SearchFile,
    references: &[Config],
    stage: Option<&latency::Stage<'_>>,
) -> Result<()> {
    let counted: Vec<(String, Evaluated)> = references
        .iter()
        .map(|c| {
            let measured = stage.and_then(|s| s.measured(&c.hash()));
            Ok((c.name.clone(), evaluate_reference(file, c, None, measured)?))
        })
        .collect::<Result<_>>()?;
    let value = |name: &str, m: Metric| {
        let (_, e) = counted.iter().find(|(n, _)| n == name)?;
        e.candidate.values.get(m)
    };
    file.resolve_limits(value).map_err(|e| {
        anyhow!(
            "{}: {e} (is the probe budget spent before it?)",
            file.origin.display()
        )
    })
}

/// Puts each trained config's quality at the highest rung it reached into its values (the mean
/// over seeds at the last rung).
fn record_quality(
    q: &quality::Quality,
    exploration: &mut Exploration,
    references: &mut [Reference],
) {
    let evaluated = exploration
        .candidates
        .iter_mut()
        .chain(references.iter_mut().map(|r| &mut r.evaluated));
    for e in evaluated {
        let runs: Vec<&unetlab_train::RunSummary> = match q.final_runs(&e.candidate.hash) {
            Some(runs) => runs.iter().collect(),
            None => q
                .highest(&e.candidate.hash)
                .map(|(_, r)| r)
                .into_iter()
                .collect(),
        };
        for m in Metric::ALL.into_iter().filter(|m| m.needs_training()) {
            let v: Option<Vec<f64>> = runs.iter().map(|r| quality::metric(r, m)).collect();
            if let Some(mean) = v.as_deref().and_then(stats::mean) {
                e.candidate.values.set(m, mean);
            }
        }
    }
}

/// The base config and the `compare` configs, each once.
fn reference_configs(file: &SearchFile) -> Result<Vec<Config>> {
    let mut out = vec![Config::from_tree(file.space.base.clone()).map_err(|e| anyhow!("{e}"))?];
    for r in &file.compare {
        let c = Config::load(r).with_context(|| format!("loading {r}"))?;
        if !out.iter().any(|o| o.hash() == c.hash()) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Walks the space once with a progress bar; returns what it found and the seconds it took.
pub fn explore(
    file: &SearchFile,
    explorer: &mut Explorer<'_>,
    predictor: Option<&unetlab_search::Predictor>,
) -> (Exploration, f64) {
    let expected = match file.strategy {
        Strategy::Exhaustive => file.space.size() as u64,
        Strategy::Random { samples, .. } => (samples as u128).min(file.space.size()) as u64,
        Strategy::Evolutionary {
            population,
            generations,
            ..
        } => (population * (generations + 1)) as u64,
    };
    let bar = ProgressBar::new(expected);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} genomes ({per_sec}, {eta} left)",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix("search");
    let started = Instant::now();
    let exploration = explorer.run(predictor, &|n| bar.set_position(n as u64));
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{}: {} genomes in {seconds:.1} s: {} distinct configs counted, {} feasible, {} on the front",
        file.name,
        exploration.evaluated,
        exploration.candidates.len(),
        exploration.feasible(),
        exploration.front().len()
    );
    (exploration, seconds)
}

/// A candidate's name: the search's and the first 8 digits of its config hash.
pub fn candidate_name(file: &SearchFile, hash: &str) -> String {
    format!("{}-{}", file.name, &hash[..8])
}
