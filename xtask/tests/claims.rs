//! `cargo xtask ablate` reading the paper's claims: a fine-tuned step trained after its parent,
//! a seeded subset, and verdicts recomputed here from the runs' own `run.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use polars::prelude::AnyValue;
use unetlab_report::read_csv;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn xtask(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xtask {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cell(df: &polars::prelude::DataFrame, column: &str, row: usize) -> String {
    match df.column(column).unwrap().get(row).unwrap() {
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        AnyValue::Float64(v) => v.to_string(),
        AnyValue::Null => String::new(),
        other => panic!("{column}[{row}] = {other:?}"),
    }
}

fn number(df: &polars::prelude::DataFrame, column: &str, row: usize) -> f64 {
    cell(df, column, row).parse().unwrap()
}

/// The cached run.json files of one config, by seed.
fn runs_of(out: &Path, config: &str) -> Vec<serde_json::Value> {
    let mut runs: Vec<serde_json::Value> = std::fs::read_dir(out.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("train-")
        })
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .filter(|r: &serde_json::Value| r["config"] == config)
        .collect();
    runs.sort_by_key(|r| r["recipe"]["seed"].as_u64().unwrap());
    runs
}

#[test]
fn claims_are_judged_from_the_seeds_and_a_fine_tuned_step_starts_from_its_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = workspace().join("configs/fixtures/tiny-sd.yaml");
    let parent = tmp.path().join("softmax.yaml");
    std::fs::write(&parent, format!("extends: {}\n", fixture.display())).unwrap();
    let child = tmp.path().join("relu.yaml");
    std::fs::write(
        &child,
        format!(
            "extends: {}\npaper:\n  step: ReLU attention\n  claim: no loss\n  baseline: softmax\n  \
             expect: {{validation_loss: no_loss, fd: worse, params: no_loss}}\n  \
             fine_tune: {{from: softmax, fraction: 0.5}}\nunet:\n  attention: {{kernel: relu}}\n",
            parent.display()
        ),
    )
    .unwrap();
    let other = tmp.path().join("other.yaml");
    std::fs::write(
        &other,
        format!(
            "extends: {}\nunet:\n  attention: {{shared_kv: true}}\n",
            fixture.display()
        ),
    )
    .unwrap();
    let (out, runs) = (tmp.path().join("study"), tmp.path().join("runs"));
    let files = [&other, &child, &parent].map(|p| p.to_str().unwrap().to_string());
    let mut args: Vec<&str> = vec!["ablate"];
    args.extend(files.iter().map(String::as_str));
    args.extend([
        "--budget",
        "smoke",
        "--seeds",
        "2",
        "--seeded-subset",
        "relu",
        "--out",
        out.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
    ]);
    xtask(&args);

    // Two seeds for the subset and the parent of its fine-tuning config, one for the rest.
    assert_eq!(runs_of(&out, "other").len(), 1);
    let (softmax, relu) = (runs_of(&out, "softmax"), runs_of(&out, "relu"));
    assert_eq!((softmax.len(), relu.len()), (2, 2));
    // Each fine-tuning run started from the parent's run of its own seed, for half the steps.
    for (p, c) in softmax.iter().zip(&relu) {
        assert_eq!(c["initialised_from"], p["run_hash"]);
        assert_eq!(
            c["recipe"]["steps"].as_u64().unwrap() * 2,
            p["recipe"]["steps"].as_u64().unwrap()
        );
    }

    // The verdicts, recomputed from the runs: the pooled seed σ of two configs with two seeds.
    let claims = read_csv(&out.join("claims.csv")).unwrap();
    assert_eq!(claims.height(), 3);
    let values = |runs: &[serde_json::Value], f: &dyn Fn(&serde_json::Value) -> f64| {
        runs.iter().map(f).collect::<Vec<f64>>()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for row in 0..claims.height() {
        let metric = cell(&claims, "metric", row);
        assert_eq!(cell(&claims, "config", row), "relu");
        assert_eq!(cell(&claims, "baseline", row), "softmax");
        let verdict = cell(&claims, "verdict", row);
        let get: Box<dyn Fn(&serde_json::Value) -> f64> = match metric.as_str() {
            "validation_loss" => Box::new(|r| r["validation_loss"].as_f64().unwrap()),
            "fd" => Box::new(|r| r["metrics"]["quality"]["fd"].as_f64().unwrap()),
            "params" => {
                // Exact counts: ReLU attention has the same parameters, so no loss.
                assert_eq!(number(&claims, "effect (% worse)", row), 0.0);
                assert_eq!(verdict, "reproduced");
                continue;
            }
            other => panic!("unexpected metric {other}"),
        };
        let (a, b) = (values(&relu, &*get), values(&softmax, &*get));
        let effect = (mean(&a) - mean(&b)) / mean(&b);
        let squares: f64 = [&a, &b]
            .iter()
            .map(|v| v.iter().map(|x| (x - mean(v)).powi(2)).sum::<f64>())
            .sum();
        let pooled = (squares / 2.0).sqrt();
        let sigma = pooled * (0.5f64 + 0.5).sqrt() / mean(&b);
        let close = |column: &str, want: f64| {
            let got = number(&claims, column, row);
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1e-6),
                "{metric} {column}: {got} vs {want}"
            );
        };
        close("effect (% worse)", 100.0 * effect);
        close("2 sigma (%)", 200.0 * sigma);
        let want = match metric.as_str() {
            "fd" if effect > 2.0 * sigma => "reproduced",
            "fd" if effect < -2.0 * sigma => "contradicted",
            "fd" => "unresolved",
            _ if effect + 2.0 * sigma <= 0.03 => "reproduced",
            _ if effect - 2.0 * sigma > 0.03 => "contradicted",
            _ => "unresolved",
        };
        assert_eq!(verdict, want, "{metric}");
        assert_eq!(cell(&claims, "seeds", row), "2 vs 2");
    }
    let table = read_csv(&out.join("table.csv")).unwrap();
    let relu_row = (0..table.height())
        .find(|&r| cell(&table, "config", r) == "relu")
        .unwrap();
    assert!(cell(&table, "verdict", relu_row).contains("params no loss: reproduced"));
    for ext in ["svg", "png"] {
        assert!(out.join(format!("claims.{ext}")).is_file());
    }
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("## The paper's claims"), "{readme}");
    assert!(
        readme.contains("Pooled seed standard deviation"),
        "{readme}"
    );

    // Ranked against a study (itself, here): the same order, ρ = 1 over the three configs.
    args.extend(["--rank-against", out.to_str().unwrap()]);
    xtask(&args);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let against: Vec<&serde_json::Value> = run["rank_correlations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["between"].as_str().unwrap().starts_with("this study vs"))
        .collect();
    assert_eq!(against.len(), 2);
    for c in against {
        assert_eq!(c["configs"], 3);
        assert_eq!(c["rho"], 1.0);
    }

    // A fine-tuning parent missing from the study is an error that names it.
    let failed = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["ablate", files[1].as_str(), "--budget", "smoke", "--out"])
        .arg(tmp.path().join("alone"))
        .arg("--runs")
        .arg(&runs)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("softmax is not in this study"), "{stderr}");
}
