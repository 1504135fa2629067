//! `unetlab precision` through the binary: its report is consistent with itself and with what
//! f16, bf16 and int8 must do.

mod common;

use common::unetlab;

#[test]
fn precision_reports_half_and_int8_errors_and_headroom() {
    let o = unetlab(&["precision", "configs/fixtures/every-choice.yaml", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &reports[0];
    assert_eq!(reports.as_array().unwrap().len(), 1);
    let out = r["output_max_abs"].as_f64().unwrap();
    assert!(out > 0.0);
    let get = |p: &str, m: &str| r[p][m].as_f64().unwrap();
    for p in ["f16", "bf16", "int8"] {
        assert!(get(p, "max_abs") > 0.0, "{p}: {r}");
        assert!(((get(p, "relative") * out) - get(p, "max_abs")).abs() <= 1e-6 * out);
        assert_eq!(r[p]["non_finite"], 0);
    }
    // bf16 keeps 8 mantissa bits, f16 11: bf16's error is the larger.
    assert!(
        get("bf16", "rms_relative") > get("f16", "rms_relative"),
        "{r}"
    );
    assert!(get("f16", "relative") < 1e-2, "{r}");
    assert!(get("int8", "relative") < 0.1, "{r}");
    let blocks = r["blocks"].as_array().unwrap();
    assert!(blocks.len() > 10);
    let tightest = &r["tightest_block"];
    let smallest = blocks
        .iter()
        .map(|b| b["f16_headroom"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(tightest["f16_headroom"].as_f64().unwrap(), smallest);
    let max_abs = tightest["max_abs"].as_f64().unwrap();
    assert!((smallest - 65504.0 / max_abs).abs() <= 1e-3 * smallest);

    // Nothing to measure, or weights for several configs: errors.
    assert!(!unetlab(&["precision"]).status.success());
    let o = unetlab(&[
        "precision",
        "tiny-sd",
        "mobilediffusion",
        "--weights",
        "x.safetensors",
    ]);
    assert!(!o.status.success());
}
