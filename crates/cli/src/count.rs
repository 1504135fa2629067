//! `unetlab count`: parameters, MACs and activation memory from the cost interpreter.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use unetlab_cost::{count, BlockCost, Conditions, CostReport, Macs, Place, PlaceCost};
use unetlab_spec::{check_latent_size, Config};

use crate::table::{billions, mebibytes, millions, Table};

/// Count parameters, MACs (conv / linear / attention), FLOPs and activation memory of configs.
///
/// Nothing is allocated for weights: the UNet forward runs on shapes. MACs count conv, linear and
/// attention matmuls (QKᵀ, AV); FLOPs = 2 × MACs; biases, norms and activations are not counted.
/// One UNet evaluation (no classifier-free-guidance doubling).
#[derive(clap::Args)]
pub struct CountArgs {
    /// Presets (sd15, sd21, sdxl, mobilediffusion, md-lite) or YAML config files.
    #[arg(required = true)]
    configs: Vec<String>,
    /// Latent height = width (default: each config's `latent_size`).
    #[arg(long)]
    latent_size: Option<usize>,
    /// Text tokens (default: each config's `text.tokens`, 77 for CLIP).
    #[arg(long)]
    tokens: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Nesting depth of the per-block breakdown (1: conv_in, down_blocks.i, mid_block, ...; 0: none).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Also print params and MACs by place in the structure: embeddings, in/out convs, and each
    /// level's down and up stages and the mid block, split into res blocks, transformer stacks
    /// and samplers (always in `--json`, as `places`).
    #[arg(long)]
    by_place: bool,
    /// Print JSON (an array, one object per config) instead of tables.
    #[arg(long)]
    json: bool,
}

/// One counted config, as printed by `--json`.
#[derive(Serialize)]
struct Counted {
    name: String,
    origin: String,
    hash: String,
    latent_size: usize,
    tokens: usize,
    batch: usize,
    params: u64,
    tensors: usize,
    macs: MacsJson,
    flops: u64,
    activation_bytes: ActivationJson,
    blocks: BlocksJson,
    breakdown: Vec<BlockJson>,
    places: Vec<PlaceJson>,
}

/// Cost at one place of the structure.
#[derive(Serialize)]
struct PlaceJson {
    #[serde(flatten)]
    place: Place,
    label: String,
    params: u64,
    macs: MacsJson,
}

impl From<PlaceCost> for PlaceJson {
    fn from(p: PlaceCost) -> Self {
        PlaceJson {
            label: p.place.label(),
            place: p.place,
            params: p.params,
            macs: p.macs.into(),
        }
    }
}

#[derive(Serialize)]
struct MacsJson {
    conv: u64,
    linear: u64,
    attention: u64,
    total: u64,
}

impl From<Macs> for MacsJson {
    fn from(m: Macs) -> Self {
        MacsJson {
            conv: m.conv,
            linear: m.linear,
            attention: m.attention,
            total: m.total(),
        }
    }
}

#[derive(Serialize)]
struct ActivationJson {
    peak: u64,
    total: u64,
}

#[derive(Serialize)]
struct BlocksJson {
    res: usize,
    transformer: usize,
    self_attention: usize,
    cross_attention: usize,
}

#[derive(Serialize)]
struct BlockJson {
    path: String,
    depth: usize,
    params: u64,
    macs: MacsJson,
}

impl From<BlockCost> for BlockJson {
    fn from(b: BlockCost) -> Self {
        BlockJson {
            path: b.path,
            depth: b.depth,
            params: b.params,
            macs: b.macs.into(),
        }
    }
}

fn count_one(reference: &str, args: &CountArgs) -> Result<(Config, CostReport)> {
    let config = Config::load(reference)?;
    let spec = &config.spec;
    let conditions = Conditions {
        batch: args.batch,
        latent_size: args.latent_size.unwrap_or(spec.latent_size),
        tokens: args.tokens.unwrap_or(spec.text_tokens),
    };
    check_latent_size(spec.levels.len(), conditions.latent_size)
        .map_err(|m| anyhow::anyhow!("{}: --latent-size {m}", config.name))?;
    let report = count(spec, conditions).with_context(|| format!("counting {}", config.name))?;
    Ok((config, report))
}

/// Runs `unetlab count`.
pub fn run(args: &CountArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.tokens == Some(0) {
        bail!("--tokens must be at least 1");
    }
    let counted = args
        .configs
        .iter()
        .map(|r| count_one(r, args))
        .collect::<Result<Vec<_>>>()?;
    if args.json {
        let rows: Vec<Counted> = counted
            .iter()
            .map(|(c, r)| to_json(c, r, args.depth))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render(&counted, args.depth));
        if args.by_place {
            print!("{}", render_places(&counted));
        }
    }
    Ok(())
}

fn to_json(config: &Config, report: &CostReport, depth: usize) -> Counted {
    let spec = &config.spec;
    let c = report.conditions;
    Counted {
        name: config.name.clone(),
        origin: config.origin.clone(),
        hash: config.hash(),
        latent_size: c.latent_size,
        tokens: c.tokens,
        batch: c.batch,
        params: report.params(),
        tensors: report.tensors(),
        macs: report.macs.into(),
        flops: report.flops(),
        activation_bytes: ActivationJson {
            peak: report.peak_activation_bytes,
            total: report.total_activation_bytes,
        },
        blocks: BlocksJson {
            res: spec.res_block_count(),
            transformer: spec.transformer_block_count(),
            self_attention: spec.self_attention_count(),
            cross_attention: spec.cross_attention_count(),
        },
        breakdown: report
            .breakdown(depth)
            .into_iter()
            .map(Into::into)
            .collect(),
        places: report.by_place().into_iter().map(Into::into).collect(),
    }
}

fn render(counted: &[(Config, CostReport)], depth: usize) -> String {
    let mut summary = Table::new([
        "config",
        "latent",
        "params (M)",
        "conv GMACs",
        "linear GMACs",
        "attn GMACs",
        "GMACs",
        "GFLOPs",
        "res",
        "transf.",
        "SA",
        "CA",
        "peak act. (MiB)",
    ]);
    for (config, r) in counted {
        let s = &config.spec;
        let c = r.conditions;
        summary.row(vec![
            config.name.clone(),
            format!("{}x{}", c.latent_size, c.latent_size),
            millions(r.params()),
            billions(r.macs.conv),
            billions(r.macs.linear),
            billions(r.macs.attention),
            billions(r.macs.total()),
            billions(r.flops()),
            s.res_block_count().to_string(),
            s.transformer_block_count().to_string(),
            s.self_attention_count().to_string(),
            s.cross_attention_count().to_string(),
            mebibytes(r.peak_activation_bytes),
        ]);
    }
    let mut out = summary.render();
    let c = counted[0].1.conditions;
    out.push_str(&format!(
        "\nOne UNet evaluation, batch {}, {} text tokens. MACs: conv + linear + attention matmuls (QKᵀ, AV); \
         FLOPs = 2 × MACs; biases, norms, activations not counted. Peak activations: f32, inference.\n",
        c.batch, c.tokens
    ));
    if depth > 0 {
        for (config, r) in counted {
            let t = cost_table(
                "block",
                r.breakdown(depth).into_iter().map(|b| {
                    let name = format!("{}{}", "  ".repeat(b.depth - 1), b.path);
                    (name, b.params, b.macs)
                }),
            );
            out.push_str(&format!(
                "\n{} ({}):\n{}",
                config.name,
                config.origin,
                t.render()
            ));
        }
    }
    out
}

/// Per config, a table of params and MACs by place, in execution order.
fn render_places(counted: &[(Config, CostReport)]) -> String {
    let mut out = String::new();
    for (config, r) in counted {
        let t = cost_table(
            "place",
            r.by_place()
                .into_iter()
                .map(|p| (p.place.label(), p.params, p.macs)),
        );
        out.push_str(&format!("\n{} by place:\n{}", config.name, t.render()));
    }
    out
}

/// A table of (name, params, MACs by kind) rows under a first column called `first`.
fn cost_table(first: &str, rows: impl Iterator<Item = (String, u64, Macs)>) -> Table {
    let mut t = Table::new([
        first,
        "params (M)",
        "conv GMACs",
        "linear GMACs",
        "attn GMACs",
        "GMACs",
    ]);
    for (name, params, macs) in rows {
        t.row(vec![
            name,
            millions(params),
            billions(macs.conv),
            billions(macs.linear),
            billions(macs.attention),
            billions(macs.total()),
        ]);
    }
    t
}
