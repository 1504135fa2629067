//! The trained pair: a proxy UNet and the text encoder, with one namespace of variables
//! (`unet.*`, `text.*`) for the optimizer, EMA and checkpoints.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use unetlab_cost::text_encoder_params;
use unetlab_graph::{text_encoder_forward, TextEncoderSpec, UnetInputs};
use unetlab_model::{size_conditioning, CandleOps, ParamStore, UnetModel};
use unetlab_spec::UnetSpec;

use crate::error::TrainError;

/// The proxy UNet and its text encoder.
pub struct ProxyModel {
    /// The UNet.
    pub unet: UnetModel,
    /// The text encoder's parameters.
    pub text: ParamStore,
    /// The text encoder's size.
    pub text_spec: TextEncoderSpec,
}

impl ProxyModel {
    /// Seeded initialisation of both networks (f32, CPU).
    pub fn init(spec: UnetSpec, text_spec: TextEncoderSpec, seed: u64) -> Result<Self, TrainError> {
        let device = Device::Cpu;
        let unet = UnetModel::init(spec, seed, &device, DType::F32)?;
        let text = ParamStore::init(
            &text_encoder_params(&text_spec).map_err(unetlab_model::ModelError::from)?,
            seed ^ 0x7e47,
            &device,
            DType::F32,
        )?;
        Ok(ProxyModel {
            unet,
            text,
            text_spec,
        })
    }

    /// Both networks from named tensors (`unet.*`, `text.*`), e.g. EMA weights or a checkpoint.
    pub fn from_tensors(
        spec: UnetSpec,
        text_spec: TextEncoderSpec,
        tensors: &BTreeMap<String, Tensor>,
    ) -> Result<Self, TrainError> {
        let device = Device::Cpu;
        let part = |prefix: &str| {
            tensors
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
                .collect::<Vec<_>>()
        };
        Ok(ProxyModel {
            unet: UnetModel {
                spec,
                params: ParamStore::from_tensors(part("unet."), &device, DType::F32)?,
            },
            text: ParamStore::from_tensors(part("text."), &device, DType::F32)?,
            text_spec,
        })
    }

    /// Every variable with its prefixed name, sorted (`text.*` then `unet.*`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut vars: Vec<(String, Var)> = self
            .text
            .vars()
            .map(|(n, v)| (format!("text.{n}"), v.clone()))
            .chain(
                self.unet
                    .params
                    .vars()
                    .map(|(n, v)| (format!("unet.{n}"), v.clone())),
            )
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Predicted noise for latents `x_t` `[B, C, S, S]` at timesteps `t` `[B]` given one-hot
    /// captions `[B, tokens, vocab]`. `trainable` records the autograd graph.
    pub fn predict(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        one_hot: &Tensor,
        trainable: bool,
    ) -> Result<Tensor, TrainError> {
        let (hidden, pooled) = if trainable {
            text_encoder_forward(
                &mut CandleOps::trainable(&self.text),
                &self.text_spec,
                one_hot,
            )?
        } else {
            text_encoder_forward(&mut CandleOps::new(&self.text), &self.text_spec, one_hot)?
        };
        let batch = x_t.dims()[0];
        let spec = &self.unet.spec;
        let (text_embeds, time_ids) = match &spec.addition {
            Some(a) => {
                // Original and target size = the image (twice the latent side), no crop.
                let side = (2 * spec.latent_size) as f32;
                let ids = size_conditioning(batch * a.time_id_count, side);
                let ids = Tensor::from_vec(ids, (batch, a.time_id_count), x_t.device())?;
                (Some(pooled), Some(ids))
            }
            None => (None, None),
        };
        let inputs = UnetInputs {
            sample: x_t.clone(),
            timestep: t.clone(),
            encoder_hidden_states: hidden,
            text_embeds,
            time_ids,
        };
        Ok(if trainable {
            self.unet.forward_train(&inputs)?
        } else {
            self.unet.forward(&inputs)?
        })
    }
}

/// Folds `[B, 3, H, W]` images 2 × 2 into `[B, 12, H/2, W/2]` latents (pixel unshuffle).
pub fn images_to_latents(images: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = images.dims4()?;
    images
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, c * 4, h / 2, w / 2))
}

/// The inverse of [`images_to_latents`].
pub fn latents_to_images(latents: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c4, h, w) = latents.dims4()?;
    latents
        .reshape((b, c4 / 4, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, c4 / 4, h * 2, w * 2))
}
