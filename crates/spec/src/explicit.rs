//! The inverse of [`crate::resolve`]: a resolved config written back as YAML with `extends`
//! flattened and every default explicit, so the file alone rebuilds the same network (same hash).

use serde_json::{json, Value};

use crate::resolve::{
    LevelSpec, MidSpec, NormSpec, StageSpec, TextTimeSpec, TimeEmbeddingSpec, TransformerSpec,
    UnetSpec,
};
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

/// Every struct below is destructured exhaustively: a new field of the resolved spec fails to
/// compile here until it is written out.
fn unet_value(spec: &UnetSpec) -> Value {
    let UnetSpec {
        in_channels,
        out_channels,
        latent_size,
        text_dim,
        text_tokens,
        time,
        addition,
        norm,
        proj,
        levels,
        mid,
    } = spec;
    let levels: Vec<Value> = levels
        .iter()
        .map(|level| {
            let LevelSpec {
                channels,
                conv,
                down,
                up,
            } = level;
            json!({
                "channels": channels,
                "conv": conv,
                "down": stage_value(down),
                "up": stage_value(up),
            })
        })
        .collect();
    let MidSpec {
        conv: mid_conv,
        transformer_depths,
        transformer,
    } = mid;
    let mut mid = json!({
        "res_blocks": spec.mid.res_blocks(),
        "transformer_depth": transformer_depths,
        "conv": mid_conv,
    });
    transformer_options(&mut mid, transformer);
    let TimeEmbeddingSpec {
        channels,
        dim,
        flip_sin_to_cos,
        freq_shift,
    } = time;
    let NormSpec { groups, eps } = norm;
    let mut unet = json!({
        "in_channels": in_channels,
        "out_channels": out_channels,
        "latent_size": latent_size,
        "text": {"dim": text_dim, "tokens": text_tokens},
        "time": {
            "channels": channels,
            "dim": dim,
            "flip_sin_to_cos": flip_sin_to_cos,
            "freq_shift": freq_shift,
        },
        "norm": {"groups": groups, "eps": eps},
        "proj": proj,
        "levels": levels,
        "mid": mid,
    });
    if let Some(a) = addition {
        let TextTimeSpec {
            time_channels,
            text_embeds_dim,
            time_id_count,
        } = a;
        let addition = AdditionConfig::TextTime {
            time_channels: *time_channels,
            text_embeds_dim: *text_embeds_dim,
            time_ids: *time_id_count,
        };
        unet["addition"] = serde_json::to_value(addition).expect("always serialises");
    }
    unet
}

fn stage_value(stage: &StageSpec) -> Value {
    let StageSpec {
        transformer_depths,
        transformer,
    } = stage;
    let mut v = json!({
        "res_blocks": stage.res_blocks(),
        "transformer_depth": transformer_depths,
    });
    transformer_options(&mut v, transformer);
    v
}

/// Writes a stage's resolved attention and feed-forward options (heads only where transformers exist).
fn transformer_options(v: &mut Value, t: &TransformerSpec) {
    let (attention, feed_forward) = t.options();
    v["attention"] = serde_json::to_value(attention).expect("always serialises");
    v["feed_forward"] = serde_json::to_value(feed_forward).expect("always serialises");
}
