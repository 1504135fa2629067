//! `unetlab count` end to end, through the binary.

mod common;

use common::unetlab;

use std::process::Command;

use serde_json::Value;

fn json(args: &[&str]) -> Vec<Value> {
    let out = unetlab(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn json_has_one_object_per_config_with_every_field() {
    let rows = json(&[
        "count",
        "sd15",
        "configs/md-lite.yaml",
        "--json",
        "--depth",
        "2",
    ]);
    assert_eq!(rows.len(), 2);
    let sd15 = &rows[0];
    assert_eq!(sd15["name"], "sd15");
    assert_eq!(sd15["params"], 859_520_964u64);
    assert_eq!(sd15["tensors"], 686);
    assert_eq!(
        (
            sd15["latent_size"].as_u64(),
            sd15["tokens"].as_u64(),
            sd15["batch"].as_u64()
        ),
        (Some(64), Some(77), Some(1))
    );
    let macs = &sd15["macs"];
    let sum = ["conv", "linear", "attention"]
        .iter()
        .map(|k| macs[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(macs["total"].as_u64(), Some(sum));
    assert_eq!(sd15["flops"].as_u64(), Some(2 * sum));
    assert_eq!(sd15["blocks"]["res"], 22);
    assert_eq!(sd15["blocks"]["self_attention"], 16);
    assert_eq!(sd15["hash"].as_str().unwrap().len(), 64);
    let breakdown = sd15["breakdown"].as_array().unwrap();
    let top: u64 = breakdown
        .iter()
        .filter(|b| b["depth"] == 1)
        .map(|b| b["params"].as_u64().unwrap())
        .sum();
    assert_eq!(top, 859_520_964);
    assert!(breakdown
        .iter()
        .any(|b| b["path"] == "down_blocks.1.attentions.0"));
    // Places: they partition the parameters, and the mid block's transformer stack is the
    // breakdown's `mid_block.attentions.0`.
    let places = sd15["places"].as_array().unwrap();
    let total: u64 = places.iter().map(|p| p["params"].as_u64().unwrap()).sum();
    assert_eq!(total, 859_520_964);
    let mid = places
        .iter()
        .find(|p| p["direction"] == "mid" && p["kind"] == "transformer")
        .unwrap();
    assert_eq!(mid["level"], 3);
    assert_eq!(mid["label"], "mid block · transformer");
    let stack = breakdown
        .iter()
        .find(|b| b["path"] == "mid_block.attentions.0")
        .unwrap();
    assert_eq!(mid["params"], stack["params"]);
    assert_eq!(rows[1]["name"], "md-lite");
    assert_eq!(rows[1]["blocks"]["cross_attention"], 15);
}

#[test]
fn conditions_flags_change_the_count() {
    let base = &json(&["count", "sd15", "--json"])[0];
    let big = &json(&[
        "count",
        "sd15",
        "--json",
        "--latent-size",
        "96",
        "--tokens",
        "10",
        "--batch",
        "2",
    ])[0];
    assert_eq!(
        (
            big["latent_size"].as_u64(),
            big["tokens"].as_u64(),
            big["batch"].as_u64()
        ),
        (Some(96), Some(10), Some(2))
    );
    assert_eq!(big["params"], base["params"]);
    assert!(big["macs"]["conv"].as_u64() > base["macs"]["conv"].as_u64());
    // Conv MACs scale exactly with batch and pixel count.
    let ratio = big["macs"]["conv"].as_f64().unwrap() / base["macs"]["conv"].as_f64().unwrap();
    assert!(
        (ratio - 2.0 * (96.0f64 / 64.0).powi(2)).abs() < 1e-9,
        "{ratio}"
    );
}

#[test]
fn the_human_table_lists_every_config_and_the_convention() {
    let out = unetlab(&[
        "count",
        "sd15",
        "sdxl",
        "mobilediffusion",
        "md-lite",
        "--by-place",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "sd15",
        "sdxl",
        "mobilediffusion",
        "md-lite",
        "859.52",
        "2567.46",
        "FLOPs = 2 × MACs",
        "up_blocks.2",
        "mobilediffusion by place",
        "down level 1 · transformer",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    for (args, needle) in [
        (vec!["count", "nope"], "neither a file nor a preset"),
        (
            vec!["count", "sd15", "--latent-size", "60"],
            "--latent-size 60 is not a positive multiple of 2^3",
        ),
        (
            vec!["count", "sd15", "--batch", "0"],
            "--batch must be at least 1",
        ),
        (vec!["count", "configs/README.md"], "configs/README.md"),
    ] {
        let out = unetlab(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Counting every preset must not allocate weights: SDXL alone would be 10 GB in f32.
/// The child's peak RSS comes from `getrusage(RUSAGE_CHILDREN)`, read through Python's `resource`.
#[cfg(target_os = "linux")]
#[test]
fn counting_every_preset_stays_under_100_mb_resident() {
    let script = "import resource, subprocess, sys\n\
                  r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n\
                  print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            env!("CARGO_BIN_EXE_unetlab"),
            "count",
            "sd15",
            "sd21",
            "sdxl",
            "mobilediffusion",
            "md-lite",
        ])
        .args(["--json", "--depth", "3"])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = text.split_whitespace();
    assert_eq!(
        parts.next(),
        Some("0"),
        "count failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak_kib: u64 = parts.next().unwrap().parse().unwrap();
    assert!(
        peak_kib > 0 && peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB"
    );
}
