//! Training runs on tiny proxies: the loss falls, runs are deterministic, bad runs stop cleanly.

use std::path::{Path, PathBuf};

use unetlab_spec::{Config, TransformerSpec};
use unetlab_train::data::DataSource;
use unetlab_train::proxy::{proxy_spec, ProxyShape};
use unetlab_train::text_encoder::keep_text_encoder;
use unetlab_train::{train, Budget, Recipe, RunOptions, TrainError};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn tiny_sd() -> Config {
    Config::load(repo("configs/fixtures/tiny-sd.yaml").to_str().unwrap()).unwrap()
}

fn options(out: &Path, steps: u64) -> RunOptions {
    let mut recipe = Recipe::for_budget(Budget::Smoke);
    recipe.steps = steps;
    recipe.batch = 8;
    recipe.warmup = 5;
    recipe.optimizer.lr = 2e-3;
    // The validation loss weighs every timestep alike; so does this training (min-SNR would
    // spend the 40 steps on the noisier timesteps that loss weighs little).
    recipe.min_snr_gamma = None;
    recipe.val_examples = 16;
    recipe.val_every = steps;
    recipe.checkpoint_every = steps;
    RunOptions {
        config: tiny_sd(),
        recipe,
        data: DataSource::Shapes,
        tokenizer: None,
        init_from: None,
        frozen_text_encoder: None,
        out: out.to_path_buf(),
        restart: false,
        metrics: None,
    }
}

#[test]
fn validation_loss_falls_within_forty_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = train(&options(tmp.path(), 40), &mut |_| {}).unwrap();
    let initial = summary.initial_validation_loss.unwrap();
    // Stated margin: at least 30 % below the untrained network's validation loss.
    assert!(
        summary.validation_loss < 0.7 * initial,
        "validation loss {} from {initial}",
        summary.validation_loss
    );
    assert!(summary.steps_per_s > 0.0);
    // The library writes the whole run directory, whichever frontend calls it, and nothing
    // half-written (no temporary files) is left.
    let mut files: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "checkpoint.safetensors",
            "config.yaml",
            "loss.csv",
            "loss.parquet",
            "loss.png",
            "loss.svg",
            "proxy.yaml",
            "run.json",
            "tokenizer.json",
            "validation.csv",
            "validation.parquet",
        ]
    );
    let parquet = unetlab_report::read_parquet(&tmp.path().join("loss.parquet")).unwrap();
    assert_eq!(parquet.height(), 40, "one row per step");
    let losses = std::fs::read_to_string(tmp.path().join("loss.csv")).unwrap();
    assert_eq!(losses.lines().count(), 41, "header + one row per step");

    // A session with nothing left to train (a re-score) keeps the training session's figures:
    // its throughput, the build that trained, here marked with a time no build could stamp, and
    // the machine, marked with a CPU no machine reports.
    assert_eq!(summary.trained_by.as_ref(), Some(&summary.provenance));
    let machine = summary
        .trained_on
        .as_ref()
        .expect("a fresh session records its machine");
    assert_eq!(machine, &unetlab_bench::Machine::current());
    let run_json = tmp.path().join("run.json");
    let mut recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&run_json).unwrap()).unwrap();
    recorded["trained_by"]["measured_utc"] = "2000-01-01T00:00:00Z".into();
    recorded["trained_on"]["cpu_model"] = "a CPU of another machine".into();
    std::fs::write(&run_json, recorded.to_string()).unwrap();
    let again = train(&options(tmp.path(), 40), &mut |_| {}).unwrap();
    assert_eq!(again.resumed_from, Some(40));
    // Through JSON twice: serde_json's float parsing may move the last bit.
    assert!((again.steps_per_s / summary.steps_per_s - 1.0).abs() < 1e-12);
    let trained_by = again.trained_by.expect("carried over");
    assert_eq!(trained_by.measured_utc, "2000-01-01T00:00:00Z");
    assert_ne!(again.provenance.measured_utc, trained_by.measured_utc);
    let trained_on = again.trained_on.expect("carried over");
    assert_eq!(trained_on.cpu_model, "a CPU of another machine");
}

#[test]
fn the_proxy_keeps_structure_and_choices_and_shrinks_width() {
    for name in ["mobilediffusion", "md-lite", "sdxl", "sd15"] {
        let full = Config::load(name).unwrap().spec;
        let p = proxy_spec(&full, &ProxyShape::default());
        assert_eq!(p.levels.len(), full.levels.len());
        assert_eq!(p.res_block_count(), full.res_block_count(), "{name}");
        assert_eq!(p.transformer_block_count(), full.transformer_block_count());
        assert_eq!(p.self_attention_count(), full.self_attention_count());
        assert_eq!(p.cross_attention_count(), full.cross_attention_count());
        for (a, b) in p.levels.iter().zip(&full.levels) {
            assert_eq!(a.conv, b.conv);
            for (sa, sb) in [(&a.down, &b.down), (&a.up, &b.up)] {
                assert_eq!(sa.transformer_depths, sb.transformer_depths);
                // Every option but the head counts survives (a new option is kept unless the
                // proxy scales it on purpose).
                let (ta, tb) = (&sa.transformer, &sb.transformer);
                let kept = TransformerSpec {
                    heads: ta.heads,
                    kv_heads: ta.kv_heads,
                    ..tb.clone()
                };
                assert_eq!(ta, &kept, "{name}");
            }
            assert_eq!(a.channels % 8, 0);
            // Relative widths survive within rounding to 8 channels.
            let ratio = a.channels as f64 / p.levels[0].channels as f64;
            let full_ratio = b.channels as f64 / full.levels[0].channels as f64;
            assert!(
                (ratio - full_ratio).abs() * p.levels[0].channels as f64 <= 4.0 + 1e-9,
                "{name}"
            );
        }
        assert_eq!(
            p.mid,
            unetlab_spec::MidSpec {
                transformer: p.mid.transformer.clone(),
                ..full.mid.clone()
            }
        );
        assert_eq!(p.addition.is_some(), full.addition.is_some());
        assert_eq!(p.proj, full.proj);
    }
    // Grouped-query attention keeps its share of K/V heads.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (base, kv, expected) in [
        ("../../configs/fixtures/tiny-sd.yaml", 2, Some(2)),
        ("../../configs/fixtures/tiny-sd.yaml", 1, Some(1)),
        ("mobilediffusion", 1, Some(1)),
    ] {
        let yaml = format!("extends: {base}\nunet: {{attention: {{kv_heads: {kv}}}}}\n");
        let full = Config::from_yaml(&yaml, "variant.yaml", Some(dir))
            .unwrap()
            .spec;
        let p = proxy_spec(&full, &ProxyShape::default());
        for t in p.levels.iter().flat_map(|l| [&l.down, &l.up]) {
            if t.transformer_depths.iter().any(|&d| d > 0) {
                assert_eq!(t.transformer.kv_heads, expected, "{base} kv {kv}");
                assert!(t
                    .transformer
                    .heads
                    .is_multiple_of(t.transformer.kv_head_count()));
            }
        }
        unetlab_model::declared_params(&p).unwrap();
    }
    // MobileDiffusion and MD-Lite stay different networks.
    let md = proxy_spec(
        &Config::load("mobilediffusion").unwrap().spec,
        &ProxyShape::default(),
    );
    let lite = proxy_spec(
        &Config::load("md-lite").unwrap().spec,
        &ProxyShape::default(),
    );
    assert_eq!(
        md.levels.iter().map(|l| l.channels).collect::<Vec<_>>(),
        [32, 64, 104]
    );
    assert_ne!(md, lite);
}

#[test]
fn divergence_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(tmp.path(), 6);
    opts.recipe.optimizer.lr = 1e30;
    opts.recipe.warmup = 1;
    opts.recipe.checkpoint_every = 1;
    opts.recipe.grad_clip = 1e30;
    let err = train(&opts, &mut |_| {}).unwrap_err();
    let message = err.to_string();
    let TrainError::Diverged {
        step,
        checkpoint_step,
        ..
    } = err
    else {
        panic!("expected divergence, got {message}");
    };
    assert!(
        step >= 1 && checkpoint_step == step,
        "step {step}, checkpoint {checkpoint_step}"
    );
    assert!(
        message.contains(&format!("diverged at step {step}")),
        "{message}"
    );
    let ck = unetlab_train::checkpoint::load(&tmp.path().join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.info.step, checkpoint_step);
    assert!(!tmp.path().join("run.json").exists());
}

#[test]
fn a_checkpoint_of_another_run_is_not_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    train(&options(tmp.path(), 2), &mut |_| {}).unwrap();
    let mut other = options(tmp.path(), 2);
    other.recipe.seed = 1;
    let err = train(&other, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("--restart"), "{err}");
    other.restart = true;
    train(&other, &mut |_| {}).unwrap();
}

/// A frozen text encoder: the child takes the parent's EMA text weights and tokenizer, its
/// optimizer updates the UNet alone, and the text weights leave training bit for bit as they
/// came; a text encoder of another size is refused.
#[test]
fn a_frozen_text_encoder_stays_as_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let parent_dir = tmp.path().join("parent");
    let parent = train(&options(&parent_dir, 3), &mut |_| {}).unwrap();
    let from_parent = unetlab_train::checkpoint::load(&parent_dir.join("checkpoint.safetensors"))
        .unwrap()
        .ema;

    let child_dir = tmp.path().join("child");
    let mut child = options(&child_dir, 3);
    child.recipe.seed = 7;
    child.frozen_text_encoder = Some(parent_dir.clone());
    let summary = train(&child, &mut |_| {}).unwrap();
    assert_eq!(
        summary.frozen_text_encoder.as_deref(),
        Some(parent.run_hash.as_str())
    );
    let unfrozen = train(&options(&tmp.path().join("unfrozen"), 3), &mut |_| {}).unwrap();
    assert_ne!(summary.run_hash, unfrozen.run_hash);
    assert_eq!(
        std::fs::read(child_dir.join("tokenizer.json")).unwrap(),
        std::fs::read(parent_dir.join("tokenizer.json")).unwrap()
    );

    let ck = unetlab_train::checkpoint::load(&child_dir.join("checkpoint.safetensors")).unwrap();
    let bits = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let text: Vec<&String> = from_parent
        .keys()
        .filter(|n| n.starts_with("text."))
        .collect();
    assert!(!text.is_empty());
    for name in &text {
        assert_eq!(
            bits(&ck.weights[*name]),
            bits(&from_parent[*name]),
            "{name}"
        );
        assert_eq!(bits(&ck.ema[*name]), bits(&from_parent[*name]), "{name}");
    }
    // The optimizer holds moments for the UNet's parameters and none for the text encoder's.
    assert!(ck.adam_m.keys().all(|n| n.starts_with("unet.")));
    assert!(ck.adam_m.len() + text.len() == ck.weights.len());

    let mut deeper = options(&tmp.path().join("deeper"), 3);
    deeper.recipe.text_layers += 1;
    deeper.frozen_text_encoder = Some(parent_dir);
    let err = train(&deeper, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("--frozen-text-encoder"), "{err}");
}

/// A run's text encoder kept alone (`unetlab text-encoder`): EMA text weights only, the run's
/// identity, tokenizer and run.json; a run under it is bit for bit the run under the whole
/// source run. An unfinished run is refused.
#[test]
fn a_kept_text_encoder_trains_as_its_run() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let summary = train(&options(&source, 3), &mut |_| {}).unwrap();
    let kept_dir = tmp.path().join("kept");
    let kept = keep_text_encoder(&source, &kept_dir).unwrap();
    assert_eq!(kept.run_hash, summary.run_hash);
    assert_eq!(kept.parameters, summary.text_encoder_params);

    let whole = unetlab_train::checkpoint::load(&source.join("checkpoint.safetensors")).unwrap();
    let alone = unetlab_train::checkpoint::load(&kept_dir.join("checkpoint.safetensors")).unwrap();
    assert_eq!(alone.info, whole.info);
    assert!(alone.weights.is_empty() && alone.adam_m.is_empty() && alone.adam_v.is_empty());
    let text: Vec<&String> = whole
        .ema
        .keys()
        .filter(|n| n.starts_with("text."))
        .collect();
    assert_eq!(alone.ema.keys().collect::<Vec<_>>(), text);
    let bits = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for name in text {
        assert_eq!(bits(&alone.ema[name]), bits(&whole.ema[name]), "{name}");
    }
    for file in ["run.json", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(kept_dir.join(file)).unwrap(),
            std::fs::read(source.join(file)).unwrap()
        );
    }
    let readme = std::fs::read_to_string(kept_dir.join("README.md")).unwrap();
    assert!(readme.contains(&summary.run_hash[..16]), "{readme}");
    let machine = summary.trained_on.as_ref().unwrap().cpu();
    assert!(readme.contains(&format!("| {machine} |")), "{readme}");

    let under = |frozen: &Path, out: &str| {
        let mut child = options(&tmp.path().join(out), 3);
        child.recipe.seed = 7;
        child.frozen_text_encoder = Some(frozen.to_path_buf());
        let run = train(&child, &mut |_| {}).unwrap();
        let checkpoint = std::fs::read(tmp.path().join(out).join("checkpoint.safetensors"));
        (run.run_hash, run.validation_loss, checkpoint.unwrap())
    };
    assert_eq!(
        under(&kept_dir, "under-kept"),
        under(&source, "under-source")
    );

    // A run without run.json (unfinished, or not a run) is refused.
    std::fs::remove_file(source.join("run.json")).unwrap();
    let err = keep_text_encoder(&source, &tmp.path().join("none"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no finished run"), "{err}");
}

/// The README of an encoder kept from a run that started from another run's weights names that
/// run, whose images the encoder has also seen.
#[test]
fn a_kept_text_encoder_names_the_run_it_started_from() {
    let tmp = tempfile::tempdir().unwrap();
    let parent_dir = tmp.path().join("parent");
    let parent = train(&options(&parent_dir, 2), &mut |_| {}).unwrap();
    let child_dir = tmp.path().join("child");
    let mut child = options(&child_dir, 2);
    child.init_from = Some(parent_dir.clone());
    let summary = train(&child, &mut |_| {}).unwrap();
    assert_eq!(
        summary.initialised_from.as_deref(),
        Some(parent.run_hash.as_str())
    );

    let readme = |run: &Path, out: &str| {
        keep_text_encoder(run, &tmp.path().join(out)).unwrap();
        std::fs::read_to_string(tmp.path().join(out).join("README.md")).unwrap()
    };
    let child_readme = readme(&child_dir, "kept-child");
    assert!(
        child_readme.contains(&format!("run `{}` (`--init-from`)", &parent.run_hash[..16])),
        "{child_readme}"
    );
    let parent_readme = readme(&parent_dir, "kept-parent");
    assert!(!parent_readme.contains("--init-from"), "{parent_readme}");
    assert!(!parent_readme.contains("frozen:"), "{parent_readme}");

    let under_dir = tmp.path().join("under");
    let mut under = options(&under_dir, 2);
    under.frozen_text_encoder = Some(parent_dir);
    train(&under, &mut |_| {}).unwrap();
    let under_readme = readme(&under_dir, "kept-under");
    assert!(
        under_readme.contains(&format!("run `{}` frozen:", &parent.run_hash[..16])),
        "{under_readme}"
    );
}
