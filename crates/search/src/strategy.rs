//! The strategies: which genomes to evaluate. Each asks an evaluator for the fitness of batches of
//! genomes (evaluated in parallel by the caller) and returns every genome it evaluated, in the
//! order it first asked for them. All randomness is a seeded ChaCha8 stream, so a strategy with
//! a fixed seed is deterministic.

use std::collections::{HashMap, HashSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::file::Strategy;
use crate::pareto::{constrained_dominates, crowding, ranks, Fitness};
use crate::space::{Genome, Space};

/// Genomes per batch handed to the evaluator by `exhaustive` and `random`.
const BATCH: usize = 4096;

/// Evaluates a batch of genomes, returning one fitness each, in order.
pub type Evaluate<'a> = dyn FnMut(&[Genome]) -> Vec<Fitness> + 'a;

/// Runs `strategy` over `space`; returns the genomes evaluated, in order of first evaluation.
pub fn run(strategy: Strategy, space: &Space, evaluate: &mut Evaluate<'_>) -> Vec<Genome> {
    match strategy {
        Strategy::Exhaustive => exhaustive(space, evaluate),
        Strategy::Random { samples, seed } => random(space, samples, seed, evaluate),
        Strategy::Evolutionary {
            population,
            generations,
            seed,
        } => Nsga2::new(space, population, seed).run(generations, evaluate),
    }
}

fn exhaustive(space: &Space, evaluate: &mut Evaluate<'_>) -> Vec<Genome> {
    let size = space.size();
    let mut out = Vec::new();
    let mut start = 0u128;
    while start < size {
        let end = (start + BATCH as u128).min(size);
        let batch: Vec<Genome> = (start..end).map(|i| space.genome_at(i)).collect();
        evaluate(&batch);
        out.extend(batch);
        start = end;
    }
    out
}

fn random(space: &Space, samples: usize, seed: u64, evaluate: &mut Evaluate<'_>) -> Vec<Genome> {
    let size = space.size();
    if samples as u128 >= size {
        return exhaustive(space, evaluate);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while out.len() < samples {
        let mut batch = Vec::new();
        while out.len() + batch.len() < samples && batch.len() < BATCH {
            let g = random_genome(space, &mut rng);
            if seen.insert(g.clone()) {
                batch.push(g);
            }
        }
        evaluate(&batch);
        out.extend(batch);
    }
    out
}

fn random_genome(space: &Space, rng: &mut ChaCha8Rng) -> Genome {
    space
        .axes
        .iter()
        .map(|a| rng.random_range(0..a.options.len()))
        .collect()
}

/// NSGA-II over genomes (Deb, Pratap, Agarwal, Meyarivan 2002).
struct Nsga2<'s> {
    space: &'s Space,
    population: usize,
    rng: ChaCha8Rng,
    known: HashMap<Genome, Fitness>,
    order: Vec<Genome>,
}

impl<'s> Nsga2<'s> {
    fn new(space: &'s Space, population: usize, seed: u64) -> Self {
        Nsga2 {
            space,
            population,
            rng: ChaCha8Rng::seed_from_u64(seed),
            known: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// Evaluates the genomes not seen before.
    fn evaluate(&mut self, genomes: &[Genome], evaluate: &mut Evaluate<'_>) {
        let mut fresh: Vec<Genome> = Vec::new();
        for g in genomes {
            if !self.known.contains_key(g) && !fresh.contains(g) {
                fresh.push(g.clone());
            }
        }
        if fresh.is_empty() {
            return;
        }
        for (g, f) in fresh.iter().zip(evaluate(&fresh)) {
            self.known.insert(g.clone(), f);
        }
        self.order.extend(fresh);
    }

    fn run(mut self, generations: usize, evaluate: &mut Evaluate<'_>) -> Vec<Genome> {
        let size = self.space.size();
        let target = (self.population as u128).min(size) as usize;
        let mut population: Vec<Genome> = Vec::new();
        let mut attempts = 0;
        while population.len() < target && attempts < 100 * self.population {
            let g = random_genome(self.space, &mut self.rng);
            if !population.contains(&g) {
                population.push(g);
            }
            attempts += 1;
        }
        self.evaluate(&population, evaluate);
        for _ in 0..generations {
            let (rank, crowd) = self.rank_and_crowd(&population);
            let mut offspring = Vec::with_capacity(self.population);
            while offspring.len() < self.population {
                let a = self.tournament(&population, &rank, &crowd);
                let b = self.tournament(&population, &rank, &crowd);
                let (c, d) = self.crossover(&population[a], &population[b]);
                offspring.push(self.mutate(c));
                offspring.push(self.mutate(d));
            }
            self.evaluate(&offspring, evaluate);
            let mut combined = population;
            for g in offspring {
                if !combined.contains(&g) {
                    combined.push(g);
                }
            }
            population = self.select(combined);
        }
        self.order
    }

    fn fitness(&self, genomes: &[Genome]) -> Vec<Fitness> {
        genomes.iter().map(|g| self.known[g].clone()).collect()
    }

    /// Front rank and crowding distance of each member of `population`.
    fn rank_and_crowd(&self, population: &[Genome]) -> (Vec<usize>, Vec<f64>) {
        let fitness = self.fitness(population);
        let rank = ranks(&fitness);
        let mut crowd = vec![0.0; population.len()];
        for r in 0..=rank.iter().copied().max().unwrap_or(0) {
            let members: Vec<usize> = (0..population.len()).filter(|&i| rank[i] == r).collect();
            for (&i, d) in members.iter().zip(crowding(&fitness, &members)) {
                crowd[i] = d;
            }
        }
        (rank, crowd)
    }

    /// Binary tournament: the lower rank wins, then the larger crowding distance, then the
    /// constrained-domination winner, then the first drawn.
    fn tournament(&mut self, population: &[Genome], rank: &[usize], crowd: &[f64]) -> usize {
        let a = self.rng.random_range(0..population.len());
        let b = self.rng.random_range(0..population.len());
        let better = |x: usize, y: usize| {
            rank[x] < rank[y]
                || (rank[x] == rank[y] && crowd[x] > crowd[y])
                || (rank[x] == rank[y]
                    && crowd[x] == crowd[y]
                    && constrained_dominates(
                        &self.known[&population[x]],
                        &self.known[&population[y]],
                    ))
        };
        if better(b, a) {
            b
        } else {
            a
        }
    }

    /// Uniform crossover: each axis from either parent with probability ½.
    fn crossover(&mut self, a: &Genome, b: &Genome) -> (Genome, Genome) {
        let (mut c, mut d) = (a.clone(), b.clone());
        for i in 0..a.len() {
            if self.rng.random_bool(0.5) {
                std::mem::swap(&mut c[i], &mut d[i]);
            }
        }
        (c, d)
    }

    /// Each axis with probability 1/axes (at least one per genome on average) moves to another
    /// of its options.
    fn mutate(&mut self, mut g: Genome) -> Genome {
        let p = 1.0 / g.len().max(1) as f64;
        for (i, axis) in self.space.axes.iter().enumerate() {
            let n = axis.options.len();
            if n > 1 && self.rng.random_bool(p) {
                let step = self.rng.random_range(1..n);
                g[i] = (g[i] + step) % n;
            }
        }
        g
    }

    /// The next population: whole fronts while they fit, then the most crowded-apart of the
    /// front that does not.
    fn select(&self, combined: Vec<Genome>) -> Vec<Genome> {
        if combined.len() <= self.population {
            return combined;
        }
        let fitness = self.fitness(&combined);
        let rank = ranks(&fitness);
        let mut next: Vec<usize> = Vec::with_capacity(self.population);
        let mut r = 0;
        while next.len() < self.population {
            let members: Vec<usize> = (0..combined.len()).filter(|&i| rank[i] == r).collect();
            if next.len() + members.len() <= self.population {
                next.extend(&members);
            } else {
                let d = crowding(&fitness, &members);
                let mut by_distance: Vec<usize> = (0..members.len()).collect();
                by_distance.sort_by(|&x, &y| d[y].total_cmp(&d[x]).then(x.cmp(&y)));
                next.extend(
                    by_distance
                        .into_iter()
                        .take(self.population - next.len())
                        .map(|k| members[k]),
                );
            }
            r += 1;
        }
        next.into_iter().map(|i| combined[i].clone()).collect()
    }
}
