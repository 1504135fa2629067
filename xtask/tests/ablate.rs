//! `cargo xtask ablate` end to end: the CI smoke run over configs/*.yaml, checked against the cost
//! interpreter, an interrupted run that resumes to the same table, training with seeds, and the
//! paper's claims judged from the runs (with a fine-tuned step and a seeded subset).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use polars::prelude::AnyValue;
use unetlab_cost::{count, Conditions};
use unetlab_report::{read_csv, read_parquet};
use unetlab_spec::Config;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ablate(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.arg("ablate").args(args).current_dir(workspace());
    cmd
}

fn run(args: &[&str]) -> Output {
    let out = ablate(args).output().unwrap();
    assert!(
        out.status.success(),
        "ablate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn yaml_files(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(workspace().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            p.strip_prefix(workspace())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

fn f64_at(df: &polars::prelude::DataFrame, column: &str, row: usize) -> Option<f64> {
    match df.column(column).unwrap().get(row).unwrap() {
        AnyValue::Float64(v) => Some(v),
        AnyValue::Null => None,
        other => panic!("{column}[{row}] = {other:?}"),
    }
}

fn str_at(df: &polars::prelude::DataFrame, column: &str, row: usize) -> String {
    match df.column(column).unwrap().get(row).unwrap() {
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        AnyValue::Null => String::new(),
        other => panic!("{column}[{row}] = {other:?}"),
    }
}

#[test]
fn smoke_run_over_every_config_matches_the_cost_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let configs = yaml_files("configs");
    let mut args: Vec<&str> = configs.iter().map(String::as_str).collect();
    args.extend([
        "--budget",
        "smoke",
        "--no-train",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    run(&args);

    for file in [
        "table.md",
        "table.csv",
        "table.parquet",
        "measurements.md",
        "measurements.csv",
        "measurements.parquet",
        "run.json",
        "README.md",
    ] {
        assert!(dir.path().join(file).is_file(), "missing {file}");
    }
    for plot in [
        "params_gflops",
        "macs_by_level",
        "latency",
        "latency_vs_gflops",
        "per_block",
    ] {
        for ext in ["svg", "png"] {
            let meta = std::fs::metadata(dir.path().join(format!("{plot}.{ext}"))).unwrap();
            assert!(meta.len() > 1000, "{plot}.{ext} is too small");
        }
    }
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run.json")).unwrap())
            .unwrap();
    assert_eq!(run["budget"], "smoke");
    assert_eq!(run["configs"].as_array().unwrap().len(), configs.len());
    assert!(run["commit"].as_str().unwrap().len() >= 7);

    let table = read_csv(&dir.path().join("table.csv")).unwrap();
    assert_eq!(table.height(), configs.len());
    assert_eq!(
        read_parquet(&dir.path().join("table.parquet"))
            .unwrap()
            .height(),
        configs.len()
    );
    for (row, file) in configs.iter().enumerate() {
        let config = Config::load(workspace().join(file).to_str().unwrap()).unwrap();
        assert_eq!(str_at(&table, "config", row), config.name);
        let latent = (1usize << (config.spec.levels.len() - 1)).max(8);
        let cost = count(
            &config.spec,
            Conditions {
                batch: 1,
                latent_size: latent,
                tokens: config.spec.text_tokens,
            },
        )
        .unwrap();
        let close = |column: &str, expected: f64| {
            let got = f64_at(&table, column, row).unwrap();
            assert!(
                (got - expected).abs() <= 1e-9 * expected.abs().max(1.0),
                "{file} {column}: {got} vs {expected}"
            );
        };
        close("params (M)", cost.params() as f64 / 1e6);
        close("conv GMACs", cost.macs.conv as f64 / 1e9);
        close("linear GMACs", cost.macs.linear as f64 / 1e9);
        close("attention GMACs", cost.macs.attention as f64 / 1e9);
        close("GFLOPs", cost.flops() as f64 / 1e9);
        let (median, p10, p90) = (
            f64_at(&table, "latency median (s)", row).unwrap(),
            f64_at(&table, "p10 (s)", row).unwrap(),
            f64_at(&table, "p90 (s)", row).unwrap(),
        );
        assert!(
            median > 0.0 && p10 <= median && median <= p90,
            "{file}: {p10} {median} {p90}"
        );
        assert_eq!(
            str_at(&table, "paper claim", row),
            config.paper.map(|p| p.claim).unwrap_or_default()
        );
    }
    let chain = configs
        .iter()
        .position(|c| c.contains("chain-04-shared-kv"))
        .unwrap();
    assert!(str_at(&table, "measured effect", chain)
        .starts_with("vs chain-03-cross-attention-only-high-res: params -5.1 %"));

    let long = read_csv(&dir.path().join("measurements.csv")).unwrap();
    assert_eq!(
        long.get_column_names()
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>(),
        [
            "config",
            "hash",
            "measurement",
            "value",
            "unit",
            "conditions",
            "build",
            "measured_utc",
            "source"
        ]
    );
    assert!(long.height() > 16 * configs.len());
    // A fresh output folder: every count was computed and every other number measured by this
    // build; none came from a cache.
    let label = unetlab_provenance::Build::current().label();
    let counts = [
        "params",
        "tensors",
        "macs_conv",
        "macs_linear",
        "macs_attention",
        "macs_total",
        "flops",
        "res_blocks",
        "transformer_blocks",
        "self_attention_blocks",
        "cross_attention_blocks",
        "peak_activation_memory",
    ];
    for i in 0..long.height() {
        let measurement = str_at(&long, "measurement", i);
        let want = if counts.contains(&measurement.as_str()) {
            "computed"
        } else {
            "measured"
        };
        assert_eq!(str_at(&long, "source", i), want, "{measurement}");
        assert_eq!(str_at(&long, "build", i), label);
    }
}

/// The cached measurements and runs (not the machine-free pointers `--merge` reads).
fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("cache"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .filter(|p| {
                    !p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("bench-on-")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn an_interrupted_run_resumes_to_the_same_table() {
    let configs = [
        "configs/fixtures/tiny-sd.yaml",
        "configs/fixtures/tiny-sdxl.yaml",
        "configs/md-lite.yaml",
        "configs/fixtures/every-choice.yaml",
    ];
    let whole = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = configs.to_vec();
    args.extend([
        "--budget",
        "smoke",
        "--no-train",
        "--out",
        whole.path().to_str().unwrap(),
    ]);
    run(&args);

    let resumed = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = configs.to_vec();
    args.extend([
        "--budget",
        "smoke",
        "--no-train",
        "--out",
        resumed.path().to_str().unwrap(),
    ]);
    let mut child = ablate(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while cache_files(resumed.path()).is_empty() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let kept = cache_files(resumed.path());
    assert!(
        !kept.is_empty() && kept.len() < configs.len(),
        "the kill must land mid-run ({} cached)",
        kept.len()
    );
    assert!(!resumed.path().join("table.csv").exists());
    let kept_bytes: Vec<Vec<u8>> = kept.iter().map(|p| std::fs::read(p).unwrap()).collect();

    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(": cached").count(), kept.len(), "{stderr}");
    assert_eq!(cache_files(resumed.path()).len(), configs.len());
    for (p, bytes) in kept.iter().zip(&kept_bytes) {
        assert_eq!(
            &std::fs::read(p).unwrap(),
            bytes,
            "a finished measurement was redone"
        );
    }

    let (a, b) = (
        read_csv(&whole.path().join("table.csv")).unwrap(),
        read_csv(&resumed.path().join("table.csv")).unwrap(),
    );
    assert_eq!(a.height(), configs.len());
    assert_eq!(b.height(), configs.len());
    for column in ["config", "step", "res / SA / CA", "latent", "paper claim"] {
        assert_eq!(
            a.column(column).unwrap(),
            b.column(column).unwrap(),
            "{column}"
        );
    }
    for column in [
        "params (M)",
        "conv GMACs",
        "linear GMACs",
        "attention GMACs",
        "GFLOPs",
    ] {
        assert_eq!(
            a.column(column).unwrap(),
            b.column(column).unwrap(),
            "{column}"
        );
    }
    for row in 0..b.height() {
        assert!(f64_at(&b, "latency median (s)", row).unwrap() > 0.0);
    }
    let long = |d: &Path| read_csv(&d.join("measurements.csv")).unwrap().height();
    assert_eq!(
        long(whole.path()),
        long(resumed.path()),
        "no lost or duplicated measurement rows"
    );

    // Provenance survives the kill: the rows measured before it keep their build and time and
    // say they came from the cache; the rest were measured by this build on the resume.
    let label = unetlab_provenance::Build::current().label();
    let kept_rows: Vec<(String, String)> = kept_bytes
        .iter()
        .map(|bytes| {
            let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let p = &v["provenance"];
            assert_eq!(p["code"], unetlab_provenance::Code::Latency.identity());
            (
                v["config"].as_str().unwrap().to_string(),
                p["measured_utc"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for row in 0..b.height() {
        let name = str_at(&b, "config", row);
        let by = str_at(&b, "latency measured by", row);
        assert!(by.starts_with(&format!("{label} ")), "{by}");
        match kept_rows.iter().find(|(n, _)| *n == name) {
            Some((_, when)) => assert_eq!(by, format!("{label} {when} (cache)")),
            None => assert!(!by.ends_with("(cache)"), "{name}: {by}"),
        }
    }
    let sources = read_csv(&resumed.path().join("measurements.csv")).unwrap();
    let latency_sources: Vec<String> = (0..sources.height())
        .filter(|&i| str_at(&sources, "measurement", i) == "latency_median")
        .map(|i| str_at(&sources, "source", i))
        .collect();
    assert_eq!(latency_sources.len(), configs.len());
    assert_eq!(
        latency_sources.iter().filter(|s| *s == "cache").count(),
        kept.len()
    );
    let run_json = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("run.json")).unwrap()).unwrap()
    };
    let provenance = &run_json(resumed.path())["provenance"];
    assert_eq!(provenance["mode"], "measured");
    assert_eq!(provenance["rows_from_cache"], kept.len());
    assert_eq!(provenance["mixed_builds"], false);
    let readme = std::fs::read_to_string(resumed.path().join("README.md")).unwrap();
    assert!(readme.contains(&format!(
        "it measured {} of {} rows",
        configs.len() - kept.len(),
        configs.len()
    )));

    let again = run(&args);
    assert_eq!(
        String::from_utf8_lossy(&again.stderr)
            .matches(": cached")
            .count(),
        configs.len()
    );
    // A run that measured nothing says it only re-rendered, and keeps every row's time.
    assert_eq!(
        run_json(resumed.path())["provenance"]["mode"],
        "re-rendered"
    );
    let c = read_csv(&resumed.path().join("table.csv")).unwrap();
    for row in 0..c.height() {
        let (before, after) = (
            str_at(&b, "latency measured by", row),
            str_at(&c, "latency measured by", row),
        );
        assert_eq!(
            after,
            before.trim_end_matches(" (cache)").to_string() + " (cache)"
        );
    }
}

#[test]
fn training_fills_the_quality_columns_and_a_diverging_run_is_a_failed_row() {
    let configs = ["configs/fixtures/tiny-sd.yaml", "configs/md-lite.yaml"];
    let dir = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = configs.to_vec();
    args.extend([
        "--budget",
        "smoke",
        "--out",
        dir.path().to_str().unwrap(),
        "--runs",
        runs.path().to_str().unwrap(),
    ]);
    run(&args);

    let table = read_csv(&dir.path().join("table.csv")).unwrap();
    for row in 0..configs.len() {
        let loss = f64_at(&table, "proxy val loss", row).unwrap();
        assert!(loss.is_finite() && loss > 0.0, "row {row}: {loss}");
        let fd = f64_at(&table, "FD", row).unwrap();
        assert!(fd.is_finite() && fd > 0.0, "row {row}: {fd}");
        for column in ["text alignment", "attribute alignment"] {
            let v = f64_at(&table, column, row).unwrap();
            assert!((0.0..=1.0).contains(&v), "{column}[{row}] = {v}");
        }
        assert!(f64_at(&table, "proxy steps/s", row).unwrap() > 0.0);
        let name = str_at(&table, "config", row);
        let grid = dir.path().join("samples").join(format!("{name}.png"));
        assert!(std::fs::metadata(&grid).unwrap().len() > 500, "{grid:?}");
    }
    // md-lite names md-lite's baseline (mobilediffusion), which is not in this run, so its
    // effect column stays empty; the numbers above come from each config's own run.json.
    for ext in ["svg", "png"] {
        assert!(dir.path().join(format!("pareto.{ext}")).is_file());
    }
    let readme = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
    assert!(readme.contains("## Quality (proxy training)"), "{readme}");
    assert!(readme.contains("Pareto front"), "{readme}");
    let cached = |d: &Path| {
        std::fs::read_dir(d.join("cache"))
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("train-")
            })
            .count()
    };
    assert_eq!(cached(dir.path()), configs.len());

    // A second run trains nothing: every run comes from the cache.
    let again = run(&args);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("2 run(s) cached"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // An absurd learning rate diverges: the row is marked failed, the sweep still writes its
    // table, and nothing is cached for the failed run.
    let failed = tempfile::tempdir().unwrap();
    run(&[
        "configs/fixtures/tiny-sd.yaml",
        "--budget",
        "smoke",
        "--lr",
        "1e30",
        "--out",
        failed.path().to_str().unwrap(),
        "--runs",
        runs.path().to_str().unwrap(),
    ]);
    let table = read_csv(&failed.path().join("table.csv")).unwrap();
    let effect = str_at(&table, "measured effect", 0);
    assert!(
        effect.starts_with("training FAILED") && effect.contains("diverged"),
        "{effect}"
    );
    assert_eq!(f64_at(&table, "FD", 0), None);
    assert_eq!(cached(failed.path()), 0);
}

#[test]
fn several_seeds_report_mean_and_spread() {
    let dir = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    run(&[
        "configs/fixtures/tiny-sd.yaml",
        "--budget",
        "smoke",
        "--seeds",
        "2",
        "--out",
        dir.path().to_str().unwrap(),
        "--runs",
        runs.path().to_str().unwrap(),
    ]);
    // The two runs' own run.json (cached), read independently of the table.
    let fds: Vec<f64> = train_runs(dir.path())
        .iter()
        .map(|run| run["metrics"]["quality"]["fd"].as_f64().unwrap())
        .collect();
    assert_eq!(fds.len(), 2);
    assert_ne!(fds[0], fds[1], "different seeds give different runs");
    let mean = (fds[0] + fds[1]) / 2.0;
    let sd = (fds[0] - fds[1]).abs() / 2f64.sqrt();
    let table = read_csv(&dir.path().join("table.csv")).unwrap();
    assert!((f64_at(&table, "FD", 0).unwrap() - mean).abs() < 1e-6 * mean);
    assert!((f64_at(&table, "FD sd", 0).unwrap() - sd).abs() < 1e-6 * mean.max(1.0));
}

/// The cached run.json of every training run of a study.
fn train_runs(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(out.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("train-")
        })
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

/// The cached runs of one config, by seed.
fn train_runs_of(out: &Path, config: &str) -> Vec<serde_json::Value> {
    let mut runs: Vec<serde_json::Value> = train_runs(out)
        .into_iter()
        .filter(|r| r["config"] == config)
        .collect();
    runs.sort_by_key(|r| r["recipe"]["seed"].as_u64().unwrap());
    runs
}

/// A numeric cell, however the CSV reader typed it.
fn num_at(df: &polars::prelude::DataFrame, column: &str, row: usize) -> f64 {
    match df.column(column).unwrap().get(row).unwrap() {
        AnyValue::Float64(v) => v,
        AnyValue::Int64(v) => v as f64,
        other => panic!("{column}[{row}] = {other:?}"),
    }
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
    let mut args: Vec<&str> = Vec::new();
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
    run(&args);

    // Two seeds for the subset and the parent of its fine-tuning config, one for the rest.
    assert_eq!(train_runs_of(&out, "other").len(), 1);
    let (softmax, relu) = (train_runs_of(&out, "softmax"), train_runs_of(&out, "relu"));
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
        let metric = str_at(&claims, "metric", row);
        assert_eq!(str_at(&claims, "config", row), "relu");
        assert_eq!(str_at(&claims, "baseline", row), "softmax");
        let verdict = str_at(&claims, "verdict", row);
        let get: Box<dyn Fn(&serde_json::Value) -> f64> = match metric.as_str() {
            "validation_loss" => Box::new(|r| r["validation_loss"].as_f64().unwrap()),
            "fd" => Box::new(|r| r["metrics"]["quality"]["fd"].as_f64().unwrap()),
            "params" => {
                // Exact counts: ReLU attention has the same parameters, so no loss.
                assert_eq!(num_at(&claims, "effect (% worse)", row), 0.0);
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
            let got = num_at(&claims, column, row);
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
        assert_eq!(str_at(&claims, "seeds", row), "2 vs 2");
    }
    let table = read_csv(&out.join("table.csv")).unwrap();
    let relu_row = (0..table.height())
        .find(|&r| str_at(&table, "config", r) == "relu")
        .unwrap();
    assert!(str_at(&table, "verdict", relu_row).contains("params no loss: reproduced"));
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
    run(&args);
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
    let alone = tmp.path().join("alone");
    let failed = ablate(&[
        files[1].as_str(),
        "--budget",
        "smoke",
        "--out",
        alone.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("softmax is not in this study"), "{stderr}");
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn a_frozen_text_encoder_is_every_proxys_and_part_of_the_cache_key() {
    let dir = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let study = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "configs/fixtures/tiny-sd.yaml",
            "--budget",
            "smoke",
            "--out",
            dir.path().to_str().unwrap(),
            "--runs",
            runs.path().to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    // Without it, the proxy trains its own text encoder; that run is the encoder below.
    let plain = study(&[]);
    run(&strs(&plain));
    let own = train_runs(dir.path());
    assert_eq!(own.len(), 1);
    assert!(own[0].get("frozen_text_encoder").is_none(), "{}", own[0]);
    let encoder: Vec<PathBuf> = std::fs::read_dir(runs.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("run.json").is_file())
        .collect();
    assert_eq!(encoder.len(), 1, "{encoder:?}");
    let encoder = encoder[0].to_str().unwrap();

    // Not a finished run: refused before anything is measured (a fresh study folder stays
    // without cached measurements).
    let fresh = tempfile::tempdir().unwrap();
    let out = ablate(&[
        "configs/fixtures/tiny-sd.yaml",
        "--budget",
        "smoke",
        "--out",
        fresh.path().to_str().unwrap(),
        "--frozen-text-encoder",
        runs.path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no run.json"), "{stderr}");
    assert_eq!(cache_files(fresh.path()), Vec::<PathBuf>::new());

    // With it: another cache key, so the proxy trains again, under that run's text encoder; and
    // a step fine-tuned from it (as chain-06 from chain-05) starts from that run and keeps the
    // same frozen encoder.
    let configs = tempfile::tempdir().unwrap();
    let child = configs.path().join("relu.yaml");
    std::fs::write(
        &child,
        format!(
            "extends: {}\npaper:\n  step: ReLU attention\n  claim: no loss\n  baseline: tiny-sd\n  \
             expect: {{validation_loss: no_loss}}\n  fine_tune: {{from: tiny-sd, fraction: 0.5}}\n\
             unet:\n  attention: {{kernel: relu}}\n",
            workspace().join("configs/fixtures/tiny-sd.yaml").display()
        ),
    )
    .unwrap();
    let frozen = study(&["--frozen-text-encoder", encoder, child.to_str().unwrap()]);
    run(&strs(&frozen));
    let parents = train_runs_of(dir.path(), "tiny-sd");
    assert_eq!(
        parents.len(),
        2,
        "the frozen run is cached beside the plain one"
    );
    let taken = parents
        .iter()
        .find(|r| r.get("frozen_text_encoder").is_some())
        .expect("a run under the frozen encoder");
    assert_eq!(taken["frozen_text_encoder"], own[0]["run_hash"]);
    let tuned = train_runs_of(dir.path(), "relu");
    assert_eq!(tuned.len(), 1);
    assert_eq!(tuned[0]["initialised_from"], taken["run_hash"]);
    assert_eq!(tuned[0]["frozen_text_encoder"], own[0]["run_hash"]);
    // Its text encoder is the encoder run's EMA weights, untouched by either run's optimizer.
    let checkpoint_of = |hash: &serde_json::Value| {
        let dir = std::fs::read_dir(runs.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                std::fs::read_to_string(p.join("run.json")).is_ok_and(|t| {
                    serde_json::from_str::<serde_json::Value>(&t).unwrap()["run_hash"] == *hash
                })
            })
            .unwrap_or_else(|| panic!("no run directory of {hash}"));
        candle_core::safetensors::load(
            dir.join("checkpoint.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (source, tuned_weights) = (
        checkpoint_of(&own[0]["run_hash"]),
        checkpoint_of(&tuned[0]["run_hash"]),
    );
    let text: Vec<&String> = tuned_weights
        .keys()
        .filter(|k| k.starts_with("model.text."))
        .collect();
    assert!(!text.is_empty());
    for name in text {
        let ema = source[&name.replacen("model.", "ema.", 1)]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = tuned_weights[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got, ema, "{name}");
    }
    let readme = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
    let hash = own[0]["run_hash"].as_str().unwrap();
    assert!(
        readme.contains(&format!(
            "frozen text encoder, that of run `{}`",
            &hash[..16]
        )),
        "{readme}"
    );
}
