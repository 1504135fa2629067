//! `cargo xtask fuzz`: a short seeded run over every reader of user files (no panics, hangs or
//! crashes; every failure a named error), its determinism, and the replay of the inputs that once
//! crashed a reader (`fuzz-regressions/<reader>/<case>/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const READERS: &[&str] = &[
    "config",
    "diffusers-config",
    "study",
    "search",
    "weights",
    "checkpoint",
    "bundle",
    "parquet",
    "image-folder",
    "tokenizer",
];

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

/// Runs `xtask fuzz ARGS --json` with its own work directory; the summary.
fn fuzz(args: &[&str]) -> Value {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("fuzz")
        .args(args)
        .arg("--json")
        .arg("--work")
        .arg(work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fuzz {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn total(counts: &Value) -> u64 {
    counts
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

#[test]
fn a_seeded_run_over_every_reader_finds_only_reads_and_named_errors() {
    let cases = 500;
    let summary = fuzz(&["--cases", &cases.to_string(), "--seed", "14"]);
    let readers = summary["readers"].as_array().unwrap();
    let names: Vec<&str> = readers
        .iter()
        .map(|r| r["reader"].as_str().unwrap())
        .collect();
    assert_eq!(names, READERS);
    for r in readers {
        let name = &r["reader"];
        assert_eq!(r["cases"], cases, "{name}");
        for finding in ["panics", "hangs", "crashes"] {
            assert_eq!(r[finding].as_array().unwrap().len(), 0, "{name}: {r:#}");
        }
        let (read, errors) = (total(&r["read"]), total(&r["errors"]));
        assert_eq!(read + errors, cases, "{name}: {r:#}");
        // The mutations leave some inputs readable and break others.
        assert!(read > 0, "{name}: nothing read: {r:#}");
        if name == "image-folder" {
            // A folder skips (and names) the images it cannot read instead of failing.
            assert!(
                r["read"]["read, inputs skipped"].as_u64() > Some(0),
                "{r:#}"
            );
        } else {
            assert!(errors > 0, "{name}: no errors: {r:#}");
        }
        for (kind, example) in r["error_examples"].as_object().unwrap() {
            assert!(!kind.is_empty() && kind != "unnamed", "{name}: {kind}");
            assert!(!example.as_str().unwrap().is_empty(), "{name}: {kind}");
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_cases() {
    let args = [
        "--cases", "60", "--seed", "3", "--reader", "config", "--reader", "weights",
    ];
    let (a, b) = (fuzz(&args), fuzz(&args));
    for (ra, rb) in a["readers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["readers"].as_array().unwrap())
    {
        assert_eq!(ra["read"], rb["read"]);
        assert_eq!(ra["errors"], rb["errors"]);
    }
    let c = fuzz(&[
        "--cases", "60", "--seed", "4", "--reader", "config", "--reader", "weights",
    ]);
    assert_ne!(a["readers"][0]["errors"], c["readers"][0]["errors"]);
}

#[test]
fn inputs_that_once_crashed_a_reader_give_named_errors() {
    let dir = regressions();
    let summary = fuzz(&["--replay", dir.to_str().unwrap()]);
    let mut replayed = 0;
    for r in summary["readers"].as_array().unwrap() {
        for (case, outcome) in r["replayed"].as_object().unwrap() {
            let outcome = outcome.as_str().unwrap();
            let kind = outcome.strip_prefix("error ").unwrap_or("");
            assert!(
                !kind.is_empty() && kind != "unnamed",
                "{}/{case}: {outcome}",
                r["reader"]
            );
            replayed += 1;
        }
    }
    let saved: usize = std::fs::read_dir(&dir)
        .unwrap()
        .map(|reader| std::fs::read_dir(reader.unwrap().path()).unwrap().count())
        .sum();
    assert!(saved > 0);
    assert_eq!(replayed, saved);
}
