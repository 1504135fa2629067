//! `unetlab train` and `unetlab sample` through the binary: SIGKILL and resume, fine-tuning by
//! parameter name, sample grids.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{unetlab, unetlab_command};

const CONFIG: &str = "configs/fixtures/tiny-sd.yaml";

fn train_args<'a>(out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        CONFIG,
        "--budget",
        "smoke",
        "--steps",
        steps,
        "--batch",
        "8",
        "--checkpoint-every",
        "8",
        "--out",
        out,
    ]
}

/// The two prompts of the sample grids.
const PROMPTS: [&str; 2] = ["a small red circle", "a large blue square"];

/// `unetlab sample SOURCE... EXTRA...`: two prompts, three images each, 4 DDIM steps, zoom 2.
fn sample_grid(
    source: &[&str],
    prompts: [&str; 2],
    extra: &[&str],
    out: &Path,
) -> std::process::Output {
    let mut args = vec!["sample"];
    args.extend(source);
    for prompt in prompts {
        args.extend(["--prompt", prompt]);
    }
    args.extend(["--count", "3", "--steps", "4", "--zoom", "2"]);
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    unetlab(&args)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data_rows(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

#[test]
fn a_killed_run_resumes_to_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let steps = "40";
    // Scored along the way too: the quality curve resumes as bit-identically as the rest.
    let args = |out| {
        let mut v = train_args(out, steps);
        v.extend(["--score-every", "16"]);
        v
    };
    let o = unetlab(&args(a_s));
    assert!(o.status.success(), "{}", stderr(&o));

    // The same run, killed with SIGKILL after its second checkpoint, then started again.
    let mut child = unetlab_command()
        .args(args(b_s))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let rows = data_rows(&b.join("loss.csv"));
        if rows >= 18 {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            assert!(rows < 40, "the run finished before it could be interrupted");
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(started.elapsed() < Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!b.join("run.json").exists());
    let o = unetlab(&args(b_s));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resuming from the checkpoint at step 16"),
        "{}",
        stderr(&o)
    );

    for file in [
        "checkpoint.safetensors",
        "loss.csv",
        "validation.csv",
        "tokenizer.json",
        "samples.png",
        "quality.csv",
    ] {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{file} differs between the uninterrupted and the resumed run"
        );
    }
    // Its run.json names the build that finished it: this tree's, with this tree's trainer.
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("run.json")).unwrap()).unwrap();
    let provenance = &run["provenance"];
    assert_eq!(
        provenance["code"],
        unetlab_provenance::Code::Training.identity()
    );
    assert_eq!(
        provenance["build"]["commit"],
        unetlab_provenance::Build::current().commit
    );
    assert_eq!(run["resumed_from"], 16);
    // Scored at steps 16 and 32, and at the end.
    let quality = std::fs::read_to_string(a.join("quality.csv")).unwrap();
    let steps: Vec<&str> = quality
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(steps, ["16", "32", "40"], "{quality}");
    let last: Vec<f64> = quality
        .lines()
        .last()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let q = &run["metrics"]["quality"];
    assert_eq!(last[1], 40.0 * 8.0, "images seen");
    // serde_json parses floats to within an ulp, not exactly.
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
    assert!(same(last[2], q["fd"].as_f64().unwrap()), "{quality}");
    assert!(
        same(last[3], q["attribute_alignment"].as_f64().unwrap()),
        "{quality}"
    );
}

#[test]
fn fine_tuning_and_sampling_from_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("softmax");
    let o = unetlab(&train_args(base.to_str().unwrap(), "4"));
    assert!(o.status.success(), "{}", stderr(&o));

    // Loss logs as Parquet and the loss curves.
    for file in ["loss.parquet", "validation.parquet", "loss.svg", "loss.png"] {
        assert!(base.join(file).is_file(), "{file}");
    }
    let losses = unetlab_report::read_parquet(&base.join("loss.parquet")).unwrap();
    assert_eq!(losses.height(), 4);
    let columns: Vec<&str> = losses
        .get_column_names()
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(columns, ["step", "loss", "lr", "grad_norm"]);

    // A shapes run is scored when it finishes: metrics in run.json, the samples beside them.
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("run.json")).unwrap()).unwrap();
    let metrics = &run["metrics"];
    assert!(metrics["quality"]["fd"].as_f64().unwrap() > 0.0, "{run}");
    let alignment = metrics["quality"]["text_alignment"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&alignment));
    assert!(metrics["real_fd"].as_f64().unwrap() < metrics["quality"]["fd"].as_f64().unwrap());
    assert!(std::fs::metadata(base.join("samples.png")).unwrap().len() > 500);

    // ReLU attention fine-tuned from the softmax run: every parameter is copied by name.
    let relu = tmp.path().join("relu.yaml");
    let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(CONFIG);
    std::fs::write(
        &relu,
        format!(
            "extends: {}\nunet:\n  attention:\n    kernel: relu\n",
            fixture.display()
        ),
    )
    .unwrap();
    let tuned = tmp.path().join("relu");
    let mut args = train_args(tuned.to_str().unwrap(), "4");
    args[1] = relu.to_str().unwrap();
    args.extend(["--init-from", base.to_str().unwrap()]);
    let o = unetlab(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("parameters copied, 0 with another shape and 0 absent"),
        "{}",
        stderr(&o)
    );
    // The parent is part of the fine-tuned run's identity and record.
    let read = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap()
    };
    assert_eq!(read(&tuned)["initialised_from"], read(&base)["run_hash"]);
    assert!(read(&base).get("initialised_from").is_none());

    // Re-scored with other sampler settings: the same metrics a run reports, by kind too.
    let o = unetlab(&[
        "score",
        base.to_str().unwrap(),
        "--budget",
        "smoke",
        "--images",
        "8",
        "--steps",
        "2",
        "--cfg",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let scored: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(scored["options"]["images"], 8);
    assert_eq!(scored["options"]["ddim_steps"], 2);
    let kinds = &scored["quality"]["by_kind"];
    for kind in ["count", "relation", "shape", "colour", "size"] {
        let rate = kinds[kind].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate), "{kind}: {rate}");
    }
    let o = unetlab(&["score", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a finished training run"),
        "{}",
        stderr(&o)
    );

    // A 2 x 3 grid of 32 x 32 images at zoom 2 with 2-pixel gaps.
    let grid = tmp.path().join("grid.png");
    let o = sample_grid(&[tuned.to_str().unwrap()], PROMPTS, &[], &grid);
    assert!(o.status.success(), "{}", stderr(&o));
    let png = std::fs::read(&grid).unwrap();

    // --same-noise: every row starts from the first row's noise. The first row is the plain
    // grid's; a prompt repeated draws the same images in both rows, and different ones without.
    let rows = |path: &Path| -> Vec<Vec<u8>> {
        let image = image::open(path).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (3 * 66 + 2, 2 * 66 + 2));
        (0..2)
            .map(|r| {
                let start = (2 + r * 66) * image.width() as usize * 3;
                image.as_raw()[start..start + 64 * image.width() as usize * 3].to_vec()
            })
            .collect()
    };
    let sample_rows = |prompts: [&str; 2], same_noise: bool| {
        let out = tmp
            .path()
            .join(format!("rows-{same_noise}-{}.png", prompts[1].len()));
        let extra: &[&str] = if same_noise { &["--same-noise"] } else { &[] };
        let o = sample_grid(&[tuned.to_str().unwrap()], prompts, extra, &out);
        assert!(o.status.success(), "{}", stderr(&o));
        rows(&out)
    };
    // Mean absolute difference of two rows, in 8-bit levels. The same noise in a batch of
    // another size may round differently; other noise differs by tens of levels.
    let distance = |a: &[u8], b: &[u8]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.abs_diff(*y) as f64)
            .sum::<f64>()
            / a.len() as f64
    };
    let [circle, square] = PROMPTS;
    let (same, plain) = (sample_rows([circle, square], true), rows(&grid));
    let first = distance(&same[0], &plain[0]);
    assert!(first < 1.0, "the first row moved by {first} levels");
    let second = distance(&same[1], &plain[1]);
    assert!(
        second > 10.0,
        "the second row kept its own noise ({second} levels)"
    );
    let repeated = sample_rows([circle, circle], true);
    assert!(
        repeated[0] == repeated[1],
        "one prompt, one noise: the same images"
    );
    let fresh = sample_rows([circle, circle], false);
    let apart = distance(&fresh[0], &fresh[1]);
    assert!(
        apart > 10.0,
        "rows without --same-noise: {apart} levels apart"
    );

    // Exported with its text encoder, the bundle alone samples the same images.
    let bundle = tmp.path().join("bundle");
    let o = unetlab(&[
        "export",
        "--run",
        tuned.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
        "--bench-runs",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for file in [
        "tokenizer.json",
        "text_encoder.safetensors",
        "text_encoder.onnx",
        "model.onnx",
    ] {
        assert!(bundle.join(file).is_file(), "{file}");
    }
    let card = std::fs::read_to_string(bundle.join("README.md")).unwrap();
    assert!(card.contains("validation denoising loss"), "{card}");
    let from_bundle = tmp.path().join("bundle.png");
    let o = sample_grid(
        &["--export", bundle.to_str().unwrap()],
        PROMPTS,
        &[],
        &from_bundle,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read(&from_bundle).unwrap() == png,
        "the bundle samples other images"
    );
    assert_eq!(&png[1..4], b"PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (3 * 66 + 2, 2 * 66 + 2));
}

/// `--text-layers` deepens the jointly trained text encoder by whole transformer layers: each
/// adds self-attention (Q, K, V and output, one bias), a GEGLU feed-forward of width 4 (two
/// biased linears, the first of twice its width) and two layer norms (no cross-attention, so no
/// third), 16w² + 14w parameters.
#[test]
fn text_encoder_depth_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |layers: Option<&str>| -> serde_json::Value {
        let out = tmp
            .path()
            .join(format!("text-{}", layers.unwrap_or("default")));
        let mut args = train_args(out.to_str().unwrap(), "1");
        args.push("--no-metrics");
        if let Some(layers) = layers {
            args.extend(["--text-layers", layers]);
        }
        let o = unetlab(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap()
    };
    let default = run(None);
    let layers = default["recipe"]["text_layers"].as_u64().unwrap();
    let deeper = run(Some(&(layers + 1).to_string()));
    assert_eq!(deeper["recipe"]["text_layers"], layers + 1);
    assert_ne!(deeper["run_hash"], default["run_hash"]);
    let w = default["recipe"]["proxy"]["text_dim"].as_u64().unwrap();
    let params = |r: &serde_json::Value| r["text_encoder_params"].as_u64().unwrap();
    assert_eq!(params(&deeper) - params(&default), 16 * w * w + 14 * w);
}
