//! Stable Diffusion's DDPM noise schedule and the DDIM sampler step.

/// Training timesteps.
pub const TRAIN_STEPS: usize = 1000;

/// The "scaled linear" schedule of Stable Diffusion: √β linear from √0.00085 to √0.012.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// ᾱ_t = Π (1 − β_s), s ≤ t, for t in 0..1000.
    pub alphas_cumprod: Vec<f64>,
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        let (start, end) = (0.00085f64.sqrt(), 0.012f64.sqrt());
        let mut cumprod = 1.0;
        let alphas_cumprod = (0..TRAIN_STEPS)
            .map(|i| {
                let s = start + (end - start) * i as f64 / (TRAIN_STEPS - 1) as f64;
                cumprod *= 1.0 - s * s;
                cumprod
            })
            .collect();
        NoiseSchedule { alphas_cumprod }
    }
}

impl NoiseSchedule {
    /// (√ᾱ_t, √(1 − ᾱ_t)): the weights of the clean image and of the noise in x_t.
    pub fn weights(&self, t: usize) -> (f64, f64) {
        let a = self.alphas_cumprod[t];
        (a.sqrt(), (1.0 - a).sqrt())
    }

    /// The timesteps of a `steps`-step DDIM sampler, high to low ("leading" spacing, as diffusers'
    /// DDIM scheduler for SD: 0, k, 2k, ... reversed, k = 1000 / steps).
    pub fn ddim_timesteps(&self, steps: usize) -> Vec<usize> {
        let k = TRAIN_STEPS / steps.clamp(1, TRAIN_STEPS);
        (0..steps.clamp(1, TRAIN_STEPS))
            .rev()
            .map(|i| i * k)
            .collect()
    }

    /// One deterministic DDIM step (η = 0) from `t` to `prev` (None: to the clean image), given the
    /// predicted noise: returns (x_prev coefficient on x_t, coefficient on ε̂).
    /// x_prev = √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev) · ε̂, x̂₀ = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t.
    pub fn ddim_coefficients(&self, t: usize, prev: Option<usize>) -> (f64, f64) {
        let (sa, sb) = self.weights(t);
        let a_prev = prev.map_or(1.0, |p| self.alphas_cumprod[p]);
        let (spa, spb) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
        (spa / sa, spb - spa * sb / sa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ddim_recovers_the_clean_image_from_the_true_noise() {
        // With the exact noise, one step from any t lands on x₀: x_t·a + ε·b = x₀.
        let s = NoiseSchedule::default();
        let (x0, eps) = (0.7, -1.3);
        for t in [999, 500, 10] {
            let (sa, sb) = s.weights(t);
            let xt = sa * x0 + sb * eps;
            let (a, b) = s.ddim_coefficients(t, None);
            assert!((a * xt + b * eps - x0).abs() < 1e-9, "t = {t}");
            // And stepping to an intermediate time gives that time's noisy image.
            let (a, b) = s.ddim_coefficients(t, Some(5));
            let (pa, pb) = s.weights(5);
            assert!((a * xt + b * eps - (pa * x0 + pb * eps)).abs() < 1e-9);
        }
    }
}
