//! `cargo xtask precision`: what f16, bf16 and int8 do to the chain's gelu and swish steps and to
//! MobileDiffusion, at full size with seeded weights and on the proxies an `ablate` study trained
//! (every seed), measured by `unetlab precision` and written to `results/precision/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use unetlab_bench::Machine;
use unetlab_provenance::{now_utc, Build};
use unetlab_report::{to_markdown, write_csv, write_parquet, write_text};

use crate::stats;
use crate::tools::{build_unetlab, target_dir};

/// Measure f16, bf16 and int8 errors and f16 headroom (`unetlab precision`) for a few configs at
/// full size (seeded weights, 64x64 latent, batch 1) and on every seed of their trained proxies
/// from an `ablate` study (found through the study's cache), and compare swish with gelu.
#[derive(clap::Args)]
pub struct PrecisionArgs {
    /// Configs (files under configs/ by name, or presets).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chain-04-shared-kv,chain-05-swish,mobilediffusion,md-lite"
    )]
    configs: Vec<String>,
    /// The `ablate` study whose trained proxies are measured (`results/<study>/cache` names the
    /// runs).
    #[arg(long, default_value = "ablate-full")]
    study: String,
    /// Where that study's training runs are (default: target/ablate-runs).
    #[arg(long)]
    runs: Option<PathBuf>,
    /// Output folder (default: results/precision).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The gelu step and the swish step of the chain: the paper's "swish is more stable in fp16 and
/// int8" claim compares these two.
const GELU: &str = "chain-04-shared-kv";
const SWISH: &str = "chain-05-swish";

/// The error columns of a report, as (report field, metric, column label).
const METRICS: [(&str, &str, &str); 4] = [
    ("f16", "relative", "f16 max |Δ| (% of max |out|)"),
    ("bf16", "relative", "bf16 max |Δ| (% of max |out|)"),
    ("int8", "relative", "int8 max |Δ| (% of max |out|)"),
    ("int8", "rms_relative", "int8 RMS Δ (% of RMS out)"),
];

/// Runs `cargo xtask precision`.
pub fn run(args: &PrecisionArgs, root: &Path) -> Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("results/precision"));
    let runs_dir = args
        .runs
        .clone()
        .unwrap_or_else(|| target_dir(root).join("ablate-runs"));
    let started = now_utc();
    let unetlab = build_unetlab(root)?;
    let files: Vec<String> = args
        .configs
        .iter()
        .map(|name| {
            let file = root.join("configs").join(format!("{name}.yaml"));
            if file.is_file() {
                file.display().to_string()
            } else {
                name.clone()
            }
        })
        .collect();

    eprintln!("precision: {} configs at full size", files.len());
    let mut full = Command::new(&unetlab);
    full.args(["precision", "--batch", "1", "--json"])
        .args(&files);
    let full = reports(&mut full)?;

    let proxies = proxy_runs(
        &root.join("results").join(&args.study),
        &runs_dir,
        &args.configs,
    )?;
    eprintln!("precision: {} trained proxies", proxies.len());
    let mut proxy = Command::new(&unetlab);
    proxy.args(["precision", "--json"]);
    for (_, _, dir) in &proxies {
        proxy.arg("--run").arg(dir);
    }
    let proxy_reports = if proxies.is_empty() {
        Vec::new()
    } else {
        reports(&mut proxy)?
    };

    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut rows = Vec::new();
    for (name, report) in args.configs.iter().zip(&full) {
        rows.push(Row::new(name, "full size, seeded weights", &[report]));
    }
    for name in &args.configs {
        let seeds: Vec<&Value> = proxies
            .iter()
            .zip(&proxy_reports)
            .filter(|((config, ..), _)| config == name)
            .map(|(_, r)| r)
            .collect();
        if !seeds.is_empty() {
            rows.push(Row::new(name, "trained proxy", &seeds));
        }
    }
    let mut df = frame(&rows)?;
    write_csv(&mut df, &out.join("table.csv"))?;
    write_parquet(&mut df, &out.join("table.parquet"))?;
    let all = serde_json::json!({
        "full_size": full,
        "proxies": proxies.iter().zip(&proxy_reports).map(|((config, seed, dir), r)| {
            serde_json::json!({"config": config, "seed": seed, "run": dir, "report": r})
        }).collect::<Vec<_>>(),
    });
    write_text(
        &out.join("reports.json"),
        &serde_json::to_string_pretty(&all)?,
    )?;
    write_text(
        &out.join("rows.json"),
        &serde_json::to_string_pretty(&rows)?,
    )?;
    let command = format!(
        "cargo xtask precision --configs {} --study {}",
        args.configs.join(","),
        args.study
    );
    let readme = readme(&command, &started, &rows, &to_markdown(&df), &args.study);
    write_text(&out.join("README.md"), &readme)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Runs `unetlab precision --json` and parses its reports.
fn reports(command: &mut Command) -> Result<Vec<Value>> {
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running unetlab precision")?;
    if !output.status.success() {
        bail!("unetlab precision failed ({})", output.status);
    }
    let reports: Vec<Value> =
        serde_json::from_slice(&output.stdout).context("reading unetlab precision --json")?;
    Ok(reports)
}

/// The training code identities behind a study's table: `run.json`'s training builds. Its cache
/// keeps entries of earlier identities too (a re-run under a changed trainer adds, never deletes).
fn study_training_codes(study: &Path) -> Result<Vec<String>> {
    let path = study.join("run.json");
    let run: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("reading {}", path.display()))?;
    let codes: Vec<String> = run["provenance"]["builds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["kind"] == "training")
        .filter_map(|b| b["code"].as_str().map(str::to_string))
        .collect();
    if codes.is_empty() {
        bail!(
            "{} names no training build: the study trained nothing",
            path.display()
        );
    }
    Ok(codes)
}

/// The finished training runs of `configs` in a study: (config, seed, run directory), found by
/// the run hashes its cache records, under the training code identities its table was made
/// with, among the run directories under `runs`.
fn proxy_runs(
    study: &Path,
    runs: &Path,
    configs: &[String],
) -> Result<Vec<(String, u64, PathBuf)>> {
    let codes = study_training_codes(study)?;
    let cache = study.join("cache");
    let mut wanted: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let entries = std::fs::read_dir(&cache).with_context(|| {
        format!(
            "reading {}: run `cargo xtask ablate` for that study first",
            cache.display()
        )
    })?;
    for entry in entries {
        let path = entry?.path();
        let is_train = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("train-"));
        if !is_train {
            continue;
        }
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        let config = summary["config"].as_str().unwrap_or_default().to_string();
        let code = summary["provenance"]["code"].as_str().unwrap_or_default();
        // Fine-tuning runs belong to their own config; only the configs asked for count.
        if configs.contains(&config) && codes.iter().any(|c| c == code) {
            let run_hash = summary["run_hash"].as_str().unwrap_or_default().to_string();
            let seed = summary["recipe"]["seed"].as_u64().unwrap_or_default();
            wanted.insert(run_hash, (config, seed));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some((config, seed)) = wanted.values().find(|key| !seen.insert(*key)) {
        bail!(
            "{} holds two runs of {config} seed {seed} under one training build: re-run \
             `cargo xtask ablate` for the study so that its table names one",
            cache.display()
        );
    }
    let mut found = Vec::new();
    if runs.is_dir() {
        for entry in std::fs::read_dir(runs)? {
            let dir = entry?.path();
            let Ok(text) = std::fs::read_to_string(dir.join("run.json")) else {
                continue;
            };
            let Ok(summary) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let hash = summary["run_hash"].as_str().unwrap_or_default();
            if let Some((config, seed)) = wanted.get(hash) {
                found.push((config.clone(), *seed, dir));
            }
        }
    }
    found.sort();
    if found.len() < wanted.len() {
        eprintln!(
            "precision: {} of the study's {} runs of these configs are not under {} (their \
             checkpoints are needed); measuring the {} found",
            wanted.len() - found.len(),
            wanted.len(),
            runs.display(),
            found.len()
        );
    }
    Ok(found)
}

/// One line of the table: a config's reports (one, or one per seed) summarised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    config: String,
    weights: String,
    seeds: usize,
    /// Mean and sample standard deviation of each of [`METRICS`].
    metrics: Vec<(f64, Option<f64>)>,
    /// Smallest f16 headroom over the reports, with its block.
    headroom: (f64, String),
    non_finite: u64,
}

impl Row {
    fn new(config: &str, weights: &str, reports: &[&Value]) -> Row {
        let metrics = METRICS
            .iter()
            .map(|(field, metric, _)| {
                let values: Vec<f64> = reports
                    .iter()
                    .map(|r| 100.0 * r[field][metric].as_f64().unwrap_or(f64::NAN))
                    .collect();
                stats::mean_sd(&values).expect("a row has at least one report")
            })
            .collect();
        let headroom = reports
            .iter()
            .map(|r| {
                let b = &r["tightest_block"];
                (
                    b["f16_headroom"].as_f64().unwrap_or(f64::NAN),
                    b["block"].as_str().unwrap_or_default().to_string(),
                )
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((f64::NAN, String::new()));
        let non_finite = reports
            .iter()
            .map(|r| r["f16"]["non_finite"].as_u64().unwrap_or_default())
            .sum();
        Row {
            config: config.to_string(),
            weights: weights.to_string(),
            seeds: reports.len(),
            metrics,
            headroom,
            non_finite,
        }
    }
}

fn frame(rows: &[Row]) -> Result<DataFrame> {
    let text = |values: Vec<String>, name: &str| Column::new(name.into(), values);
    let mut columns = vec![
        text(rows.iter().map(|r| r.config.clone()).collect(), "config"),
        text(rows.iter().map(|r| r.weights.clone()).collect(), "weights"),
        Column::new(
            "seeds".into(),
            rows.iter().map(|r| r.seeds as u64).collect::<Vec<_>>(),
        ),
    ];
    for (i, (_, _, label)) in METRICS.iter().enumerate() {
        columns.push(Column::new(
            (*label).into(),
            rows.iter().map(|r| r.metrics[i].0).collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            format!("{label} sd").into(),
            rows.iter().map(|r| r.metrics[i].1).collect::<Vec<_>>(),
        ));
    }
    columns.push(Column::new(
        "f16 headroom (smallest)".into(),
        rows.iter().map(|r| r.headroom.0).collect::<Vec<_>>(),
    ));
    columns.push(text(
        rows.iter().map(|r| r.headroom.1.clone()).collect(),
        "tightest block",
    ));
    columns.push(Column::new(
        "f16 non-finite outputs".into(),
        rows.iter().map(|r| r.non_finite).collect::<Vec<_>>(),
    ));
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// The rows a `cargo xtask precision` wrote into `dir` (`rows.json`), if it did.
pub fn read_rows(dir: &Path) -> Option<Vec<Row>> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("rows.json")).ok()?).ok()
}

/// `config` against `baseline` on one of [`METRICS`] over their trained proxies: (baseline mean,
/// config mean, effect in % of the baseline, its standard error in %), when both were measured
/// with several seeds.
fn effect(
    rows: &[Row],
    config: &str,
    baseline: &str,
    metric: usize,
) -> Option<(f64, f64, f64, f64)> {
    let proxy = |name: &str| {
        rows.iter()
            .find(|r| r.config == name && r.weights == "trained proxy")
    };
    let (base, row) = (proxy(baseline)?, proxy(config)?);
    let (b, bsd) = base.metrics[metric];
    let (c, csd) = row.metrics[metric];
    let se = (bsd?.powi(2) / base.seeds as f64 + csd?.powi(2) / row.seeds as f64).sqrt();
    Some((b, c, 100.0 * (c - b) / b, 100.0 * se / b))
}

/// The f16 and int8 errors of `config` against `baseline` for the ablation table's effect
/// column ("f16 error −6.6 % ± 13.5 %, int8 RMS error −2.4 % ± 2.4 % (results/precision)"), when
/// the precision study measured both.
pub fn effect_text(rows: &[Row], config: &str, baseline: &str) -> Option<String> {
    let parts: Vec<String> = [(0, "f16 error"), (3, "int8 RMS error")]
        .iter()
        .filter_map(|&(metric, label)| {
            let (_, _, e, se) = effect(rows, config, baseline, metric)?;
            Some(format!("{label} {e:+.1} % ± {se:.1} %"))
        })
        .collect();
    (!parts.is_empty()).then(|| format!("{} (results/precision)", parts.join(", ")))
}

fn readme(command: &str, started: &str, rows: &[Row], table: &str, study: &str) -> String {
    let build = Build::current();
    let machine = Machine::current();
    let mut s = format!(
        "# Precision: f16, bf16 and int8\n\nWritten by `{command}` at commit `{}` on {} ({} \
         threads), started {started}. Nothing here is edited by hand; every report is in \
         `reports.json`.\n\n",
        build.label(),
        machine.cpu(),
        machine.threads
    );
    s.push_str(
        "What `unetlab precision` measures, per config, on a seeded batch of the config's example \
         inputs (N(0, 1) latents and text states, spread timesteps):\n\n\
         - **f16, bf16**: the candle forward with weights and activations in that type, against \
         f32: the largest absolute output difference relative to the largest output magnitude, \
         and non-finite outputs (f16 overflow).\n\
         - **f16 headroom**: 65,504 (f16's largest value) over the largest activation magnitude \
         computed in f32 anywhere in a block (every op's output, attention scores included); the \
         table shows the tightest block.\n\
         - **int8**: every conv and linear computed as a QDQ graph computes it (symmetric int8 \
         weights per output channel; symmetric int8 inputs per tensor with ranges calibrated on \
         another seeded batch; biases and everything else f32), against the same forward in \
         f32: the largest difference relative to the largest output, and the RMS difference \
         relative to the output's RMS.\n\n",
    );
    s.push_str(&format!(
        "Rows: each config at full size (seeded weights, seed 0, 64x64 latent, batch 1), and its \
         proxies trained by the `{study}` study (EMA weights, every seed: mean, and `sd` across \
         seeds; batch 2).\n\n"
    ));
    s.push_str(table);
    s.push_str(
        "\n\nFiles: `table.{csv,parquet}` (above), `reports.json` (every report, every block), \
         `rows.json` (the table's rows, which `cargo xtask ablate` reads to put each step's f16 and \
         int8 effect beside its other effects).",
    );
    s.push_str("\n\n## Swish against gelu\n\nThe paper replaces gelu with swish because swish is \"more stable in fp16 and int8\". Measured on the trained proxies (chain-05-swish against chain-04-shared-kv, identical but for the feed-forward activation); the effect is swish's change in % of gelu's value, ± its standard error across seeds:\n\n");
    let mut any = false;
    for (i, (_, _, label)) in METRICS.iter().enumerate() {
        if let Some((g, w, effect, se)) = effect(rows, SWISH, GELU, i) {
            any = true;
            let verdict = if effect.abs() < 2.0 * se {
                "within 2σ: no measurable difference"
            } else if effect < 0.0 {
                "swish lower beyond 2σ"
            } else {
                "swish higher beyond 2σ"
            };
            s.push_str(&format!(
                "- {label}: gelu {g:.3}, swish {w:.3}: {effect:+.1} % ± {se:.1} % ({verdict})\n"
            ));
        }
    }
    if !any {
        s.push_str(&format!(
            "- not measured: the `{study}` study's runs of {GELU} and {SWISH} (two or more seeds each) were not found\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished run: its directory under `runs/` and its entry in the study's cache.
    fn run(root: &Path, name: &str, config: &str, seed: u64, code: &str) {
        let summary = serde_json::json!({
            "config": config,
            "run_hash": format!("hash-{name}"),
            "recipe": {"seed": seed},
            "provenance": {"code": code},
        })
        .to_string();
        let dir = root.join("runs").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("run.json"), &summary).unwrap();
        let cached = root.join("study/cache").join(format!("train-{name}.json"));
        std::fs::write(cached, &summary).unwrap();
    }

    #[test]
    fn proxy_runs_are_those_of_the_training_build_the_study_names() {
        let root = tempfile::tempdir().unwrap();
        let study = root.path().join("study");
        std::fs::create_dir_all(study.join("cache")).unwrap();
        let provenance = serde_json::json!({"provenance": {"builds": [
            {"kind": "latency", "code": "old"},
            {"kind": "training", "code": "new"},
        ]}});
        std::fs::write(study.join("run.json"), provenance.to_string()).unwrap();
        run(root.path(), "a-old", "a", 0, "old");
        run(root.path(), "a-new-0", "a", 0, "new");
        run(root.path(), "a-new-1", "a", 1, "new");
        run(root.path(), "b-new", "b", 0, "new");
        let found = proxy_runs(&study, &root.path().join("runs"), &["a".into()]).unwrap();
        let names: Vec<(String, u64, String)> = found
            .into_iter()
            .map(|(c, s, d)| (c, s, d.file_name().unwrap().to_string_lossy().into()))
            .collect();
        assert_eq!(
            names,
            [
                ("a".to_string(), 0, "a-new-0".to_string()),
                ("a".to_string(), 1, "a-new-1".to_string()),
            ]
        );
        // Two runs of one config and seed under the table's build are ambiguous.
        run(root.path(), "a-new-0-again", "a", 0, "new");
        let error = proxy_runs(&study, &root.path().join("runs"), &["a".into()]).unwrap_err();
        assert!(
            error.to_string().contains("two runs of a seed 0"),
            "{error}"
        );
    }

    fn row(config: &str, mean: f64, sd: f64) -> Row {
        Row {
            config: config.into(),
            weights: "trained proxy".into(),
            seeds: 3,
            metrics: vec![(mean, Some(sd)); METRICS.len()],
            headroom: (1000.0, "mid_block".into()),
            non_finite: 0,
        }
    }

    #[test]
    fn effects_are_relative_to_the_baseline_with_the_seeds_standard_error() {
        let rows = [row(GELU, 2.0, 0.1), row(SWISH, 1.8, 0.1)];
        let (b, c, e, se) = effect(&rows, SWISH, GELU, 3).unwrap();
        assert_eq!((b, c), (2.0, 1.8));
        assert!((e + 10.0).abs() < 1e-9);
        // √(0.1²/3 + 0.1²/3) = 0.0816 of 2.0: 4.08 %.
        assert!((se - 100.0 * (0.02f64 / 3.0).sqrt() / 2.0).abs() < 1e-9);
        assert_eq!(
            effect_text(&rows, SWISH, GELU).unwrap(),
            "f16 error -10.0 % ± 4.1 %, int8 RMS error -10.0 % ± 4.1 % (results/precision)"
        );
        assert!(effect_text(&rows, SWISH, "md-lite").is_none());
    }
}
