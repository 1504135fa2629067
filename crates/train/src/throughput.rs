//! Timing proxy training (`unetlab bench --train`): the trainer's own step ([`Stepper`]) on the
//! recipe's data, from the recipe's initial weights, timed one step at a time after warm-up
//! steps; no validation, checkpoints or files. Optionally with the time per kind of op
//! ([`unetlab_model::profile`]).

use std::collections::BTreeMap;
use std::time::Instant;

use unetlab_model::profile::{self, Pass, Total};
use unetlab_spec::Config;

use crate::data::{DataSource, TrainData};
use crate::error::TrainError;
use crate::model::ProxyModel;
use crate::optim::{ema_init, AdamW};
use crate::proxy::proxy_spec;
use crate::recipe::Recipe;
use crate::schedule::NoiseSchedule;
use crate::step::{Phases, StepOutcome, Stepper};
use crate::tokenizer::TextTokenizer;

/// Per-step wall times of proxy training.
#[derive(Debug, Clone)]
pub struct StepTimes {
    /// Seconds of each timed step, in order.
    pub times_s: Vec<f64>,
    /// Where each timed step's time went.
    pub phases: Vec<Phases>,
    /// Time per kind of op over all timed steps, when profiled.
    pub profile: Option<BTreeMap<(&'static str, Pass), Total>>,
    /// MACs of one proxy UNet forward for one image (text encoder excluded).
    pub proxy_macs: u64,
    /// Parameters of the proxy UNet and of the text encoder.
    pub params: (u64, u64),
}

/// Runs `warmup` untimed and then `steps` timed training steps of `config`'s proxy under
/// `recipe` (its batch, data, optimizer), recording the time per kind of op of the timed steps
/// with `profiled`; `progress(done, total)` after each step.
pub fn time_steps(
    config: &Config,
    recipe: &Recipe,
    (warmup, steps): (usize, usize),
    profiled: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StepTimes, TrainError> {
    let total = warmup + steps;
    let recipe = Recipe {
        steps: total as u64,
        ..recipe.clone()
    };
    recipe.validate().map_err(TrainError::Benchmark)?;
    let proxy = proxy_spec(&config.spec, &recipe.proxy);
    let (data, _) = TrainData::open(&DataSource::Shapes, recipe.proxy.image_size, recipe.seed)?;
    let captions = data.vocabulary_captions();
    let tokenizer = TextTokenizer::train(captions.iter().map(String::as_str), recipe.proxy.tokens)?;
    let model = ProxyModel::init(
        proxy.clone(),
        recipe.text_encoder(tokenizer.vocab()),
        recipe.seed,
    )?;
    let vars = model.named_vars();
    let mut adam = AdamW::new(recipe.optimizer, vars.iter().map(|(n, v)| (n.as_str(), v)))?;
    let mut ema = ema_init(&vars)?;
    let schedule = NoiseSchedule::default();
    let stepper = Stepper {
        model: &model,
        vars: &vars,
        tokenizer: &tokenizer,
        data: &data,
        schedule: &schedule,
        recipe: &recipe,
    };
    let (mut times_s, mut phases) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for step in 0..total {
        if step == warmup && profiled {
            profile::enable(true);
        }
        let began = Instant::now();
        match stepper.step(&mut adam, &mut ema, step as u64)? {
            StepOutcome::Diverged { value } => {
                profile::enable(false);
                return Err(TrainError::Benchmark(format!(
                    "diverged at step {step} (loss or gradient norm {value})"
                )));
            }
            StepOutcome::Updated { phases: p, .. } if step >= warmup => {
                times_s.push(began.elapsed().as_secs_f64());
                phases.push(p);
            }
            StepOutcome::Updated { .. } => {}
        }
        progress(step + 1, total);
    }
    let profile = profiled.then(|| {
        let totals = profile::take();
        profile::enable(false);
        totals
    });
    let cost = unetlab_cost::count(
        &proxy,
        unetlab_cost::Conditions {
            batch: 1,
            latent_size: proxy.latent_size,
            tokens: proxy.text_tokens,
        },
    )
    .map_err(unetlab_model::ModelError::from)?;
    let text_params = model.text.vars().map(|(_, v)| v.elem_count() as u64).sum();
    Ok(StepTimes {
        times_s,
        phases,
        profile,
        proxy_macs: cost.macs.total(),
        params: (cost.params(), text_params),
    })
}
