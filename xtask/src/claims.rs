//! The paper's claims read by the tool: each `paper.expect` entry of a config, measured against
//! its baseline, with the seed spread, and a verdict. Shared by `ablate` (the configs of a study,
//! each trained with its seeds) and `recipe` (claim groups of experiments at longer training);
//! each holds its configs as [`Subject`]s.
//!
//! The effect is "how much worse" the step makes the metric (positive = worse, whichever way the
//! metric points). Its uncertainty σ is the standard error of the difference of two means:
//! quality metrics use the seed standard deviation pooled over every config of the study with
//! two or more seeds, `s·√(1/n_a + 1/n_b)`; latency uses each config's p10–p90 spread of timed
//! runs (`(p90 − p10) / 2.56` per config, combined in quadrature); parameter and MAC counts are
//! exact (σ = 0). Verdicts:
//! - `worse` / `better`: reproduced when the effect lies beyond 2σ in the stated direction,
//!   contradicted when beyond 2σ the other way, unresolved otherwise (|effect| < 2σ);
//! - `no loss`: reproduced when the effect plus 2σ stays within the metric's tolerance
//!   ([`ClaimMetric::no_loss_tolerance`]: any loss is smaller than that), contradicted when the
//!   effect minus 2σ exceeds it, unresolved otherwise (the study is too noisy to tell).

use std::collections::HashMap;
use std::path::Path;

use polars::prelude::{Column, DataFrame};
use serde::Serialize;
use unetlab_report::{effects, Effect};
use unetlab_spec::{ClaimDirection, ClaimMetric, PaperNote};

use crate::stats;

/// One config as a study measured it: what its claims are judged on.
pub trait Subject {
    /// The config's name (what another config's `paper.baseline` names).
    fn name(&self) -> &str;
    /// Its `paper:` block, if it has one.
    fn paper(&self) -> Option<&PaperNote>;
    /// Whether the study measures `metric` at all (a study that trains but does not time
    /// states no latency verdicts).
    fn measures(&self, metric: ClaimMetric) -> bool;
    /// One value per seed of a quality metric ([`is_quality`]), if it trained and every run was
    /// scored.
    fn seed_values(&self, metric: ClaimMetric) -> Option<Vec<f64>>;
    /// A counted or timed metric (params, MACs, latency): its value and spread.
    fn counted(&self, metric: ClaimMetric) -> Option<Measured>;
}

/// Whether a metric comes from training (one value per seed) rather than counting or timing.
pub fn is_quality(metric: ClaimMetric) -> bool {
    matches!(
        metric,
        ClaimMetric::Fd
            | ClaimMetric::ValidationLoss
            | ClaimMetric::AttributeAlignment
            | ClaimMetric::TextAlignment
    )
}

/// What the data says about one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The data agree with the paper beyond 2σ.
    Reproduced,
    /// The data disagree with the paper beyond 2σ.
    Contradicted,
    /// Within the noise.
    Unresolved,
    /// A value is missing (not trained, not timed, or no seed spread to judge by).
    NotMeasured,
}

impl Outcome {
    /// Its colour in plots: green, red, grey.
    fn colour(self) -> [u8; 3] {
        match self {
            Outcome::Reproduced => [40, 150, 60],
            Outcome::Contradicted => [200, 40, 40],
            Outcome::Unresolved | Outcome::NotMeasured => [130, 130, 130],
        }
    }

    /// The word shown in tables.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Reproduced => "reproduced",
            Outcome::Contradicted => "contradicted",
            Outcome::Unresolved => "unresolved",
            Outcome::NotMeasured => "not measured",
        }
    }
}

/// One claim of one config, measured.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The config making the step.
    pub config: String,
    /// The config it is measured against.
    pub baseline: String,
    /// The metric.
    pub metric: &'static str,
    /// What the paper says.
    pub expected: &'static str,
    /// Baseline mean.
    pub baseline_value: Option<f64>,
    /// The config's mean.
    pub value: Option<f64>,
    /// How much worse, relative to the baseline (+0.05 = 5 % worse).
    pub relative_effect: Option<f64>,
    /// σ of the effect, relative to the baseline.
    pub relative_sigma: Option<f64>,
    /// Seeds behind each mean (quality metrics).
    pub seeds: Option<(usize, usize)>,
    /// The metric's "no loss" tolerance, relative.
    pub tolerance: f64,
    /// The verdict.
    pub outcome: Outcome,
}

/// The verdict of every `expect` entry in the study whose baseline is in the study too, of the
/// metrics the study measures.
pub fn verdicts<S: Subject>(subjects: &[S]) -> Vec<Verdict> {
    let by_name: HashMap<&str, &S> = subjects.iter().map(|s| (s.name(), s)).collect();
    let mut out = Vec::new();
    for subject in subjects {
        let Some(paper) = subject.paper() else {
            continue;
        };
        let Some(base) = paper.baseline.as_deref().and_then(|b| by_name.get(b)) else {
            continue;
        };
        for (&metric, &direction) in &paper.expect {
            if subject.measures(metric) {
                out.push(judge(subjects, subject, base, metric, direction));
            }
        }
    }
    out
}

/// Mean, and σ of that mean's contribution to a difference (before the √(1/n) factor for
/// seeded metrics), of one config's metric.
pub struct Measured {
    /// The value (the mean over seeds for quality metrics).
    pub mean: f64,
    /// Seeds averaged (quality metrics), 1 otherwise.
    pub n: usize,
    /// Per-config spread (latency only; quality metrics use the pooled σ).
    pub spread: f64,
}

fn judge<S: Subject>(
    subjects: &[S],
    subject: &S,
    base: &S,
    metric: ClaimMetric,
    direction: ClaimDirection,
) -> Verdict {
    let (a, b) = (measure(subject, metric), measure(base, metric));
    let seeded = is_quality(metric);
    let sigma = match (&a, &b) {
        (Some(a), Some(b)) if seeded => pooled_sd(subjects, metric)
            .map(|(s, _)| s * (1.0 / a.n as f64 + 1.0 / b.n as f64).sqrt()),
        (Some(a), Some(b)) => Some((a.spread.powi(2) + b.spread.powi(2)).sqrt()),
        _ => None,
    };
    let mut verdict = Verdict {
        config: subject.name().to_string(),
        baseline: base.name().to_string(),
        metric: metric.name(),
        expected: direction.name(),
        baseline_value: b.as_ref().map(|m| m.mean),
        value: a.as_ref().map(|m| m.mean),
        relative_effect: None,
        relative_sigma: None,
        seeds: match (&a, &b) {
            (Some(a), Some(b)) if seeded => Some((a.n, b.n)),
            _ => None,
        },
        tolerance: metric.no_loss_tolerance(),
        outcome: Outcome::NotMeasured,
    };
    let (Some(a), Some(b), Some(sigma)) = (a, b, sigma) else {
        return verdict;
    };
    let scale = b.mean.abs().max(f64::MIN_POSITIVE);
    let worse = if metric.higher_is_better() {
        b.mean - a.mean
    } else {
        a.mean - b.mean
    } / scale;
    let sigma = sigma / scale;
    verdict.relative_effect = Some(worse);
    verdict.relative_sigma = Some(sigma);
    verdict.outcome = decide(direction, worse, sigma, metric.no_loss_tolerance());
    verdict
}

/// The verdict rule of the module docs, on relative effect and σ.
fn decide(direction: ClaimDirection, worse: f64, sigma: f64, tolerance: f64) -> Outcome {
    let margin = 2.0 * sigma;
    match direction {
        ClaimDirection::Worse | ClaimDirection::Better => {
            let toward = if direction == ClaimDirection::Worse {
                worse
            } else {
                -worse
            };
            if toward > margin {
                Outcome::Reproduced
            } else if toward < -margin {
                Outcome::Contradicted
            } else {
                Outcome::Unresolved
            }
        }
        ClaimDirection::NoLoss => {
            if worse + margin <= tolerance {
                Outcome::Reproduced
            } else if worse - margin > tolerance {
                Outcome::Contradicted
            } else {
                Outcome::Unresolved
            }
        }
    }
}

fn measure<S: Subject>(subject: &S, metric: ClaimMetric) -> Option<Measured> {
    if !is_quality(metric) {
        return subject.counted(metric);
    }
    let values = subject.seed_values(metric)?;
    Some(Measured {
        mean: stats::mean(&values)?,
        n: values.len(),
        spread: 0.0,
    })
}

/// The seed standard deviation of a quality metric pooled over every config with two or more
/// seeds, √(Σ (n_i − 1) s_i² / Σ (n_i − 1)), with its degrees of freedom Σ (n_i − 1); None when
/// no config has two seeds.
pub fn pooled_sd<S: Subject>(subjects: &[S], metric: ClaimMetric) -> Option<(f64, usize)> {
    stats::pooled_sd(subjects.iter().filter_map(|s| {
        let values = s.seed_values(metric)?;
        Some((stats::mean_sd(&values)?.1?, values.len()))
    }))
}

/// The verdicts as a table: one row per claim.
pub fn frame(verdicts: &[Verdict]) -> anyhow::Result<DataFrame> {
    let text = |name: &str, f: &dyn Fn(&Verdict) -> String| {
        Column::new(name.into(), verdicts.iter().map(f).collect::<Vec<String>>())
    };
    let num = |name: &str, f: &dyn Fn(&Verdict) -> Option<f64>| {
        Column::new(
            name.into(),
            verdicts.iter().map(f).collect::<Vec<Option<f64>>>(),
        )
    };
    Ok(DataFrame::new(
        verdicts.len(),
        vec![
            text("config", &|v| v.config.clone()),
            text("baseline", &|v| v.baseline.clone()),
            text("metric", &|v| v.metric.to_string()),
            text("paper", &|v| v.expected.to_string()),
            num("baseline value", &|v| v.baseline_value),
            num("value", &|v| v.value),
            num("effect (% worse)", &|v| {
                v.relative_effect.map(|e| 100.0 * e)
            }),
            num("2 sigma (%)", &|v| v.relative_sigma.map(|s| 200.0 * s)),
            num("no-loss tolerance (%)", &|v| {
                (v.expected == ClaimDirection::NoLoss.name()).then_some(100.0 * v.tolerance)
            }),
            text("seeds", &|v| {
                v.seeds
                    .map_or(String::new(), |(a, b)| format!("{a} vs {b}"))
            }),
            text("verdict", &|v| v.outcome.name().to_string()),
        ],
    )?)
}

/// `<stem>.{svg,png}`: each claim's effect ± 2σ, coloured by verdict.
pub fn plot(stem: &Path, title: &str, verdicts: &[Verdict]) -> anyhow::Result<()> {
    let rows: Vec<Effect> = verdicts
        .iter()
        .filter_map(|v| {
            Some(Effect {
                label: format!("{} · {} ({})", v.config, v.metric, v.expected),
                value: 100.0 * v.relative_effect?,
                err: 200.0 * v.relative_sigma?,
                group: v.outcome.name().to_string(),
                colour: Some(v.outcome.colour()),
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    effects(
        stem,
        title,
        "% worse than the baseline (negative: better)",
        &rows,
        &[(0.0, "no effect".into())],
    )?;
    Ok(())
}

/// What a README's claims section says around the table.
pub struct SectionText<'a> {
    /// The heading line (`## The paper's claims`).
    pub heading: &'a str,
    /// What the seed σ is pooled over (`the study`).
    pub pooled_over: &'a str,
    /// The plot's file name.
    pub plot: &'a str,
    /// What to do when no config has two seeds.
    pub no_seeds: &'a str,
}

/// A README's claims section: the rule, the pooled σ and the table.
pub fn section<S: Subject>(
    subjects: &[S],
    verdicts: &[Verdict],
    table_md: &str,
    text: &SectionText,
) -> String {
    let mut s = format!("{}\n\n", text.heading);
    if verdicts.is_empty() {
        s.push_str("No config of this study states a machine-readable claim (`paper.expect`) against a baseline in the study.\n\n");
        return s;
    }
    let count = |o: Outcome| verdicts.iter().filter(|v| v.outcome == o).count();
    s.push_str(&format!(
        "Each `paper.expect` entry, measured against the config's baseline: {} reproduced, {} contradicted, {} unresolved, {} not measured. \
         The effect is how much worse the step makes the metric, relative to the baseline (negative: better). \
         σ is the standard error of the difference: for quality metrics the seed standard deviation pooled over {} \
         (configs with two or more seeds) times √(1/n₁ + 1/n₂); for latency each config's p10–p90 spread / 2.56 in quadrature; \
         counts are exact. `worse`/`better` claims are reproduced beyond 2σ in their direction, contradicted beyond 2σ the other way, \
         unresolved otherwise; `no loss` claims are reproduced when the effect + 2σ stays within the metric's tolerance \
         (FD 10 %, validation loss 3 %, alignment 5 %), contradicted when the effect − 2σ exceeds it. Plot: `{}`.\n\n",
        count(Outcome::Reproduced),
        count(Outcome::Contradicted),
        count(Outcome::Unresolved),
        count(Outcome::NotMeasured),
        text.pooled_over,
        text.plot,
    ));
    let pooled: Vec<String> = [
        ClaimMetric::Fd,
        ClaimMetric::ValidationLoss,
        ClaimMetric::AttributeAlignment,
        ClaimMetric::TextAlignment,
    ]
    .iter()
    .filter_map(|&m| pooled_sd(subjects, m).map(|(sd, _)| format!("{} {sd:.4}", m.name())))
    .collect();
    if pooled.is_empty() {
        s.push_str(&format!(
            "No config has two seeds, so quality claims cannot be judged ({}).\n\n",
            text.no_seeds
        ));
    } else {
        s.push_str(&format!(
            "Pooled seed standard deviation: {}.\n\n",
            pooled.join(", ")
        ));
    }
    s.push_str(table_md);
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directional_claims_need_two_sigma() {
        use ClaimDirection::*;
        // 30 % worse with σ 10 %: beyond 2σ.
        assert_eq!(decide(Worse, 0.30, 0.10, 0.10), Outcome::Reproduced);
        assert_eq!(decide(Better, 0.30, 0.10, 0.10), Outcome::Contradicted);
        // 15 % worse with σ 10 %: within 2σ either way.
        assert_eq!(decide(Worse, 0.15, 0.10, 0.10), Outcome::Unresolved);
        assert_eq!(decide(Better, 0.15, 0.10, 0.10), Outcome::Unresolved);
        assert_eq!(decide(Better, -0.25, 0.10, 0.10), Outcome::Reproduced);
        assert_eq!(decide(Worse, -0.25, 0.10, 0.10), Outcome::Contradicted);
        // Exact counts: any difference decides.
        assert_eq!(decide(Better, -0.05, 0.0, 0.10), Outcome::Reproduced);
    }

    #[test]
    fn no_loss_claims_are_judged_against_the_tolerance() {
        use ClaimDirection::NoLoss;
        // Better or equal, and precise enough to rule out a 10 % loss.
        assert_eq!(decide(NoLoss, -0.02, 0.03, 0.10), Outcome::Reproduced);
        assert_eq!(decide(NoLoss, 0.03, 0.03, 0.10), Outcome::Reproduced);
        // Too noisy to rule out a 10 % loss, even at no effect.
        assert_eq!(decide(NoLoss, 0.0, 0.08, 0.10), Outcome::Unresolved);
        // A loss beyond the tolerance by more than 2σ.
        assert_eq!(decide(NoLoss, 0.40, 0.10, 0.10), Outcome::Contradicted);
        assert_eq!(decide(NoLoss, 0.25, 0.10, 0.10), Outcome::Unresolved);
    }
}
