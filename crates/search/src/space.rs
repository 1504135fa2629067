//! The design space: a base config tree and axes, each a list of options that patch fields of it.
//! A candidate is a genome, one option index per axis.

use serde_norway::Value;
use unetlab_cost::{count, BlockSignature, Conditions};
use unetlab_spec::{Config, ConfigTree};

use crate::file::Bound;
use crate::metric::{Metric, Values};

/// One axis of the space.
#[derive(Debug, Clone)]
pub struct Axis {
    /// Name in tables (the field path, or the file's `name`).
    pub name: String,
    /// The options, in file order.
    pub options: Vec<AxisOption>,
}

/// One option of an axis: field paths and the values it sets.
#[derive(Debug, Clone)]
pub struct AxisOption {
    /// Short label (`separable`, `15`, a choice's name).
    pub label: String,
    /// `(field path, value)` pairs applied by the config merge rule.
    pub patch: Vec<(String, Value)>,
}

/// A base config and the axes over it.
#[derive(Debug, Clone)]
pub struct Space {
    /// The base config's merged tree.
    pub base: ConfigTree,
    /// The axes.
    pub axes: Vec<Axis>,
}

/// A genome: one option index per axis.
pub type Genome = Vec<usize>;

/// A counted candidate.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its option per axis.
    pub genome: Genome,
    /// Its config hash.
    pub hash: String,
    /// Counts (latency and quality are filled in later stages).
    pub values: Values,
    /// Its blocks and their signatures (what latency is predicted from).
    pub blocks: Vec<BlockSignature>,
}

/// What evaluating a genome gave.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A valid config, counted.
    Counted(Box<Candidate>),
    /// An invalid combination, with the reason (the first error).
    Skipped(String),
    /// A valid config whose block counts break a constraint, so it was not counted: the
    /// constraint's name and the relative violation.
    Rejected {
        /// `self_attention_blocks outside [15, 15]`.
        reason: String,
        /// Summed relative violation of the block-count constraints.
        violation: f64,
    },
}

impl Space {
    /// Number of combinations of a list of axes.
    pub fn size_of(axes: &[Axis]) -> u128 {
        axes.iter()
            .map(|a| a.options.len() as u128)
            .try_fold(1u128, |acc, n| acc.checked_mul(n))
            .unwrap_or(u128::MAX)
    }

    /// Number of combinations.
    pub fn size(&self) -> u128 {
        Self::size_of(&self.axes)
    }

    /// The `index`-th genome in mixed-radix order (the last axis varies fastest).
    pub fn genome_at(&self, mut index: u128) -> Genome {
        let mut genome = vec![0; self.axes.len()];
        for (g, axis) in genome.iter_mut().zip(&self.axes).rev() {
            let n = axis.options.len() as u128;
            *g = (index % n) as usize;
            index /= n;
        }
        genome
    }

    /// Each axis's name and the label of the genome's option on it.
    pub fn describe<'a>(&'a self, genome: &[usize]) -> Vec<(&'a str, &'a str)> {
        self.axes
            .iter()
            .zip(genome)
            .map(|(a, &g)| (a.name.as_str(), a.options[g].label.as_str()))
            .collect()
    }

    /// The genome's config, named `name`; an invalid combination gives its first error.
    pub fn config(&self, genome: &[usize], name: &str) -> Result<Config, String> {
        let mut tree = self.base.clone();
        for (axis, &g) in self.axes.iter().zip(genome) {
            for (path, value) in &axis.options[g].patch {
                tree.set(path, value.clone()).map_err(|e| e.to_string())?;
            }
        }
        tree.name = name.to_string();
        if let Some(map) = tree.value.as_mapping_mut() {
            map.insert("name".into(), Value::String(name.to_string()));
            map.remove("paper");
            map.remove("description");
        }
        tree.origin = format!("{} + search axes", self.base.origin);
        Config::from_tree(tree).map_err(|e| match e.field_errors().first() {
            Some(f) => f.to_string(),
            None => e.to_string(),
        })
    }

    /// Builds and counts the genome's config under `conditions`; a config that breaks one of
    /// the block-count constraints among `constraints` is rejected before counting.
    pub fn evaluate(
        &self,
        genome: &[usize],
        conditions: Conditions,
        constraints: &[(Metric, Bound)],
    ) -> Outcome {
        let config = match self.config(genome, "candidate") {
            Ok(c) => c,
            Err(reason) => return Outcome::Skipped(reason),
        };
        let structural = Values::structural(&config.spec);
        let broken: Vec<(Metric, f64, &Bound)> = constraints
            .iter()
            .filter(|(m, _)| Values::is_structural(*m))
            .filter_map(|(m, b)| {
                let v = b.violation(structural.get(*m)?);
                (v > 0.0).then_some((*m, v, b))
            })
            .collect();
        if let Some((m, _, b)) = broken.first() {
            let (lo, hi) = b.interval();
            return Outcome::Rejected {
                reason: format!("{m} outside [{lo}, {hi}]"),
                violation: broken.iter().map(|(_, v, _)| v).sum(),
            };
        }
        match count(&config.spec, conditions) {
            Ok(cost) => Outcome::Counted(Box::new(Candidate {
                genome: genome.to_vec(),
                hash: config.hash(),
                values: Values::counted(&config.spec, &cost),
                blocks: cost.blocks().to_vec(),
            })),
            Err(e) => Outcome::Skipped(format!("does not count: {e}")),
        }
    }
}
