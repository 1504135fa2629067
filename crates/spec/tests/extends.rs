//! The `extends` merge rule, preset resolution and the content hash.

use std::fs;

use unetlab_spec::{Config, Projection, SpecError};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn sd21_is_sd15_with_its_overrides_applied() {
    let sd15 = Config::load("sd15").unwrap().spec;
    let sd21 = Config::load("sd21").unwrap().spec;
    let mut expected = sd15.clone();
    expected.text_dim = 1024;
    expected.proj = Projection::Linear;
    for level in &mut expected.levels {
        for stage in [&mut level.down, &mut level.up] {
            if stage.transformer_depths.iter().any(|&d| d > 0) {
                stage.transformer.heads = level.channels / 64;
            }
        }
    }
    expected.mid.transformer.heads = 1280 / 64;
    assert_eq!(sd21, expected);
}

#[test]
fn integer_keys_override_list_entries_and_lists_replace_whole() {
    let dir = tempfile::tempdir().unwrap();
    let indexed = write(
        &dir,
        "indexed.yaml",
        "extends: sd15\nunet:\n  levels:\n    1: {channels: 960, up: {res_blocks: 4}}\n",
    );
    let c = Config::load(&indexed).unwrap().spec;
    let sd15 = Config::load("sd15").unwrap().spec;
    assert_eq!(c.levels.len(), 4);
    assert_eq!(c.levels[1].channels, 960);
    assert_eq!(c.levels[1].up.res_blocks(), 4);
    assert_eq!(
        c.levels[1].up.transformer_depths,
        vec![1; 4],
        "a uniform depth follows res_blocks"
    );
    assert_eq!(
        c.levels[1].down, sd15.levels[1].down,
        "untouched keys of the entry are kept"
    );
    assert_eq!(c.levels[0], sd15.levels[0]);

    let replaced = write(
        &dir,
        "replaced.yaml",
        "extends: sd15\nunet:\n  levels:\n    - {channels: 320, down: {res_blocks: 1}, up: {res_blocks: 2}}\n",
    );
    let c = Config::load(&replaced).unwrap().spec;
    assert_eq!(c.levels.len(), 1, "a list replaces the inherited list");
}

#[test]
fn null_removes_and_heads_replace_head_dim() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "x.yaml",
        "extends: sdxl\nunet:\n  addition: null\n  attention: {heads: 10}\n",
    );
    let c = Config::load(&path).unwrap().spec;
    assert!(c.addition.is_none());
    assert_eq!(
        c.levels[1].down.transformer.heads, 10,
        "heads replaced the inherited head_dim"
    );
}

#[test]
fn names_are_not_inherited_and_relative_extends_chain() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    write(
        &dir,
        "base.yaml",
        "name: base-name\nextends: sd15\nunet:\n  feed_forward: {mult: 3}\n",
    );
    write(
        &dir,
        "sub/mid.yaml",
        "extends: ../base.yaml\nunet:\n  attention: {shared_kv: true}\n",
    );
    let leaf = write(
        &dir,
        "leaf.yaml",
        "extends: sub/mid.yaml\nunet:\n  levels: {0: {conv: separable}}\n",
    );
    let c = Config::load(&leaf).unwrap();
    assert_eq!(c.name, "leaf");
    let t = &c.spec.levels[1].down.transformer;
    assert_eq!(
        (t.ff_mult, t.shared_kv),
        (3.0, true),
        "options from every file in the chain"
    );
    assert_eq!(c.spec.levels[0].conv, unetlab_spec::ConvKind::Separable);
}

#[test]
fn cycles_and_bad_merges_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(&dir, "a.yaml", "extends: b.yaml\nunet: {}\n");
    write(&dir, "b.yaml", "extends: a.yaml\nunet: {}\n");
    assert!(matches!(
        Config::load(&a),
        Err(SpecError::ExtendsCycle { .. })
    ));

    let bad = write(
        &dir,
        "bad.yaml",
        "extends: sd15\nunet:\n  levels: {first: {channels: 64}}\n",
    );
    let err = Config::load(&bad).unwrap_err();
    assert_eq!(err.field_errors()[0].path, "unet.levels", "{err}");
}

#[test]
fn the_hash_depends_on_the_network_only() {
    let dir = tempfile::tempdir().unwrap();
    let sd15 = Config::load("sd15").unwrap();
    assert_eq!(sd15.hash().len(), 64);
    assert_eq!(sd15.hash(), Config::load("sd15").unwrap().hash());

    let renamed = write(
        &dir,
        "renamed.yaml",
        "# a comment\nname: other\ndescription: same network\nextends: sd15\n",
    );
    assert_eq!(
        Config::load(&renamed).unwrap().hash(),
        sd15.hash(),
        "name, description and extends do not matter"
    );

    let changed = write(
        &dir,
        "changed.yaml",
        "extends: sd15\nunet: {attention: {kernel: relu}}\n",
    );
    assert_ne!(Config::load(&changed).unwrap().hash(), sd15.hash());

    // The same network written out without extends, keys reordered, defaults given explicitly.
    let flat = include_str!("../../../configs/sd15.yaml").replace(
        "in_channels: 4\n  out_channels: 4",
        "out_channels: 4\n  in_channels: 4",
    );
    assert_ne!(flat, include_str!("../../../configs/sd15.yaml"));
    assert_eq!(
        Config::from_yaml(&flat, "flat.yaml", None).unwrap().hash(),
        sd15.hash()
    );
}

#[test]
fn every_preset_loads_by_name() {
    for name in unetlab_spec::presets::NAMES {
        let c = Config::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&c.name, name);
        assert_eq!(c.origin, format!("preset:{name}"));
    }
}

#[test]
fn paper_notes_belong_to_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        "parent.yaml",
        "extends: sd15\npaper: {step: parent step, claim: parent claim}\n",
    );
    let child = write(&dir, "child.yaml", "extends: parent.yaml\n");
    assert_eq!(Config::load(&child).unwrap().paper, None);
    let own = write(
        &dir,
        "own.yaml",
        "extends: parent.yaml\npaper: {step: s, claim: c, baseline: parent}\n",
    );
    let paper = Config::load(&own).unwrap().paper.unwrap();
    assert_eq!(
        (
            paper.step.as_str(),
            paper.claim.as_str(),
            paper.baseline.as_deref()
        ),
        ("s", "c", Some("parent"))
    );
    let bad = write(&dir, "bad.yaml", "extends: sd15\npaper: {step: s}\n");
    assert_eq!(
        Config::load(&bad).unwrap_err().field_errors()[0].path,
        "paper"
    );
}
