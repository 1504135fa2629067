//! Architecture search over unetlab configs.
//!
//! A search file ([`mod@file`]) names a base config and axes over its fields ([`space`]); a strategy
//! ([`strategy`]: exhaustive, random or NSGA-II) chooses genomes; each is built into a config,
//! validated and counted by the cost interpreter (in parallel, no weights), its latency predicted
//! from a per-block table ([`latency`]); constraints and objectives ([`metric`]) give its fitness
//! and the Pareto front ([`pareto`]). Measuring the table and training the front's proxies is the
//! work of `cargo xtask search`, which drives this crate.

pub mod file;
pub mod latency;
pub mod metric;
pub mod pareto;
pub mod space;
pub mod strategy;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use rayon::prelude::*;
use unetlab_cost::Conditions;
use unetlab_spec::FieldError;

pub use file::{Bound, Goal, LatencySettings, Objective, QualityStage, SearchFile, Strategy};
pub use latency::{LatencyTable, Prediction, Predictor};
pub use metric::{Metric, Values};
pub use pareto::Fitness;
pub use space::{Candidate, Genome, Outcome, Space};

/// Why a search file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Syntax, type, unknown-field or validation errors, each with its field path.
    #[error("{origin}: {}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The search file.
        origin: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

/// One evaluated candidate of an exploration.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The counted candidate (values include the predicted latency when a predictor was given).
    pub candidate: Candidate,
    /// The latency prediction, when one was made.
    pub prediction: Option<Prediction>,
    /// Its fitness under the search's constraints and cost objectives.
    pub fitness: Fitness,
}

/// What a strategy's walk over the space found.
#[derive(Debug, Clone, Default)]
pub struct Exploration {
    /// Distinct configs (by hash), in order of first evaluation.
    pub candidates: Vec<Evaluated>,
    /// Genomes evaluated, duplicates and invalid ones included.
    pub evaluated: usize,
    /// Genomes whose config equals an earlier genome's (same hash).
    pub duplicates: usize,
    /// Invalid combinations, counted by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Valid configs whose block counts break a constraint (not counted), by constraint.
    pub rejected: BTreeMap<String, usize>,
}

impl Exploration {
    /// Indices of the feasible, non-dominated candidates.
    pub fn front(&self) -> Vec<usize> {
        let fitness: Vec<Fitness> = self.candidates.iter().map(|c| c.fitness.clone()).collect();
        pareto::feasible_front(&fitness)
    }

    /// Number of feasible candidates.
    pub fn feasible(&self) -> usize {
        self.candidates
            .iter()
            .filter(|c| c.fitness.feasible())
            .count()
    }
}

/// Runs a search file's strategy, remembering every genome's count between runs, so that a run
/// with a better latency table re-predicts without re-counting.
pub struct Explorer<'f> {
    file: &'f SearchFile,
    counted: HashMap<Genome, Outcome>,
    /// Seconds spent building and counting configs (first evaluations only), over every run.
    pub counting_seconds: f64,
}

impl<'f> Explorer<'f> {
    /// An explorer of `file`'s space.
    pub fn new(file: &'f SearchFile) -> Self {
        Explorer {
            file,
            counted: HashMap::new(),
            counting_seconds: 0.0,
        }
    }

    /// Genomes built and counted so far (each once, whichever run asked first).
    pub fn genomes_counted(&self) -> usize {
        self.counted.len()
    }

    /// Distinct configs counted so far (valid and within the block-count constraints).
    pub fn configs_counted(&self) -> usize {
        self.counted
            .values()
            .filter(|o| matches!(o, Outcome::Counted(_)))
            .count()
    }

    /// Walks the space with the file's strategy; `predictor` fills in latency (required when the
    /// file constrains or optimises it). `progress` is called with the genomes evaluated so far.
    pub fn run(
        &mut self,
        predictor: Option<&Predictor>,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Exploration {
        let file = self.file;
        let conditions = Conditions {
            batch: 1,
            latent_size: file.latent_size,
            tokens: file.tokens,
        };
        let objectives = file.cost_objectives();
        let mut exploration = Exploration::default();
        let mut by_hash: HashMap<String, usize> = HashMap::new();
        let counted = &mut self.counted;
        let counting_seconds = &mut self.counting_seconds;
        let mut evaluate = |batch: &[Genome]| -> Vec<Fitness> {
            let fresh: Vec<&Genome> = batch.iter().filter(|g| !counted.contains_key(*g)).collect();
            let done = exploration.evaluated;
            let started = std::time::Instant::now();
            let outcomes: Vec<Outcome> = fresh
                .par_iter()
                .map(|g| file.space.evaluate(g, conditions, &file.constraints))
                .collect();
            *counting_seconds += started.elapsed().as_secs_f64();
            for (g, o) in fresh.into_iter().zip(outcomes) {
                counted.insert(g.clone(), o);
            }
            let out = batch
                .iter()
                .map(|g| match &counted[g] {
                    Outcome::Skipped(reason) => {
                        *exploration.skipped.entry(reason.clone()).or_default() += 1;
                        Fitness::invalid(objectives.len())
                    }
                    Outcome::Rejected { reason, violation } => {
                        *exploration.rejected.entry(reason.clone()).or_default() += 1;
                        Fitness {
                            objectives: vec![f64::INFINITY; objectives.len()],
                            violation: *violation,
                        }
                    }
                    Outcome::Counted(c) => {
                        if let Some(&i) = by_hash.get(&c.hash) {
                            exploration.duplicates += 1;
                            return exploration.candidates[i].fitness.clone();
                        }
                        let evaluated = assess(file, &objectives, (**c).clone(), predictor);
                        let fitness = evaluated.fitness.clone();
                        by_hash.insert(c.hash.clone(), exploration.candidates.len());
                        exploration.candidates.push(evaluated);
                        fitness
                    }
                })
                .collect();
            exploration.evaluated = done + batch.len();
            progress(exploration.evaluated);
            out
        };
        strategy::run(file.strategy, &file.space, &mut evaluate);
        exploration
    }
}

/// A config from outside the space (the base, a `compare` config) counted, predicted and judged
/// like a candidate (its genome is empty); with `measured` latency (it was benchmarked whole),
/// that is its `latency_s`, the prediction kept beside it.
pub fn evaluate_reference(
    file: &SearchFile,
    config: &unetlab_spec::Config,
    predictor: Option<&Predictor>,
    measured: Option<f64>,
) -> Result<Evaluated, unetlab_cost::CostError> {
    let cost = file.count(config)?;
    let candidate = Candidate {
        genome: Vec::new(),
        hash: config.hash(),
        values: Values::counted(&config.spec, &cost),
        blocks: cost.blocks().to_vec(),
    };
    let objectives = file.cost_objectives();
    let mut evaluated = assess(file, &objectives, candidate, predictor);
    if let Some(seconds) = measured {
        evaluated.candidate.values.set(Metric::LatencyS, seconds);
        evaluated.fitness = fitness(file, &objectives, &evaluated.candidate.values);
    }
    Ok(evaluated)
}

impl Exploration {
    /// The feasible candidates that dominate `fitness` on the cost objectives (for a reference:
    /// does anything the search found beat it?).
    pub fn dominating(&self, fitness: &Fitness) -> Vec<usize> {
        (0..self.candidates.len())
            .filter(|&i| {
                let c = &self.candidates[i].fitness;
                c.feasible() && pareto::dominates(&c.objectives, &fitness.objectives)
            })
            .collect()
    }
}

/// A counted candidate's predicted latency and fitness.
fn assess(
    file: &SearchFile,
    objectives: &[Objective],
    mut candidate: Candidate,
    predictor: Option<&Predictor>,
) -> Evaluated {
    let prediction = predictor.map(|p| p.predict(&candidate.blocks));
    if let Some(p) = prediction {
        candidate.values.set(Metric::LatencyS, p.seconds);
    }
    let fitness = fitness(file, objectives, &candidate.values);
    Evaluated {
        candidate,
        prediction,
        fitness,
    }
}

/// Fitness of `values`: the objectives (oriented for minimisation) and the summed relative
/// violation of the constraints whose metric is known.
pub fn fitness(file: &SearchFile, objectives: &[Objective], values: &Values) -> Fitness {
    let violation = file
        .constraints
        .iter()
        .filter_map(|(m, b)| values.get(*m).map(|v| b.violation(v)))
        .sum();
    Fitness {
        objectives: objectives
            .iter()
            .map(|o| {
                values
                    .get(o.metric)
                    .map_or(f64::INFINITY, |v| o.oriented(v))
            })
            .collect(),
        violation,
    }
}
