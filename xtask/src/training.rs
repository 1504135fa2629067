//! The quality side of `ablate` and `search`: every config's proxy trained and scored by
//! `unetlab train`, one process per run and `jobs` runs at a time (two single-threaded runs train
//! 1.3-1.5x as many images per second as one run on two threads). Finished runs are cached by config and
//! recipe in the study's `cache/`; run directories (checkpoints, resumable) live under
//! `target/ablate-runs/`.
//!
//! A config whose `paper.fine_tune` names another config of the study is trained in a second
//! wave, from that config's finished run (same seed) for its fraction of the budget's steps, as
//! the paper fine-tunes ReLU attention from softmax; its cache key includes the parent's.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use unetlab_provenance::Code;
use unetlab_spec::Config;
use unetlab_train::evaluator::{Evaluator, EvaluatorRecipe};
use unetlab_train::metrics::MetricOptions;
use unetlab_train::{Budget, Recipe, RunSummary};

use crate::cache::Cache;
use crate::shard::Work;

/// The outcome of a run another shard trains (and has not yet, or it would be cached).
pub const OTHER_SHARD: &str = "another shard's unit";

/// How the configs are trained.
pub struct TrainPlan {
    /// The recipe's budget.
    pub budget: Budget,
    /// Seeds: one run per seed and config (see `seeded_subset`).
    pub seeds: Vec<u64>,
    /// If given, only these configs (by name) get every seed, and the rest the first; a parent
    /// of a fine-tuning config gets as many seeds as its child.
    pub seeded_subset: Option<Vec<String>>,
    /// Runs at a time.
    pub jobs: usize,
    /// CPU threads per run.
    pub threads: usize,
    /// Peak learning rate instead of the budget's.
    pub lr: Option<f64>,
    /// Optimizer steps instead of the budget's (a successive-halving rung).
    pub steps: Option<u64>,
    /// Run directories.
    pub runs: PathBuf,
    /// The evaluator cache.
    pub evaluator_cache: PathBuf,
    /// Train again even what is cached.
    pub force: bool,
    /// Which runs to train: all, one shard's (a fine-tuning run goes with its parent), or none
    /// (merge: every run must be cached).
    pub work: Work,
    /// A finished run whose text encoder every proxy takes and keeps frozen, if any.
    pub frozen_text_encoder: Option<FrozenTextEncoder>,
}

/// A finished `unetlab train` run whose text encoder (EMA weights and tokenizer) every proxy of
/// a study takes and keeps frozen (`unetlab train --frozen-text-encoder`).
pub struct FrozenTextEncoder {
    /// The run directory.
    pub dir: PathBuf,
    /// SHA-256 of its checkpoint and tokenizer: part of every run's cache key, so another encoder
    /// (or the same run trained further) trains again.
    pub digest: String,
}

impl FrozenTextEncoder {
    /// The finished run in `dir` (its `run.json`, `checkpoint.safetensors` and `tokenizer.json`),
    /// or its text encoder kept alone by `unetlab text-encoder` (the same three files).
    pub fn open(dir: &Path) -> Result<FrozenTextEncoder> {
        let context = |what: &str| {
            format!(
                "--frozen-text-encoder {}: {what} (give a finished `unetlab train` run)",
                dir.display()
            )
        };
        if !dir.join("run.json").is_file() {
            bail!(context("no run.json"));
        }
        let mut digests = String::new();
        for file in ["checkpoint.safetensors", "tokenizer.json"] {
            let (_, digest) = unetlab_files::sha256_file(&dir.join(file))
                .with_context(|| context(&format!("cannot read {file}")))?;
            digests.push_str(&digest);
        }
        Ok(FrozenTextEncoder {
            dir: dir.to_path_buf(),
            digest: unetlab_files::sha256_hex(digests.as_bytes()),
        })
    }
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
    /// The run this one is fine-tuned from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    fine_tune: Option<FineTuneKey>,
    /// [`FrozenTextEncoder::digest`], if the text encoder is frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    frozen_text_encoder: Option<&'a str>,
}

/// A fine-tuning run's parent: its config hash and cache key digest, and the steps trained.
#[derive(Serialize)]
struct FineTuneKey {
    from: String,
    from_key: String,
    steps: u64,
}

/// Where a fine-tuning run starts.
#[derive(Clone)]
struct Parent {
    /// The parent's run directory.
    dir: PathBuf,
    /// Steps to train from it.
    steps: u64,
}

#[derive(Clone)]
struct Job {
    config: usize,
    /// Position of `seed` in the plan's seeds (the first seed's samples are kept).
    seed_index: usize,
    seed: u64,
    reference: String,
    name: String,
    hash: String,
    /// The cache key: recipe (with this seed), scoring, evaluator, version, parent.
    key: Vec<u8>,
    cost: u64,
    parent: Option<Parent>,
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
    if let Some(steps) = plan.steps {
        recipe.steps = steps;
        recipe.warmup = recipe.warmup.min(steps / 2).max(1);
    }
    let evaluator = EvaluatorRecipe::for_budget(plan.budget);
    let parents = parents(configs, recipe.steps)?;
    if let Some(unknown) = plan
        .seeded_subset
        .iter()
        .flatten()
        .find(|n| !configs.iter().any(|(_, c)| &c.name == *n))
    {
        anyhow::bail!("--seeded-subset: {unknown} is not a config of this study");
    }
    let seeds = seed_counts(configs, plan, &parents);
    let keys = cache_keys(configs, plan, &recipe, &parents, &seeds);
    let job = |c: usize, s: usize| {
        let (reference, config) = &configs[c];
        Job {
            config: c,
            seed_index: s,
            seed: plan.seeds[s],
            reference: reference.clone(),
            name: config.name.clone(),
            hash: config.hash(),
            key: keys[c][s].clone(),
            cost: proxy_macs(config, &recipe),
            parent: None,
        }
    };
    let job = |c: usize, s: usize| Job {
        parent: parents[c].map(|(p, steps)| Parent {
            dir: run_dir(plan, &job(p, s)),
            steps,
        }),
        ..job(c, s)
    };

    // Cached runs, and the jobs for the rest.
    let mut results: Vec<Vec<Option<Result<Run, String>>>> =
        seeds.iter().map(|&n| vec![None; n]).collect();
    let mut todo: Vec<(usize, usize)> = Vec::new();
    for (c, (_, config)) in configs.iter().enumerate() {
        for s in 0..seeds[c] {
            let cached = cache
                .get_json::<RunSummary>("train", &config.hash(), &keys[c][s])
                .filter(|_| !plan.force);
            match cached {
                Some(summary) => {
                    results[c][s] = Some(Ok(Run {
                        summary,
                        cached: true,
                    }))
                }
                None => todo.push((c, s)),
            }
        }
    }
    // The shards: a run's unit is its root config (the parent of a fine-tuning run) and seed,
    // so a fine-tuning run and its parent fall in the same shard.
    let unit = |c: usize, s: usize| {
        let root = parents[c].map_or(c, |(p, _)| p);
        format!("train {} seed {}", configs[root].1.hash(), plan.seeds[s])
    };
    match plan.work {
        Work::Merge if !todo.is_empty() => {
            let missing: Vec<String> = todo
                .iter()
                .map(|&(c, s)| format!("{} seed {}", configs[c].1.name, plan.seeds[s]))
                .collect();
            bail!(
                "--merge: {} training run(s) are not in the cache: {}; run their shards first",
                missing.len(),
                missing.join(", ")
            );
        }
        Work::Shard(_) => todo.retain(|&(c, s)| plan.work.does(&unit(c, s))),
        Work::All | Work::Merge => {}
    }
    // A fine-tuning run needs its parent's checkpoint: a cached parent whose run directory is
    // gone is trained again (same key, same result).
    for (c, s) in todo.clone() {
        if let Some((p, _)) = parents[c] {
            let finished = run_dir(plan, &job(p, s)).join("run.json").is_file();
            if !finished && !todo.contains(&(p, s)) {
                todo.push((p, s));
            }
        }
    }
    let cached = results.iter().flatten().filter(|r| r.is_some()).count();
    if cached > 0 {
        eprintln!("training: {cached} run(s) cached");
    }
    if !todo.is_empty() {
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
        let overall = bar("training", todo.len() as u64);
        // Largest proxies first, so the longest run starts at once and the small ones fill in
        // around it; fine-tuning runs in a second wave, once their parents have finished.
        let mut waves: [Vec<Job>; 2] = [Vec::new(), Vec::new()];
        for &(c, s) in &todo {
            let j = job(c, s);
            waves[usize::from(j.parent.is_some())].push(j);
        }
        let mut failed_parents: Vec<(usize, usize)> = Vec::new();
        for wave in waves {
            let (runnable, orphans): (Vec<Job>, Vec<Job>) = wave.into_iter().partition(|j| {
                parents[j.config].is_none_or(|(p, _)| !failed_parents.contains(&(p, j.seed_index)))
            });
            let mut finished = run_wave(runnable, &unetlab, plan, cache, samples, &overall);
            finished.extend(orphans.into_iter().map(|j| {
                overall.inc(1);
                let parent = &configs[parents[j.config].expect("an orphan has a parent").0].1;
                let reason = format!("its parent {} failed to train", parent.name);
                (j, Err(reason))
            }));
            for (job, outcome) in finished {
                if outcome.is_err() {
                    failed_parents.push((job.config, job.seed_index));
                }
                let slot = &mut results[job.config][job.seed_index];
                match (outcome, slot.is_some()) {
                    (Ok(summary), _) => {
                        *slot = Some(Ok(Run {
                            summary,
                            cached: false,
                        }))
                    }
                    // A cached parent retrained only for its checkpoint keeps its cached row.
                    (Err(_), true) => {}
                    (Err(e), false) => *slot = Some(Err(e)),
                }
            }
        }
        overall.finish_and_clear();
    }
    Ok(results
        .into_iter()
        .map(|runs| {
            runs.into_iter()
                .map(|r| r.unwrap_or_else(|| Err(OTHER_SHARD.into())))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect())
}

/// Every run's cache key (config × seed), parents' first: a fine-tuning run's key includes its
/// parent's.
fn cache_keys(
    configs: &[(String, &Config)],
    plan: &TrainPlan,
    recipe: &Recipe,
    parents: &[Option<(usize, u64)>],
    seeds: &[usize],
) -> Vec<Vec<Vec<u8>>> {
    let mut keys: Vec<Vec<Vec<u8>>> = vec![Vec::new(); configs.len()];
    for c in (0..configs.len())
        .filter(|&c| parents[c].is_none())
        .chain((0..configs.len()).filter(|&c| parents[c].is_some()))
    {
        keys[c] = plan.seeds[..seeds[c]]
            .iter()
            .enumerate()
            .map(|(s, &seed)| {
                let mut recipe = recipe.clone();
                recipe.seed = seed;
                let fine_tune = parents[c].map(|(p, steps)| FineTuneKey {
                    from: configs[p].1.hash(),
                    from_key: unetlab_files::sha256_hex(&keys[p][s]),
                    steps,
                });
                serde_json::to_vec(&TrainConditions {
                    recipe: &recipe,
                    metrics: MetricOptions::for_budget(plan.budget),
                    evaluator: EvaluatorRecipe::for_budget(plan.budget).hash(),
                    code: Code::Training.identity(),
                    fine_tune,
                    frozen_text_encoder: plan
                        .frozen_text_encoder
                        .as_ref()
                        .map(|e| e.digest.as_str()),
                })
                .expect("conditions serialise")
            })
            .collect();
    }
    keys
}

/// Seeds per config: all of the plan's, or only for the seeded subset (and the parents of its
/// fine-tuning configs), one for the rest.
fn seed_counts(
    configs: &[(String, &Config)],
    plan: &TrainPlan,
    parents: &[Option<(usize, u64)>],
) -> Vec<usize> {
    let mut counts: Vec<usize> = configs
        .iter()
        .map(|(_, c)| match &plan.seeded_subset {
            Some(names) if !names.contains(&c.name) => 1,
            _ => plan.seeds.len(),
        })
        .collect();
    for (c, parent) in parents.iter().enumerate() {
        if let Some((p, _)) = parent {
            counts[*p] = counts[*p].max(counts[c]);
        }
    }
    counts
}

/// For each config, the config of the study it fine-tunes from and the steps to train; errors
/// for a parent not in the study, or one that is itself fine-tuned.
pub fn parents(configs: &[(String, &Config)], steps: u64) -> Result<Vec<Option<(usize, u64)>>> {
    let index = |name: &str| configs.iter().position(|(_, c)| c.name == name);
    let declared = |c: &Config| c.paper.as_ref().and_then(|p| p.fine_tune.clone());
    configs
        .iter()
        .map(|(_, config)| {
            let Some(tune) = declared(config) else {
                return Ok(None);
            };
            let p = index(&tune.from).with_context(|| {
                format!(
                    "{}: paper.fine_tune.from: {} is not in this study; add its config to the command",
                    config.name, tune.from
                )
            })?;
            if declared(configs[p].1).is_some() {
                anyhow::bail!(
                    "{}: paper.fine_tune.from: {} is itself fine-tuned; chains of fine-tuning are not supported",
                    config.name,
                    tune.from
                );
            }
            let tuned = ((steps as f64 * tune.fraction.0).round() as u64).max(1);
            Ok(Some((p, tuned)))
        })
        .collect()
}

/// Runs `jobs` on the plan's pool; caches each finished run (after copying its samples).
fn run_wave(
    mut jobs: Vec<Job>,
    unetlab: &Path,
    plan: &TrainPlan,
    cache: &Cache,
    samples: &Path,
    overall: &ProgressBar,
) -> Vec<(Job, Result<RunSummary, String>)> {
    jobs.sort_by_key(|j| std::cmp::Reverse(j.cost));
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..plan.jobs.max(1) {
            scope.spawn(|| loop {
                let Some(job) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let outcome = run_job(unetlab, &job, plan, overall);
                if let Ok(summary) = &outcome {
                    // Samples first: a run is cached only once its grid is in place (a
                    // cached run is never copied again).
                    let kept = if job.seed_index == 0 {
                        copy_samples(plan, summary, &job, samples)
                    } else {
                        Ok(())
                    };
                    let cached =
                        kept.and_then(|_| cache.put_json("train", &job.hash, &job.key, summary));
                    if let Err(e) = cached {
                        overall.suspend(|| eprintln!("warning: {e:#}"));
                    }
                }
                overall.inc(1);
                done.lock().expect("results").push((job, outcome));
            });
        }
    });
    done.into_inner().expect("results")
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
    if let (Some(steps), None) = (plan.steps, &job.parent) {
        cmd.args(["--steps", &steps.to_string()]);
    }
    if let Some(encoder) = &plan.frozen_text_encoder {
        cmd.arg("--frozen-text-encoder").arg(&encoder.dir);
    }
    if let Some(parent) = &job.parent {
        cmd.arg("--init-from")
            .arg(&parent.dir)
            .arg("--tokenizer")
            .arg(parent.dir.join("tokenizer.json"))
            .args(["--steps", &parent.steps.to_string()]);
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
