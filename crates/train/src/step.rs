//! One optimisation step of proxy training: a batch of the recipe's data and noise (a function of
//! seed and step only), the denoising loss, backward, gradient clipping, AdamW and EMA. The
//! trainer and the training benchmark (`unetlab bench --train`) run this same step.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use unetlab_data::Example;
use unetlab_model::standard_normal;

use crate::data::TrainData;
use crate::error::TrainError;
use crate::model::{images_to_latents, ProxyModel};
use crate::optim::{clip_scale, collect_grads, ema_update, learning_rate, AdamW};
use crate::recipe::Recipe;
use crate::schedule::{NoiseSchedule, Prediction, TRAIN_STEPS};
use crate::tokenizer::TextTokenizer;

/// What one step needs besides the optimizer state.
pub struct Stepper<'a> {
    /// The model being trained.
    pub model: &'a ProxyModel,
    /// Its variables, by name (the order AdamW and EMA see them in).
    pub vars: &'a [(String, Var)],
    /// Captions to one-hot tokens.
    pub tokenizer: &'a TextTokenizer,
    /// The training data.
    pub data: &'a TrainData,
    /// The noise schedule.
    pub schedule: &'a NoiseSchedule,
    /// Batch, seed, dropout, optimizer and EMA settings.
    pub recipe: &'a Recipe,
}

/// Wall time of a step's phases, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phases {
    /// The batch, its noise and the forward to the loss.
    pub forward: f64,
    /// `backward()`.
    pub backward: f64,
    /// Gradient norm, AdamW and EMA.
    pub optimizer: f64,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepOutcome {
    /// Parameters, AdamW state and EMA weights were updated.
    Updated {
        /// The batch's loss.
        loss: f64,
        /// The learning rate used.
        lr: f64,
        /// The gradient norm before clipping.
        grad_norm: f64,
        /// Where the step's time went.
        phases: Phases,
    },
    /// The loss or the gradient norm was not finite (`value`): nothing was updated.
    Diverged {
        /// The non-finite loss or gradient norm.
        value: f64,
    },
}

impl Stepper<'_> {
    /// Runs step `step` (0-based) of the recipe, on a thread of the compute pool (see
    /// [`unetlab_model::on_compute_threads`]).
    pub fn step(
        &self,
        adam: &mut AdamW,
        ema: &mut BTreeMap<String, Tensor>,
        step: u64,
    ) -> Result<StepOutcome, TrainError> {
        unetlab_model::on_compute_threads(|| self.run(adam, ema, step))
    }

    fn run(
        &self,
        adam: &mut AdamW,
        ema: &mut BTreeMap<String, Tensor>,
        step: u64,
    ) -> Result<StepOutcome, TrainError> {
        let recipe = self.recipe;
        let began = Instant::now();
        let examples = self.data.batch(step, recipe.batch, recipe.seed);
        let mut rng = ChaCha8Rng::seed_from_u64(recipe.seed);
        rng.set_stream(step);
        let captions: Vec<&str> = examples
            .iter()
            .map(|e| {
                if rng.random::<f64>() < recipe.cfg_dropout {
                    ""
                } else {
                    e.caption.as_str()
                }
            })
            .collect();
        let timesteps: Vec<usize> = (0..examples.len())
            .map(|_| rng.random_range(0..TRAIN_STEPS))
            .collect();
        let loss = denoising_loss(
            self.model,
            self.tokenizer,
            &examples,
            &captions,
            &timesteps,
            &mut rng,
            self.schedule,
            recipe.prediction,
            recipe.min_snr_gamma,
            true,
        )?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Ok(StepOutcome::Diverged { value: loss_value });
        }
        let vars = || self.vars.iter().map(|(n, v)| (n.as_str(), v));
        let forward_done = Instant::now();
        let grads = loss.backward()?;
        let backward_done = Instant::now();
        let (grads, norm) = collect_grads(&grads, vars())?;
        if !norm.is_finite() {
            return Ok(StepOutcome::Diverged { value: norm });
        }
        let lr = learning_rate(step, recipe.warmup, recipe.steps, recipe.optimizer.lr);
        adam.update(vars(), &grads, lr, clip_scale(norm, recipe.grad_clip))?;
        let decay = recipe
            .ema_decay
            .min((1.0 + step as f64) / (10.0 + step as f64));
        ema_update(ema, vars(), decay)?;
        let seconds = |from: Instant, to: Instant| (to - from).as_secs_f64();
        Ok(StepOutcome::Updated {
            loss: loss_value,
            lr,
            grad_norm: norm,
            phases: Phases {
                forward: seconds(began, forward_done),
                backward: seconds(forward_done, backward_done),
                optimizer: seconds(backward_done, Instant::now()),
            },
        })
    }
}

/// The mean squared error between the model's output and its target (the noise, or v; see
/// [`Prediction`]), for `examples` noised at `timesteps` with noise drawn from `rng`; with
/// `min_snr_gamma`, each example's error is weighted by [`Prediction::min_snr_weight`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn denoising_loss(
    model: &ProxyModel,
    tokenizer: &TextTokenizer,
    examples: &[Example],
    captions: &[&str],
    timesteps: &[usize],
    rng: &mut ChaCha8Rng,
    schedule: &NoiseSchedule,
    prediction: Prediction,
    min_snr_gamma: Option<f64>,
    trainable: bool,
) -> Result<Tensor, TrainError> {
    let device = Device::Cpu;
    let size = examples[0].size;
    let pixels: Vec<f32> = examples
        .iter()
        .flat_map(|e| e.image.iter().copied())
        .collect();
    let images = Tensor::from_vec(pixels, (examples.len(), 3, size, size), &device)?;
    let x0 = images_to_latents(&images)?;
    let noise = Tensor::from_vec(standard_normal(rng, x0.elem_count()), x0.dims(), &device)?;
    let (signal, spread): (Vec<f32>, Vec<f32>) = timesteps
        .iter()
        .map(|&t| {
            let (a, b) = schedule.weights(t);
            (a as f32, b as f32)
        })
        .unzip();
    let per_item = (examples.len(), 1, 1, 1);
    let signal = Tensor::from_vec(signal, per_item, &device)?;
    let spread = Tensor::from_vec(spread, per_item, &device)?;
    let x_t = (x0.broadcast_mul(&signal)? + noise.broadcast_mul(&spread)?)?;
    let target = prediction.target(&x0, &noise, &signal, &spread)?;
    let t = Tensor::from_vec(
        timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(),
        examples.len(),
        &device,
    )?;
    let one_hot = tokenizer.one_hot(captions, &device)?;
    let predicted = model.predict(&x_t, &t, &one_hot, trainable)?;
    let squared = (predicted - target)?.sqr()?;
    let Some(gamma) = min_snr_gamma else {
        return Ok(squared.mean_all()?);
    };
    let weights: Vec<f32> = timesteps
        .iter()
        .map(|&t| prediction.min_snr_weight(schedule.snr(t), gamma) as f32)
        .collect();
    let weights = Tensor::from_vec(weights, per_item, &device)?;
    Ok(squared.broadcast_mul(&weights)?.mean_all()?)
}
