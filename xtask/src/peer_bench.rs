//! `cargo xtask peer-bench`: unetlab's proxy training beside PyTorch eager on the identical
//! network, measured in one run, written to results/peers/. A benchmark, not a test: CI never
//! runs it.
//!
//! For each config, `unetlab train` makes a run directory (proxy config, weights, recipe);
//! `scripts/peer_proxy.py check` rebuilds the network in PyTorch from it and checks parameter
//! names, shapes and counts and the UNet and text-encoder outputs against unetlab's; then, for
//! every batch and thread count, `unetlab bench --train` and `peer_proxy.py bench` time the same
//! training step back to back.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use unetlab_bench::Machine;
use unetlab_provenance::{now_utc, Build, Code};

use crate::docs::workspace;
use crate::tools::{build_unetlab, python_venv, run_ok, target_dir};

const COMMAND: &str = "cargo xtask peer-bench";

/// Time proxy training in unetlab and in PyTorch eager (pinned torch in target/peer-venv) on the
/// identical network, for each config, batch and thread count; check first that both networks
/// have the same parameters and outputs. Writes results/peers/ (README.md, training.json).
#[derive(clap::Args)]
pub struct PeerBenchArgs {
    /// Configs whose proxies are compared.
    #[arg(long, num_args = 1.., default_values_t = ["mobilediffusion".to_string(), "sd15".to_string()])]
    configs: Vec<String>,
    /// Batch sizes.
    #[arg(long, num_args = 1.., default_values_t = [8usize, 32])]
    batches: Vec<usize>,
    /// Thread counts.
    #[arg(long, num_args = 1.., default_values_t = [1usize, 2])]
    threads: Vec<usize>,
    /// Timed steps per measurement (after 3 warm-up steps); batches above 16 take a third.
    #[arg(long, default_value_t = 24)]
    steps: usize,
    /// Output folder (default: results/peers in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `cargo xtask peer-bench`.
pub fn run(args: &PeerBenchArgs) -> Result<()> {
    if args.steps < 3 || args.configs.is_empty() || args.batches.contains(&0) {
        bail!("--steps must be at least 3, and --configs and --batches non-empty and positive");
    }
    let root = workspace();
    let target = target_dir(&root);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("results/peers"));
    let work = target.join("peer-bench");
    std::fs::create_dir_all(&work)?;
    let python = python_venv(&root, &target, "scripts/requirements-peer.txt", "peer-venv")?;
    let unetlab = build_unetlab(&root)?;
    let script = root.join("scripts/peer_proxy.py");
    let started = now_utc();

    let mut checks = Vec::new();
    let mut rows = Vec::new();
    for config in &args.configs {
        let run = work.join(format!("run-{}", config.replace(['/', '.'], "_")));
        println!("peer-bench: {config}: making the proxy's run directory");
        run_ok(
            Command::new(&unetlab)
                .args(["train", config, "--budget", "smoke", "--steps", "1"])
                .args(["--batch", "2", "--no-metrics", "--restart", "--out"])
                .arg(&run),
        )
        .with_context(|| format!("unetlab train {config}"))?;
        let check_json = run.join("peer-check.json");
        println!("peer-bench: {config}: checking the PyTorch network against unetlab");
        run_ok(
            Command::new(&python)
                .arg(&script)
                .args(["check", "--run"])
                .arg(&run)
                .arg("--json")
                .arg(&check_json)
                .arg("--unetlab")
                .arg(&unetlab),
        )
        .with_context(|| format!("the PyTorch peer of {config} does not match unetlab"))?;
        checks.push(read_json(&check_json)?);

        for &threads in &args.threads {
            for &batch in &args.batches {
                let steps = if batch > 16 {
                    (args.steps / 3).max(3)
                } else {
                    args.steps
                };
                let setting = format!("{config}, batch {batch}, {threads} thread(s)");
                println!("peer-bench: {setting}: unetlab");
                let ours = unetlab_bench(&unetlab, config, batch, threads, steps)?;
                println!("peer-bench: {setting}: PyTorch");
                let peer_json = run.join(format!("peer-bench-b{batch}-t{threads}.json"));
                run_ok(
                    Command::new(&python)
                        .arg(&script)
                        .args(["bench", "--run"])
                        .arg(&run)
                        .args(["--batch", &batch.to_string()])
                        .args(["--threads", &threads.to_string()])
                        .args(["--steps", &steps.to_string(), "--warmup", "3"])
                        .arg("--json")
                        .arg(&peer_json),
                )
                .with_context(|| format!("PyTorch bench of {setting}"))?;
                let peer = read_json(&peer_json)?;
                // Both rates from median step times, as in the table.
                let rate = |v: &Value| 1.0 / v["median_s"].as_f64().unwrap_or(f64::NAN);
                let ratio = rate(&ours) / rate(&peer);
                println!(
                    "peer-bench: {setting}: unetlab {:.2} steps/s, PyTorch {:.2} steps/s ({ratio:.2}x)",
                    rate(&ours),
                    rate(&peer),
                );
                rows.push(json!({
                    "config": config,
                    "batch": batch,
                    "threads": threads,
                    "unetlab": ours,
                    "pytorch": peer,
                    "ratio": ratio,
                }));
            }
        }
    }

    let record = json!({
        "command": COMMAND,
        "started_utc": started,
        "build": Build::current(),
        "training_code": Code::Training.identity(),
        "machine": Machine::current(),
        "checks": checks,
        "training": rows,
    });
    std::fs::create_dir_all(&out)?;
    write_file(
        &out.join("training.json"),
        &(serde_json::to_string_pretty(&record)? + "\n"),
    )?;
    write_file(&out.join("README.md"), &readme(&record))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// `unetlab bench --train --json` for one setting: its one result object.
fn unetlab_bench(
    unetlab: &Path,
    config: &str,
    batch: usize,
    threads: usize,
    steps: usize,
) -> Result<Value> {
    let output = Command::new(unetlab)
        .args(["bench", "--train", config, "--json", "--warmup", "3"])
        .args(["--batch", &batch.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--steps", &steps.to_string()])
        .output()
        .with_context(|| format!("running {}", unetlab.display()))?;
    if !output.status.success() {
        bail!(
            "unetlab bench --train {config} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut results: Vec<Value> =
        serde_json::from_slice(&output.stdout).context("reading unetlab bench --train --json")?;
    results
        .pop()
        .context("unetlab bench --train printed no result")
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

fn readme(r: &Value) -> String {
    let m = &r["machine"];
    let label = Build::current().label();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Peers: proxy training, unetlab against PyTorch eager\n\n\
         Produced by `{COMMAND}`, build `{label}`, on {} ({} CPUs), started {}. Nothing here is \
         edited by hand. Both sides time the same training step of the same proxy network (the \
         PyTorch one is built from unetlab's run directory and checked against it, below; same \
         recipe: v-prediction DDPM loss on SD's schedule, backward, gradient clipping, AdamW, EMA), \
         fp32 on the CPU, measured back to back in this one run: \
         `unetlab bench --train` and `scripts/peer_proxy.py bench` (PyTorch {}, eager, \
         `torch.set_num_threads`). Medians after 3 warm-up steps. unetlab's step also renders its \
         batch of `shapes` images and tokenizes captions; the peer draws random tensors.\n",
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cpus"],
        r["started_utc"].as_str().unwrap_or("?"),
        r["checks"][0]["torch"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        s,
        "| proxy | batch | threads | unetlab steps/s | PyTorch steps/s | unetlab / PyTorch | unetlab GFLOP/s | unetlab p10–p90 (s) | PyTorch p10–p90 (s) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for row in r["training"].as_array().into_iter().flatten() {
        let (u, p) = (&row["unetlab"], &row["pytorch"]);
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2}× | {:.1} | {:.3}–{:.3} | {:.3}–{:.3} |",
            row["config"].as_str().unwrap_or("?"),
            row["batch"],
            row["threads"],
            1.0 / f(&u["median_s"]),
            1.0 / f(&p["median_s"]),
            f(&row["ratio"]),
            f(&u["achieved_gflops_per_s"]),
            f(&u["p10_s"]),
            f(&u["p90_s"]),
            f(&p["p10_s"]),
            f(&p["p90_s"]),
        );
    }
    let _ = writeln!(
        s,
        "\nsteps/s are 1 / median step time; GFLOP/s counts 3 × the proxy UNet's forward FLOPs per \
         image (text encoder not counted).\n\n## The networks are the same\n\n\
         `peer_proxy.py check` rebuilds each proxy in PyTorch from unetlab's run directory and \
         compares every parameter name and shape, the counts, the UNet's output against `unetlab \
         forward`, and the text encoder's against the test vector of a `unetlab export --run` \
         bundle (tolerance 1e-4):\n\n\
         | proxy | UNet params | text-encoder params | UNet max abs diff | text hidden max abs diff |\n|---|---|---|---|---|"
    );
    for c in r["checks"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1e} | {:.1e} |",
            c["config"].as_str().unwrap_or("?"),
            c["unet"]["params"],
            c["text"]["params"],
            c["unet_forward_max_abs_diff"].as_f64().unwrap_or(f64::NAN),
            c["text_hidden_max_abs_diff"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let _ = writeln!(
        s,
        "\nEvery number and timing: `training.json` (unetlab's `provenance` records the build \
         that measured it)."
    );
    s
}
