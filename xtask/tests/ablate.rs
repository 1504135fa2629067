//! `cargo xtask ablate` end to end: the CI smoke run over configs/*.yaml, checked against the cost
//! interpreter, and an interrupted run that resumes to the same table.

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

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("cache"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
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
    let fds: Vec<f64> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("train-")
        })
        .map(|p| {
            let run: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            run["metrics"]["quality"]["fd"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(fds.len(), 2);
    assert_ne!(fds[0], fds[1], "different seeds give different runs");
    let mean = (fds[0] + fds[1]) / 2.0;
    let sd = (fds[0] - fds[1]).abs() / 2f64.sqrt();
    let table = read_csv(&dir.path().join("table.csv")).unwrap();
    assert!((f64_at(&table, "FD", 0).unwrap() - mean).abs() < 1e-6 * mean);
    assert!((f64_at(&table, "FD sd", 0).unwrap() - sd).abs() < 1e-6 * mean.max(1.0));
}
