//! results/export/: the full-size MobileDiffusion export, its file sizes and its latencies.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use unetlab_bench::Machine;

use unetlab_files::write_file;
use unetlab_provenance::{now_utc, Build, Code};

const COMMAND: &str = "cargo xtask onnx-check --full";

/// Writes results/export/README.md and results/export/mobilediffusion.json from the bundles'
/// manifests and the ONNX Runtime check results (`full.json`).
pub fn write(root: &Path, bundles: &[PathBuf], ort_json: &Path) -> Result<()> {
    let ort: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(ort_json)?)?;
    let machine = Machine::current();
    let dir = root.join("results/export");
    std::fs::create_dir_all(&dir)?;

    let mut rows = Vec::new();
    for (bundle, check) in bundles.iter().zip(&ort) {
        let manifest_path = bundle.join("manifest.json");
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(&manifest_path)
                .with_context(|| format!("reading {}", manifest_path.display()))?,
        )?;
        rows.push(json!({
            "bundle": bundle.file_name().map(|n| n.to_string_lossy().into_owned()),
            "dtype": manifest["dtype"],
            "opset": manifest["opset"],
            "parameters": manifest["parameters"],
            "macs": manifest["macs"],
            "latent_size": manifest["latent_size"],
            "tokens": manifest["tokens"],
            "dynamic_shapes": manifest["dynamic_shapes"],
            "int8": manifest["int8"],
            "files": manifest["files"],
            "candle_latency": manifest["latency"],
            "onnxruntime": check,
        }));
    }
    let record = json!({
        "command": COMMAND,
        "commit": Build::current().commit,
        "build": Build::current(),
        "latency_code": Code::Latency.identity(),
        "date": now_utc(),
        "machine": machine,
        "bundles": rows,
    });
    write_file(
        &dir.join("mobilediffusion.json"),
        serde_json::to_string_pretty(&record)? + "\n",
    )?;
    write_file(&dir.join("README.md"), readme(&record))?;
    println!("wrote {}", dir.display());
    Ok(())
}

fn mib(v: &Value) -> String {
    v["bytes"]
        .as_f64()
        .map_or("–".into(), |b| format!("{:.1}", b / (1u64 << 20) as f64))
}

fn readme(r: &Value) -> String {
    let mut s = String::new();
    let m = &r["machine"];
    let _ = writeln!(s, "# Full-size MobileDiffusion export\n");
    let _ = writeln!(
        s,
        "Produced by `{COMMAND}`, build `{}`, on {} ({} CPUs), {}. Random weights (seed 0): \
         sizes and latencies do not depend on their values. Numbers are medians of 5 runs at batch 1, \
         64×64 latent, 77 tokens, after one warm-up; both runtimes use every CPU of the machine.\n",
        Build::current().label(),
        Machine::cpu_of_json(m),
        m["cpus"],
        r["date"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        s,
        "| bundle | shapes | model.onnx (MiB) | model.onnx.data (MiB) | model.safetensors (MiB) | unetlab candle (s) | ONNX Runtime (s) | ORT / candle | ORT vs candle max abs diff | int8: RMS error against f32, ONNX Runtime / candle |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for b in r["bundles"].as_array().into_iter().flatten() {
        let files = &b["files"];
        let candle = b["candle_latency"]["median_s"].as_f64();
        let ort = b["onnxruntime"]["ort_batch1_median_s"].as_f64();
        let fmt = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.3}"));
        let ratio = match (ort, candle) {
            (Some(o), Some(c)) => format!("{:.2}×", o / c),
            _ => "–".into(),
        };
        let shapes = match b["dynamic_shapes"].as_bool() {
            Some(true) => "dynamic",
            _ => "static",
        };
        let rms = &b["onnxruntime"]["int8_rms_error_vs_f32"][0];
        let int8 = match (rms["onnxruntime"].as_f64(), rms["candle"].as_f64()) {
            (Some(o), Some(c)) => format!("{:.2} % / {:.2} %", 100.0 * o, 100.0 * c),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {shapes} | {} | {} | {} | {} | {} | {ratio} | {:.1e} | {int8} |",
            b["bundle"].as_str().unwrap_or("?"),
            mib(&files["model.onnx"]),
            mib(&files["model.onnx.data"]),
            mib(&files["model.safetensors"]),
            fmt(candle),
            fmt(ort),
            b["onnxruntime"]["max_abs_diff"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }
    let ort_version = r["bundles"][0]["onnxruntime"]["onnxruntime"]
        .as_str()
        .unwrap_or("?");
    let _ = writeln!(
        s,
        "\nunetlab candle: the latency `unetlab export` measures for the model card (`unetlab bench` \
         at the bundle's dtype). ONNX Runtime {ort_version}: `scripts/check_onnx.py --bench 5` on \
         the bundle's model.onnx, CPU execution provider, default graph optimisations. The \
         difference column compares ONNX Runtime's output with the candle output stored in the \
         bundle's test vector (batch 2). Dynamic bundles \
         take any latent height, width and token count; the static one only 64×64 and 77 tokens, \
         which lets ONNX Runtime fold every shape computation. The int8 bundle quantizes every \
         conv and linear as QuantizeLinear/DequantizeLinear pairs (int8 weights per output \
         channel, int8 inputs per tensor, calibrated on two example inputs); its candle latency \
         is not measured because candle runs it in f32. Its difference column compares ONNX \
         Runtime's int8 output with candle's: an input within rounding noise of a quantization \
         step boundary rounds one way in each runtime, and over hundreds of quantized layers the \
         two int8 computations drift apart by about as much as either differs from f32, so the \
         last column compares each one's RMS error against the f32 model's output (relative to \
         its RMS). The check requires ONNX Runtime's error to be at most 1.25 times candle's \
         with its QDQ fusion off (`session.disable_quant_qdq`: every pair computed as written), \
         and with its default fused u8×s8 kernels (this column) only on CPUs with VNNI (AVX-512 \
         VNNI, AVX-VNNI or AMX): without VNNI they add products in pairs into saturating 16-bit \
         sums. Each \
         bundle's manifest and model card also record its ONNX Runtime latency \
         (`Bundle::record_latency`). On CPU, candle computes f16 by converting to f32 around \
         each matmul and conv, and ONNX Runtime inserts casts to f32 for f16 ops it has no CPU \
         kernel for, so f16 latency here says little about f16 hardware.\n\n\
         Details (file hashes, every timing): `mobilediffusion.json`."
    );
    s
}
