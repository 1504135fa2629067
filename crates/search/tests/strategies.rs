//! The strategies on a tiny space whose answer is computed independently: exhaustive finds the
//! true front, random and NSGA-II are deterministic for a seed and report only feasible,
//! non-dominated candidates, constraints are applied as stated; on a larger space NSGA-II finds
//! the exhaustive front from a fraction of the genomes, where random sampling does not.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use unetlab_cost::{count, Conditions};
use unetlab_search::pareto::{crowding, dominates, feasible_front, ranks, Fitness};
use unetlab_search::{Exploration, Explorer, Metric, Outcome, SearchFile};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A search over every-choice: 2 × 2 × 3 × 3 = 36 genomes, some invalid (kv_heads 3).
fn search_file(strategy: &str, constraints: &str) -> SearchFile {
    let base = workspace().join("configs/fixtures/every-choice.yaml");
    let text = format!(
        "name: tiny\nbase: {}\naxes:\n  - path: unet.levels.1.channels\n    values: [16, 24]\n  \
         - path: unet.levels.2.conv\n    values: [regular, separable]\n  - path: unet.mid.transformer_depth\n    \
         values: [[2, 1], [1, 1], [0, 0]]\n  - path: unet.levels.1.attention.kv_heads\n    values: [1, 2, 3]\n\
         constraints: {constraints}\nobjectives:\n  minimize: [params, gmacs_attention]\nstrategy: {strategy}\n",
        base.display()
    );
    SearchFile::parse(&text, Path::new("tiny.yaml")).unwrap()
}

fn explore(file: &SearchFile) -> Exploration {
    Explorer::new(file).run(None, &|_| {})
}

/// Every genome counted directly (not through the explorer): hash → (params, attention G MACs).
fn brute_force(file: &SearchFile) -> Vec<(String, f64, f64)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for i in 0..file.space.size() {
        let genome = file.space.genome_at(i);
        let Ok(config) = file.space.config(&genome, "x") else {
            continue;
        };
        let cost = count(
            &config.spec,
            Conditions {
                batch: 1,
                latent_size: file.latent_size,
                tokens: file.tokens,
            },
        )
        .unwrap();
        if seen.insert(config.hash()) {
            out.push((
                config.hash(),
                cost.params() as f64,
                cost.macs.attention as f64 / 1e9,
            ));
        }
    }
    out
}

fn front_hashes(x: &Exploration) -> BTreeSet<String> {
    x.front()
        .into_iter()
        .map(|i| x.candidates[i].candidate.hash.clone())
        .collect()
}

#[test]
fn exhaustive_finds_the_true_front() {
    let file = search_file("{kind: exhaustive}", "{}");
    assert_eq!(file.space.size(), 36);
    let x = explore(&file);
    let all = brute_force(&file);
    assert_eq!(
        x.candidates.len(),
        all.len(),
        "every distinct valid config once"
    );
    assert_eq!(x.evaluated, 36);
    assert_eq!(
        x.skipped.values().sum::<usize>() + x.duplicates + x.candidates.len(),
        36
    );
    assert!(
        x.skipped.keys().any(|r| r.contains("kv_heads")),
        "the invalid kv_heads are counted with their reason: {:?}",
        x.skipped
    );
    // The true front, by pairwise comparison of the directly counted configs.
    let truth: BTreeSet<String> = all
        .iter()
        .filter(|(_, p, a)| {
            !all.iter()
                .any(|(_, q, b)| q <= p && b <= a && (q < p || b < a))
        })
        .map(|(h, _, _)| h.clone())
        .collect();
    assert!(!truth.is_empty());
    assert_eq!(front_hashes(&x), truth);
}

#[test]
fn constraints_decide_feasibility_by_their_stated_limits() {
    let file = search_file("{kind: exhaustive}", "{params: {max: 100000}}");
    let x = explore(&file);
    let feasible: Vec<f64> = x
        .candidates
        .iter()
        .filter(|c| c.fitness.feasible())
        .map(|c| c.candidate.values.get(Metric::Params).unwrap())
        .collect();
    assert!(!feasible.is_empty() && feasible.len() < x.candidates.len());
    for c in &x.candidates {
        let p = c.candidate.values.get(Metric::Params).unwrap();
        assert_eq!(c.fitness.feasible(), p <= 100000.0);
        let expected = ((p - 100000.0) / 100000.0).max(0.0);
        assert!((c.fitness.violation - expected).abs() < 1e-12);
    }
    for i in x.front() {
        assert!(x.candidates[i].fitness.feasible());
    }
    // Block counts are checked before counting: such configs are rejected, not counted.
    let file = search_file(
        "{kind: exhaustive}",
        "{self_attention_blocks: {min: 4, max: 4}}",
    );
    let x = explore(&file);
    assert!(x.rejected.values().sum::<usize>() > 0);
    for c in &x.candidates {
        assert_eq!(
            c.candidate.values.get(Metric::SelfAttentionBlocks),
            Some(4.0)
        );
    }
}

/// The genomes a walk evaluated, in order, and its front.
fn walk(file: &SearchFile) -> (Vec<Vec<usize>>, BTreeSet<String>) {
    let x = explore(file);
    let genomes = x
        .candidates
        .iter()
        .map(|c| c.candidate.genome.clone())
        .collect();
    (genomes, front_hashes(&x))
}

#[test]
fn random_and_evolutionary_are_deterministic_and_report_only_the_non_dominated_feasible() {
    for strategy in [
        "{kind: random, samples: 12, seed: 3}",
        "{kind: evolutionary, population: 6, generations: 5, seed: 7}",
    ] {
        let file = search_file(strategy, "{params: {max: 120000}}");
        let (a, front_a) = walk(&file);
        let (b, front_b) = walk(&file);
        assert_eq!(a, b, "{strategy}: the same seed walks the same genomes");
        assert_eq!(front_a, front_b);
        let x = explore(&file);
        let front = x.front();
        assert!(!front.is_empty(), "{strategy}");
        for &i in &front {
            let f = &x.candidates[i].fitness;
            assert!(f.feasible(), "{strategy}: front members are feasible");
            for c in &x.candidates {
                assert!(
                    !(c.fitness.feasible() && dominates(&c.fitness.objectives, &f.objectives)),
                    "{strategy}: a front member is dominated"
                );
            }
        }
        if strategy.contains("random") {
            assert_eq!(x.evaluated, 12);
        }
    }
    // Another seed walks another way.
    let (a, _) = walk(&search_file("{kind: random, samples: 12, seed: 3}", "{}"));
    let (b, _) = walk(&search_file("{kind: random, samples: 12, seed: 4}", "{}"));
    assert_ne!(a, b);
}

#[test]
fn an_evolutionary_walk_is_valid_after_every_genome() {
    let file = search_file(
        "{kind: evolutionary, population: 8, generations: 6, seed: 1}",
        "{}",
    );
    let mut explorer = Explorer::new(&file);
    let x = explorer.run(None, &|_| {});
    // Every genome it evaluated is a genome of the space, and each distinct config appears once.
    let hashes: HashSet<&str> = x
        .candidates
        .iter()
        .map(|c| c.candidate.hash.as_str())
        .collect();
    assert_eq!(hashes.len(), x.candidates.len());
    for c in &x.candidates {
        assert_eq!(c.candidate.genome.len(), 4);
        for (g, axis) in c.candidate.genome.iter().zip(&file.space.axes) {
            assert!(*g < axis.options.len());
        }
        match file.space.evaluate(
            &c.candidate.genome,
            Conditions {
                batch: 1,
                latent_size: file.latent_size,
                tokens: file.tokens,
            },
            &[],
        ) {
            Outcome::Counted(again) => assert_eq!(again.hash, c.candidate.hash),
            _ => panic!("a counted genome no longer counts"),
        }
    }
    // NSGA-II asks only for genomes it has not seen: each was built once.
    assert_eq!(explorer.genomes_counted(), x.evaluated);
}

fn fitness(objectives: &[f64], violation: f64) -> Fitness {
    Fitness {
        objectives: objectives.to_vec(),
        violation,
    }
}

#[test]
fn non_dominated_sorting_and_crowding_by_hand() {
    let f = vec![
        fitness(&[1.0, 5.0], 0.0), // front 0
        fitness(&[2.0, 3.0], 0.0), // front 0
        fitness(&[4.0, 1.0], 0.0), // front 0
        fitness(&[3.0, 4.0], 0.0), // front 1 (dominated by [2, 3])
        fitness(&[5.0, 5.0], 0.0), // front 2
        fitness(&[0.0, 0.0], 0.5), // infeasible: after every feasible one
        fitness(&[0.0, 0.0], 0.1), // infeasible, smaller violation
    ];
    assert_eq!(ranks(&f), vec![0, 0, 0, 1, 2, 4, 3]);
    let d = crowding(&f, &[0, 1, 2]);
    assert!(d[0].is_infinite() && d[2].is_infinite());
    // The middle point: (4 − 1)/3 + (5 − 1)/4 = 2.
    assert!((d[1] - 2.0).abs() < 1e-12);
    assert_eq!(feasible_front(&f), vec![0, 1, 2]);
}

#[test]
fn the_fast_front_equals_pairwise_comparison() {
    // A seeded cloud of three objectives with ties and infeasible points.
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % 7) as f64
    };
    let f: Vec<Fitness> = (0..300)
        .map(|_| {
            let o = [next(), next(), next()];
            let v = if next() < 1.0 { 0.3 } else { 0.0 };
            fitness(&o, v)
        })
        .collect();
    let truth: Vec<usize> = (0..f.len())
        .filter(|&i| {
            f[i].feasible()
                && !f
                    .iter()
                    .any(|g| g.feasible() && dominates(&g.objectives, &f[i].objectives))
        })
        .collect();
    assert_eq!(feasible_front(&f), truth);
    let r = ranks(&f);
    for &i in &truth {
        assert_eq!(r[i], 0);
    }
}

/// A larger search over every-choice (4 × 3 × 2 × 4 × 3 × 3 = 864 genomes) with conflicting
/// objectives: fewer G MACs against more cross-attention blocks.
fn larger_search(strategy: &str) -> SearchFile {
    let base = workspace().join("configs/fixtures/every-choice.yaml");
    let text = format!(
        "name: larger\nbase: {}\naxes:\n  - path: unet.levels.1.channels\n    values: [16, 24, 32, 40]\n  \
         - path: unet.levels.2.channels\n    values: [16, 24, 32]\n  - path: unet.levels.2.conv\n    \
         values: [regular, separable]\n  - path: unet.feed_forward.mult\n    values: [1, 2, 3, 4]\n  \
         - path: unet.levels.1.down.transformer_depth\n    values: [0, 1, 2]\n  \
         - path: unet.mid.transformer_depth\n    values: [[2, 1], [1, 1], [0, 0]]\n\
         objectives:\n  minimize: [gmacs]\n  maximize: [cross_attention_blocks]\nstrategy: {strategy}\n",
        base.display()
    );
    SearchFile::parse(&text, Path::new("larger.yaml")).unwrap()
}

/// The objective vectors of an exploration's front.
fn front_points(x: &Exploration) -> BTreeSet<Vec<u64>> {
    x.front()
        .into_iter()
        .map(|i| {
            x.candidates[i]
                .fitness
                .objectives
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

#[test]
fn nsga_ii_finds_the_exhaustive_front_from_a_fraction_of_the_space() {
    let exhaustive = larger_search("{kind: exhaustive}");
    assert_eq!(exhaustive.space.size(), 864);
    let truth = front_points(&explore(&exhaustive));
    assert!(truth.len() >= 4, "a front worth searching: {}", truth.len());
    // Four seeds of NSGA-II, each against random sampling of as many genomes. Stated margins:
    // each seed finds all but at most one true front point, together at least 90 % of them, and
    // at least twice as many as random sampling with the same evaluations.
    let (mut nsga, mut random) = (0, 0);
    for seed in 0..4 {
        let x = explore(&larger_search(&format!(
            "{{kind: evolutionary, population: 16, generations: 10, seed: {seed}}}"
        )));
        assert!(
            x.evaluated <= 16 * 11 && x.evaluated * 4 < 864,
            "seed {seed}: {} genomes evaluated",
            x.evaluated
        );
        let found = front_points(&x).intersection(&truth).count();
        assert!(
            found + 1 >= truth.len(),
            "seed {seed}: {found} of {} front points",
            truth.len()
        );
        nsga += found;
        let sampled = explore(&larger_search(&format!(
            "{{kind: random, samples: {}, seed: {seed}}}",
            x.evaluated
        )));
        random += front_points(&sampled).intersection(&truth).count();
    }
    assert!(
        nsga * 10 >= 9 * 4 * truth.len(),
        "NSGA-II found {nsga} of {}",
        4 * truth.len()
    );
    assert!(
        nsga >= 2 * random,
        "NSGA-II found {nsga}, random sampling {random}"
    );
}
