//! `cargo xtask onnx-check`: exported bundles checked by the reference ONNX tools (Python `onnx`
//! and ONNX Runtime, pinned in scripts/requirements-onnx.txt, installed into a virtual environment
//! under target/). With `--full`, the full-size MobileDiffusion export and its latencies go to
//! results/export/.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::docs::workspace;
use crate::tools::{build_unetlab, python_venv, run_ok, target_dir};

/// Export tiny bundles that switch on every design choice (f32 and f16, opsets 17 to 21, inline
/// and external weights, dynamic and static shapes, the reference fixtures with their weights, a
/// trained proxy run with its text encoder) and check each with onnx.checker and ONNX Runtime
/// against unetlab's own output (dynamic graphs at two batch sizes, latent sizes and token
/// counts), and the fixtures also against their reference outputs at the fixtures' own token
/// counts (max |Δ| ≤ 1e-4 for f32).
#[derive(clap::Args, Default)]
pub struct OnnxCheckArgs {
    /// Also export full-size mobilediffusion (random init, f16 and f32), time ONNX Runtime beside
    /// unetlab's candle latency, and write results/export/ (takes several minutes).
    #[arg(long)]
    full: bool,
    /// Where bundles are written (default: target/onnx-check).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One bundle to export: name, config, extra `unetlab export` flags.
struct Case {
    name: &'static str,
    config: String,
    flags: Vec<String>,
}

/// Runs `cargo xtask onnx-check`.
pub fn run(args: &OnnxCheckArgs) -> Result<()> {
    let root = workspace();
    let target = target_dir(&root);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target.join("onnx-check"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let python = python_venv(&root, &target, "scripts/requirements-onnx.txt", "onnx-venv")?;
    let unetlab = build_unetlab(&root)?;

    let fixtures = root.join("../shared/reference/fixtures");
    let every = root.join("configs/fixtures/every-choice.yaml");
    let s = |x: &str| x.to_string();
    let mut cases = vec![
        Case {
            name: "every-choice-f32-opset17",
            config: every.display().to_string(),
            flags: vec![s("--opset"), s("17")],
        },
        Case {
            name: "every-choice-f16-opset21",
            config: every.display().to_string(),
            flags: vec![s("--dtype"), s("f16"), s("--opset"), s("21")],
        },
        Case {
            name: "every-choice-f32-opset20-external",
            config: every.display().to_string(),
            flags: vec![s("--opset"), s("20"), s("--external-data")],
        },
        Case {
            name: "every-choice-int8-opset19",
            config: every.display().to_string(),
            flags: vec![s("--dtype"), s("int8"), s("--opset"), s("19")],
        },
        Case {
            name: "every-choice-f32-opset18-static",
            config: every.display().to_string(),
            flags: vec![s("--opset"), s("18"), s("--static")],
        },
    ];
    // The reference fixtures with their weights, exported with dynamic shapes at their configs'
    // sizes: ONNX Runtime must also reproduce the reference output itself at the fixture's own
    // token count (diffusers' for tiny-sd and tiny-sdxl, the independent PyTorch
    // implementation's for tiny-md).
    let mut references = Vec::new();
    for (fixture, opset) in [("tiny-sd", "18"), ("tiny-sdxl", "19"), ("tiny-md", "17")] {
        let dir = fixtures.join(fixture);
        let (config, weights) = if fixture == "tiny-md" {
            (dir.join("config.yaml"), dir.join("weights.safetensors"))
        } else {
            (
                root.join(format!("configs/fixtures/{fixture}.yaml")),
                dir.join("diffusion_pytorch_model.safetensors"),
            )
        };
        let io = dir.join("io.safetensors");
        for file in [&weights, &io] {
            if !file.is_file() {
                bail!("{} is missing (the shared reference data)", file.display());
            }
        }
        references.push(format!("{}={}", out.join(fixture).display(), io.display()));
        cases.push(Case {
            name: fixture,
            config: config.display().to_string(),
            flags: vec![
                s("--weights"),
                weights.display().to_string(),
                s("--opset"),
                s(opset),
            ],
        });
    }
    // A trained proxy run, exported with its text encoder and tokenizer.
    let run = out.join("tiny-sd-run");
    println!("onnx-check: training {}", run.display());
    run_ok(
        Command::new(&unetlab)
            .args([
                "train",
                "--budget",
                "smoke",
                "--steps",
                "4",
                "--batch",
                "4",
                "--restart",
            ])
            .arg(root.join("configs/fixtures/tiny-sd.yaml"))
            .arg("--out")
            .arg(&run),
    )
    .context("unetlab train")?;
    cases.push(Case {
        name: "tiny-sd-trained-proxy",
        config: String::new(),
        flags: vec![s("--run"), run.display().to_string()],
    });
    let mut bundles = Vec::new();
    for case in &cases {
        let dir = out.join(case.name);
        export(
            &unetlab,
            &case.config,
            &dir,
            &case.flags,
            &["--bench-runs", "0"],
        )?;
        bundles.push(dir);
    }
    let reference_flags: Vec<&str> = references
        .iter()
        .flat_map(|r| ["--reference", r.as_str()])
        .collect();
    check(
        &python,
        &root,
        &bundles,
        &out.join("results.json"),
        &reference_flags,
    )?;

    if args.full {
        full_size(&python, &unetlab, &root, &out)?;
    }
    Ok(())
}

fn export(
    unetlab: &Path,
    config: &str,
    dir: &Path,
    flags: &[String],
    extra: &[&str],
) -> Result<()> {
    println!("onnx-check: exporting {}", dir.display());
    let positional: &[&str] = if config.is_empty() { &[] } else { &[config] };
    run_ok(
        Command::new(unetlab)
            .arg("export")
            .args(positional)
            .args(["--force", "--out"])
            .arg(dir)
            .args(flags)
            .args(extra),
    )
    .with_context(|| format!("unetlab export {config}"))
}

fn check(
    python: &Path,
    root: &Path,
    bundles: &[PathBuf],
    json: &Path,
    extra: &[&str],
) -> Result<()> {
    run_ok(
        Command::new(python)
            .arg(root.join("scripts/check_onnx.py"))
            .args(bundles)
            .arg("--json")
            .arg(json)
            .args(extra),
    )
    .context("the ONNX checks failed")
}

/// Full-size MobileDiffusion (f16, f32 with dynamic and with static shapes, int8): file sizes,
/// candle latency (`unetlab export`'s measurement; none for int8, whose candle model is the f32
/// one) and ONNX Runtime latency, written to results/export/.
fn full_size(python: &Path, unetlab: &Path, root: &Path, out: &Path) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut bundles = Vec::new();
    for (name, flags, runs) in [
        ("f16", &["--dtype=f16"][..], "5"),
        ("f32", &[][..], "5"),
        ("f32-static", &["--static"][..], "0"),
        ("int8", &["--dtype=int8"][..], "0"),
    ] {
        let dir = out.join(format!("mobilediffusion-{name}"));
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        export(
            unetlab,
            "mobilediffusion",
            &dir,
            &flags,
            &["--bench-runs", runs],
        )?;
        bundles.push(dir);
    }
    let json = out.join("full.json");
    let threads_flag = threads.to_string();
    check(
        python,
        root,
        &bundles,
        &json,
        &["--bench", "5", "--threads", &threads_flag],
    )?;
    record_ort_latencies(&bundles, &json)?;
    crate::export_results::write(root, &bundles, &json)
}

/// Writes each bundle's ONNX Runtime latency (from the check's results) into its manifest and
/// model card.
fn record_ort_latencies(bundles: &[PathBuf], json: &Path) -> Result<()> {
    let results: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(json)?)?;
    let machine = unetlab_bench::Machine::current();
    for (dir, r) in bundles.iter().zip(&results) {
        let (Some(median_s), Some(times)) = (
            r["ort_batch1_median_s"].as_f64(),
            r["ort_batch1_times_s"].as_array(),
        ) else {
            continue;
        };
        let mut bundle = unetlab_export::Bundle::open(dir)?;
        let setting = format!(
            "ONNX Runtime {} on model.onnx, CPU execution provider, {}, batch 1, {}x{} latent, {} tokens, {} ({} threads)",
            r["onnxruntime"].as_str().unwrap_or("?"),
            bundle.manifest.dtype,
            bundle.manifest.latent_size,
            bundle.manifest.latent_size,
            bundle.manifest.tokens,
            machine.cpu(),
            r["ort_threads"]
        );
        bundle.record_latency(unetlab_export::Latency {
            median_s,
            runs: times.len(),
            setting,
        })?;
    }
    Ok(())
}
