//! The latency stage of a search: a per-block table measured on this machine, grown where the
//! front needs it, and checked against whole-forward benchmarks of configs it did not see.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{anyhow, Result};
use candle_core::{DType, Device};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use unetlab_bench::{BenchResult, DeviceArgs, Machine};
use unetlab_search::{Exploration, Explorer, LatencySettings, LatencyTable, SearchFile};
use unetlab_spec::Config;

use super::{candidate_name, Incomplete};
use crate::ablate::Budget;
use crate::cache::{cached_bench, BenchConditions, Cache, Timing};
use crate::shard::Work;

/// Rounds of "explore, measure the front's unknown blocks" before the last exploration.
pub const MAX_ROUNDS: usize = 4;

/// One config measured for the table (whole forward and every block).
pub struct Probe {
    /// Config name.
    pub name: String,
    /// Config hash.
    pub hash: String,
    /// The measurement.
    pub result: BenchResult,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// One config the table did not see, predicted and then measured whole.
pub struct CheckRow {
    /// Config name.
    pub name: String,
    /// Config hash.
    pub hash: String,
    /// Predicted seconds.
    pub predicted_s: f64,
    /// Blocks of it the table lacked (estimated by the per-kind fit).
    pub fitted_blocks: usize,
    /// The measurement.
    pub result: BenchResult,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Whether it is on the front.
    pub on_front: bool,
}

impl CheckRow {
    /// (predicted − measured) ÷ measured.
    pub fn relative_error(&self) -> f64 {
        (self.predicted_s - self.result.median_s) / self.result.median_s
    }
}

/// The table and everything measured for it.
pub struct Stage<'c> {
    /// Where and how much.
    pub settings: LatencySettings,
    run_on: DeviceArgs,
    device: Device,
    dtype: DType,
    /// The machine measured on.
    pub machine: Machine,
    cache: &'c Cache,
    force: bool,
    work: Work,
    /// The timing protocol of probes (checks time the same without blocks).
    pub timing: Timing,
    /// The table.
    pub table: LatencyTable,
    /// The configs measured for it, in order.
    pub probes: Vec<Probe>,
}

impl<'c> Stage<'c> {
    /// Opens the device the settings name; timing follows the budget at `latent_size`.
    pub fn open(
        settings: &LatencySettings,
        (budget, latent_size, threads): (Budget, usize, Option<usize>),
        (cache, force, work): (&'c Cache, bool, Work),
    ) -> Result<Self> {
        let run_on = DeviceArgs {
            device: settings.device.clone(),
            dtype: settings.dtype.clone(),
            threads,
        };
        let (device, dtype) = run_on.open().map_err(|e| anyhow!(e))?;
        let (warmup, runs, max_seconds) = budget.timing();
        Ok(Stage {
            settings: settings.clone(),
            run_on,
            device,
            dtype,
            machine: Machine::current(),
            cache,
            force,
            work,
            timing: Timing {
                latent_size,
                warmup,
                runs,
                max_seconds,
                per_block: true,
            },
            table: LatencyTable::default(),
            probes: Vec::new(),
        })
    }

    /// Measures `config` whole and block by block and adds it to the table (once per config,
    /// within the probe budget).
    pub fn probe(&mut self, file: &SearchFile, config: &Config) -> Result<()> {
        let hash = config.hash();
        if self.probes.iter().any(|p| p.hash == hash) {
            return Ok(());
        }
        if self.probes.len() >= self.settings.probes {
            eprintln!(
                "{}: not probed, the budget of {} probes is spent",
                config.name, self.settings.probes
            );
            return Ok(());
        }
        let label = format!("[probe {}] {}", self.probes.len() + 1, config.name);
        let Some((result, cached)) = self.bench(config, true, &label)? else {
            return Err(Incomplete(format!("the latency probe of {}", config.name)).into());
        };
        let cost = file.count(config)?;
        let timings: BTreeMap<String, f64> = result
            .per_block
            .iter()
            .map(|b| (b.block.clone(), b.median_s))
            .collect();
        let missing = self
            .table
            .add_probe(&config.name, cost.blocks(), &timings, result.median_s);
        if !missing.is_empty() {
            return Err(anyhow!(
                "{}: the per-block timing has no entry for {} (the timer and the cost \
                 interpreter disagree on the blocks)",
                config.name,
                missing.join(", ")
            ));
        }
        self.probes.push(Probe {
            name: config.name.clone(),
            hash,
            result,
            cached,
        });
        Ok(())
    }

    /// The whole-forward median of a probed config, by hash.
    pub fn measured(&self, hash: &str) -> Option<f64> {
        self.probes
            .iter()
            .find(|p| p.hash == hash)
            .map(|p| p.result.median_s)
    }

    /// Measures `config` (or reads it from the cache) when this run does its unit; reads it from
    /// the cache, measured by whichever node did, when another shard does; `None` when that
    /// shard has not yet.
    fn bench(
        &self,
        config: &Config,
        per_block: bool,
        label: &str,
    ) -> Result<Option<(BenchResult, bool)>> {
        let timing = Timing {
            per_block,
            ..self.timing
        };
        let kind = if per_block { "probe" } else { "check" };
        if !self.work.does(&format!("search {kind} {}", config.hash())) {
            let conditions = BenchConditions::new(config, &timing, &self.run_on, &self.machine);
            return Ok(self
                .cache
                .get_any_machine(&config.hash(), &conditions)
                .map(|r| (r, true)));
        }
        cached_bench(
            config,
            &timing,
            (&self.run_on, &self.device, self.dtype),
            (self.cache, self.force),
            &self.machine,
            label,
        )
        .map(Some)
        .map_err(|e| anyhow!("{label}: {e}"))
    }

    /// Explores, measures the front's candidates whose blocks the table lacks (the one covering
    /// most unknown blocks first), and explores again, until the front is covered, the probe
    /// budget is spent or [`MAX_ROUNDS`] have passed; returns the last exploration.
    pub fn cover_front(
        &mut self,
        file: &SearchFile,
        explorer: &mut Explorer<'_>,
    ) -> Result<(Exploration, f64)> {
        let mut round = 0;
        loop {
            let predictor = self.table.predictor();
            let (exploration, seconds) = super::explore(file, explorer, Some(&predictor));
            let budget = self.settings.probes.saturating_sub(self.probes.len());
            let picks = self.picks(&exploration, budget);
            if picks.is_empty() || round == MAX_ROUNDS {
                return Ok((exploration, seconds));
            }
            let mut pending = Vec::new();
            for i in picks {
                let c = &exploration.candidates[i].candidate;
                let config = file
                    .space
                    .config(&c.genome, &candidate_name(file, &c.hash))
                    .map_err(|e| anyhow!("a counted candidate no longer builds: {e}"))?;
                if let Err(e) = self.probe(file, &config) {
                    pending.push(e.downcast::<Incomplete>()?.0);
                }
            }
            if !pending.is_empty() {
                return Err(Incomplete(pending.join(", ")).into());
            }
            round += 1;
        }
    }

    /// Up to `budget` front candidates, greedily covering the most signatures the table lacks.
    fn picks(&self, exploration: &Exploration, budget: usize) -> Vec<usize> {
        let front = exploration.front();
        let mut uncovered: BTreeSet<&str> = front
            .iter()
            .flat_map(|&i| {
                self.table
                    .unknown(&exploration.candidates[i].candidate.blocks)
            })
            .collect();
        let mut picks = Vec::new();
        while !uncovered.is_empty() && picks.len() < budget {
            let best = front
                .iter()
                .filter(|i| !picks.contains(*i))
                .map(|&i| {
                    let blocks = &exploration.candidates[i].candidate.blocks;
                    let new: BTreeSet<&str> = blocks
                        .iter()
                        .map(|b| b.signature.as_str())
                        .filter(|s| uncovered.contains(s))
                        .collect();
                    (new.len(), i)
                })
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match best {
                Some((n, i)) if n > 0 => {
                    for b in &exploration.candidates[i].candidate.blocks {
                        uncovered.remove(b.signature.as_str());
                    }
                    picks.push(i);
                }
                _ => break,
            }
        }
        picks
    }

    /// Measures `settings.check` candidates the table did not see (front members first, then
    /// feasible ones in a seeded random order, then the rest), whole, against their prediction.
    pub fn check(&mut self, file: &SearchFile, exploration: &Exploration) -> Result<Vec<CheckRow>> {
        let probed: HashSet<&str> = self.probes.iter().map(|p| p.hash.as_str()).collect();
        let front = exploration.front();
        let unseen =
            |i: &usize| !probed.contains(exploration.candidates[*i].candidate.hash.as_str());
        let covered = |i: &usize| {
            self.table
                .covers(&exploration.candidates[*i].candidate.blocks)
        };
        let mut rest: Vec<usize> = (0..exploration.candidates.len())
            .filter(|i| !front.contains(i))
            .collect();
        rest.shuffle(&mut ChaCha8Rng::seed_from_u64(0));
        let (feasible, infeasible): (Vec<usize>, Vec<usize>) = rest
            .into_iter()
            .partition(|&i| exploration.candidates[i].fitness.feasible());
        let ordered: Vec<usize> = front
            .iter()
            .copied()
            .chain(feasible)
            .chain(infeasible)
            .collect();
        let mut chosen: Vec<usize> = ordered
            .iter()
            .copied()
            .filter(|i| unseen(i) && covered(i))
            .take(self.settings.check)
            .collect();
        if chosen.len() < self.settings.check {
            let more: Vec<usize> = ordered
                .iter()
                .copied()
                .filter(|i| unseen(i) && !covered(i))
                .take(self.settings.check - chosen.len())
                .collect();
            chosen.extend(more);
        }
        let mut rows = Vec::new();
        let mut pending = Vec::new();
        for (k, &i) in chosen.iter().enumerate() {
            let e = &exploration.candidates[i];
            let name = candidate_name(file, &e.candidate.hash);
            let config = file
                .space
                .config(&e.candidate.genome, &name)
                .map_err(|err| anyhow!("a counted candidate no longer builds: {err}"))?;
            let label = format!("[check {}/{}] {name}", k + 1, chosen.len());
            let Some((result, cached)) = self.bench(&config, false, &label)? else {
                pending.push(format!("the latency check of {name}"));
                continue;
            };
            let prediction = e
                .prediction
                .expect("the latency stage predicts every candidate");
            rows.push(CheckRow {
                name,
                hash: e.candidate.hash.clone(),
                predicted_s: prediction.seconds,
                fitted_blocks: prediction.fitted_blocks,
                result,
                cached,
                on_front: front.contains(&i),
            });
        }
        if !pending.is_empty() {
            return Err(Incomplete(pending.join(", ")).into());
        }
        Ok(rows)
    }
}
