//! Does the proxy rank like a longer run, and like another seed? Spearman rank correlations of
//! the configs' quality between seeds of this study and against another study (`--rank-against`),
//! as NAS papers report for their proxies.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::AnyValue;
use serde::Serialize;
use unetlab_train::RunSummary;

use super::Row;
use crate::stats;

/// One rank correlation.
#[derive(Debug, Clone, Serialize)]
pub struct Correlation {
    /// What is compared ("seed 0 vs seed 1", "this study vs results/ablate-full").
    pub between: String,
    /// The metric ranked.
    pub metric: &'static str,
    /// Configs ranked by both.
    pub configs: usize,
    /// Spearman's ρ (None for fewer than 3 configs or a constant ranking).
    pub rho: Option<f64>,
}

/// Ranks 1..n with ties sharing their average rank.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = average;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's ρ: the Pearson correlation of the ranks (ties averaged); None for fewer than 3
/// pairs or a constant ranking.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (a.len() as f64 + 1.0) / 2.0;
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        ab += (x - mean) * (y - mean);
        aa += (x - mean).powi(2);
        bb += (y - mean).powi(2);
    }
    (aa > 0.0 && bb > 0.0).then(|| ab / (aa * bb).sqrt())
}

type Metric = (&'static str, fn(&RunSummary) -> Option<f64>);

const METRICS: [Metric; 2] = [
    ("fd", |s| s.metrics.as_ref().map(|m| m.quality.fd)),
    ("validation_loss", |s| Some(s.validation_loss)),
];

/// Seed 0 against seed 1 over the configs trained with both.
pub fn between_seeds(rows: &[Row]) -> Vec<Correlation> {
    METRICS
        .iter()
        .map(|&(metric, f)| {
            let pairs: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| {
                    let runs = r.trained.as_ref()?.as_ref().ok()?;
                    Some((f(&runs.first()?.summary)?, f(&runs.get(1)?.summary)?))
                })
                .collect();
            let (a, b): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
            Correlation {
                between: "seed 0 vs seed 1".into(),
                metric,
                configs: a.len(),
                rho: spearman(&a, &b),
            }
        })
        .collect()
}

/// This study's means against another study's `table.csv` (`FD`, `proxy val loss`), over the
/// configs both hold.
pub fn against(rows: &[Row], other: &Path) -> Result<Vec<Correlation>> {
    let path = other.join("table.csv");
    let table = unetlab_report::read_csv(&path)
        .with_context(|| format!("--rank-against: reading {}", path.display()))?;
    let column = |name: &str| -> Result<HashMap<String, f64>> {
        let configs = table.column("config")?;
        let values = table
            .column(name)
            .with_context(|| format!("{}: no `{name}` column", path.display()))?;
        let mut map = HashMap::new();
        for i in 0..table.height() {
            let config = match configs.get(i)? {
                AnyValue::String(s) => s.to_string(),
                AnyValue::StringOwned(s) => s.to_string(),
                _ => continue,
            };
            if let AnyValue::Float64(v) = values.get(i)? {
                map.insert(config, v);
            }
        }
        Ok(map)
    };
    let mut out = Vec::new();
    for (&(metric, f), name) in METRICS.iter().zip(["FD", "proxy val loss"]) {
        let theirs = column(name)?;
        let (a, b): (Vec<f64>, Vec<f64>) = rows
            .iter()
            .filter_map(|r| {
                let runs = r.trained.as_ref()?.as_ref().ok()?;
                let values: Option<Vec<f64>> = runs.iter().map(|run| f(&run.summary)).collect();
                let mean = stats::mean(&values?)?;
                Some((mean, *theirs.get(&r.config.name)?))
            })
            .unzip();
        out.push(Correlation {
            between: format!("this study vs {}", other.display()),
            metric,
            configs: a.len(),
            rho: spearman(&a, &b),
        });
    }
    Ok(out)
}

/// The README's ranking section (empty when nothing was ranked by two seeds or two studies).
pub fn section(correlations: &[Correlation]) -> String {
    if correlations.iter().all(|c| c.configs == 0) {
        return String::new();
    }
    let mut s = String::from(
        "\n## Does the proxy rank consistently?\n\nSpearman's ρ between rankings of the configs \
         (1: the same order; needs 3 configs ranked by both):\n\n| between | metric | configs | ρ |\n|---|---|---:|---:|\n",
    );
    for c in correlations {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.between,
            c.metric,
            c.configs,
            c.rho.map_or("–".into(), |r| format!("{r:.2}"))
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_matches_the_textbook() {
        // Identical and reversed orders.
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // No ties: 1 − 6 Σd² / (n(n² − 1)); here d = (0, 1, −1, 0, 0).
        let rho = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[1.0, 3.0, 2.0, 4.0, 5.0]).unwrap();
        assert!((rho - (1.0 - 6.0 * 2.0 / 120.0)).abs() < 1e-12);
        // Ties share their average rank.
        assert_eq!(ranks(&[5.0, 1.0, 5.0, 3.0]), [3.5, 1.0, 3.5, 2.0]);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
    }
}
