//! The quality stage of a search: successive halving over the front. The front's candidates (up
//! to `quality.candidates`, evenly spread along the first cost objective) train at the first
//! rung's fraction of the budget's steps; the best `keep` of them by `quality.metric` train
//! again, from scratch, at the next rung's longer budget, up to the budget's full recipe, where
//! the references (the base and `compare` configs) train too. Runs are `unetlab train`
//! subprocesses, cached like `ablate`'s.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use unetlab_search::{
    Evaluated, Exploration, Fitness, Goal, Metric, Objective, QualityStage, SearchFile, Values,
};
use unetlab_spec::Config;
use unetlab_train::{Recipe, RunSummary};

use super::candidate_name;
use crate::ablate::Budget;
use crate::cache::Cache;
use crate::stats;
use crate::training::{train_all, TrainPlan};

/// A config's outcome at one rung: its name, hash, and runs (one per seed) or why training
/// failed.
pub type RungRun = (String, String, Result<Vec<RunSummary>, String>);

/// One rung: the steps trained and each trained config's outcome.
pub struct Rung {
    /// Optimizer steps of every run at this rung.
    pub steps: u64,
    /// Each trained config's outcome.
    pub runs: Vec<RungRun>,
}

/// Every rung, first to last.
pub struct Quality {
    /// The rungs.
    pub rungs: Vec<Rung>,
    /// The metric promotion ranked by.
    pub metric: Metric,
    /// Run hashes of the runs read from the cache (the rest were trained by this search).
    pub cached: std::collections::HashSet<String>,
}

impl Quality {
    /// The last rung's runs of a config (one per seed), by hash.
    pub fn final_runs(&self, hash: &str) -> Option<&[RunSummary]> {
        self.rungs
            .last()?
            .runs
            .iter()
            .find(|(_, h, _)| h == hash)
            .and_then(|(_, _, r)| r.as_deref().ok())
    }

    /// The highest rung a config reached (0-based) and its run there.
    pub fn highest(&self, hash: &str) -> Option<(usize, &RunSummary)> {
        self.rungs.iter().enumerate().rev().find_map(|(i, rung)| {
            rung.runs
                .iter()
                .find(|(_, h, _)| h == hash)
                .and_then(|(_, _, r)| r.as_ref().ok())
                .and_then(|runs| runs.first())
                .map(|s| (i, s))
        })
    }
}

/// A run's value of a quality metric.
pub fn metric(summary: &RunSummary, m: Metric) -> Option<f64> {
    let quality = summary.metrics.as_ref().map(|x| &x.quality);
    match m {
        Metric::ValidationLoss => Some(summary.validation_loss),
        Metric::Fd => quality.map(|q| q.fd),
        Metric::TextAlignment => quality.map(|q| q.text_alignment),
        Metric::AttributeAlignment => quality.map(|q| q.attribute_alignment),
        _ => None,
    }
}

/// Where and how the stage trains.
pub struct Setup<'a> {
    /// The search's budget (its training recipe is the last rung's).
    pub budget: Budget,
    /// The search's cache.
    pub cache: &'a Cache,
    /// The search's output folder (final sample grids go to `samples/`).
    pub out: &'a Path,
    /// The workspace (to build `unetlab`).
    pub workspace: &'a Path,
    /// Where run directories live.
    pub runs: PathBuf,
    /// Train again even what is cached.
    pub force: bool,
    /// All runs, one shard's, or none (merge).
    pub work: crate::shard::Work,
}

/// Runs successive halving over the exploration's front; `references` train at the last rung.
pub fn run(
    file: &SearchFile,
    stage: &QualityStage,
    exploration: &Exploration,
    references: &[Config],
    setup: &Setup<'_>,
) -> Result<Quality> {
    let target = crate::tools::target_dir(setup.workspace);
    let configs_dir = configs_dir(setup.workspace, file);
    std::fs::create_dir_all(&configs_dir)?;
    let mut pool: Vec<(String, Config)> = spread(file, exploration, stage.candidates)
        .into_iter()
        .map(|i| {
            let c = &exploration.candidates[i].candidate;
            let name = candidate_name(file, &c.hash);
            let config = file
                .space
                .config(&c.genome, &name)
                .map_err(|e| anyhow!("a front member no longer builds: {e}"))?;
            let path = configs_dir.join(format!("{name}.yaml"));
            unetlab_files::write_file(
                &path,
                unetlab_spec::explicit::explicit_yaml(&config).as_bytes(),
            )?;
            Ok((path.display().to_string(), config))
        })
        .collect::<Result<_>>()?;
    let full = Recipe::for_budget(setup.budget.training()).steps;
    let mut rungs = Vec::new();
    let mut cached = std::collections::HashSet::new();
    for r in 0..stage.rungs {
        let last = r + 1 == stage.rungs;
        let steps = rung_steps(full, stage.keep, stage.rungs, r);
        let mut configs: Vec<(String, &Config)> =
            pool.iter().map(|(p, c)| (p.clone(), c)).collect();
        if last {
            configs.extend(
                references
                    .iter()
                    .filter(|c| !pool.iter().any(|(_, p)| p.hash() == c.hash()))
                    .map(|c| (c.origin.clone(), c)),
            );
        }
        eprintln!(
            "quality rung {}/{}: {} configs at {steps} steps",
            r + 1,
            stage.rungs,
            configs.len()
        );
        let samples = if last {
            setup.out.join("samples")
        } else {
            target.join("search-samples").join(&file.name)
        };
        let seeds = if last {
            stage.seeds.unwrap_or(setup.budget.seeds())
        } else {
            1
        };
        let trained = train_all(
            &configs,
            &plan(setup, &target, steps, seeds),
            setup.cache,
            &samples,
            setup.workspace,
        )?;
        let runs: Vec<RungRun> = configs
            .iter()
            .zip(trained)
            .map(|((_, c), t)| {
                let runs = t.map(|runs| {
                    for r in runs.iter().filter(|r| r.cached) {
                        cached.insert(r.summary.run_hash.clone());
                    }
                    runs.into_iter().map(|r| r.summary).collect()
                });
                (c.name.clone(), c.hash(), runs)
            })
            .collect();
        let waiting: Vec<String> = runs
            .iter()
            .filter(|(_, _, r)| r.as_ref().is_err_and(|e| e == crate::training::OTHER_SHARD))
            .map(|(name, _, _)| format!("{name} at rung {}", r + 1))
            .collect();
        if !waiting.is_empty() {
            return Err(
                super::Incomplete(format!("the training of {}", waiting.join(", "))).into(),
            );
        }
        if !last {
            pool = promote(pool, &runs, stage);
        }
        rungs.push(Rung { steps, runs });
    }
    Ok(Quality {
        rungs,
        metric: stage.metric,
        cached,
    })
}

fn plan(setup: &Setup<'_>, target: &Path, steps: u64, seeds: u64) -> TrainPlan {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    TrainPlan {
        budget: setup.budget.training(),
        seeds: (0..seeds).collect(),
        seeded_subset: None,
        jobs: cores,
        threads: 1,
        lr: None,
        steps: Some(steps),
        runs: setup.runs.clone(),
        evaluator_cache: target.join("unetlab-cache"),
        force: setup.force,
        work: setup.work,
        frozen_text_encoder: None,
    }
}

/// Steps at rung `r` of `rungs`: the full recipe's × keep^(rungs − 1 − r), at least 1.
pub fn rung_steps(full: u64, keep: f64, rungs: usize, r: usize) -> u64 {
    let fraction = keep.powi((rungs - 1 - r) as i32);
    ((full as f64 * fraction).round() as u64).max(1)
}

/// The `keep` fraction (at least one) of the pool with the best metric; failed runs drop out.
fn promote(
    pool: Vec<(String, Config)>,
    runs: &[RungRun],
    stage: &QualityStage,
) -> Vec<(String, Config)> {
    let score = |c: &Config| {
        runs.iter()
            .find(|(_, h, _)| *h == c.hash())
            .and_then(|(_, _, r)| r.as_ref().ok())
            .and_then(|runs| runs.first())
            .and_then(|s| metric(s, stage.metric))
            .map(|v| {
                if stage.metric.higher_is_better() {
                    -v
                } else {
                    v
                }
            })
    };
    let mut scored: Vec<(f64, (String, Config))> = pool
        .into_iter()
        .filter_map(|p| Some((score(&p.1)?, p)))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let keep = ((scored.len() as f64 * stage.keep).ceil() as usize).max(1);
    scored.into_iter().take(keep).map(|(_, p)| p).collect()
}

/// Up to `n` front members, evenly spaced along the first cost objective.
fn spread(file: &SearchFile, exploration: &Exploration, n: usize) -> Vec<usize> {
    let mut front = exploration.front();
    let Some(first) = file.cost_objectives().first().copied() else {
        front.truncate(n);
        return front;
    };
    let value = |i: usize| {
        exploration.candidates[i]
            .candidate
            .values
            .get(first.metric)
            .map_or(f64::INFINITY, |v| first.oriented(v))
    };
    front.sort_by(|&a, &b| value(a).total_cmp(&value(b)).then(a.cmp(&b)));
    if front.len() <= n {
        return front;
    }
    let mut picked: Vec<usize> = (0..n)
        .map(|k| front[k * (front.len() - 1) / (n - 1).max(1)])
        .collect();
    picked.dedup();
    picked
}

/// The configs the stage writes for `unetlab train` live here.
fn configs_dir(workspace: &Path, file: &SearchFile) -> PathBuf {
    crate::tools::target_dir(workspace)
        .join("search-configs")
        .join(&file.name)
}

/// One config trained at the last rung, judged on price and quality.
pub struct Finalist {
    /// Config name.
    pub name: String,
    /// Config hash.
    pub hash: String,
    /// Whether it is a reference (the base or a compare config).
    pub reference: bool,
    /// Its values (counts, latency, the last rung's quality: the mean over seeds).
    pub values: Values,
    /// Standard deviation over seeds of each quality metric (with two seeds or more).
    pub sd: Values,
    /// Seeds trained at the last rung.
    pub seeds: usize,
    /// Fitness on the final objectives and every constraint.
    pub fitness: Fitness,
    /// Whether it is on the final front.
    pub on_front: bool,
}

/// The final objectives: the first cost objective (the price: latency, MACs or params) and the
/// quality objectives (the quality stage's metric when the file names none). The other cost
/// objectives only chose whom to train.
pub fn final_objectives(file: &SearchFile, stage: &QualityStage) -> Vec<Objective> {
    let mut out: Vec<Objective> = file.cost_objectives().into_iter().take(1).collect();
    let quality: Vec<Objective> = file
        .objectives
        .iter()
        .copied()
        .filter(|o| o.metric.needs_training())
        .collect();
    if quality.is_empty() {
        out.push(Objective {
            metric: stage.metric,
            goal: if stage.metric.higher_is_better() {
                Goal::Maximize
            } else {
                Goal::Minimize
            },
        });
    } else {
        out.extend(quality);
    }
    out
}

/// Every config trained at the last rung, with the final front marked.
pub fn finalists(
    file: &SearchFile,
    stage: &QualityStage,
    trained: &[(String, bool, &Evaluated)],
    quality: &Quality,
) -> Vec<Finalist> {
    let objectives = final_objectives(file, stage);
    let mut out: Vec<Finalist> = trained
        .iter()
        .filter_map(|(name, reference, e)| {
            let runs = quality.final_runs(&e.candidate.hash)?;
            let mut values = e.candidate.values.clone();
            let mut sd = Values::default();
            for m in Metric::ALL.into_iter().filter(|m| m.needs_training()) {
                let v: Option<Vec<f64>> = runs.iter().map(|r| metric(r, m)).collect();
                if let Some((mean, s)) = v.as_deref().and_then(stats::mean_sd) {
                    values.set(m, mean);
                    if let Some(s) = s {
                        sd.set(m, s);
                    }
                }
            }
            let fitness = unetlab_search::fitness(file, &objectives, &values);
            Some(Finalist {
                name: name.clone(),
                hash: e.candidate.hash.clone(),
                reference: *reference,
                values,
                sd,
                seeds: runs.len(),
                fitness,
                on_front: false,
            })
        })
        .collect();
    let fitness: Vec<Fitness> = out.iter().map(|f| f.fitness.clone()).collect();
    for i in unetlab_search::pareto::feasible_front(&fitness) {
        out[i].on_front = true;
    }
    out
}

/// The seed standard deviation of `m` pooled over the finalists with several seeds, each
/// weighted by its degrees of freedom, as `ablate` pools it.
pub fn pooled_sd(finals: &[Finalist], m: Metric) -> Option<f64> {
    stats::pooled_sd(finals.iter().filter_map(|f| Some((f.sd.get(m)?, f.seeds)))).map(|(sd, _)| sd)
}
