//! `unetlab export` and `unetlab forward --export` through the binary.

mod common;

use common::unetlab;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn export_then_forward_from_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    let out_s = out.to_str().unwrap();
    let o = unetlab(&[
        "export",
        "configs/fixtures/tiny-sd.yaml",
        "--out",
        out_s,
        "--latent-size",
        "8",
        "--bench-runs",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(manifest["latent_size"], 8);
    assert_eq!(
        manifest["inputs"][0]["shape"],
        serde_json::json!(["batch", 4, "height", "width"])
    );
    assert_eq!(manifest["dynamic_shapes"], true);
    let latency = &manifest["latency"];
    assert_eq!(latency["runs"], 3);
    assert!(latency["median_s"].as_f64().unwrap() > 0.0);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("unetlab export configs/fixtures/tiny-sd.yaml"),
        "{card}"
    );
    assert!(card.contains("median of 3 runs"), "{card}");

    // The bundle's own test vector through `forward --export` reproduces the stored output.
    let result = tmp.path().join("out.safetensors");
    let o = unetlab(&[
        "forward",
        "--export",
        out_s,
        "--output",
        result.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stderr(&o);
    let diff: f64 = line
        .split("test vector: ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no difference reported: {line}"));
    assert!(diff <= 1e-6, "{line}");

    // Existing bundles are not overwritten without --force; bad options are errors.
    let o = unetlab(&["export", "tiny-sd", "--out", out_s]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    for (flag, value, message) in [
        ("--dtype", "bf16", "f32, f16 or int8"),
        ("--opset", "11", "supported opsets"),
        ("--latent-size", "7", "--latent-size"),
    ] {
        let fresh = tmp.path().join(flag);
        let o = unetlab(&[
            "export",
            "configs/fixtures/tiny-sd.yaml",
            "--out",
            fresh.to_str().unwrap(),
            flag,
            value,
        ]);
        assert!(!o.status.success(), "{flag} {value}");
        assert!(stderr(&o).contains(message), "{flag}: {}", stderr(&o));
        assert!(!fresh.exists());
    }

    // A damaged bundle is refused before anything runs.
    let onnx = out.join("model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&onnx, bytes).unwrap();
    let o = unetlab(&[
        "forward",
        "--export",
        out_s,
        "--output",
        result.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("model.onnx was modified"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn static_and_int8_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let fixed = tmp.path().join("static");
    let o = unetlab(&[
        "export",
        "configs/fixtures/tiny-sd.yaml",
        "--out",
        fixed.to_str().unwrap(),
        "--latent-size",
        "8",
        "--static",
        "--bench-runs",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(manifest["dynamic_shapes"], false);
    assert_eq!(
        manifest["inputs"][0]["shape"],
        serde_json::json!(["batch", 4, 8, 8])
    );

    let int8 = tmp.path().join("int8");
    let o = unetlab(&[
        "export",
        "configs/fixtures/every-choice.yaml",
        "--out",
        int8.to_str().unwrap(),
        "--dtype",
        "int8",
        "--bench-runs",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(manifest["dtype"], "int8");
    let q = &manifest["int8"];
    assert!(q["quantized_ops"].as_u64().unwrap() > 10, "{q}");
    let relative = q["relative_error"].as_f64().unwrap();
    assert!(relative > 1e-5 && relative < 0.1, "{q}");
    let max_abs = q["max_abs_error"].as_f64().unwrap();
    assert!(max_abs > 0.0);
    let card = std::fs::read_to_string(int8.join("README.md")).unwrap();
    assert!(card.contains("as QDQ"), "{card}");
    // The graph holds one QuantizeLinear per conv and linear input.
    let graph = std::fs::read(int8.join("model.onnx")).unwrap();
    let count = |needle: &[u8]| graph.windows(needle.len()).filter(|w| *w == needle).count();
    assert!(count(b"QuantizeLinear") >= q["quantized_ops"].as_u64().unwrap() as usize);
}
