//! Each design choice changes parameters and MACs by exactly what closed-form arithmetic over the
//! spec says (computed here independently of the forward), and activation memory behaves.

use std::collections::BTreeMap;

use unetlab_cost::{count, BlockKind, Conditions, CostReport, Direction, Macs, Place};
use unetlab_spec::{Config, UnetSpec};

const BASE: &str = "../../configs/fixtures/tiny-sd.yaml";
const COND: Conditions = Conditions {
    batch: 1,
    latent_size: 16,
    tokens: 77,
};

fn config(overrides: &str) -> UnetSpec {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let yaml = format!("extends: {BASE}\n{overrides}");
    Config::from_yaml(&yaml, "variant.yaml", Some(dir))
        .unwrap()
        .spec
}

fn counted(spec: &UnetSpec) -> CostReport {
    count(spec, COND).unwrap()
}

/// Every transformer block as (channels, tokens at its resolution, has SA, has CA).
fn blocks(spec: &UnetSpec) -> Vec<(u64, u64, bool, bool)> {
    let mut out = Vec::new();
    let mut size = COND.latent_size as u64;
    for level in &spec.levels {
        for stage in [&level.down, &level.up] {
            let t = &stage.transformer;
            for _ in 0..stage.transformer_depths.iter().sum::<usize>() {
                out.push((
                    level.channels as u64,
                    size * size,
                    t.self_attention,
                    t.cross_attention,
                ));
            }
        }
        size /= 2;
    }
    size *= 2;
    let t = &spec.mid.transformer;
    let c = spec.levels.last().unwrap().channels as u64;
    for _ in 0..spec.mid.transformer_depths.iter().sum::<usize>() {
        out.push((c, size * size, t.self_attention, t.cross_attention));
    }
    out
}

fn delta(a: &CostReport, b: &CostReport) -> (i64, i64, i64) {
    (
        b.params() as i64 - a.params() as i64,
        b.macs.linear as i64 - a.macs.linear as i64,
        b.macs.attention as i64 - a.macs.attention as i64,
    )
}

#[test]
fn shared_kv_removes_exactly_the_value_projections() {
    let base = config("");
    let shared = config("unet: {attention: {shared_kv: true}}");
    let text = base.text_dim as u64;
    let tokens = COND.tokens as u64;
    let (mut params, mut macs) = (0i64, 0i64);
    for (c, n, sa, ca) in blocks(&base) {
        if sa {
            params -= (c * c) as i64;
            macs -= (n * c * c) as i64;
        }
        if ca {
            params -= (c * text) as i64;
            macs -= (tokens * c * text) as i64;
        }
    }
    let (a, b) = (counted(&base), counted(&shared));
    assert_eq!(delta(&a, &b), (params, macs, 0));
    assert!(b.parameters.iter().all(|p| !p.name.contains("to_v")));
}

#[test]
fn grouped_query_attention_narrows_exactly_the_key_and_value_projections() {
    // tiny-sd has 4 heads: 1 K/V head keeps a quarter of each K and V projection, 2 keep half.
    let base = config("");
    let text = base.text_dim as u64;
    let tokens = COND.tokens as u64;
    for kv in [1u64, 2] {
        let grouped = config(&format!("unet: {{attention: {{kv_heads: {kv}}}}}"));
        let (mut params, mut macs) = (0i64, 0i64);
        for (c, n, sa, ca) in blocks(&base) {
            let removed = c - c * kv / 4; // output rows of to_k and of to_v
            if sa {
                params -= (2 * removed * c) as i64;
                macs -= (2 * n * removed * c) as i64;
            }
            if ca {
                params -= (2 * removed * text) as i64;
                macs -= (2 * tokens * removed * text) as i64;
            }
        }
        let (a, b) = (counted(&base), counted(&grouped));
        // The attention matmuls still run every query head against its (repeated) K/V head.
        assert_eq!(delta(&a, &b), (params, macs, 0), "kv_heads {kv}");
    }
    // As many K/V heads as heads is multi-head attention: the same network and hash.
    let same = Config::from_yaml(
        &format!("extends: {BASE}\nunet: {{attention: {{kv_heads: 4}}}}"),
        "variant.yaml",
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))),
    )
    .unwrap();
    assert_eq!(same.spec, base);
}

#[test]
fn feed_forward_mult_changes_the_gated_projection_and_output() {
    let base = config("");
    let trimmed = config("unet: {feed_forward: {mult: 3}}");
    let (mut params, mut macs) = (0i64, 0i64);
    for (c, n, _, _) in blocks(&base) {
        let (inner4, inner3) = (4 * c, 3 * c);
        let per_block = |inner: u64| c * 2 * inner + 2 * inner + inner * c + c;
        params += per_block(inner3) as i64 - per_block(inner4) as i64;
        macs +=
            (n * (c * 2 * inner3 + inner3 * c)) as i64 - (n * (c * 2 * inner4 + inner4 * c)) as i64;
    }
    assert_eq!(
        delta(&counted(&base), &counted(&trimmed)),
        (params, macs, 0)
    );
}

#[test]
fn removing_self_attention_removes_norm1_attn1_and_their_macs() {
    let base = config("");
    let cross_only = config("unet: {attention: {self: false}}");
    let (mut params, mut linear, mut attention) = (0i64, 0i64, 0i64);
    for (c, n, _, _) in blocks(&base) {
        params -= (2 * c + 4 * c * c + c) as i64;
        linear -= (4 * n * c * c) as i64;
        attention -= (2 * n * n * c) as i64;
    }
    let (a, b) = (counted(&base), counted(&cross_only));
    assert_eq!(delta(&a, &b), (params, linear, attention));
    assert_eq!(cross_only.self_attention_count(), 0);
    assert_eq!(
        cross_only.cross_attention_count(),
        base.cross_attention_count()
    );
}

#[test]
fn separable_convs_replace_each_res_block_3x3_conv() {
    let base = config("");
    let separable = config("unet: {conv: separable}");
    // Res-block 3x3 convs as (in, out, spatial size): conv1 sees the (concatenated) input.
    let mut convs = Vec::new();
    let size = |l: usize| (COND.latent_size >> l) as u64;
    let ch = |l: usize| base.levels[l].channels as u64;
    let mut skips = vec![ch(0)];
    let mut c = ch(0);
    for l in 0..base.levels.len() {
        for _ in 0..base.levels[l].down.res_blocks() {
            convs.push((c, ch(l), size(l)));
            convs.push((ch(l), ch(l), size(l)));
            c = ch(l);
            skips.push(c);
        }
        if l + 1 < base.levels.len() {
            skips.push(c);
        }
    }
    let last = base.levels.len() - 1;
    for _ in 0..base.mid.res_blocks() * 2 {
        convs.push((c, c, size(last)));
    }
    for l in (0..base.levels.len()).rev() {
        for _ in 0..base.levels[l].up.res_blocks() {
            let cin = c + skips.pop().unwrap();
            convs.push((cin, ch(l), size(l)));
            convs.push((ch(l), ch(l), size(l)));
            c = ch(l);
        }
    }
    let (mut params, mut macs) = (0i64, 0i64);
    for (cin, cout, s) in convs {
        params += (9 * cin + cin * cout) as i64 - (9 * cin * cout) as i64;
        macs += (s * s * (9 * cin + cin * cout)) as i64 - (s * s * 9 * cin * cout) as i64;
    }
    let (a, b) = (counted(&base), counted(&separable));
    assert_eq!(b.params() as i64 - a.params() as i64, params);
    assert_eq!(b.macs.conv as i64 - a.macs.conv as i64, macs);
    assert!(b
        .parameters
        .iter()
        .any(|p| p.name == "down_blocks.0.resnets.0.conv1.depthwise.weight"));
    assert!(b
        .parameters
        .iter()
        .any(|p| p.name == "down_blocks.0.resnets.0.conv1.pointwise.bias"));
}

#[test]
fn kernel_and_activation_choices_cost_nothing_in_params_or_macs() {
    let base = counted(&config(""));
    for overrides in [
        "unet: {attention: {kernel: relu}}",
        "unet: {feed_forward: {activation: swish}}",
    ] {
        let v = counted(&config(overrides));
        assert_eq!(
            (v.params(), v.macs),
            (base.params(), base.macs),
            "{overrides}"
        );
        assert_eq!(v.parameters, base.parameters, "{overrides}");
    }
}

#[test]
fn pruning_res_blocks_and_moving_transformers_change_the_counts() {
    let base = config("");
    let pruned = config("unet:\n  levels:\n    0: {down: {res_blocks: 1}, up: {res_blocks: 2}}\n");
    assert_eq!(pruned.res_block_count(), base.res_block_count() - 2);
    assert!(counted(&pruned).params() < counted(&base).params());
    let names: Vec<String> = counted(&pruned)
        .parameters
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(!names
        .iter()
        .any(|n| n.starts_with("down_blocks.0.resnets.1.")));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("up_blocks.1.resnets.2.")));

    let moved = config("unet:\n  levels:\n    0: {down: {transformer_depth: 0}, up: {transformer_depth: [0, 0, 2]}}\n");
    assert_eq!(
        moved.transformer_block_count(),
        base.transformer_block_count() - 3
    );
    let names: Vec<String> = counted(&moved)
        .parameters
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(names
        .iter()
        .any(|n| n == "up_blocks.1.attentions.2.transformer_blocks.1.attn1.to_q.weight"));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("up_blocks.1.attentions.0.")));
}

#[test]
fn breakdown_sums_to_the_totals() {
    let r = counted(&Config::load("mobilediffusion").unwrap().spec);
    for depth in [1, 2, 3] {
        let top: Vec<_> = r
            .breakdown(depth)
            .into_iter()
            .filter(|b| b.depth == 1)
            .collect();
        assert_eq!(top.iter().map(|b| b.params).sum::<u64>(), r.params());
        assert_eq!(
            top.iter().map(|b| b.macs.total()).sum::<u64>(),
            r.macs.total()
        );
    }
    let deep = r.breakdown(2);
    let children: u64 = deep
        .iter()
        .filter(|b| b.depth == 2 && b.path.starts_with("mid_block."))
        .map(|b| b.params)
        .sum();
    let mid = deep.iter().find(|b| b.path == "mid_block").unwrap();
    assert_eq!(children, mid.params);
}

/// The place (direction, level, block kind) diffusers' naming implies for a parameter, derived
/// here from the name alone, independently of the roles the forward declares.
fn place_from_name(name: &str, levels: usize) -> Place {
    let index = |prefix: &str| -> Option<usize> {
        name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
    };
    let (direction, level) = if let Some(l) = index("down_blocks.") {
        (Some(Direction::Down), Some(l))
    } else if let Some(u) = index("up_blocks.") {
        (Some(Direction::Up), Some(levels - 1 - u))
    } else if name.starts_with("mid_block.") {
        (Some(Direction::Mid), Some(levels - 1))
    } else {
        (None, None)
    };
    let kind = if name.contains(".resnets.") {
        BlockKind::Res
    } else if name.contains(".attentions.") {
        BlockKind::Transformer
    } else if name.contains("samplers.") {
        BlockKind::Sampler
    } else if name.contains("_embedding.") {
        BlockKind::Embedding
    } else {
        BlockKind::InOut
    };
    Place {
        direction,
        level,
        kind: Some(kind),
    }
}

#[test]
fn places_agree_with_the_names_and_sum_to_the_totals() {
    for preset in ["sd15", "sdxl", "mobilediffusion"] {
        let spec = Config::load(preset).unwrap().spec;
        let r = counted(&spec);
        let places = r.by_place();
        assert_eq!(places.iter().map(|p| p.params).sum::<u64>(), r.params());
        let macs = places.iter().fold(Macs::default(), |mut m, p| {
            m.add(&p.macs);
            m
        });
        assert_eq!(macs, r.macs, "{preset}");
        let mut expected: BTreeMap<Place, u64> = BTreeMap::new();
        for p in &r.parameters {
            *expected
                .entry(place_from_name(&p.name, spec.levels.len()))
                .or_default() += p.numel();
        }
        let ours: BTreeMap<Place, u64> = places
            .iter()
            .filter(|p| p.params > 0)
            .map(|p| (p.place, p.params))
            .collect();
        assert_eq!(ours, expected, "{preset}: parameters by place");
        // Every MAC happens inside a block: no op runs outside the declared structure.
        assert!(places.iter().all(|p| p.place.kind.is_some()), "{preset}");
        let attention_kinds: Vec<_> = places
            .iter()
            .filter(|p| p.macs.attention > 0)
            .map(|p| p.place.kind)
            .collect();
        assert!(attention_kinds
            .iter()
            .all(|k| *k == Some(BlockKind::Transformer)));
    }
}

#[test]
fn activation_memory_scales_with_batch_and_bounds_hold() {
    let spec = Config::load("sd15").unwrap().spec;
    let one = count(
        &spec,
        Conditions {
            batch: 1,
            latent_size: 64,
            tokens: 77,
        },
    )
    .unwrap();
    let two = count(
        &spec,
        Conditions {
            batch: 2,
            latent_size: 64,
            tokens: 77,
        },
    )
    .unwrap();
    assert_eq!(two.peak_activation_bytes, 2 * one.peak_activation_bytes);
    assert_eq!(two.total_activation_bytes, 2 * one.total_activation_bytes);
    assert_eq!(two.macs.total(), 2 * one.macs.total());
    assert_eq!(two.params(), one.params());
    // The 64x64 softmax attention map of SD 1.5 (8 heads x 4096 x 4096 f32) must fit under the peak.
    let scores = 8 * 4096 * 4096 * 4;
    assert!(one.peak_activation_bytes >= scores);
    assert!(one.peak_activation_bytes < one.total_activation_bytes);
}
