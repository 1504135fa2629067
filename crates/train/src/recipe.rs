//! The training recipe: identical for every variant of a study, and part of every result row.

use serde::{Deserialize, Serialize};
use unetlab_graph::TextEncoderSpec;

use crate::optim::AdamWConfig;
use crate::proxy::ProxyShape;
use crate::schedule::{NoiseSchedule, Prediction, ScheduleKind};

/// How much training: `smoke` for CI (seconds), `quick` for the committed results, `full` for
/// more steps and several seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// A handful of steps on a tiny batch: exercises every code path.
    Smoke,
    /// 800 steps of 8 images with min-SNR-5 weighting: `cargo xtask ablate configs/*.yaml`
    /// trains every config with two seeds within an hour on a 2-core CPU, two runs at a time. An
    /// early-training comparison, not a converged one; `results/recipe` shows why: at 8,000
    /// images, 1,000 steps of 8 beat 250 of 32, and min-SNR-γ lowered FD up to 32,000 images
    /// (at 256,000, uniform weighting ended lower).
    Quick,
    /// Twice the quick images (1,600 steps of 8), scored on 256 captions: configs/*.yaml with
    /// three seeds took 82 minutes on a 2-core AMD EPYC (`results/ablate-full`).
    Full,
}

/// Everything that determines a run besides the network and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Optimizer updates.
    pub steps: u64,
    /// Images per update.
    pub batch: usize,
    /// AdamW settings (peak learning rate included).
    pub optimizer: AdamWConfig,
    /// Linear warm-up steps before the cosine decay.
    pub warmup: u64,
    /// Global gradient-norm limit.
    pub grad_clip: f64,
    /// EMA decay (ramped up as `min(decay, (1 + t) / (10 + t))`).
    pub ema_decay: f64,
    /// Probability of training on the empty caption (for classifier-free guidance).
    pub cfg_dropout: f64,
    /// Seed of initialisation, data order, noise and timesteps.
    pub seed: u64,
    /// Fixed validation images for the validation loss.
    pub val_examples: usize,
    /// Validation loss every this many steps (and at the end).
    pub val_every: u64,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// The proxy network and image sizes.
    pub proxy: ProxyShape,
    /// Text encoder layers.
    pub text_layers: usize,
    /// Text encoder heads.
    pub text_heads: usize,
    /// What the network predicts; both are the DDPM objective on SD's schedule. Runs recorded
    /// before this field existed predicted ε.
    #[serde(default)]
    pub prediction: Prediction,
    /// Min-SNR-γ loss weighting (Hang et al., 2023): each image's loss is weighted by
    /// `min(SNR, γ) / (SNR + 1)` for v-prediction (`min(SNR, γ) / SNR` for ε), so that the
    /// nearly clean timesteps do not dominate the gradient. None: every timestep weighs the
    /// same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_snr_gamma: Option<f64>,
    /// The noise schedule (and with it the sampler's timestep spacing).
    #[serde(default, skip_serializing_if = "ScheduleKind::is_default")]
    pub schedule: ScheduleKind,
    /// The schedule's signal-to-noise ratios divided by this squared ([`NoiseSchedule::shifted`]);
    /// 1: none (and then not recorded, so older run hashes stay put).
    #[serde(default = "no_shift", skip_serializing_if = "is_no_shift")]
    pub noise_shift: f64,
}

fn no_shift() -> f64 {
    1.0
}

fn is_no_shift(shift: &f64) -> bool {
    *shift == 1.0
}

impl Recipe {
    /// The proxy's text encoder for a tokenizer of `vocab` entries.
    pub fn text_encoder(&self, vocab: usize) -> TextEncoderSpec {
        TextEncoderSpec {
            vocab,
            tokens: self.proxy.tokens,
            width: self.proxy.text_dim,
            layers: self.text_layers,
            heads: self.text_heads,
        }
    }

    /// The noise schedule this recipe trains and samples with.
    pub fn noise_schedule(&self) -> NoiseSchedule {
        NoiseSchedule::new(self.schedule).shifted(self.noise_shift)
    }

    /// Checks the counts a run divides by or indexes with.
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            ("steps", self.steps),
            ("batch", self.batch as u64),
            ("val_every", self.val_every),
            ("checkpoint_every", self.checkpoint_every),
            ("proxy.tokens", self.proxy.tokens as u64),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(format!("recipe: {name} must be at least 1"));
        }
        if let Some(gamma) = self.min_snr_gamma {
            if !(gamma > 0.0 && gamma.is_finite()) {
                return Err(format!(
                    "recipe: min-SNR gamma {gamma} must be a positive number"
                ));
            }
        }
        if self.schedule == ScheduleKind::ZeroTerminalSnr && self.prediction != Prediction::V {
            return Err(
                "recipe: the zero-terminal-SNR schedule needs v-prediction (ε cannot give x₀ where ᾱ = 0)"
                    .into(),
            );
        }
        if !(self.noise_shift > 0.0 && self.noise_shift.is_finite()) {
            return Err(format!(
                "recipe: noise shift {} must be a positive number",
                self.noise_shift
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(format!(
                "recipe: EMA decay {} must be in [0, 1)",
                self.ema_decay
            ));
        }
        for (name, beta) in [
            ("beta1", self.optimizer.beta1),
            ("beta2", self.optimizer.beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return Err(format!("recipe: AdamW {name} {beta} must be in [0, 1)"));
            }
        }
        let lr = self.optimizer.lr;
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!(
                "recipe: learning rate {lr} must be a positive number"
            ));
        }
        Ok(())
    }

    /// The recipe of a budget.
    pub fn for_budget(budget: Budget) -> Recipe {
        let base = Recipe {
            steps: 800,
            batch: 8,
            // β₂ = 0.95, not 0.999: with 0.999 the SD-shaped proxies blew up in 2 of 6 `full`
            // runs at the peak learning rate and never recovered (`unetlab train sd15 --budget
            // full --seed 0 --beta2 0.999`: loss 0.03 at step 100, 0.19 from step 210 to the end);
            // the normaliser remembered a thousand quiet steps when the gradients rose. At 0.99
            // sd21's seed 2 still spiked (and recovered); at 0.95 it trained without a spike, and
            // MobileDiffusion's proxy ended where it did (validation loss 0.1327 against 0.1335).
            optimizer: AdamWConfig {
                lr: 2e-3,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            warmup: 20,
            grad_clip: 1.0,
            ema_decay: 0.995,
            cfg_dropout: 0.1,
            seed: 0,
            val_examples: 64,
            val_every: 100,
            checkpoint_every: 100,
            proxy: ProxyShape::default(),
            text_layers: 2,
            text_heads: 4,
            prediction: Prediction::V,
            min_snr_gamma: Some(5.0),
            schedule: ScheduleKind::ScaledLinear,
            noise_shift: 1.0,
        };
        match budget {
            Budget::Smoke => Recipe {
                steps: 8,
                batch: 4,
                warmup: 2,
                val_examples: 8,
                val_every: 4,
                checkpoint_every: 4,
                ..base
            },
            Budget::Quick => base,
            Budget::Full => Recipe {
                steps: 1600,
                val_every: 200,
                checkpoint_every: 200,
                ..base
            },
        }
    }
}
