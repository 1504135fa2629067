//! `cargo xtask search` end to end on tiny searches: the front as loadable configs whose counts
//! are recomputed here, the latency predictor checked against its own benchmarks, the quality
//! stage, a search killed mid-run that resumes without losing or redoing a measurement, and
//! `--prune` keeping exactly what the resumed search used.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use polars::prelude::AnyValue;
use unetlab_cost::{count, Conditions};
use unetlab_report::read_csv;
use unetlab_spec::Config;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo xtask search FILE --budget smoke --out OUT`, training runs kept in `OUT/runs`.
fn search(file: &str, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["search", file, "--budget", "smoke", "--out"])
        .arg(out)
        .arg("--runs")
        .arg(out.join("runs"))
        .current_dir(workspace());
    cmd
}

fn run(file: &str, out: &Path) -> Output {
    let o = search(file, out).output().unwrap();
    assert!(
        o.status.success(),
        "search {file}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(df: &polars::prelude::DataFrame, column: &str, row: usize) -> String {
    match df.column(column).unwrap().get(row).unwrap() {
        AnyValue::String(s) => s.to_string(),
        other => panic!("{column}[{row}] = {other:?}"),
    }
}

fn number(df: &polars::prelude::DataFrame, column: &str, row: usize) -> Option<f64> {
    match df.column(column).unwrap().get(row).unwrap() {
        AnyValue::Float64(v) => Some(v),
        AnyValue::Int64(v) => Some(v as f64),
        AnyValue::Null => None,
        other => panic!("{column}[{row}] = {other:?}"),
    }
}

fn flag(df: &polars::prelude::DataFrame, column: &str, row: usize) -> bool {
    match df.column(column).unwrap().get(row).unwrap() {
        AnyValue::Boolean(b) => b,
        other => panic!("{column}[{row}] = {other:?}"),
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_smoke_search_writes_a_checked_front_of_loadable_configs() {
    let out = tempfile::tempdir().unwrap();
    run("searches/fixtures/tiny-latency.yaml", out.path());
    let table = read_csv(&out.path().join("candidates.csv")).unwrap();
    let run_json = json(&out.path().join("run.json"));
    assert_eq!(run_json["genomes_evaluated"], 24);
    let skipped = run_json["skipped"].as_object().unwrap();
    assert!(
        skipped.keys().any(|k| k.contains("kv_heads")),
        "{skipped:?}"
    );
    let distinct = run_json["distinct_configs_counted"].as_u64().unwrap() as usize;
    assert_eq!(table.height(), distinct + 1, "candidates, then the base");
    assert_eq!(text(&table, "role", distinct), "reference");

    // The front: one explicit YAML per front row, loadable, with the row's hash and counts
    // recomputed here; every member feasible (params within the file's limit).
    let mut front_rows = BTreeSet::new();
    for row in 0..table.height() {
        if flag(&table, "on_front", row) {
            assert!(flag(&table, "feasible", row));
            assert!(number(&table, "params", row).unwrap() <= 90000.0);
            front_rows.insert(text(&table, "name", row));
        }
    }
    let files: BTreeSet<String> = std::fs::read_dir(out.path().join("front"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(!files.is_empty());
    assert_eq!(files, front_rows);
    for name in &files {
        let path = out.path().join("front").join(format!("{name}.yaml"));
        let config = Config::load(path.to_str().unwrap()).unwrap();
        let row = (0..table.height())
            .find(|&r| &text(&table, "name", r) == name)
            .unwrap();
        assert_eq!(config.hash(), text(&table, "hash", row));
        assert!(name.ends_with(&config.hash()[..8]));
        let cost = count(
            &config.spec,
            Conditions {
                batch: 1,
                latent_size: 8,
                tokens: config.spec.text_tokens,
            },
        )
        .unwrap();
        assert_eq!(number(&table, "params", row), Some(cost.params() as f64));
        assert_eq!(
            number(&table, "gmacs", row),
            Some(cost.macs.total() as f64 / 1e9)
        );
    }

    // The predictor: every probe measured once, every check a config no probe was, its error
    // recomputed from its own columns.
    let probes = run_json["latency"]["probes"].as_array().unwrap();
    let probed: BTreeSet<&str> = probes.iter().map(|p| p["hash"].as_str().unwrap()).collect();
    assert_eq!(probed.len(), probes.len());
    assert!(!probes.is_empty() && probes.len() <= 4);
    let check = read_csv(&out.path().join("predictor.csv")).unwrap();
    assert_eq!(check.height(), 4);
    assert_eq!(run_json["latency"]["check"]["configs"], 4);
    for row in 0..check.height() {
        assert!(!probed.contains(text(&check, "hash", row).as_str()));
        let (p, m) = (
            number(&check, "predicted_s", row).unwrap(),
            number(&check, "measured_s", row).unwrap(),
        );
        assert!(p > 0.0 && m > 0.0);
        let e = number(&check, "relative_error", row).unwrap();
        assert!((e - (p - m) / m).abs() < 1e-12);
    }
    for name in ["pareto.png", "pareto.svg", "predictor.png", "README.md"] {
        assert!(out.path().join(name).is_file(), "{name}");
    }
}

/// The cached measurements (`bench`) or runs (`train`) under `out/cache`, without the
/// machine-free pointers to measurements (`bench-on-`).
fn cache_files(out: &Path, kind: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.join("cache"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        // A SIGKILL during an atomic write leaves its `.partial` temp file, never a result.
        name.starts_with(&format!("{kind}-"))
            && !name.starts_with("bench-on-")
            && name.ends_with(".json")
    });
    v.sort();
    v
}

#[test]
fn a_killed_search_resumes_without_losing_or_redoing_a_measurement() {
    let file = "searches/fixtures/tiny-quality.yaml";
    let out = tempfile::tempdir().unwrap();
    let mut child = search(file, out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while cache_files(out.path(), "train").is_empty() && start.elapsed() < Duration::from_secs(600)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL mid quality stage
    child.wait().unwrap();
    let trained = cache_files(out.path(), "train");
    assert!(
        !trained.is_empty(),
        "the kill must land after a training run finished"
    );
    assert!(
        !out.path().join("run.json").exists(),
        "the kill must land before the end"
    );
    let kept: Vec<(PathBuf, Vec<u8>)> = cache_files(out.path(), "bench")
        .into_iter()
        .chain(trained)
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();

    let resumed = run(file, out.path());
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    for (p, bytes) in &kept {
        assert_eq!(
            &std::fs::read(p).unwrap(),
            bytes,
            "{} was redone",
            p.display()
        );
    }
    let run_json = json(&out.path().join("run.json"));
    // Nothing lost, nothing twice: one cached measurement per probe and check, one cached run
    // per trained (config, rung).
    let probes = run_json["latency"]["probes"].as_array().unwrap().len();
    let checks = run_json["latency"]["check"]["configs"].as_u64().unwrap() as usize;
    assert_eq!(cache_files(out.path(), "bench").len(), probes + checks);
    let rungs = run_json["quality"]["rungs"].as_array().unwrap();
    let runs: usize = rungs
        .iter()
        .flat_map(|r| r["runs"].as_array().unwrap())
        .map(|c| {
            c["seeds"]
                .as_array()
                .unwrap_or_else(|| panic!("a run failed after the resume: {c}"))
                .len()
        })
        .sum();
    assert_eq!(cache_files(out.path(), "train").len(), runs);
    let kept_bench = kept
        .iter()
        .filter(|(p, _)| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("bench-")
        })
        .count();
    assert!(
        stderr.matches(": cached (measured by").count() >= kept_bench,
        "every measurement from before the kill is read back: {stderr}"
    );
    // Successive halving: each rung trains the best half of the one before (at least one), with
    // twice the steps; the references train at the last rung.
    assert_eq!(rungs.len(), 2);
    let steps: Vec<u64> = rungs.iter().map(|r| r["steps"].as_u64().unwrap()).collect();
    assert_eq!(steps[1], 2 * steps[0]);
    let first: Vec<&serde_json::Value> = rungs[0]["runs"].as_array().unwrap().iter().collect();
    let last: Vec<&str> = rungs[1]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(last.contains(&"every-choice"));
    let mut by_fd: Vec<(f64, &str)> = first
        .iter()
        .map(|r| {
            (
                r["seeds"][0]["fd"].as_f64().unwrap(),
                r["name"].as_str().unwrap(),
            )
        })
        .collect();
    by_fd.sort_by(|a, b| a.0.total_cmp(&b.0));
    let promoted = first.len().div_ceil(2);
    for (_, name) in &by_fd[..promoted] {
        assert!(last.contains(name), "{name} was promoted");
    }
    assert_eq!(last.len(), promoted + 1);
    assert!(out.path().join("quality.png").is_file());

    // --prune removes what this search did not use (as an earlier build's entries would be),
    // reading every measurement and run it did use from the cache.
    let used = cache_files(out.path(), "bench")
        .into_iter()
        .chain(cache_files(out.path(), "train"))
        .collect::<Vec<_>>();
    let stale = [
        "bench-0000000000000000-stale.json",
        "train-0000000000000000-stale.json",
    ]
    .map(|name| out.path().join("cache").join(name));
    for path in &stale {
        std::fs::write(path, "{}").unwrap();
    }
    let pruned = search(file, out.path()).arg("--prune").output().unwrap();
    let stderr = String::from_utf8_lossy(&pruned.stderr);
    assert!(pruned.status.success(), "{stderr}");
    assert!(
        stderr.contains("--prune: removed 2 unused cache entries"),
        "{stderr}"
    );
    for path in &stale {
        assert!(!path.exists(), "{} was kept", path.display());
    }
    for path in &used {
        assert!(path.exists(), "{} was removed", path.display());
    }
    assert!(
        !stderr.contains("training "),
        "nothing is trained again: {stderr}"
    );
}

#[test]
fn shards_of_a_search_do_each_unit_once_and_merge_without_measuring() {
    let file = "searches/fixtures/tiny-quality.yaml";
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let sharded = |extra: &[&str]| {
        let mut cmd = search(file, &out);
        cmd.arg("--cache").arg(&cache).args(extra);
        cmd.output().unwrap()
    };
    // Before any shard, the merge names what is missing.
    let early = sharded(&["--merge"]);
    assert!(!early.status.success());
    assert!(String::from_utf8_lossy(&early.stderr).contains("not yet in the cache"));
    // The shards, again and again as a chain of arrays would run them, until both are done.
    let mut done = [false, false];
    for _ in 0..12 {
        for (k, finished) in done.iter_mut().enumerate() {
            let o = sharded(&["--shard", &format!("{}/2", k + 1)]);
            let log = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(o.status.success(), "{log}");
            assert!(!out.join("run.json").exists(), "a shard writes no outputs");
            *finished = log.contains("every stage is done");
        }
        if done == [true, true] {
            break;
        }
    }
    assert_eq!(done, [true, true], "the shards finish");
    let merged = sharded(&["--merge"]);
    let log = String::from_utf8_lossy(&merged.stderr).into_owned();
    assert!(merged.status.success(), "{log}");
    assert!(
        !log.contains("median") && !log.contains("training tiny"),
        "the merge did work: {log}"
    );
    let run_json = json(&out.join("run.json"));
    let probes = run_json["latency"]["probes"].as_array().unwrap().len();
    let checks = run_json["latency"]["check"]["configs"].as_u64().unwrap() as usize;
    assert_eq!(
        cache_files(dir.path(), "bench").len(),
        probes + checks,
        "each latency unit once"
    );
    let runs: usize = run_json["quality"]["rungs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["runs"].as_array().unwrap())
        .map(|c| c["seeds"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        cache_files(dir.path(), "train").len(),
        runs,
        "each run once"
    );
    assert!(out.join("candidates.csv").is_file() && out.join("quality.png").is_file());
}
