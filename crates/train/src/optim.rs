//! AdamW with inspectable state (candle's keeps its moments private, so it cannot be resumed),
//! global-norm gradient clipping, the warm-up + cosine learning rate, and EMA weights.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Optimizer hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// AdamW over named variables; `m` and `v` are saved and restored with checkpoints.
#[derive(Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates applied so far.
    pub step: u64,
    /// First moments by variable name.
    pub m: BTreeMap<String, Tensor>,
    /// Second moments by variable name.
    pub v: BTreeMap<String, Tensor>,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub fn new<'a>(
        config: AdamWConfig,
        vars: impl Iterator<Item = (&'a str, &'a Var)>,
    ) -> Result<Self> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, var) in vars {
            m.insert(name.to_string(), var.as_tensor().zeros_like()?);
            v.insert(name.to_string(), var.as_tensor().zeros_like()?);
        }
        Ok(AdamW {
            config,
            step: 0,
            m,
            v,
        })
    }

    /// One update at learning rate `lr` with the (already clipped) gradients `grads`.
    /// Variables without a gradient are left alone.
    pub fn update<'a>(
        &mut self,
        vars: impl Iterator<Item = (&'a str, &'a Var)>,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        for (name, var) in vars {
            let Some(g) = grads.get(name) else { continue };
            let (Some(m), Some(v)) = (self.m.get_mut(name), self.v.get_mut(name)) else {
                candle_core::bail!("AdamW: no state for `{name}`")
            };
            *m = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?.detach();
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
            let m_hat = (&*m / bias1)?;
            let v_hat = (&*v / bias2)?;
            let step = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let w = var.as_tensor();
            let decayed = (w * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (step * lr)?)?)?;
        }
        Ok(())
    }
}

/// The gradients of `vars` by name (f32), with their global L2 norm.
pub fn collect_grads<'a>(
    grads: &GradStore,
    vars: impl Iterator<Item = (&'a str, &'a Var)>,
) -> Result<(BTreeMap<String, Tensor>, f64)> {
    let mut out = BTreeMap::new();
    let mut sum_sq = 0.0f64;
    for (name, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            // Detached: a gradient's op history reaches back through the whole forward graph,
            // and optimizer state built from it would keep every step's graph alive.
            let g = g.to_dtype(DType::F32)?.detach();
            sum_sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            out.insert(name.to_string(), g);
        }
    }
    Ok((out, sum_sq.sqrt()))
}

/// Scales every gradient so the global norm is at most `max_norm` (no change below it).
pub fn clip_grads(grads: &mut BTreeMap<String, Tensor>, norm: f64, max_norm: f64) -> Result<()> {
    if norm > max_norm && norm.is_finite() {
        let factor = max_norm / norm;
        for g in grads.values_mut() {
            *g = (&*g * factor)?;
        }
    }
    Ok(())
}

/// Linear warm-up to `peak` over `warmup` steps, then cosine decay to 10 % of `peak` at `total`.
pub fn learning_rate(step: u64, warmup: u64, total: u64, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let floor = 0.1 * peak;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// EMA weights that start as copies of the variables.
pub fn ema_init(vars: &[(String, Var)]) -> Result<BTreeMap<String, Tensor>> {
    vars.iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
        .collect()
}

/// Exponential moving average of weights: `ema ← d · ema + (1 − d) · w`.
pub fn ema_update<'a>(
    ema: &mut BTreeMap<String, Tensor>,
    vars: impl Iterator<Item = (&'a str, &'a Var)>,
    decay: f64,
) -> Result<()> {
    for (name, var) in vars {
        let w = var.as_tensor();
        let next = match ema.get(name) {
            Some(e) => ((e * decay)? + (w * (1.0 - decay))?)?.detach(),
            None => w.copy()?.detach(),
        };
        ema.insert(name.to_string(), next);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn test_config() -> AdamWConfig {
        AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }

    #[test]
    fn adamw_matches_the_closed_form_first_step() {
        // Step 1: m̂ = g, v̂ = g², so the update is lr · g / (|g| + eps) plus decay.
        let w = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let mut opt = AdamW::new(test_config(), [("w", &w)].into_iter()).unwrap();
        let g = Tensor::new(&[0.5f32, -4.0], &Device::Cpu).unwrap();
        let grads = BTreeMap::from([("w".to_string(), g)]);
        opt.update([("w", &w)].into_iter(), &grads, 0.1).unwrap();
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.1, -2.0 * (1.0 - 0.001) + 0.1];
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert_eq!(opt.step, 1);
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_a_tenth() {
        assert!((learning_rate(0, 10, 100, 1.0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(9, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(10, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(55, 10, 100, 1.0) - 0.55).abs() < 1e-12);
        assert!((learning_rate(100, 10, 100, 1.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn state_kept_across_steps_holds_no_graph() {
        // A gradient's op history reaches back through the forward graph; optimizer state or EMA
        // built from it without detaching would keep every step's graph alive.
        let w = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let loss = (w.as_tensor() * w.as_tensor()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars = [("w", &w)];
        let (grads, _) = collect_grads(&grads, vars.iter().copied()).unwrap();
        assert!(!grads["w"].track_op());
        let mut adam = AdamW::new(test_config(), vars.iter().copied()).unwrap();
        adam.update(vars.iter().copied(), &grads, 0.1).unwrap();
        assert!(!adam.m["w"].track_op() && !adam.v["w"].track_op());
        let mut ema = BTreeMap::new();
        ema_update(&mut ema, vars.iter().copied(), 0.9).unwrap();
        ema_update(&mut ema, vars.iter().copied(), 0.9).unwrap();
        assert!(!ema["w"].track_op());
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut grads = BTreeMap::from([
            (
                "a".to_string(),
                Tensor::new(&[3.0f32], &Device::Cpu).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::new(&[4.0f32], &Device::Cpu).unwrap(),
            ),
        ]);
        clip_grads(&mut grads, 5.0, 1.0).unwrap();
        let a = grads["a"].to_vec1::<f32>().unwrap()[0];
        let b = grads["b"].to_vec1::<f32>().unwrap()[0];
        assert!(((a * a + b * b).sqrt() - 1.0).abs() < 1e-6);
        assert!((a / b - 0.75).abs() < 1e-6);
    }
}
