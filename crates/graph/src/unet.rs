//! The whole UNet forward (diffusers' `UNet2DConditionModel` generalised to the unetlab design space).

use unetlab_spec::{MidSpec, StageSpec, UnetSpec};

use crate::blocks::{
    conv, downsample, embedding_mlp, group_norm, resnet, transformer_2d, upsample, ResnetParams,
};
use crate::ops::{scoped_as, Ops, Unary};
use crate::scope::{BlockKind, Direction, Role};

const IN_OUT: Role = Role::Block(BlockKind::InOut);
const EMBEDDING: Role = Role::Block(BlockKind::Embedding);
const RES: Role = Role::Block(BlockKind::Res);
const TRANSFORMER: Role = Role::Block(BlockKind::Transformer);

/// The inputs of one UNet evaluation (or their shapes, with `T = Vec<usize>`).
#[derive(Debug, Clone, PartialEq)]
pub struct UnetInputs<T> {
    /// Noisy latents `[B, in_channels, H, W]`.
    pub sample: T,
    /// One timestep per batch item `[B]`.
    pub timestep: T,
    /// Text hidden states `[B, tokens, text_dim]`.
    pub encoder_hidden_states: T,
    /// Pooled text embedding `[B, text_embeds_dim]` (`text_time` configs only).
    pub text_embeds: Option<T>,
    /// Size/crop conditioning `[B, time_ids]` (`text_time` configs only).
    pub time_ids: Option<T>,
}

impl UnetInputs<Vec<usize>> {
    /// The input shapes of `spec` for a batch, latent `[height, width]` and token count.
    pub fn shapes(
        spec: &UnetSpec,
        batch: usize,
        [height, width]: [usize; 2],
        tokens: usize,
    ) -> Self {
        let addition = spec.addition.as_ref();
        UnetInputs {
            sample: vec![batch, spec.in_channels, height, width],
            timestep: vec![batch],
            encoder_hidden_states: vec![batch, tokens, spec.text_dim],
            text_embeds: addition.map(|a| vec![batch, a.text_embeds_dim]),
            time_ids: addition.map(|a| vec![batch, a.time_id_count]),
        }
    }
}

/// Inputs that stay f32 whatever the model's dtype (they are positions, not activations: a
/// timestep of 999 or an image size of 1024 must not round in f16). Every interpreter and the
/// exported graph follow this.
pub const F32_INPUTS: [&str; 2] = ["timestep", "time_ids"];

impl<T> UnetInputs<T> {
    /// Named inputs in a fixed order: `sample`, `timestep`, `encoder_hidden_states`, then
    /// `text_embeds`, `time_ids` when present.
    pub fn named(&self) -> Vec<(&'static str, &T)> {
        let mut v = vec![
            ("sample", &self.sample),
            ("timestep", &self.timestep),
            ("encoder_hidden_states", &self.encoder_hidden_states),
        ];
        v.extend(self.text_embeds.as_ref().map(|t| ("text_embeds", t)));
        v.extend(self.time_ids.as_ref().map(|t| ("time_ids", t)));
        v
    }

    /// Applies `f` to every input.
    pub fn try_map<U, E>(
        &self,
        mut f: impl FnMut(&'static str, &T) -> Result<U, E>,
    ) -> Result<UnetInputs<U>, E> {
        Ok(UnetInputs {
            sample: f("sample", &self.sample)?,
            timestep: f("timestep", &self.timestep)?,
            encoder_hidden_states: f("encoder_hidden_states", &self.encoder_hidden_states)?,
            text_embeds: self
                .text_embeds
                .as_ref()
                .map(|t| f("text_embeds", t))
                .transpose()?,
            time_ids: self
                .time_ids
                .as_ref()
                .map(|t| f("time_ids", t))
                .transpose()?,
        })
    }
}

/// Why the forward itself (not an op) rejects its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingInput(pub &'static str);

/// One UNet evaluation: predicted noise `[B, out_channels, S, S]`.
///
/// Skip connections: `conv_in`'s output, every down res block's output (after its transformers) and
/// every downsampler's output are pushed; at each level the up path's first `down.res_blocks + 1`
/// res blocks each concatenate the most recent unused skip onto their input (channels dimension).
pub fn unet_forward<O: Ops>(
    ops: &mut O,
    spec: &UnetSpec,
    inputs: &UnetInputs<O::Tensor>,
) -> Result<O::Tensor, O::Error>
where
    O::Error: From<MissingInput>,
{
    let emb = time_embedding(ops, spec, inputs)?;
    let context = &inputs.encoder_hidden_states;
    let groups = spec.norm.groups;
    let res = |out, conv| ResnetParams {
        out,
        conv,
        groups,
        eps: spec.norm.eps,
    };

    let first = spec.levels[0].channels;
    let mut x = scoped_as(ops, "conv_in", IN_OUT, |ops| {
        conv(ops, &inputs.sample, first, 3, 1)
    })?;
    let mut skips = vec![x.clone()];
    let last = spec.levels.len() - 1;
    for (i, level) in spec.levels.iter().enumerate() {
        let stage = Role::Stage(Direction::Down, i);
        x = scoped_as(ops, &format!("down_blocks.{i}"), stage, |ops| {
            let mut x = x.clone();
            for (j, &depth) in level.down.transformer_depths.iter().enumerate() {
                x = scoped_as(ops, &format!("resnets.{j}"), RES, |ops| {
                    resnet(ops, &x, &emb, res(level.channels, level.conv))
                })?;
                x = transformers(ops, &x, context, &level.down, j, depth, spec)?;
                skips.push(x.clone());
            }
            if i < last {
                x = downsample(ops, &x)?;
                skips.push(x.clone());
            }
            Ok(x)
        })?;
    }

    let stage = Role::Stage(Direction::Mid, last);
    x = scoped_as(ops, "mid_block", stage, |ops| {
        mid_block(ops, &x, &emb, context, &spec.mid, spec)
    })?;

    for (u, (l, level)) in spec.levels.iter().enumerate().rev().enumerate() {
        let takes_skip = level.down.res_blocks() + 1;
        let stage = Role::Stage(Direction::Up, l);
        x = scoped_as(ops, &format!("up_blocks.{u}"), stage, |ops| {
            let mut x = x.clone();
            for (j, &depth) in level.up.transformer_depths.iter().enumerate() {
                if j < takes_skip {
                    let skip = skips.pop().ok_or(MissingInput("skip connection"))?;
                    x = ops.concat(&[&x, &skip], 1)?;
                }
                x = scoped_as(ops, &format!("resnets.{j}"), RES, |ops| {
                    resnet(ops, &x, &emb, res(level.channels, level.conv))
                })?;
                x = transformers(ops, &x, context, &level.up, j, depth, spec)?;
            }
            if l > 0 {
                x = upsample(ops, &x)?;
            }
            Ok(x)
        })?;
    }

    let h = scoped_as(ops, "conv_norm_out", IN_OUT, |ops| {
        group_norm(ops, &x, groups, spec.norm.eps, Some(Unary::Silu))
    })?;
    scoped_as(ops, "conv_out", IN_OUT, |ops| {
        conv(ops, &h, spec.out_channels, 3, 1)
    })
}

/// `time_embedding(sinusoidal(t))`, plus SDXL's `add_embedding` when configured.
fn time_embedding<O: Ops>(
    ops: &mut O,
    spec: &UnetSpec,
    inputs: &UnetInputs<O::Tensor>,
) -> Result<O::Tensor, O::Error>
where
    O::Error: From<MissingInput>,
{
    let t = &spec.time;
    let emb = ops.sinusoidal(
        &inputs.timestep,
        t.channels,
        t.flip_sin_to_cos,
        t.freq_shift,
    )?;
    let emb = scoped_as(ops, "time_embedding", EMBEDDING, |ops| {
        embedding_mlp(ops, &emb, t.dim)
    })?;
    let Some(add) = &spec.addition else {
        return Ok(emb);
    };
    let text = inputs
        .text_embeds
        .as_ref()
        .ok_or(MissingInput("text_embeds"))?;
    let ids = inputs.time_ids.as_ref().ok_or(MissingInput("time_ids"))?;
    let batch = ops.dims(ids)[0];
    let ids = ops.sinusoidal(ids, add.time_channels, t.flip_sin_to_cos, t.freq_shift)?;
    let ids = ops.reshape(&ids, &[batch, add.time_id_count * add.time_channels])?;
    let cond = ops.concat(&[text, &ids], 1)?;
    let aug = scoped_as(ops, "add_embedding", EMBEDDING, |ops| {
        embedding_mlp(ops, &cond, t.dim)
    })?;
    ops.add(&emb, &aug)
}

/// `attentions.{j}` after res block `j`, if its depth is positive.
fn transformers<O: Ops>(
    ops: &mut O,
    x: &O::Tensor,
    context: &O::Tensor,
    stage: &StageSpec,
    j: usize,
    depth: usize,
    spec: &UnetSpec,
) -> Result<O::Tensor, O::Error> {
    if depth == 0 {
        return Ok(x.clone());
    }
    scoped_as(ops, &format!("attentions.{j}"), TRANSFORMER, |ops| {
        transformer_2d(
            ops,
            x,
            context,
            &stage.transformer,
            depth,
            spec.norm.groups,
            spec.proj,
        )
    })
}

/// `resnets.0`, then `attentions.k`, `resnets.{k+1}` for each transformer slot.
fn mid_block<O: Ops>(
    ops: &mut O,
    x: &O::Tensor,
    emb: &O::Tensor,
    context: &O::Tensor,
    mid: &MidSpec,
    spec: &UnetSpec,
) -> Result<O::Tensor, O::Error> {
    let c = ops.dims(x)[1];
    let p = ResnetParams {
        out: c,
        conv: mid.conv,
        groups: spec.norm.groups,
        eps: spec.norm.eps,
    };
    let mut x = scoped_as(ops, "resnets.0", RES, |ops| resnet(ops, x, emb, p))?;
    for (k, &depth) in mid.transformer_depths.iter().enumerate() {
        if depth > 0 {
            x = scoped_as(ops, &format!("attentions.{k}"), TRANSFORMER, |ops| {
                transformer_2d(
                    ops,
                    &x,
                    context,
                    &mid.transformer,
                    depth,
                    spec.norm.groups,
                    spec.proj,
                )
            })?;
        }
        x = scoped_as(ops, &format!("resnets.{}", k + 1), RES, |ops| {
            resnet(ops, &x, emb, p)
        })?;
    }
    Ok(x)
}

impl std::fmt::Display for MissingInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the forward needs input `{}`", self.0)
    }
}

impl std::error::Error for MissingInput {}
