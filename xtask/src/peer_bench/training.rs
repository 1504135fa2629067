//! The training part of `cargo xtask peer-bench`: unetlab's proxy training beside PyTorch eager
//! on the identical network.
//!
//! For each config, `unetlab train` makes a run directory (proxy config, weights, recipe);
//! `scripts/peer_proxy.py check` rebuilds the network in PyTorch from it and checks parameter
//! names, shapes and counts and the UNet and text-encoder outputs against unetlab's; then, for
//! every batch and thread count, `unetlab bench --train` and `peer_proxy.py bench` time the same
//! training step in alternating rounds. Last, `unetlab bench --train --profile` at the largest
//! batch and thread count shows where unetlab's step goes, so that the README names the
//! bottleneck that remains.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use unetlab_bench::Machine;
use unetlab_provenance::{now_utc, Build, Code};

use super::{
    build_label, last_json_object, median_s, percentile, pooled, ratio_range, read_json,
    write_file, PeerBenchArgs, Setup, COMMAND,
};
use crate::tools::{python_venv, run_ok};

/// Runs the training comparison; writes `training.json`.
pub(super) fn run(args: &PeerBenchArgs, setup: &Setup) -> Result<()> {
    let (root, unetlab, work) = (&setup.root, &setup.unetlab, &setup.work);
    let python = python_venv(
        root,
        &setup.target,
        "scripts/requirements-peer.txt",
        "peer-venv",
    )?;
    let script = root.join("scripts/peer_proxy.py");
    let started = now_utc();

    let mut checks = Vec::new();
    let mut rows = Vec::new();
    let mut profiles = Vec::new();
    for config in &args.configs {
        let run = work.join(format!("run-{}", config.replace(['/', '.'], "_")));
        println!("peer-bench: {config}: making the proxy's run directory");
        run_ok(
            Command::new(unetlab)
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
                .arg(unetlab),
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
                let per_round = steps.div_ceil(args.rounds).max(3);
                let setting = format!("{config}, batch {batch}, {threads} thread(s)");
                let (mut ours, mut peers) = (Vec::new(), Vec::new());
                for round in 1..=args.rounds {
                    let step = format!("{setting}: round {round}/{}", args.rounds);
                    println!("peer-bench: {step}: unetlab");
                    ours.push(unetlab_bench(
                        unetlab, config, batch, threads, per_round, false,
                    )?);
                    println!("peer-bench: {step}: PyTorch");
                    let peer_json =
                        run.join(format!("peer-bench-b{batch}-t{threads}-r{round}.json"));
                    run_ok(
                        Command::new(&python)
                            .arg(&script)
                            .args(["bench", "--run"])
                            .arg(&run)
                            .args(["--batch", &batch.to_string()])
                            .args(["--threads", &threads.to_string()])
                            .args(["--steps", &per_round.to_string(), "--warmup", "3"])
                            .arg("--json")
                            .arg(&peer_json),
                    )
                    .with_context(|| format!("PyTorch bench of {step}"))?;
                    peers.push(read_json(&peer_json)?);
                }
                let round_ratios: Vec<f64> = ours
                    .iter()
                    .zip(&peers)
                    .map(|(u, p)| median_s(p) / median_s(u))
                    .collect();
                let ratio = percentile(&round_ratios, 50.0);
                let (ours_all, peers_all) = (pooled(&ours), pooled(&peers));
                println!(
                    "peer-bench: {setting}: unetlab {:.2} steps/s, PyTorch {:.2} steps/s \
                     ({ratio:.2}x, rounds {round_ratios:.2?})",
                    1.0 / median_s(&ours_all),
                    1.0 / median_s(&peers_all),
                );
                let flops = ours[0]["flops_per_step"].as_f64().unwrap_or(f64::NAN);
                rows.push(json!({
                    "config": config,
                    "batch": batch,
                    "threads": threads,
                    "unetlab": ours_all,
                    "pytorch": peers_all,
                    "unetlab_gflops_per_s": flops / median_s(&ours_all) / 1e9,
                    "round_ratios": round_ratios,
                    "ratio": ratio,
                    "unetlab_rounds": ours,
                    "pytorch_rounds": peers,
                }));
            }
        }
        // Where the step goes, at the largest batch and thread count (timers on).
        let (batch, threads) = (
            args.batches.iter().copied().max().unwrap_or(8),
            args.threads.iter().copied().max().unwrap_or(1),
        );
        println!("peer-bench: {config}, batch {batch}, {threads} thread(s): profile");
        let steps = (args.steps / 3).max(3);
        let profiled = unetlab_bench(unetlab, config, batch, threads, steps, true)?;
        profiles.push(json!({
            "config": config,
            "batch": batch,
            "threads": threads,
            "median_s": profiled["median_s"],
            "profile": profiled["profile"],
        }));
    }

    let record = json!({
        "command": COMMAND,
        "started_utc": started,
        "build": Build::current(),
        "training_code": Code::Training.identity(),
        "rounds": args.rounds,
        "machine": Machine::current(),
        "checks": checks,
        "training": rows,
        "profiles": profiles,
    });
    write_file(
        &setup.out.join("training.json"),
        &(serde_json::to_string_pretty(&record)? + "\n"),
    )
}

/// `unetlab bench --train --json` (with `--profile` when `profile`) for one setting: its one
/// result object.
fn unetlab_bench(
    unetlab: &Path,
    config: &str,
    batch: usize,
    threads: usize,
    steps: usize,
    profile: bool,
) -> Result<Value> {
    last_json_object(
        Command::new(unetlab)
            .args(["bench", "--train", config, "--json", "--warmup", "3"])
            .args(profile.then_some("--profile"))
            .args(["--batch", &batch.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--steps", &steps.to_string()]),
        &format!("unetlab bench --train {config}"),
    )
}

/// The README's training section.
pub(super) fn readme(r: &Value) -> String {
    let m = &r["machine"];
    let label = build_label(r);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Training: proxy steps, unetlab against PyTorch eager\n\n\
         Build `{label}`, on {} ({} CPUs), started {}. Both sides time the same training step of the same proxy network (the \
         PyTorch one is built from unetlab's run directory and checked against it, below; same \
         recipe: v-prediction DDPM loss on SD's schedule, backward, gradient clipping, AdamW, EMA), \
         fp32 on the CPU, measured in this one run in {} alternating rounds per setting \
         (`unetlab bench --train`, then `scripts/peer_proxy.py bench`, PyTorch {}, eager, \
         `torch.set_num_threads`; each round a fresh process with 3 warm-up steps). This machine's \
         speed drifts by tens of percent over minutes, so the ratio is the median of the rounds' \
         ratios (each from two measurements seconds apart; their range is shown), and steps/s \
         come from the median of all rounds' step times. unetlab's step also renders its batch \
         of `shapes` images and tokenizes captions; the peer draws random tensors.\n",
        Machine::cpu_of_json(m),
        m["cpus"],
        r["started_utc"].as_str().unwrap_or("?"),
        r["rounds"],
        r["checks"][0]["torch"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        s,
        "| proxy | batch | threads | unetlab steps/s | PyTorch steps/s | unetlab / PyTorch | rounds' ratios | unetlab GFLOP/s | unetlab p10–p90 (s) | PyTorch p10–p90 (s) |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in r["training"].as_array().into_iter().flatten() {
        let (u, p) = (&row["unetlab"], &row["pytorch"]);
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let (lo, hi) = ratio_range(row);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2}× | {:.2}–{:.2} | {:.1} | {:.3}–{:.3} | {:.3}–{:.3} |",
            row["config"].as_str().unwrap_or("?"),
            row["batch"],
            row["threads"],
            1.0 / f(&u["median_s"]),
            1.0 / f(&p["median_s"]),
            f(&row["ratio"]),
            lo,
            hi,
            f(&row["unetlab_gflops_per_s"]),
            f(&u["p10_s"]),
            f(&u["p90_s"]),
            f(&p["p10_s"]),
            f(&p["p90_s"]),
        );
    }
    let _ = writeln!(
        s,
        "\nsteps/s are 1 / median step time over all rounds; GFLOP/s counts 3 × the proxy UNet's forward FLOPs per \
         image (text encoder not counted).\n\n### The networks are the same\n\n\
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
    for p in r["profiles"].as_array().into_iter().flatten() {
        let median = p["median_s"].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "\n### Where unetlab's step goes: {}, batch {}, {} thread(s)\n\n\
             `unetlab bench --train --profile`: mean time per step by kind of op, largest first \
             (median step {:.1} ms with the timers on). The first row is the bottleneck that \
             remains.\n\n| kind | forward (ms) | backward (ms) | other (ms) | share |\n|---|---|---|---|---|",
            p["config"].as_str().unwrap_or("?"),
            p["batch"],
            p["threads"],
            1e3 * median,
        );
        for row in p["profile"].as_array().into_iter().flatten() {
            let ms = |v: &Value| {
                v.as_f64()
                    .map_or(String::new(), |x| format!("{:.1}", 1e3 * x))
            };
            let total: f64 = ["forward_s", "backward_s", "other_s"]
                .iter()
                .filter_map(|k| row[*k].as_f64())
                .sum();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} % |",
                row["kind"].as_str().unwrap_or("?"),
                ms(&row["forward_s"]),
                ms(&row["backward_s"]),
                ms(&row["other_s"]),
                100.0 * total / median,
            );
        }
    }
    let _ = writeln!(
        s,
        "\nEvery number and timing: `training.json` (unetlab's `provenance` records the build \
         that measured it)."
    );
    s
}
