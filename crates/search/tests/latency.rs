//! The per-block latency table: signatures shared by equal blocks and only by them, predictions
//! that are sums of table entries (independent arithmetic on synthetic timings), and the per-kind
//! fit for blocks no probe ran.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use unetlab_cost::{count, BlockKind, BlockSignature, Conditions};
use unetlab_search::LatencyTable;
use unetlab_spec::{Config, ConfigTree};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config(path: &str, edits: &[(&str, &str)]) -> Config {
    let mut tree = ConfigTree::load(workspace().join(path).to_str().unwrap()).unwrap();
    for (field, value) in edits {
        tree.set(field, serde_norway::from_str(value).unwrap())
            .unwrap();
    }
    Config::from_tree(tree).unwrap()
}

fn blocks(c: &Config) -> Vec<BlockSignature> {
    count(
        &c.spec,
        Conditions {
            batch: 1,
            latent_size: c.spec.latent_size,
            tokens: c.spec.text_tokens,
        },
    )
    .unwrap()
    .blocks()
    .to_vec()
}

/// A made-up time for a block: a function of its MACs and kind only.
fn synthetic(b: &BlockSignature) -> f64 {
    let base = match b.place.kind {
        Some(BlockKind::Res) => 3e-4,
        Some(BlockKind::Transformer) => 5e-4,
        _ => 1e-4,
    };
    base + b.macs.total() as f64 * 1e-9
}

fn timings(blocks: &[BlockSignature]) -> BTreeMap<String, f64> {
    blocks
        .iter()
        .map(|b| (b.path.clone(), synthetic(b)))
        .collect()
}

#[test]
fn equal_blocks_share_a_signature_and_different_ones_do_not() {
    let sd = blocks(&config("configs/fixtures/tiny-sd.yaml", &[]));
    let by_path = |p: &str| {
        sd.iter()
            .find(|b| b.path == p)
            .unwrap_or_else(|| panic!("{p}: {sd:#?}"))
    };
    // Every block of the forward is there, once, in execution order, with a kind.
    assert_eq!(sd.first().unwrap().path, "time_embedding");
    assert_eq!(sd.last().unwrap().path, "conv_out");
    assert!(sd.iter().all(|b| b.place.kind.is_some()));
    // Two res blocks of the same level and width compute the same thing ...
    let a = by_path("down_blocks.0.resnets.0");
    let b = by_path("down_blocks.0.resnets.1");
    assert_eq!(a.signature, b.signature);
    // ... a res block that changes width does not.
    assert_ne!(a.signature, by_path("down_blocks.1.resnets.0").signature);
    // The same block in another config has the same signature; change its conv kind or the
    // feed-forward width and the signature follows.
    let separable = blocks(&config(
        "configs/fixtures/tiny-sd.yaml",
        &[("unet.levels.1.conv", "separable")],
    ));
    let same =
        |bs: &[BlockSignature], p: &str| bs.iter().find(|b| b.path == p).unwrap().signature.clone();
    assert_eq!(same(&separable, "down_blocks.0.resnets.0"), a.signature);
    assert_ne!(
        same(&separable, "down_blocks.1.resnets.1"),
        same(&sd, "down_blocks.1.resnets.1")
    );
    let wider = blocks(&config(
        "configs/fixtures/tiny-sd.yaml",
        &[("unet.feed_forward", "{mult: 2}")],
    ));
    let attention = sd
        .iter()
        .find(|b| b.place.kind == Some(BlockKind::Transformer))
        .unwrap();
    assert_ne!(same(&wider, &attention.path), attention.signature);
    // The attention kernel changes no parameter and no MAC, but the computation: a new signature.
    let relu = blocks(&config(
        "configs/fixtures/tiny-sd.yaml",
        &[("unet.attention.kernel", "relu")],
    ));
    let relu_block = relu.iter().find(|b| b.path == attention.path).unwrap();
    assert_eq!(relu_block.macs, attention.macs);
    assert_eq!(relu_block.params, attention.params);
    assert_ne!(relu_block.signature, attention.signature);
}

#[test]
fn a_covered_config_is_predicted_as_the_sum_of_its_blocks() {
    let probe = config("configs/fixtures/tiny-sd.yaml", &[]);
    let probe_blocks = blocks(&probe);
    let sum: f64 = probe_blocks.iter().map(synthetic).sum();
    let mut table = LatencyTable::default();
    let missing = table.add_probe(
        "tiny-sd",
        &probe_blocks,
        &timings(&probe_blocks),
        1.25 * sum,
    );
    assert!(missing.is_empty());
    let predictor = table.predictor();
    // One probe: the ratio of its whole forward to its summed blocks.
    let (a, b) = predictor.calibration();
    assert!(a == 0.0 && (b - 1.25).abs() < 1e-12);
    let p = predictor.predict(&probe_blocks);
    assert_eq!(p.fitted_blocks, 0);
    assert!((p.seconds - 1.25 * sum).abs() < 1e-12);

    // A config with one level's res blocks doubled reuses the table's blocks only.
    let deeper = config(
        "configs/fixtures/tiny-sd.yaml",
        &[
            ("unet.levels.0.down.res_blocks", "3"),
            ("unet.levels.0.up.res_blocks", "4"),
        ],
    );
    let deeper_blocks = blocks(&deeper);
    assert!(
        table.covers(&deeper_blocks),
        "{:?}",
        table.unknown(&deeper_blocks)
    );
    let expected: f64 = 1.25 * deeper_blocks.iter().map(synthetic).sum::<f64>();
    let p = predictor.predict(&deeper_blocks);
    assert_eq!((p.fitted_blocks, p.blocks), (0, deeper_blocks.len()));
    assert!((p.seconds - expected).abs() < 1e-12);
}

#[test]
fn unknown_blocks_are_fitted_from_their_kind_and_counted() {
    let mut table = LatencyTable::default();
    for (i, channels) in ["64", "48"].into_iter().enumerate() {
        let c = config(
            "configs/fixtures/tiny-sd.yaml",
            &[("unet.levels.1.channels", channels)],
        );
        let b = blocks(&c);
        let sum: f64 = b.iter().map(synthetic).sum();
        table.add_probe(&format!("probe {i}"), &b, &timings(&b), sum);
    }
    let predictor = table.predictor();
    let other = config(
        "configs/fixtures/tiny-sd.yaml",
        &[("unet.levels.1.channels", "40")],
    );
    let b = blocks(&other);
    let unknown = table.unknown(&b);
    assert!(!unknown.is_empty());
    let p = predictor.predict(&b);
    assert!(p.fitted_blocks > 0 && p.fitted_blocks < b.len());
    // Synthetic time is linear in MACs within a kind, so the fit recovers it.
    let truth: f64 = b.iter().map(synthetic).sum();
    assert!(
        (p.seconds - truth).abs() / truth < 1e-6,
        "predicted {} for {truth}",
        p.seconds
    );
}

#[test]
fn three_probes_calibrate_a_line_from_summed_blocks_to_the_whole_forward() {
    let mut table = LatencyTable::default();
    let mut sums = Vec::new();
    for channels in ["64", "48", "40"] {
        let c = config(
            "configs/fixtures/tiny-sd.yaml",
            &[("unet.levels.1.channels", channels)],
        );
        let b = blocks(&c);
        let sum: f64 = b.iter().map(synthetic).sum();
        // The whole forward: 2 ms more than the blocks, and 10 % slower.
        table.add_probe(channels, &b, &timings(&b), 0.002 + 1.1 * sum);
        sums.push(sum);
    }
    let (a, b) = table.predictor().calibration();
    assert!(
        (a - 0.002).abs() < 1e-9 && (b - 1.1).abs() < 1e-9,
        "{a} + {b} x"
    );
}

#[test]
fn a_probe_whose_timing_lacks_a_block_is_reported_not_averaged() {
    let c = config("configs/fixtures/tiny-sd.yaml", &[]);
    let b = blocks(&c);
    let mut t = timings(&b);
    t.remove("conv_out");
    let mut table = LatencyTable::default();
    assert_eq!(
        table.add_probe("x", &b, &t, 1.0),
        vec!["conv_out".to_string()]
    );
    assert!(
        table.probes.is_empty(),
        "no calibration from an incomplete probe"
    );
}
