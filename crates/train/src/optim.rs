//! AdamW with inspectable state (candle's keeps its moments private, so it cannot be resumed),
//! global-norm gradient clipping, the warm-up + cosine learning rate, and EMA weights.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use unetlab_model::kernels::inplace::{adam_update, lerp_into, sum_squares, AdamStep};

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

/// One variable's AdamW moments, kept outside candle so that one pass can update them and the
/// weight together.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// The variable's shape.
    pub shape: Vec<usize>,
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
}

/// AdamW over named variables; the moments are saved and restored with checkpoints.
#[derive(Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates applied so far.
    pub step: u64,
    /// Moments by variable name.
    pub moments: BTreeMap<String, Moments>,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub fn new<'a>(
        config: AdamWConfig,
        vars: impl Iterator<Item = (&'a str, &'a Var)>,
    ) -> Result<Self> {
        let moments = vars
            .map(|(name, var)| {
                let n = var.elem_count();
                let shape = var.dims().to_vec();
                let zeros = Moments {
                    shape,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                };
                (name.to_string(), zeros)
            })
            .collect();
        Ok(AdamW {
            config,
            step: 0,
            moments,
        })
    }

    /// The state saved by a checkpoint: `step` updates done, moments `m` and `v` by name (the
    /// same names in both).
    pub fn from_tensors(
        config: AdamWConfig,
        step: u64,
        m: BTreeMap<String, Tensor>,
        v: BTreeMap<String, Tensor>,
    ) -> Result<Self> {
        let mut v = v;
        let moments = m
            .into_iter()
            .map(|(name, m)| {
                let Some(v) = v.remove(&name) else {
                    candle_core::bail!("AdamW state: `{name}` has a first moment but no second")
                };
                if v.dims() != m.dims() {
                    candle_core::bail!("AdamW state: `{name}`'s moments differ in shape")
                }
                let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
                let moments = Moments {
                    shape: m.dims().to_vec(),
                    m: flat(&m)?,
                    v: flat(&v)?,
                };
                Ok((name, moments))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        if let Some(name) = v.keys().next() {
            candle_core::bail!("AdamW state: `{name}` has a second moment but no first")
        }
        Ok(AdamW {
            config,
            step,
            moments,
        })
    }

    /// The moments as tensors `(name, m, v)`, for a checkpoint.
    pub fn moment_tensors(&self) -> Result<Vec<(String, Tensor, Tensor)>> {
        let tensor = |x: &[f32], shape: &[usize]| Tensor::from_slice(x, shape, &Device::Cpu);
        self.moments
            .iter()
            .map(|(name, mo)| {
                Ok((
                    name.clone(),
                    tensor(&mo.m, &mo.shape)?,
                    tensor(&mo.v, &mo.shape)?,
                ))
            })
            .collect()
    }

    /// One update at learning rate `lr` with the gradients `grads` times `grad_scale` (the
    /// clipping factor, see [`clip_scale`]), in place: weight and moments in one pass, without
    /// allocating. Variables without a gradient are left alone.
    pub fn update<'a>(
        &mut self,
        vars: impl Iterator<Item = (&'a str, &'a Var)>,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        let vars: HashMap<&str, &Var> = vars.collect();
        if let Some(name) = grads.keys().find(|n| !self.moments.contains_key(*n)) {
            candle_core::bail!("AdamW: no state for `{name}`")
        }
        self.step += 1;
        let c = self.config;
        let step = AdamStep {
            lr,
            weight_decay: c.weight_decay,
            beta1: c.beta1,
            beta2: c.beta2,
            bias1: 1.0 - c.beta1.powi(self.step as i32),
            bias2: 1.0 - c.beta2.powi(self.step as i32),
            eps: c.eps,
            grad_scale,
        };
        // Parameters are independent: several at a time (most are too small to split).
        self.moments.par_iter_mut().try_for_each(|(name, mo)| {
            let (Some(var), Some(g)) = (vars.get(name.as_str()), grads.get(name)) else {
                return Ok(());
            };
            adam_update(var.as_tensor(), g, (&mut mo.m, &mut mo.v), step)
        })
    }
}

/// The gradients of `vars` by name (f32), with their global L2 norm.
pub fn collect_grads<'a>(
    grads: &GradStore,
    vars: impl Iterator<Item = (&'a str, &'a Var)>,
) -> Result<(BTreeMap<String, Tensor>, f64)> {
    let mut out = BTreeMap::new();
    for (name, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            // Detached: a gradient's op history reaches back through the whole forward graph,
            // and optimizer state built from it would keep every step's graph alive.
            out.insert(name.to_string(), g.to_dtype(DType::F32)?.detach());
        }
    }
    // Summed in name order whatever the threads do, so the norm is the same every time.
    let squares = out
        .par_iter()
        .map(|(_, g)| sum_squares(g))
        .collect::<Result<Vec<f64>>>()?;
    Ok((out, squares.iter().sum::<f64>().sqrt()))
}

/// The factor that brings a global gradient norm `norm` down to at most `max_norm` (1 below it).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if norm > max_norm && norm.is_finite() {
        max_norm / norm
    } else {
        1.0
    }
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

/// Exponential moving average of weights, in place: `ema ← d · ema + (1 − d) · w`.
pub fn ema_update<'a>(
    ema: &mut BTreeMap<String, Tensor>,
    vars: impl Iterator<Item = (&'a str, &'a Var)>,
    decay: f64,
) -> Result<()> {
    // A variable the EMA has not seen starts as a copy; the others move towards their weights,
    // several at a time.
    let (seen, new): (Vec<_>, Vec<_>) = vars.partition(|(name, _)| ema.contains_key(*name));
    for (name, var) in new {
        ema.insert(name.to_string(), var.as_tensor().copy()?.detach());
    }
    seen.par_iter()
        .try_for_each(|&(name, var)| lerp_into(&ema[name], var.as_tensor(), decay))
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
        opt.update([("w", &w)].into_iter(), &grads, 0.1, 1.0)
            .unwrap();
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
        adam.update(vars.iter().copied(), &grads, 0.1, 1.0).unwrap();
        let mut ema = BTreeMap::new();
        ema_update(&mut ema, vars.iter().copied(), 0.9).unwrap();
        ema_update(&mut ema, vars.iter().copied(), 0.9).unwrap();
        assert!(!ema["w"].track_op());
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        // Gradients (3, 4) of norm 5, clipped to 1: the update sees (0.6, 0.8).
        assert!((clip_scale(5.0, 1.0) - 0.2).abs() < 1e-12);
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert_eq!(clip_scale(f64::NAN, 1.0), 1.0);
        // At step 1 the update is lr · sign(g) whatever the scale; the first moment shows it.
        let w = Var::from_vec(vec![1.0f32, 1.0], 2, &Device::Cpu).unwrap();
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..test_config()
        };
        let mut opt = AdamW::new(config, [("w", &w)].into_iter()).unwrap();
        let g = Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
        let grads = BTreeMap::from([("w".to_string(), g)]);
        opt.update([("w", &w)].into_iter(), &grads, 0.1, clip_scale(5.0, 1.0))
            .unwrap();
        let m = &opt.moments["w"].m;
        assert!(
            (m[0] - 0.1 * 0.6).abs() < 1e-6 && (m[1] - 0.1 * 0.8).abs() < 1e-6,
            "{m:?}"
        );
    }
}
