//! The inference part of `cargo xtask peer-bench`: one full-size forward (fp32, batch 1, the
//! config's latent and 77 tokens) in unetlab beside the runtimes a user would pick instead:
//! - SD 1.5: diffusers' `UNet2DConditionModel` in PyTorch eager, built from the config.json that
//!   `unetlab convert --to-diffusers sd15` writes;
//! - MobileDiffusion: a PyTorch build (`scripts/peer_inference.py --explicit`, the modules that
//!   the training part checks against unetlab) in PyTorch eager, and ONNX Runtime on unetlab's
//!   own export (`unetlab export`, timed and checked against candle by `scripts/check_onnx.py`).
//!
//! Every side runs `--runs` forwards after one warm-up, in a fresh process per round, the sides
//! alternating. The networks are checked to be the same: equal parameter counts (against the
//! cost interpreter's), and ONNX Runtime's output against candle's on the bundle's test vector.
//! Last, `unetlab bench --profile` shows where unetlab's forward goes. Writes `inference.json`
//! and the latency plot `inference.svg`/`.png`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use unetlab_bench::Machine;
use unetlab_provenance::{now_utc, Build, Code};
use unetlab_report::{grouped_bars, Series};

use super::{
    build_label, last_json_object, median_s, percentile, pooled, ratio_range, read_json,
    write_file, PeerBenchArgs, Setup, COMMAND,
};
use crate::tools::{python_venv, run_ok};

/// One peer of a config.
#[derive(Clone, Copy)]
enum Peer {
    /// diffusers' UNet2DConditionModel in PyTorch eager.
    Diffusers,
    /// unetlab's PyTorch build of the config, in PyTorch eager.
    PyTorch,
    /// ONNX Runtime on unetlab's export.
    OnnxRuntime,
}

impl Peer {
    fn label(self) -> &'static str {
        match self {
            Peer::Diffusers => "PyTorch eager (diffusers UNet2DConditionModel)",
            Peer::PyTorch => "PyTorch eager (unetlab's PyTorch build)",
            Peer::OnnxRuntime => "ONNX Runtime (unetlab export)",
        }
    }
}

/// The configs compared and their peers.
const COMPARISONS: &[(&str, &[Peer])] = &[
    ("sd15", &[Peer::Diffusers]),
    ("mobilediffusion", &[Peer::PyTorch, Peer::OnnxRuntime]),
];

/// The paper's MobileDiffusion / SD 1.5 latency ratio (9.9 ms / 21.7 ms on an iPhone 15 Pro).
const PAPER_MD_OVER_SD15: f64 = 9.9 / 21.7;

/// Runs the inference comparison; writes `inference.json`.
pub(super) fn run(args: &PeerBenchArgs, setup: &Setup) -> Result<()> {
    let (root, unetlab) = (&setup.root, &setup.unetlab);
    let torch = python_venv(
        root,
        &setup.target,
        "scripts/requirements-peer.txt",
        "peer-venv",
    )?;
    let ort = python_venv(
        root,
        &setup.target,
        "scripts/requirements-onnx.txt",
        "onnx-venv",
    )?;
    let dir = setup.work.join("inference");
    std::fs::create_dir_all(&dir)?;
    let started = now_utc();

    println!("peer-bench: inference: writing the peers' networks");
    let diffusers_json = dir.join("sd15-diffusers.json");
    run_ok(
        Command::new(unetlab)
            .args(["convert", "--to-diffusers", "sd15", "--out"])
            .arg(&diffusers_json),
    )?;
    let md_yaml = dir.join("mobilediffusion.yaml");
    run_ok(
        Command::new(unetlab)
            .args(["convert", "--explicit", "mobilediffusion", "--out"])
            .arg(&md_yaml),
    )?;
    let bundle = dir.join("mobilediffusion-bundle");
    run_ok(
        Command::new(unetlab)
            .args([
                "export",
                "mobilediffusion",
                "--bench-runs",
                "0",
                "--force",
                "--out",
            ])
            .arg(&bundle),
    )
    .context("exporting MobileDiffusion")?;

    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for &threads in &args.inference_threads {
        for &(config, peers) in COMPARISONS {
            let setting = format!("{config}, {threads} thread(s)");
            let mut ours = Vec::new();
            let mut theirs: Vec<Vec<Value>> = vec![Vec::new(); peers.len()];
            for round in 1..=args.rounds {
                let step = format!("inference: {setting}: round {round}/{}", args.rounds);
                println!("peer-bench: {step}: unetlab");
                ours.push(unetlab_forward(unetlab, config, threads, args.runs, false)?);
                for (i, &peer) in peers.iter().enumerate() {
                    println!("peer-bench: {step}: {}", peer.label());
                    let json = dir.join(format!("{config}-t{threads}-r{round}-{i}.json"));
                    let mut cmd = match peer {
                        Peer::Diffusers | Peer::PyTorch => {
                            let mut c = Command::new(&torch);
                            c.arg(root.join("scripts/peer_inference.py"));
                            match peer {
                                Peer::Diffusers => c.arg("--diffusers").arg(&diffusers_json),
                                _ => c.arg("--explicit").arg(&md_yaml),
                            };
                            c.args(["--threads", &threads.to_string()])
                                .args(["--runs", &args.runs.to_string()]);
                            c
                        }
                        Peer::OnnxRuntime => {
                            let mut c = Command::new(&ort);
                            c.arg(root.join("scripts/check_onnx.py"))
                                .arg(&bundle)
                                .args(["--bench", &args.runs.to_string()])
                                .args(["--threads", &threads.to_string()]);
                            c
                        }
                    };
                    run_ok(cmd.arg("--json").arg(&json))
                        .with_context(|| format!("{step}: {}", peer.label()))?;
                    theirs[i].push(timing(peer, read_json(&json)?)?);
                }
            }
            let params = unetlab_params(unetlab, config)?;
            for (peer, runs) in peers.iter().zip(&theirs) {
                checks.push(check(*peer, config, params, &runs[0])?);
                let round_ratios: Vec<f64> = ours
                    .iter()
                    .zip(runs)
                    .map(|(u, p)| median_s(p) / median_s(u))
                    .collect();
                let ratio = percentile(&round_ratios, 50.0);
                let (ours_all, peer_all) = (pooled(&ours), pooled(runs));
                println!(
                    "peer-bench: inference: {setting}: unetlab {:.3} s, {} {:.3} s \
                     (unetlab {ratio:.2}x as fast, rounds {round_ratios:.2?})",
                    median_s(&ours_all),
                    peer.label(),
                    median_s(&peer_all),
                );
                rows.push(json!({
                    "config": config,
                    "threads": threads,
                    "peer": peer.label(),
                    "unetlab": ours_all,
                    "peer_times": peer_all,
                    "unetlab_gflops_per_s": ours[0]["flops"].as_f64().unwrap_or(f64::NAN)
                        / median_s(&ours_all) / 1e9,
                    "round_ratios": round_ratios,
                    "ratio": ratio,
                    "unetlab_rounds": ours,
                    "peer_rounds": runs,
                }));
            }
        }
    }

    let threads = args.inference_threads.iter().copied().max().unwrap_or(2);
    let mut profiles = Vec::new();
    for &(config, _) in COMPARISONS {
        println!("peer-bench: inference: {config}, {threads} thread(s): profile");
        profiles.push(unetlab_forward(unetlab, config, threads, args.runs, true)?);
    }
    let record = json!({
        "command": COMMAND,
        "started_utc": started,
        "build": Build::current(),
        "latency_code": Code::Latency.identity(),
        "rounds": args.rounds,
        "runs": args.runs,
        "machine": Machine::current(),
        "checks": checks,
        "inference": rows,
        "profiles": profiles,
    });
    write_file(
        &setup.out.join("inference.json"),
        &(serde_json::to_string_pretty(&record)? + "\n"),
    )?;
    plot(&setup.out.join("inference"), &record)
}

/// Latency per config and runtime, p10–p90 as whiskers (`inference.svg` and `.png`).
fn plot(stem: &Path, record: &Value) -> Result<()> {
    let (mut categories, mut medians, mut spans) = (Vec::new(), Vec::new(), Vec::new());
    let mut push = |name: String, times: &Value| {
        let f = |k: &str| times[k].as_f64().unwrap_or(f64::NAN);
        categories.push(name);
        medians.push(f("median_s"));
        spans.push((f("p10_s"), f("p90_s")));
    };
    let rows: Vec<&Value> = record["inference"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let setting = format!(
            "{}, {} thread(s)",
            row["config"].as_str().unwrap_or("?"),
            row["threads"]
        );
        let first = rows[..i]
            .iter()
            .all(|x| x["config"] != row["config"] || x["threads"] != row["threads"]);
        if first {
            push(format!("{setting} · unetlab"), &row["unetlab"]);
        }
        let peer = row["peer"].as_str().unwrap_or("?");
        push(format!("{setting} · {peer}"), &row["peer_times"]);
    }
    let series = Series {
        name: "latency (s)".into(),
        values: medians,
    };
    grouped_bars(
        stem,
        "One forward: fp32, batch 1, 64x64 latent, 77 tokens (median, p10-p90)",
        &categories,
        &[series],
        Some(&spans),
    )
    .context("plotting the inference latencies")
}

/// `unetlab bench <config> --json` (with `--profile` when `profile`): its one result object.
fn unetlab_forward(
    unetlab: &Path,
    config: &str,
    threads: usize,
    runs: usize,
    profile: bool,
) -> Result<Value> {
    last_json_object(
        Command::new(unetlab)
            .args(["bench", config, "--json", "--warmup", "1"])
            .args(profile.then_some("--profile"))
            .args(["--threads", &threads.to_string()])
            .args(["--runs", &runs.to_string()]),
        &format!("unetlab bench {config}"),
    )
}

/// The cost interpreter's parameter count of `config`.
fn unetlab_params(unetlab: &Path, config: &str) -> Result<u64> {
    last_json_object(
        Command::new(unetlab).args(["count", config, "--json"]),
        &format!("unetlab count {config}"),
    )?["params"]
        .as_u64()
        .context("unetlab count printed no parameter count")
}

/// A peer's report with its timings as `times_s` and `median_s`, whatever tool wrote it.
fn timing(peer: Peer, report: Value) -> Result<Value> {
    let Peer::OnnxRuntime = peer else {
        return Ok(report);
    };
    // check_onnx.py writes a list of bundle results.
    let r = report
        .as_array()
        .and_then(|a| a.first())
        .context("check_onnx.py wrote no result")?;
    if r["ok"] != Value::Bool(true) {
        bail!("ONNX Runtime disagrees with candle on the bundle's test vector: {r}");
    }
    let mut r = r.clone();
    r["times_s"] = r["ort_batch1_times_s"].clone();
    r["median_s"] = r["ort_batch1_median_s"].clone();
    Ok(r)
}

/// That a peer computes the same network: its parameter count equals the cost interpreter's,
/// and (ONNX Runtime) its output matches candle's.
fn check(peer: Peer, config: &str, params: u64, report: &Value) -> Result<Value> {
    let mut c = json!({"config": config, "peer": peer.label(), "unetlab_params": params});
    match peer {
        Peer::Diffusers | Peer::PyTorch => {
            let theirs = report["params"].as_u64().unwrap_or(0);
            if theirs != params {
                bail!(
                    "{config}: {} has {theirs} parameters, unetlab {params}",
                    peer.label()
                );
            }
            c["peer_params"] = json!(theirs);
            c["version"] = json!(report["diffusers"]
                .as_str()
                .map(|d| format!(
                    "torch {}, diffusers {d}",
                    report["torch"].as_str().unwrap_or("?")
                ))
                .unwrap_or_else(|| format!("torch {}", report["torch"].as_str().unwrap_or("?"))));
        }
        Peer::OnnxRuntime => {
            c["max_abs_diff_vs_candle"] = report["max_abs_diff"].clone();
            c["tolerance"] = report["tolerance"].clone();
            c["version"] = json!(format!(
                "onnxruntime {}",
                report["onnxruntime"].as_str().unwrap_or("?")
            ));
        }
    }
    Ok(c)
}

/// The README's inference section.
pub(super) fn readme(r: &Value) -> String {
    let m = &r["machine"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Inference: one full-size forward, unetlab against PyTorch eager and ONNX Runtime\n\n\
         Build `{}`, on {} ({} CPUs), started {}. fp32, batch 1, 64×64 latent, 77 tokens, random \
         weights; {} alternating rounds per setting, each side a fresh process with one warm-up \
         and {} timed forwards (`unetlab bench`; `scripts/peer_inference.py`; \
         `scripts/check_onnx.py --bench`, CPU execution provider). The ratio is the median of the \
         rounds' peer / unetlab latency ratios (above 1: unetlab is faster).\n",
        build_label(r),
        Machine::cpu_of_json(m),
        m["cpus"],
        r["started_utc"].as_str().unwrap_or("?"),
        r["rounds"],
        r["runs"],
    );
    let _ = writeln!(
        s,
        "| config | threads | peer | unetlab (s) | peer (s) | peer / unetlab | rounds' ratios | unetlab GFLOP/s |\n|---|---|---|---|---|---|---|---|"
    );
    let rows: Vec<&Value> = r["inference"].as_array().into_iter().flatten().collect();
    for row in &rows {
        let (lo, hi) = ratio_range(row);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.3} | {:.2}× | {:.2}–{:.2} | {:.1} |",
            row["config"].as_str().unwrap_or("?"),
            row["threads"],
            row["peer"].as_str().unwrap_or("?"),
            median_s(&row["unetlab"]),
            median_s(&row["peer_times"]),
            f(&row["ratio"]),
            lo,
            hi,
            f(&row["unetlab_gflops_per_s"]),
        );
    }
    let _ = writeln!(
        s,
        "\n![One forward per runtime, median and p10–p90](inference.svg)"
    );
    // MobileDiffusion / SD 1.5 on each side that runs both (unetlab, PyTorch eager).
    let latency = |config: &str, threads: &Value, unetlab: bool| {
        rows.iter()
            .find(|x| x["config"] == config && &x["threads"] == threads)
            .map(|x| {
                median_s(if unetlab {
                    &x["unetlab"]
                } else {
                    &x["peer_times"]
                })
            })
    };
    for row in rows.iter().filter(|x| x["config"] == "sd15") {
        let t = &row["threads"];
        if let (Some(md), Some(sd)) = (
            latency("mobilediffusion", t, true),
            latency("sd15", t, true),
        ) {
            let torch_md = rows
                .iter()
                .find(|x| {
                    x["config"] == "mobilediffusion"
                        && &x["threads"] == t
                        && x["peer"] == Peer::PyTorch.label()
                })
                .map(|x| median_s(&x["peer_times"]));
            let torch_sd = latency("sd15", t, false);
            let _ = writeln!(
                s,
                "\nMobileDiffusion / SD 1.5 latency at {t} thread(s): unetlab {:.2}{}; the paper's \
                 {:.2} (9.9 ms / 21.7 ms on an iPhone 15 Pro).",
                md / sd,
                match (torch_md, torch_sd) {
                    (Some(a), Some(b)) => format!(", PyTorch eager {:.2}", a / b),
                    _ => String::new(),
                },
                PAPER_MD_OVER_SD15,
            );
        }
    }
    let _ = writeln!(
        s,
        "\n### The networks are the same\n\n| config | peer | check | versions |\n|---|---|---|---|"
    );
    for c in r["checks"].as_array().into_iter().flatten() {
        let check = if c["peer_params"].is_null() {
            format!(
                "output vs candle max abs diff {:.1e} (tolerance {:.0e})",
                f(&c["max_abs_diff_vs_candle"]),
                f(&c["tolerance"])
            )
        } else {
            format!("{} parameters, as unetlab's count", c["peer_params"])
        };
        let _ = writeln!(
            s,
            "| {} | {} | {check} | {} |",
            c["config"].as_str().unwrap_or("?"),
            c["peer"].as_str().unwrap_or("?"),
            c["version"].as_str().unwrap_or("?"),
        );
    }
    for p in r["profiles"].as_array().into_iter().flatten() {
        let peak = f(&p["gemm_peak_gflops_per_s"]);
        let _ = writeln!(
            s,
            "\n### Where unetlab's forward goes: {}, {} thread(s)\n\n\
             `unetlab bench --profile`: mean time per forward by kind of op, largest first \
             (whole-forward median {:.3} s). GFLOP/s against this machine's GEMM peak, {:.1} \
             GFLOP/s (the fastest 1024³ f32 product through the gemm crate, measured in the same \
             run). FLOPs are the direct computation's; 3×3 convs of stride 1 on images of 16×16 \
             and more run as Winograd F(2×2, 3×3), with 2.25× fewer multiplies (their weights \
             transformed once, in the warm-up), so their rate can pass the peak.\n\n| kind | ms per forward | share | GFLOP | GFLOP/s | of GEMM peak |\n|---|---|---|---|---|---|",
            p["config"].as_str().unwrap_or("?"),
            p["machine"]["threads"],
            median_s(p),
            peak,
        );
        let kinds: Vec<&Value> = p["profile"].as_array().into_iter().flatten().collect();
        let inside: f64 = kinds.iter().map(|k| f(&k["seconds"])).sum();
        for k in kinds {
            let (seconds, flops) = (f(&k["seconds"]), k["flops"].as_u64().unwrap_or(0));
            let rate = (flops > 0).then(|| flops as f64 / seconds / 1e9);
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.1} % | {} | {} | {} |",
                k["kind"].as_str().unwrap_or("?"),
                1e3 * seconds,
                100.0 * seconds / inside,
                if flops > 0 {
                    format!("{:.1}", flops as f64 / 1e9)
                } else {
                    String::new()
                },
                rate.map_or(String::new(), |g| format!("{g:.1}")),
                rate.map_or(String::new(), |g| format!("{:.0} %", 100.0 * g / peak)),
            );
        }
    }
    let _ = writeln!(
        s,
        "\nEvery number and timing: `inference.json` (unetlab's `provenance` records the build \
         that measured it)."
    );
    s
}
