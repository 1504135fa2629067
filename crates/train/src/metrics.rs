//! Quality metrics of a trained proxy on fixed seeds: images generated for the first `n`
//! validation captions of `shapes` are compared with the real validation images of those
//! captions through the [`Evaluator`]: Fréchet distance of its features, and text alignment
//! (the fraction of generated images whose predicted attributes all match the caption's).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::evaluator::{agreement_rates, validation_batch, Attributes, Evaluator, FEATURES};
use crate::frechet::{frechet_distance, Gaussian};
use crate::model::ProxyModel;
use crate::recipe::{Budget, Recipe};
use crate::sample::{sample, SampleOptions};
use crate::tokenizer::TextTokenizer;

/// What is generated for the metrics (fixed, so every variant is scored on the same prompts,
/// noise and sampler).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricOptions {
    /// Validation captions (and images) scored.
    pub images: usize,
    /// DDIM steps.
    pub ddim_steps: usize,
    /// Classifier-free guidance scale.
    pub cfg: f64,
    /// Seed of the initial noise.
    pub seed: u64,
}

impl MetricOptions {
    /// The budget's scoring: `smoke` exercises the code path, `quick` and `full` score 128 and
    /// 256 captions with 10 DDIM steps at guidance 3 (`results/recipe`: on the 256,000-image run,
    /// 25 steps lowered FD by 11 % and 50 by 13 %, at 2.5 and 5 times the sampling time).
    pub fn for_budget(budget: Budget) -> MetricOptions {
        let (images, ddim_steps) = match budget {
            Budget::Smoke => (16, 4),
            Budget::Quick => (128, 10),
            Budget::Full => (256, 10),
        };
        MetricOptions {
            images,
            ddim_steps,
            cfg: 3.0,
            seed: 0,
        }
    }
}

/// A run's quality.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Fréchet distance between evaluator features of generated and real images (lower is
    /// better).
    pub fd: f64,
    /// Fraction of generated images whose predicted attributes all match their caption.
    pub text_alignment: f64,
    /// Fraction of stated attributes (count, relation, shape, colour, size) the evaluator finds
    /// in the generated images: a finer-grained alignment.
    pub attribute_alignment: f64,
    /// The attribute alignment by kind (runs scored before it existed have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_kind: Option<AttributeRates>,
}

/// Fraction of stated attributes found, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttributeRates {
    /// One or two objects.
    pub count: f64,
    /// Left of / above (two-object captions).
    pub relation: f64,
    /// Each object's shape.
    pub shape: f64,
    /// Each object's colour.
    pub colour: f64,
    /// Each object's size.
    pub size: f64,
    /// Of the two-object scenes drawn on the stated axis with the stated pair of (different)
    /// colours, the fraction in the stated order ([`Attributes::direction`]; chance is 0.5).
    /// `None` where no scene could be judged, and in scores from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<f64>,
    /// How many scenes `direction` judged.
    #[serde(default)]
    pub direction_scenes: usize,
}

impl AttributeRates {
    /// The rates of `predicted` against `truth`, pairwise.
    pub fn of(truth: &[Attributes], predicted: &[Attributes]) -> AttributeRates {
        let mut sums = [(0usize, 0usize); 5];
        for (t, p) in truth.iter().zip(predicted) {
            for (sum, (_, hits, total)) in sums.iter_mut().zip(t.agreement_by_kind(p)) {
                sum.0 += hits;
                sum.1 += total;
            }
        }
        let rate = |(h, t): (usize, usize)| h as f64 / t.max(1) as f64;
        let judged: Vec<bool> = truth
            .iter()
            .zip(predicted)
            .filter_map(|(t, p)| t.direction(p))
            .collect();
        let in_order = judged.iter().filter(|&&right| right).count();
        AttributeRates {
            count: rate(sums[0]),
            relation: rate(sums[1]),
            shape: rate(sums[2]),
            colour: rate(sums[3]),
            size: rate(sums[4]),
            direction: (!judged.is_empty()).then(|| rate((in_order, judged.len()))),
            direction_scenes: judged.len(),
        }
    }
}

/// The real validation images and their captions' attributes, with the evaluator's features.
pub struct Reference {
    /// Captions, in validation order.
    pub captions: Vec<String>,
    /// Stated attributes of each caption.
    pub attributes: Vec<Attributes>,
    /// Gaussian of the real images' features.
    pub real: Gaussian,
}

impl Reference {
    /// The first `n` validation examples of `shapes` at `image_size` (at least 2: a covariance
    /// needs two samples).
    pub fn new(evaluator: &Evaluator, n: usize, image_size: usize) -> Result<Self, TrainError> {
        if n < 2 {
            return Err(TrainError::Metrics(format!(
                "scoring needs at least 2 images, not {n}"
            )));
        }
        let (examples, images) = validation_batch(image_size, 0..n as u64)?;
        let (features, _) = evaluator.read(&images)?;
        Ok(Reference {
            captions: examples.iter().map(|e| e.caption.clone()).collect(),
            attributes: examples.iter().map(Attributes::of_example).collect(),
            real: fit(&features)?,
        })
    }

    /// FD between the reference images and the next as many real validation images: what a
    /// perfect generator would score with this many samples.
    pub fn real_floor(&self, evaluator: &Evaluator, image_size: usize) -> Result<f64, TrainError> {
        let n = self.captions.len() as u64;
        let (_, images) = validation_batch(image_size, n..2 * n)?;
        Ok(self.score(evaluator, &images)?.fd)
    }

    /// Scores images generated for [`Reference::captions`], in that order.
    pub fn score(&self, evaluator: &Evaluator, generated: &Tensor) -> Result<Quality, TrainError> {
        let (features, predicted) = evaluator.read(generated)?;
        let (attribute_alignment, text_alignment) = agreement_rates(&self.attributes, &predicted);
        Ok(Quality {
            fd: frechet_distance(&self.real, &fit(&features)?),
            text_alignment,
            attribute_alignment,
            by_kind: Some(AttributeRates::of(&self.attributes, &predicted)),
        })
    }
}

/// Generates images for the reference captions with `model` and scores them; returns the
/// metrics and the images `[N, 3, S, S]`.
pub fn evaluate(
    model: &ProxyModel,
    tokenizer: &TextTokenizer,
    evaluator: &Evaluator,
    reference: &Reference,
    options: MetricOptions,
    recipe: &Recipe,
    progress: &mut dyn FnMut(usize),
) -> Result<(Quality, Tensor), TrainError> {
    let prompts: Vec<&str> = reference.captions.iter().map(String::as_str).collect();
    let sample_options = SampleOptions {
        steps: options.ddim_steps,
        cfg: options.cfg,
        seed: options.seed,
        prediction: recipe.prediction,
        schedule: recipe.schedule,
        noise_shift: recipe.noise_shift,
    };
    let images = sample(model, tokenizer, &prompts, sample_options, progress)?;
    Ok((reference.score(evaluator, &images)?, images))
}

fn fit(features: &Tensor) -> Result<Gaussian, TrainError> {
    Ok(Gaussian::fit(
        &features.flatten_all()?.to_vec1::<f32>()?,
        FEATURES,
    ))
}
