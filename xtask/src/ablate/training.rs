//! The quality side of `ablate`: every config's proxy trained and scored by `unetlab train`, one
//! process per run and `jobs` runs at a time (candle's CPU training uses a second core poorly, so
//! two single-threaded runs beat one run on two threads). Finished runs are cached by config and
//! recipe in the study's `cache/`; run directories (checkpoints, resumable) live under
//! `target/ablate-runs/`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use unetlab_provenance::Code;
use unetlab_spec::Config;
use unetlab_train::evaluator::{Evaluator, EvaluatorRecipe};
use unetlab_train::metrics::MetricOptions;
use unetlab_train::{Budget, Recipe, RunSummary};

use super::cache::Cache;

/// How the configs are trained.
pub struct TrainPlan {
    /// The recipe's budget.
    pub budget: Budget,
    /// Seeds: one run per seed and config.
    pub seeds: Vec<u64>,
    /// Runs at a time.
    pub jobs: usize,
    /// CPU threads per run.
    pub threads: usize,
    /// Peak learning rate instead of the budget's.
    pub lr: Option<f64>,
    /// Run directories.
    pub runs: PathBuf,
    /// The evaluator cache.
    pub evaluator_cache: PathBuf,
    /// Train again even what is cached.
    pub force: bool,
}

/// One finished run, and whether it was read from the cache rather than trained by this sweep.
#[derive(Clone)]
pub struct Run {
    pub summary: RunSummary,
    pub cached: bool,
}

/// One config's runs, one per seed, or why they failed.
pub type Trained = Result<Vec<Run>, String>;

/// Everything a run's result depends on besides the config (the cache key).
#[derive(Serialize)]
struct TrainConditions<'a> {
    recipe: &'a Recipe,
    metrics: MetricOptions,
    evaluator: String,
    /// [`Code::Training`]'s identity: a change to the trainer, model, kernels or data re-trains.
    code: &'a str,
}

struct Job {
    config: usize,
    /// Position of `seed` in the plan's seeds (the first seed's samples are kept).
    seed_index: usize,
    seed: u64,
    reference: String,
    name: String,
    hash: String,
    /// The cache key: recipe (with this seed), scoring, evaluator, version.
    key: Vec<u8>,
    cost: u64,
}

/// Trains (or reads from the cache) every config for every seed; `samples` receives each
/// config's first-seed sample grid as `<name>.png`.
pub fn train_all(
    configs: &[(String, &Config)],
    plan: &TrainPlan,
    cache: &Cache,
    samples: &Path,
    root: &Path,
) -> Result<Vec<Trained>> {
    let mut recipe = Recipe::for_budget(plan.budget);
    if let Some(lr) = plan.lr {
        recipe.optimizer.lr = lr;
    }
    let evaluator = EvaluatorRecipe::for_budget(plan.budget);
    let metrics = MetricOptions::for_budget(plan.budget);
    let code = Code::Training.identity();
    let conditions_for = |seed: u64| {
        let mut recipe = recipe.clone();
        recipe.seed = seed;
        serde_json::to_vec(&TrainConditions {
            recipe: &recipe,
            metrics,
            evaluator: evaluator.hash(),
            code,
        })
        .expect("conditions serialise")
    };

    // Cached runs, and the jobs for the rest (largest proxies first, so the longest run starts
    // at once and the small ones fill in around it).
    let mut results: Vec<Vec<Option<Result<Run, String>>>> =
        vec![vec![None; plan.seeds.len()]; configs.len()];
    let mut jobs = Vec::new();
    for (c, (reference, config)) in configs.iter().enumerate() {
        for (s, &seed) in plan.seeds.iter().enumerate() {
            let (hash, key) = (config.hash(), conditions_for(seed));
            let cached = cache
                .get_json::<RunSummary>("train", &hash, &key)
                .filter(|_| !plan.force);
            match cached {
                Some(summary) => {
                    results[c][s] = Some(Ok(Run {
                        summary,
                        cached: true,
                    }))
                }
                None => jobs.push(Job {
                    config: c,
                    seed_index: s,
                    seed,
                    reference: reference.clone(),
                    name: config.name.clone(),
                    hash,
                    key,
                    cost: proxy_macs(config, &recipe),
                }),
            }
        }
    }
    let cached = configs.len() * plan.seeds.len() - jobs.len();
    if cached > 0 {
        eprintln!("training: {cached} run(s) cached");
    }
    if !jobs.is_empty() {
        jobs.sort_by_key(|j| std::cmp::Reverse(j.cost));
        let unetlab = crate::tools::build_unetlab(root)?;
        if !Evaluator::cache_path(&plan.evaluator_cache, &evaluator).exists() {
            let bar = bar("evaluator (trained once, then cached)", evaluator.steps);
            Evaluator::cached(&plan.evaluator_cache, evaluator, &mut |done, _, _| {
                bar.set_position(done)
            })
            .context("training the evaluator")?;
            bar.finish_and_clear();
        }
        std::fs::create_dir_all(samples)?;
        let total = jobs.len();
        let overall = bar("training", total as u64);
        let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<_>>());
        let done = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..plan.jobs.max(1) {
                scope.spawn(|| loop {
                    let Some(job) = queue.lock().expect("queue").pop_front() else {
                        break;
                    };
                    let outcome = run_job(&unetlab, &job, plan, &overall);
                    if let Ok(summary) = &outcome {
                        // Samples first: a run is cached only once its grid is in place (a
                        // cached run is never copied again).
                        let kept = if job.seed_index == 0 {
                            copy_samples(plan, summary, &job, samples)
                        } else {
                            Ok(())
                        };
                        let cached = kept
                            .and_then(|_| cache.put_json("train", &job.hash, &job.key, summary));
                        if let Err(e) = cached {
                            overall.suspend(|| eprintln!("warning: {e:#}"));
                        }
                    }
                    overall.inc(1);
                    done.lock().expect("results").push((job, outcome));
                });
            }
        });
        overall.finish_and_clear();
        for (job, outcome) in done.into_inner().expect("results") {
            results[job.config][job.seed_index] = Some(outcome.map(|summary| Run {
                summary,
                cached: false,
            }));
        }
    }
    Ok(results
        .into_iter()
        .map(|runs| {
            runs.into_iter()
                .map(|r| r.expect("every run has an outcome"))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect())
}

/// `<runs>/<name>-<digest of config and cache key>`: a changed recipe never resumes an old run.
fn run_dir(plan: &TrainPlan, job: &Job) -> PathBuf {
    let identity = [job.hash.as_bytes(), &job.key].concat();
    let digest = &unetlab_files::sha256_hex(&identity)[..16];
    plan.runs.join(format!("{}-{digest}", job.name))
}

fn run_job(
    unetlab: &Path,
    job: &Job,
    plan: &TrainPlan,
    overall: &ProgressBar,
) -> Result<RunSummary, String> {
    let dir = run_dir(plan, job);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log_path = dir.with_extension("log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let started = Instant::now();
    overall.suspend(|| eprintln!("training {} (seed {}) ...", job.name, job.seed));
    let mut cmd = Command::new(unetlab);
    cmd.arg("train")
        .arg(&job.reference)
        .args(["--budget", &budget_name(plan.budget)])
        .args(["--seed", &job.seed.to_string()])
        .args(["--threads", &plan.threads.to_string()])
        .arg("--out")
        .arg(&dir)
        .arg("--evaluator-cache")
        .arg(&plan.evaluator_cache)
        .arg("--json");
    if let Some(lr) = plan.lr {
        cmd.args(["--lr", &lr.to_string()]);
    }
    let output = cmd
        .stdout(Stdio::piped())
        .stderr(log)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", unetlab.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let reason = log
            .lines()
            .rev()
            .find(|l| l.to_lowercase().starts_with("error:"))
            .map(|l| l["error:".len()..].trim().to_string())
            .unwrap_or_else(|| format!("exited with {}", output.status));
        overall.suspend(|| {
            eprintln!(
                "{} (seed {}): FAILED after {seconds:.0} s: {reason} (log: {})",
                job.name,
                job.seed,
                log_path.display()
            )
        });
        return Err(reason);
    }
    let summary: RunSummary = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("unreadable run.json from unetlab train: {e}"))?;
    if summary.provenance.code != Code::Training.identity() {
        // The binary was built from other sources than this xtask (edited while it ran): its
        // numbers would be cached under the wrong identity.
        return Err(format!(
            "{} was built from other training sources ({}) than this sweep ({}); run the sweep again",
            unetlab.display(),
            &summary.provenance.code[..12],
            &Code::Training.identity()[..12],
        ));
    }
    overall.suspend(|| {
        let m = summary.metrics.as_ref();
        eprintln!(
            "{} (seed {}): {seconds:.0} s, {:.2} steps/s, validation loss {:.4}, FD {}",
            job.name,
            job.seed,
            summary.steps_per_s,
            summary.validation_loss,
            m.map_or("-".into(), |m| format!("{:.1}", m.quality.fd)),
        )
    });
    Ok(summary)
}

/// Copies a scored run's sample grid to `samples/<name>.png`, atomically.
fn copy_samples(plan: &TrainPlan, summary: &RunSummary, job: &Job, samples: &Path) -> Result<()> {
    if summary.metrics.is_none() {
        return Ok(());
    }
    let from = run_dir(plan, job).join("samples.png");
    let to = samples.join(format!("{}.png", job.name));
    unetlab_files::write_via_temp(
        &to,
        |tmp| std::fs::copy(&from, tmp).map(drop),
        std::convert::identity,
    )
    .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

fn proxy_macs(config: &Config, recipe: &Recipe) -> u64 {
    let proxy = unetlab_train::proxy::proxy_spec(&config.spec, &recipe.proxy);
    unetlab_cost::count(
        &proxy,
        unetlab_cost::Conditions {
            batch: 1,
            latent_size: proxy.latent_size,
            tokens: proxy.text_tokens,
        },
    )
    .map_or(0, |c| c.macs.total())
}

fn budget_name(budget: Budget) -> String {
    use clap::ValueEnum;
    budget
        .to_possible_value()
        .expect("every budget has a name")
        .get_name()
        .to_string()
}

fn bar(prefix: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len}  {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}
