//! Bad configs: each is rejected (never a panic) with an error naming the offending field.

use unetlab_spec::{Config, SpecError};

/// A small valid config; each case below changes one thing.
const BASE: &str = r#"
unet:
  in_channels: 4
  out_channels: 4
  latent_size: 16
  text: {dim: 24}
  attention: {heads: 4}
  levels:
    - channels: 32
      down: {res_blocks: 2, transformer_depth: 1}
      up: {res_blocks: 3, transformer_depth: 1}
    - channels: 64
      down: {res_blocks: 2}
      up: {res_blocks: 3}
  mid: {transformer_depth: 1}
"#;

fn parse(yaml: &str) -> Result<Config, SpecError> {
    Config::from_yaml(yaml, "case.yaml", None)
}

/// `BASE` with `from` replaced by `to` (which must occur exactly once).
fn variant(from: &str, to: &str) -> String {
    assert_eq!(
        BASE.matches(from).count(),
        1,
        "`{from}` must occur once in BASE"
    );
    BASE.replace(from, to)
}

#[test]
fn the_base_config_is_valid() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.name, "case");
    assert_eq!(c.spec.levels[0].down.transformer.heads, 4);
}

#[test]
fn every_bad_config_names_its_field() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            variant("in_channels: 4", "in_channel: 4"),
            "unet.in_channel",
            "unknown field",
        ),
        (
            variant(
                "res_blocks: 2, transformer_depth: 1}",
                "res_blocks: 2, depth: 1}",
            ),
            "unet.levels[0].down.depth",
            "unknown field",
        ),
        (
            variant("channels: 32", "channels: thirty-two"),
            "unet.levels[0].channels",
            "invalid type",
        ),
        (
            variant("channels: 64", "channels: 60"),
            "unet.levels[1].channels",
            "not divisible by norm.groups 32",
        ),
        (
            variant("attention: {heads: 4}", "attention: {heads: 5}"),
            "unet.levels[0].down.attention.heads",
            "does not divide",
        ),
        (
            variant("attention: {heads: 4}", "attention: {head_dim: 12}"),
            "unet.levels[0].down.attention.head_dim",
            "does not divide",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4, kv_heads: 3}",
            ),
            "unet.levels[0].down.attention.kv_heads",
            "3 does not divide the 4 heads",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4, kv_heads: 0}",
            ),
            "unet.levels[0].down.attention.kv_heads",
            "0 does not divide the 4 heads",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4, head_dim: 8}",
            ),
            "unet.levels[0].down.attention",
            "either heads or head_dim",
        ),
        (
            variant("  attention: {heads: 4}\n", ""),
            "unet.levels[0].down.attention.heads",
            "need attention.heads",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4, self: false, cross: false}",
            ),
            "unet.levels[0].down.transformer_depth",
            "both false",
        ),
        (
            variant(
                "res_blocks: 2, transformer_depth: 1}",
                "res_blocks: 2, transformer_depth: [1, 1, 1]}",
            ),
            "unet.levels[0].down.transformer_depth",
            "has 3 entries but res_blocks is 2",
        ),
        (
            variant("up: {res_blocks: 3}", "up: {res_blocks: 2}"),
            "unet.levels[1].up.res_blocks",
            "skip connections unused",
        ),
        (
            variant("latent_size: 16", "latent_size: 15"),
            "unet.latent_size",
            "multiple of 2^1",
        ),
        (
            variant("text: {dim: 24}", "text: {dim: 0}"),
            "unet.text.dim",
            "must be positive",
        ),
        (
            variant("mid: {transformer_depth: 1}", "mid: {res_blocks: 0}"),
            "unet.mid.res_blocks",
            "at least 1",
        ),
        (
            variant(
                "mid: {transformer_depth: 1}",
                "mid: {transformer_depth: [1, 1]}",
            ),
            "unet.mid.transformer_depth",
            "res_blocks - 1 is 1",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4, kernel: sigmoid}",
            ),
            "unet.attention.kernel",
            "unknown variant `sigmoid`",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4}\n  feed_forward: {mult: 0}",
            ),
            "unet.levels[0].down.feed_forward.mult",
            "no feed-forward width",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4}\n  feed_forward: {activation: relu}",
            ),
            "unet.feed_forward.activation",
            "unknown variant `relu`",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4}\n  norm: {groups: 8, eps: -1.0}",
            ),
            "unet.norm.eps",
            "positive number",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4}\n  time: {channels: 33}",
            ),
            "unet.time.channels",
            "even",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4}\n  addition: {type: text_time, time_channels: 8}",
            ),
            "unet.addition",
            "missing field `text_embeds_dim`",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4}\n  addition: {type: class_labels}",
            ),
            "unet.addition.type",
            "unknown variant `class_labels`",
        ),
        (
            variant(
                "attention: {heads: 4}",
                "attention: {heads: 4}\n  conv: depthwise",
            ),
            "unet.conv",
            "unknown variant `depthwise`",
        ),
        (
            variant(
                "res_blocks: 2, transformer_depth: 1}",
                "res_blocks: 2, transformer_depth: -1}",
            ),
            "unet.levels[0].down.transformer_depth",
            "non-negative",
        ),
        (
            variant("  levels:", "  levels: []\n  old_levels:"),
            "unet.old_levels",
            "unknown field",
        ),
        (
            variant("in_channels: 4", "in_channels: 0"),
            "unet.in_channels",
            "must be positive",
        ),
        ("unet: [1, 2]".to_string(), "unet", "invalid type"),
        ("- just\n- a list".to_string(), "", "must be a YAML mapping"),
        ("unet: {in_channels: 4\n".to_string(), "", "invalid YAML"),
        (
            format!("extends: no-such-preset\n{BASE}"),
            "extends",
            "neither a file nor a preset",
        ),
        (
            "extends: sd15\nunet:\n  levels: {7: {channels: 64}}\n".to_string(),
            "unet.levels[7]",
            "out of range",
        ),
        (format!("name: [a]\n{BASE}"), "name", "must be a string"),
    ];
    assert!(cases.len() >= 15);
    for (yaml, path, fragment) in cases {
        let err = match parse(&yaml) {
            Ok(_) => panic!("accepted a bad config (expected {path}: {fragment}):\n{yaml}"),
            Err(e) => e,
        };
        let errors = err.field_errors();
        assert!(
            errors
                .iter()
                .any(|e| e.path == path && e.message.contains(fragment)),
            "expected an error at `{path}` containing `{fragment}`, got: {err}\nfor:\n{yaml}"
        );
        assert!(
            err.to_string().starts_with("case.yaml: "),
            "error does not name the file: {err}"
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let yaml =
        variant("channels: 64", "channels: 60").replace("latent_size: 16", "latent_size: 15");
    let err = parse(&yaml).unwrap_err();
    let paths: Vec<&str> = err.field_errors().iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.contains(&"unet.levels[1].channels") && paths.contains(&"unet.latent_size"),
        "{paths:?}"
    );
}

#[test]
fn a_res_block_count_over_the_cap_is_one_error() {
    for (from, to, path) in [
        (
            "down: {res_blocks: 2, transformer_depth: 1}",
            "down: {res_blocks: 1099511627776, transformer_depth: 1}",
            "unet.levels[0].down.res_blocks",
        ),
        (
            "up: {res_blocks: 3, transformer_depth: 1}",
            "up: {res_blocks: 1099511627776, transformer_depth: 1}",
            "unet.levels[0].up.res_blocks",
        ),
    ] {
        let err = parse(&variant(from, to)).unwrap_err();
        let errors = err.field_errors();
        assert_eq!(errors.len(), 1, "{err}");
        assert_eq!(errors[0].path, path);
        assert!(
            errors[0].message.contains("at most 1024 res blocks"),
            "{err}"
        );
    }
}

#[test]
fn missing_files_and_unknown_presets_are_errors() {
    let err = Config::load("no/such/file.yaml").unwrap_err();
    assert!(matches!(err, SpecError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("sd15"), "lists the presets: {err}");
}
