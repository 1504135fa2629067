//! Stable Diffusion's DDPM noise schedule and the DDIM sampler step.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise ε (DDPM, SD 1.x). Older runs without the field were trained this way.
    #[default]
    Epsilon,
    /// The velocity v = √ᾱ ε − √(1 − ᾱ) x₀ (SD 2.x): the same objective reparametrised so that
    /// x̂₀ at high noise is not ε̂'s error divided by √ᾱ (×15 at t = 999).
    V,
}

impl Prediction {
    /// The min-SNR-γ weight of a timestep of signal-to-noise ratio `snr` = ᾱ / (1 − ᾱ): the
    /// weight `min(snr, γ) / snr` of the squared x₀ error, expressed on this prediction's
    /// squared error (ε's is the x₀ one times `snr`, v's times `snr + 1`).
    pub fn min_snr_weight(self, snr: f64, gamma: f64) -> f64 {
        match self {
            Prediction::Epsilon => snr.min(gamma) / snr,
            Prediction::V => snr.min(gamma) / (snr + 1.0),
        }
    }

    /// The training target for clean latents `x0` and noise, given per-item √ᾱ (`signal`) and
    /// √(1 − ᾱ) (`spread`) shaped to broadcast.
    pub fn target(
        self,
        x0: &Tensor,
        noise: &Tensor,
        signal: &Tensor,
        spread: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match self {
            Prediction::Epsilon => Ok(noise.clone()),
            Prediction::V => noise.broadcast_mul(signal)? - x0.broadcast_mul(spread)?,
        }
    }
}

/// Training timesteps.
pub const TRAIN_STEPS: usize = 1000;

/// Which noise schedule a run trains and samples with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Stable Diffusion's "scaled linear" schedule (ᾱ at t = 999 is 0.0047), sampled with
    /// "leading" DDIM spacing (the first step at t = 1000 − 1000 / steps), as diffusers does
    /// for SD. At 32 × 32 pixels the last training step leaks the layout: a flat 8-pixel object
    /// is still visible in x₉₉₉, which sampling from pure noise never has.
    #[default]
    ScaledLinear,
    /// The same schedule rescaled to zero terminal SNR (Lin et al., 2024, "Common diffusion noise
    /// schedules and sample steps are flawed"): √ᾱ shifted so that ᾱ₉₉₉ = 0 and scaled so that
    /// ᾱ₀ is unchanged, sampled with "trailing" spacing (the first step at t = 999). Training
    /// then sees the pure noise that sampling starts from. Needs v-prediction (ε cannot give x₀
    /// when ᾱ = 0).
    ZeroTerminalSnr,
}

impl ScheduleKind {
    /// Whether this is the default (for `skip_serializing_if`, so older run hashes stay put).
    pub fn is_default(&self) -> bool {
        *self == ScheduleKind::default()
    }
}

/// ᾱ_t for t in 0..1000 and the DDIM spacing, by [`ScheduleKind`].
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// ᾱ_t = Π (1 − β_s), s ≤ t, for t in 0..1000.
    pub alphas_cumprod: Vec<f64>,
    /// Which schedule this is.
    pub kind: ScheduleKind,
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        NoiseSchedule::new(ScheduleKind::default())
    }
}

impl NoiseSchedule {
    /// The schedule of `kind`: √β linear from √0.00085 to √0.012, then rescaled if asked.
    pub fn new(kind: ScheduleKind) -> NoiseSchedule {
        let (start, end) = (0.00085f64.sqrt(), 0.012f64.sqrt());
        let mut cumprod = 1.0;
        let mut alphas_cumprod: Vec<f64> = (0..TRAIN_STEPS)
            .map(|i| {
                let s = start + (end - start) * i as f64 / (TRAIN_STEPS - 1) as f64;
                cumprod *= 1.0 - s * s;
                cumprod
            })
            .collect();
        if kind == ScheduleKind::ZeroTerminalSnr {
            let first = alphas_cumprod[0].sqrt();
            let last = alphas_cumprod[TRAIN_STEPS - 1].sqrt();
            for a in &mut alphas_cumprod {
                let shifted = (a.sqrt() - last) * first / (first - last);
                *a = shifted * shifted;
            }
        }
        NoiseSchedule {
            alphas_cumprod,
            kind,
        }
    }

    /// The schedule with every signal-to-noise ratio divided by `shift²` (Hoogeboom et al., 2023,
    /// "simple diffusion"; SD3's resolution shift): ᾱ' = ᾱ / (ᾱ + shift² (1 − ᾱ)). Images whose
    /// content is large and flat keep their layout visible far into the scaled-linear schedule
    /// (`results/recipe`: at 32 × 32 the network read the layout from x_t and never from the
    /// caption); a shift of `s` moves noise levels as if each pixel were `s × s` averaged ones.
    /// 1 changes nothing; ᾱ = 0 stays 0.
    pub fn shifted(mut self, shift: f64) -> NoiseSchedule {
        if shift != 1.0 {
            let s2 = shift * shift;
            for a in &mut self.alphas_cumprod {
                *a /= *a + s2 * (1.0 - *a);
            }
        }
        self
    }

    /// Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t).
    pub fn snr(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        a / (1.0 - a)
    }

    /// (√ᾱ_t, √(1 − ᾱ_t)): the weights of the clean image and of the noise in x_t.
    pub fn weights(&self, t: usize) -> (f64, f64) {
        let a = self.alphas_cumprod[t];
        (a.sqrt(), (1.0 - a).sqrt())
    }

    /// The timesteps of a `steps`-step DDIM sampler, high to low: "leading" spacing for the
    /// scaled-linear schedule (as diffusers' DDIM scheduler for SD: 0, k, 2k, ... reversed,
    /// k = 1000 / steps), "trailing" for zero terminal SNR (999, 999 − k, ...: round(1000 − i·k)
    /// − 1, as diffusers' `timestep_spacing="trailing"`).
    pub fn ddim_timesteps(&self, steps: usize) -> Vec<usize> {
        let steps = steps.clamp(1, TRAIN_STEPS);
        match self.kind {
            ScheduleKind::ScaledLinear => {
                let k = TRAIN_STEPS / steps;
                (0..steps).rev().map(|i| i * k).collect()
            }
            ScheduleKind::ZeroTerminalSnr => {
                let k = TRAIN_STEPS as f64 / steps as f64;
                (0..steps)
                    .map(|i| (TRAIN_STEPS as f64 - i as f64 * k).round() as usize - 1)
                    .collect()
            }
        }
    }

    /// One deterministic DDIM step (η = 0) from `x_t` to `prev` (None: to the clean image) given
    /// the network's output: x̂₀ = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t for ε-prediction,
    /// √ᾱ_t x_t − √(1 − ᾱ_t) v̂ for v-prediction, clipped to [-1, 1] (the proxy's
    /// latent is pixel space, as with diffusers' `DDIMScheduler(clip_sample=True)`), ε̂ recomputed
    /// from the clipped x̂₀, then x_prev = √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev) · ε̂.
    pub fn ddim_step(
        &self,
        x: &Tensor,
        output: &Tensor,
        prediction: Prediction,
        t: usize,
        prev: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let (sa, sb) = self.weights(t);
        let x0 = match prediction {
            Prediction::Epsilon => ((x - (output * sb)?)? / sa)?,
            Prediction::V => ((x * sa)? - (output * sb)?)?,
        }
        .clamp(-1f32, 1f32)?;
        let eps = ((x - (&x0 * sa)?)? / sb)?;
        let (pa, pb) = prev.map_or((1.0, 0.0), |p| self.weights(p));
        (x0 * pa)? + (eps * pb)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_matches_stable_diffusion() {
        let s = NoiseSchedule::default();
        // diffusers' PNDM/DDIM schedulers for SD 1.5: ᾱ_0 = 1 − 0.00085, ᾱ_999 ≈ 0.0047.
        assert!((s.alphas_cumprod[0] - 0.99915).abs() < 1e-9);
        assert!(
            (s.alphas_cumprod[999] - 0.004_660_8).abs() < 1e-5,
            "{}",
            s.alphas_cumprod[999]
        );
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
        assert_eq!(s.ddim_timesteps(4), [750, 500, 250, 0]);
    }

    #[test]
    fn ddim_recovers_the_clean_image_from_the_true_output() {
        // Given the exact ε (or v), one step from any t lands on x₀ when x₀ is inside [-1, 1],
        // and on its clipped value otherwise; a step to an intermediate time re-noises the
        // (clipped) x̂₀ with the noise implied by x_t.
        let s = NoiseSchedule::default();
        let scalar = |v: f64| Tensor::new(&[v as f32], &Device::Cpu).unwrap();
        let value = |t: Tensor| t.to_vec1::<f32>().unwrap()[0] as f64;
        let eps = -1.3;
        for (x0, expected) in [(0.7, 0.7), (3.0, 1.0), (-2.0, -1.0)] {
            for t in [999, 500, 10] {
                let (sa, sb) = s.weights(t);
                let xt = sa * x0 + sb * eps;
                let v = sa * eps - sb * x0;
                for (prediction, output) in [(Prediction::Epsilon, eps), (Prediction::V, v)] {
                    let step = |prev| {
                        value(
                            s.ddim_step(&scalar(xt), &scalar(output), prediction, t, prev)
                                .unwrap(),
                        )
                    };
                    let clean = step(None);
                    assert!(
                        (clean - expected).abs() < 1e-4,
                        "{prediction:?} t = {t}: {clean}"
                    );
                    let (pa, pb) = s.weights(5);
                    let implied = (xt - sa * expected) / sb;
                    let noised = step(Some(5));
                    let want = pa * expected + pb * implied;
                    assert!(
                        (noised - want).abs() < 1e-3,
                        "{prediction:?} t = {t}: {noised}"
                    );
                }
            }
        }
    }
}
