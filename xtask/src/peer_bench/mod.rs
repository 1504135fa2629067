//! `cargo xtask peer-bench`: unetlab beside the runtimes a user would pick instead, measured in one
//! run, written to results/peers/. A benchmark, not a test: CI never runs it.
//!
//! - `training.rs`: proxy training steps against PyTorch eager on the identical network.
//! - `inference.rs`: one full-size forward against diffusers' SD 1.5 UNet and a PyTorch build of
//!   MobileDiffusion (PyTorch eager) and ONNX Runtime on unetlab's own MobileDiffusion export.
//!
//! Each part alternates the sides in rounds (unetlab, peer, unetlab, …), so that a machine whose
//! speed drifts over minutes (a shared VM) slows both sides alike: each round's ratio compares
//! measurements seconds apart, and the reported ratio is the median of the rounds'. Each part
//! writes its own JSON; the README is rebuilt from whichever are present, so running one part
//! keeps the other's section.

mod inference;
mod training;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use unetlab_provenance::Build;

use crate::docs::workspace;
use crate::tools::{build_unetlab, target_dir};

const COMMAND: &str = "cargo xtask peer-bench";

/// Which comparisons to run.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Training and inference.
    All,
    /// Proxy training steps against PyTorch eager.
    Training,
    /// Full-size forwards against PyTorch eager and ONNX Runtime.
    Inference,
}

/// Time unetlab beside PyTorch eager (pinned torch and diffusers in target/peer-venv) and ONNX
/// Runtime (target/onnx-venv): proxy training on the identical network, for each config, batch and
/// thread count, after checking that both networks have the same parameters and outputs; and one
/// full-size forward of SD 1.5 (diffusers) and MobileDiffusion (a PyTorch build and unetlab's ONNX
/// export), with unetlab's profile of each. Writes results/peers/ (README.md, training.json,
/// inference.json, inference.svg/.png).
#[derive(clap::Args)]
pub struct PeerBenchArgs {
    /// Which comparisons to run (the other's results, if present, stay in the README).
    #[arg(long, value_enum, default_value_t = Part::All)]
    part: Part,
    /// Configs whose proxies are compared (training).
    #[arg(long, num_args = 1.., default_values_t = ["mobilediffusion".to_string(), "sd15".to_string()])]
    configs: Vec<String>,
    /// Batch sizes (training).
    #[arg(long, num_args = 1.., default_values_t = [8usize, 32])]
    batches: Vec<usize>,
    /// Thread counts (training).
    #[arg(long, num_args = 1.., default_values_t = [1usize, 2])]
    threads: Vec<usize>,
    /// Timed steps per setting and side, over all rounds (after 3 warm-up steps per round);
    /// batches above 16 take a third (training).
    #[arg(long, default_value_t = 24)]
    steps: usize,
    /// Thread counts (inference; a full-size forward takes seconds per thread).
    #[arg(long, num_args = 1.., default_values_t = [2usize])]
    inference_threads: Vec<usize>,
    /// Timed forwards per side and round, after one warm-up (inference).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Alternating rounds per setting (unetlab then the peers, repeated).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Output folder (default: results/peers in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What both parts share: where things are and the built `unetlab`.
struct Setup {
    root: PathBuf,
    target: PathBuf,
    work: PathBuf,
    unetlab: PathBuf,
    out: PathBuf,
}

/// Runs `cargo xtask peer-bench`.
pub fn run(args: &PeerBenchArgs) -> Result<()> {
    if args.steps < 3 || args.rounds == 0 || args.configs.is_empty() || args.batches.contains(&0) {
        bail!(
            "--steps must be at least 3, --rounds positive, and --configs and --batches \
             non-empty and positive"
        );
    }
    if args.runs == 0 || args.inference_threads.contains(&0) || args.threads.contains(&0) {
        bail!("--runs, --threads and --inference-threads must be positive");
    }
    let root = workspace();
    let target = target_dir(&root);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("results/peers"));
    let work = target.join("peer-bench");
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&out)?;
    let setup = Setup {
        unetlab: build_unetlab(&root)?,
        root,
        target,
        work,
        out,
    };
    if args.part != Part::Inference {
        training::run(args, &setup)?;
    }
    if args.part != Part::Training {
        inference::run(args, &setup)?;
    }
    let mut readme = format!(
        "# Peers: unetlab beside PyTorch eager and ONNX Runtime\n\n\
         Produced by `{COMMAND}`; each section names the build, machine and time that measured \
         it. Nothing here is edited by hand.\n"
    );
    for (file, section) in [
        ("training.json", training::readme as fn(&Value) -> String),
        ("inference.json", inference::readme),
    ] {
        let path = setup.out.join(file);
        if path.exists() {
            readme.push('\n');
            readme.push_str(&section(&read_json(&path)?));
        }
    }
    write_file(&setup.out.join("README.md"), &readme)?;
    println!("wrote {}", setup.out.display());
    Ok(())
}

/// Runs `cmd`, failing with its standard error unless it succeeds; its standard output.
fn output_of(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let output = cmd.output().with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(output.stdout)
}

/// The last object of a `unetlab … --json` list printed by `cmd`.
fn last_json_object(cmd: &mut Command, what: &str) -> Result<Value> {
    let stdout = output_of(cmd, what)?;
    let mut results: Vec<Value> =
        serde_json::from_slice(&stdout).with_context(|| format!("reading {what}'s JSON"))?;
    results
        .pop()
        .with_context(|| format!("{what} printed no result"))
}

/// The `q`-th percentile of `xs` (linear between order statistics, as numpy's default).
fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let at = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (at - lo as f64)
}

/// The lowest and highest of a row's `round_ratios`.
fn ratio_range(row: &Value) -> (f64, f64) {
    let ratios: Vec<f64> = row["round_ratios"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    (percentile(&ratios, 0.0), percentile(&ratios, 100.0))
}

/// `v["median_s"]`, NaN when missing.
fn median_s(v: &Value) -> f64 {
    v["median_s"].as_f64().unwrap_or(f64::NAN)
}

/// The label of the build recorded in a part's JSON.
fn build_label(r: &Value) -> String {
    serde_json::from_value::<Build>(r["build"].clone()).map_or_else(|_| "?".into(), |b| b.label())
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    unetlab_files::write_via_temp(
        path,
        |tmp| std::fs::write(tmp, text),
        std::convert::identity,
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// Every round's times (`times_s`) together, with their median, p10 and p90.
fn pooled(rounds: &[Value]) -> Value {
    let times: Vec<f64> = rounds
        .iter()
        .flat_map(|r| r["times_s"].as_array().into_iter().flatten())
        .filter_map(Value::as_f64)
        .collect();
    json!({
        "median_s": percentile(&times, 50.0),
        "p10_s": percentile(&times, 10.0),
        "p90_s": percentile(&times, 90.0),
        "times_s": times,
    })
}
