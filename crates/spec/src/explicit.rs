//! The inverse of [`crate::resolve`]: a resolved config written back as YAML with `extends`
//! flattened and every default explicit, so the file alone rebuilds the same network (same hash).

use serde_json::{json, Value};

use crate::resolve::{StageSpec, TransformerSpec, UnetSpec};
use crate::schema::AdditionConfig;
use crate::Config;

/// The config as a self-contained YAML document: the same name, description and paper note, and a
/// `unet` section in which every option of every level, stage and the mid block is spelled out.
/// Loading it gives a spec equal to `config.spec`.
pub fn explicit_yaml(config: &Config) -> String {
    let yaml =
        serde_norway::to_string(&explicit_value(config)).expect("JSON values always serialise");
    format!(
        "# Resolved unetlab config: `extends` flattened, every default explicit (written by unetlab {}).\n{yaml}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The document of [`explicit_yaml`] as a JSON value (what a bundle's `config.json` holds).
pub fn explicit_value(config: &Config) -> Value {
    let mut doc = json!({ "name": config.name });
    if let Some(d) = &config.description {
        doc["description"] = json!(d);
    }
    if let Some(p) = &config.paper {
        doc["paper"] = serde_json::to_value(p).expect("a paper note always serialises");
    }
    doc["unet"] = unet_value(&config.spec);
    doc
}

fn unet_value(spec: &UnetSpec) -> Value {
    let levels: Vec<Value> = spec
        .levels
        .iter()
        .map(|l| {
            json!({
                "channels": l.channels,
                "conv": l.conv,
                "down": stage_value(&l.down),
                "up": stage_value(&l.up),
            })
        })
        .collect();
    let m = &spec.mid;
    let mut mid = json!({
        "res_blocks": m.res_blocks(),
        "transformer_depth": m.transformer_depths,
        "conv": m.conv,
    });
    transformer_options(&mut mid, &m.transformer);
    let t = &spec.time;
    let mut unet = json!({
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "latent_size": spec.latent_size,
        "text": {"dim": spec.text_dim, "tokens": spec.text_tokens},
        "time": {
            "channels": t.channels,
            "dim": t.dim,
            "flip_sin_to_cos": t.flip_sin_to_cos,
            "freq_shift": t.freq_shift,
        },
        "norm": {"groups": spec.norm.groups, "eps": spec.norm.eps},
        "proj": spec.proj,
        "levels": levels,
        "mid": mid,
    });
    if let Some(a) = &spec.addition {
        let addition = AdditionConfig::TextTime {
            time_channels: a.time_channels,
            text_embeds_dim: a.text_embeds_dim,
            time_ids: a.time_ids,
        };
        unet["addition"] = serde_json::to_value(addition).expect("always serialises");
    }
    unet
}

fn stage_value(stage: &StageSpec) -> Value {
    let mut v = json!({
        "res_blocks": stage.res_blocks(),
        "transformer_depth": stage.transformer_depths,
    });
    transformer_options(&mut v, &stage.transformer);
    v
}

/// Writes a stage's resolved attention and feed-forward options (heads only where transformers exist).
fn transformer_options(v: &mut Value, t: &TransformerSpec) {
    let mut attention = json!({
        "self": t.self_attention,
        "cross": t.cross_attention,
        "shared_kv": t.shared_kv,
        "kernel": t.kernel,
    });
    if t.heads > 0 {
        attention["heads"] = json!(t.heads);
    }
    v["attention"] = attention;
    v["feed_forward"] = json!({"mult": t.ff_mult, "activation": t.ff_activation});
}
