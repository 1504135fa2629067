//! `cargo xtask ablate --shard K/N` and `--merge`: shards that share a cache, merged, give the
//! single process's rows; a merge before every shard is done names what is missing; inside a
//! Slurm array task the shard comes from the array's variables.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const CONFIGS: &[&str] = &[
    "configs/fixtures/tiny-sd.yaml",
    "configs/fixtures/every-choice.yaml",
    "configs/fixtures/tiny-sdxl.yaml",
    "configs/md-lite.yaml",
];

fn ablate(out: &Path, cache: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.arg("ablate")
        .args(CONFIGS)
        .args(["--budget", "smoke", "--no-train", "--out"])
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .args(extra)
        .current_dir(workspace());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// The table's rows without the timing and provenance columns.
fn rows(dir: &Path) -> Vec<Vec<String>> {
    let df = unetlab_report::read_csv(&dir.join("table.csv")).unwrap();
    let keep: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .filter(|c| {
            !(c.contains("latency")
                || c.contains("p10")
                || c.contains("p90")
                || c.contains("GFLOP/s")
                || c.contains("measured by"))
        })
        .collect();
    (0..df.height())
        .map(|r| {
            keep.iter()
                .map(|c| format!("{}", df.column(c).unwrap().get(r).unwrap()))
                .collect()
        })
        .collect()
}

fn units(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n.starts_with("bench-") && !n.starts_with("bench-on-"))
        .collect();
    v.sort();
    v
}

#[test]
fn shards_merged_give_the_single_process_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(ablate(&d.join("single"), &d.join("single-cache"), &[], &[]));

    let (out, cache) = (d.join("sharded"), d.join("shared-cache"));
    // Before any shard: the merge names every missing unit and writes nothing.
    let early = ablate(&out, &cache, &["--merge"], &[]);
    assert!(!early.status.success());
    let err = String::from_utf8_lossy(&early.stderr);
    assert!(err.contains("4 unit(s) are not in the cache"), "{err}");
    for name in ["tiny-sd", "every-choice", "tiny-sdxl", "md-lite"] {
        assert!(err.contains(&format!("latency of {name}")), "{err}");
    }
    assert!(!out.join("table.csv").exists());

    // Shard 1 of 2 by flag; shard 2 of 2 as Slurm array task 5 of an array numbered from 4.
    let first = ok(ablate(&out, &cache, &["--shard", "1/2"], &[]));
    assert!(String::from_utf8_lossy(&first.stderr).contains("shard 1/2 done"));
    assert!(!out.join("table.csv").exists(), "a shard writes no tables");
    let after_first = units(&cache);
    assert!(!after_first.is_empty() && after_first.len() < CONFIGS.len());
    let half = ablate(&out, &cache, &["--merge"], &[]);
    assert!(
        !half.status.success(),
        "the other shard's units are missing"
    );

    let second = ok(ablate(
        &out,
        &cache,
        &[],
        &[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
            ("SLURM_ARRAY_TASK_MIN", "4"),
        ],
    ));
    assert!(String::from_utf8_lossy(&second.stderr).contains("shard 2/2 done"));
    let all = units(&cache);
    assert_eq!(all.len(), CONFIGS.len(), "each unit once: {all:?}");
    for u in &after_first {
        assert!(all.contains(u));
    }

    // The merge measures nothing and gives the single process's rows.
    let merged = ok(ablate(&out, &cache, &["--merge"], &[]));
    let log = String::from_utf8_lossy(&merged.stderr);
    assert!(
        !log.contains("median"),
        "the merge measured something: {log}"
    );
    assert_eq!(units(&cache), all);
    assert_eq!(rows(&out), rows(&d.join("single")));
    assert_eq!(rows(&out).len(), CONFIGS.len());

    // Flags that contradict each other.
    let both = ablate(&out, &cache, &["--merge", "--shard", "1/2"], &[]);
    assert!(!both.status.success());
    let bad = ablate(&out, &cache, &["--shard", "3/2"], &[]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("K must be 1..=N"));
}
