//! `unetlab compare` and `unetlab bench` end to end, through the binary (tiny configs only; timings
//! are printed, never asserted).

mod common;

use common::unetlab;

#[test]
fn compare_puts_the_papers_numbers_beside_ours_and_writes_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = unetlab(&[
        "compare",
        "sd15",
        "mobilediffusion",
        "configs/fixtures/tiny-sd.yaml",
        "--no-bench",
        "--plots",
        dir.path().to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("862 / 859.5"),
        "SD 1.5 params, paper / ours:\n{text}"
    );
    assert!(
        text.contains("392 / 401.6"),
        "SD 1.5 GFLOPs, paper / G MACs ours:\n{text}"
    );
    assert!(
        text.contains("15+18 / 15+18"),
        "MobileDiffusion SA+CA:\n{text}"
    );
    assert!(text.contains("– / 12"), "tiny-sd has no paper row:\n{text}");
    for ext in ["svg", "png"] {
        assert!(dir.path().join(format!("params_gflops.{ext}")).is_file());
    }
    assert!(
        !dir.path().join("latency.svg").exists(),
        "no latency plot without timings"
    );
}

#[test]
fn bench_reports_percentiles_blocks_and_machine_as_json() {
    let out = unetlab(&[
        "bench",
        "configs/fixtures/tiny-sd.yaml",
        "--runs",
        "4",
        "--warmup",
        "1",
        "--per-block",
        "--profile",
        "--json",
        "--threads",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v[0];
    assert_eq!(r["config"], "tiny-sd");
    assert_eq!(r["times_s"].as_array().unwrap().len(), 4);
    let (p10, median, p90) = (
        r["p10_s"].as_f64().unwrap(),
        r["median_s"].as_f64().unwrap(),
        r["p90_s"].as_f64().unwrap(),
    );
    assert!(0.0 < p10 && p10 <= median && median <= p90);
    assert_eq!(r["machine"]["threads"], 1, "--threads reaches candle");
    let flops = r["flops"].as_f64().unwrap();
    assert!((r["achieved_gflops_per_s"].as_f64().unwrap() - flops / median / 1e9).abs() < 1e-6);
    let blocks: Vec<&str> = r["per_block"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["block"].as_str().unwrap())
        .collect();
    // Every block the cost interpreter walks (res blocks, transformer stacks, samplers, embedding,
    // in/out convs), in its order, then the time between blocks.
    let config = unetlab_spec::Config::load("configs/fixtures/tiny-sd.yaml")
        .or_else(|_| {
            unetlab_spec::Config::load(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../configs/fixtures/tiny-sd.yaml"
            ))
        })
        .unwrap();
    let cost = unetlab_cost::count(
        &config.spec,
        unetlab_cost::Conditions {
            batch: r["batch"].as_u64().unwrap() as usize,
            latent_size: r["latent_size"].as_u64().unwrap() as usize,
            tokens: r["tokens"].as_u64().unwrap() as usize,
        },
    )
    .unwrap();
    let mut expected: Vec<&str> = cost.blocks().iter().map(|b| b.path.as_str()).collect();
    expected.push("(between blocks)");
    assert_eq!(blocks, expected);
    assert!(blocks.contains(&"down_blocks.0.attentions.1"));
    // --profile: the kinds' FLOPs add up to the forward's, with the GEMM peak beside them.
    let kinds = r["profile"].as_array().unwrap();
    let profiled: u64 = kinds.iter().map(|k| k["flops"].as_u64().unwrap()).sum();
    assert_eq!(profiled as f64, flops);
    assert!(kinds.iter().any(|k| k["kind"] == "conv 3x3"));
    assert!(r["gemm_peak_gflops_per_s"].as_f64().unwrap() > 0.0);

    let bad = unetlab(&["bench", "sd15", "--runs", "2"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--runs must be at least 3"));
}
