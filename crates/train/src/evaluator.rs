//! The evaluator: a small CNN trained once on `shapes` to read a 32 × 32 image's attributes back
//! (object count, relation, and shape/colour/size of each object in canonical order). Its
//! penultimate features feed the Fréchet distance and its predictions the text-alignment metric
//! ([`crate::metrics`]).
//!
//! Training is deterministic (seeded init, data and augmentation noise; the same result with any
//! thread count), so the trained weights are cached under a name that hashes the recipe and the
//! source of the code that trains it ([`Code::Training`]): [`Evaluator::cached`] trains only when
//! that file is missing, and any change to the network, data, kernels or trainer trains anew.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use unetlab_data::shapes::{Colour, Relation, Scene, Shape, Shapes, Size};
use unetlab_data::Example;
use unetlab_model::{standard_normal, write_safetensors};
use unetlab_provenance::{Build, Code};

use crate::error::TrainError;
use crate::optim::{collect_grads, AdamW, AdamWConfig};

/// Width of the feature vector used for the Fréchet distance.
pub const FEATURES: usize = 64;

/// Convolutions: (input channels, output channels, stride); 3 × 3 kernels, padding 1, ReLU.
const CONVS: [(usize, usize, usize); 4] = [(3, 16, 1), (16, 32, 2), (32, 64, 2), (64, 64, 2)];

/// Label heads in logit order: object count (1 or 2), relation of two objects in canonical
/// order (left-of or above), then shape, colour and size of the first and the second object.
const HEADS: [(&str, usize); 8] = [
    ("count", 2),
    ("relation", 2),
    ("shape0", 3),
    ("colour0", 6),
    ("size0", 2),
    ("shape1", 3),
    ("colour1", 6),
    ("size1", 2),
];

/// How the evaluator is trained (part of its cache key).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvaluatorRecipe {
    /// Image side in pixels.
    pub image_size: usize,
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch: usize,
    /// Constant AdamW learning rate.
    pub lr: f64,
    /// Standard deviation of the Gaussian noise added to training images (robustness to the
    /// imperfect images a diffusion model draws).
    pub noise: f64,
    /// Seed of init, data and noise.
    pub seed: u64,
}

impl Default for EvaluatorRecipe {
    fn default() -> Self {
        EvaluatorRecipe {
            image_size: 32,
            steps: 1500,
            batch: 32,
            lr: 2e-3,
            noise: 0.05,
            seed: 0xe7a1,
        }
    }
}

impl EvaluatorRecipe {
    /// The default recipe, except for `smoke`, which trains 100 steps: enough to exercise the
    /// metrics, not to trust them.
    pub fn for_budget(budget: crate::recipe::Budget) -> EvaluatorRecipe {
        match budget {
            crate::recipe::Budget::Smoke => EvaluatorRecipe {
                steps: 100,
                ..EvaluatorRecipe::default()
            },
            _ => EvaluatorRecipe::default(),
        }
    }

    /// The identity of the recipe and of the code that trains it: the cache file's name carries
    /// its first 16 hex digits.
    pub fn hash(&self) -> String {
        let text =
            serde_json::json!({"code": Code::Training.identity(), "recipe": self}).to_string();
        unetlab_files::sha256_hex(text.as_bytes())
    }
}

/// What the evaluator reads from an image: a scene's attributes in canonical order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// Shape, colour and size of each object (one or two), canonical order.
    pub objects: Vec<(Shape, Colour, Size)>,
    /// Left-of or above (two objects only).
    pub relation: Option<Relation>,
}

impl Attributes {
    /// The attributes a scene's caption states, in canonical order.
    pub fn of(scene: &Scene) -> Attributes {
        let canonical = scene.canonical();
        Attributes {
            objects: canonical.objects.iter().map(|o| o.attributes()).collect(),
            relation: if canonical.objects.len() == 2 {
                canonical.relation
            } else {
                None
            },
        }
    }

    /// The attributes of a `shapes` example's scene (every `shapes` example has one).
    pub fn of_example(example: &Example) -> Attributes {
        Attributes::of(
            example
                .scene
                .as_ref()
                .expect("shapes examples carry their scene"),
        )
    }

    /// `(matching attributes, attributes stated by self)`: count, relation and each object's
    /// shape, colour and size; an object missing from `predicted` counts as three misses.
    pub fn agreement(&self, predicted: &Attributes) -> (usize, usize) {
        self.agreement_by_kind(predicted)
            .iter()
            .fold((0, 0), |(h, t), (_, hits, total)| (h + hits, t + total))
    }

    /// [`Attributes::agreement`] split by kind: `(kind, hits, stated)` for count, relation,
    /// shape, colour and size, in that order.
    pub fn agreement_by_kind(&self, predicted: &Attributes) -> [(&'static str, usize, usize); 5] {
        let mut kinds = [
            (
                "count",
                usize::from(self.objects.len() == predicted.objects.len()),
                1,
            ),
            ("relation", 0, 0),
            ("shape", 0, 0),
            ("colour", 0, 0),
            ("size", 0, 0),
        ];
        if self.relation.is_some() {
            kinds[1].2 += 1;
            kinds[1].1 += usize::from(self.relation == predicted.relation);
        }
        for (k, (shape, colour, size)) in self.objects.iter().enumerate() {
            let found = predicted.objects.get(k);
            for (slot, hit) in [
                (2, found.is_some_and(|p| p.0 == *shape)),
                (3, found.is_some_and(|p| p.1 == *colour)),
                (4, found.is_some_and(|p| p.2 == *size)),
            ] {
                kinds[slot].2 += 1;
                kinds[slot].1 += usize::from(hit);
            }
        }
        kinds
    }

    /// Whether `predicted` draws a two-object scene's objects in the stated order along its
    /// axis, told apart by colour: `Some(true)` in the stated order, `Some(false)` swapped, and
    /// `None` where only the order cannot be judged (not two objects of different colours
    /// stated, another axis or count predicted, or predicted colours that are not the stated
    /// pair). The relation kind scores the axis; this scores the direction along it.
    pub fn direction(&self, predicted: &Attributes) -> Option<bool> {
        let (stated, drawn) = (&self.objects, &predicted.objects);
        if self.relation.is_none()
            || predicted.relation != self.relation
            || stated.len() != 2
            || drawn.len() != 2
            || stated[0].1 == stated[1].1
        {
            return None;
        }
        match (drawn[0].1, drawn[1].1) {
            (a, b) if (a, b) == (stated[0].1, stated[1].1) => Some(true),
            (a, b) if (a, b) == (stated[1].1, stated[0].1) => Some(false),
            _ => None,
        }
    }
}

/// Accuracy of the evaluator on labelled images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Correct attributes / stated attributes (see [`Attributes::agreement`]).
    pub attribute: f64,
    /// Images whose every attribute is right.
    pub exact: f64,
    /// Images scored.
    pub images: usize,
}

/// The trained evaluator network.
pub struct Evaluator {
    params: BTreeMap<String, Tensor>,
    /// How it was trained.
    pub recipe: EvaluatorRecipe,
}

impl Evaluator {
    /// The evaluator for `recipe` from `dir`, training it (and writing it there) if the cache
    /// has no copy. `progress(step, steps, loss)` reports training.
    pub fn cached(
        dir: &Path,
        recipe: EvaluatorRecipe,
        progress: &mut dyn FnMut(u64, u64, f64),
    ) -> Result<Evaluator, TrainError> {
        let path = Self::cache_path(dir, &recipe);
        if path.exists() {
            return Self::load(&path, recipe);
        }
        std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
        let evaluator = Self::train(recipe, progress)?;
        let refs: Vec<(&str, &Tensor)> = evaluator
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        // The build, not the time: two trainings of one recipe by one build give identical files.
        let meta = serde_json::json!({
            "recipe": recipe,
            "build": Build::current(),
            "code": Code::Training.identity(),
        })
        .to_string();
        write_safetensors(
            &path,
            &refs,
            HashMap::from([("unetlab.evaluator".into(), meta)]),
        )?;
        Ok(evaluator)
    }

    /// Where [`Evaluator::cached`] keeps the weights for `recipe`.
    pub fn cache_path(dir: &Path, recipe: &EvaluatorRecipe) -> PathBuf {
        dir.join(format!("evaluator-{}.safetensors", &recipe.hash()[..16]))
    }

    fn load(path: &Path, recipe: EvaluatorRecipe) -> Result<Evaluator, TrainError> {
        let params = candle_core::safetensors::load(path, &Device::Cpu)?;
        let expected = parameter_shapes();
        let bad = |message: String| TrainError::Run {
            run: path.to_path_buf(),
            message,
        };
        if params.len() != expected.len() {
            return Err(bad(format!(
                "holds {} tensors, the evaluator has {}; delete it to retrain",
                params.len(),
                expected.len()
            )));
        }
        for (name, shape) in &expected {
            match params.get(name) {
                Some(t) if t.dims() == shape.as_slice() => {}
                _ => return Err(bad(format!("`{name}` is missing or mis-shaped"))),
            }
        }
        Ok(Evaluator {
            params: params.into_iter().collect(),
            recipe,
        })
    }

    /// Trains a fresh evaluator (deterministic for a recipe).
    pub fn train(
        recipe: EvaluatorRecipe,
        progress: &mut dyn FnMut(u64, u64, f64),
    ) -> Result<Evaluator, TrainError> {
        let device = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(recipe.seed);
        let mut vars = BTreeMap::new();
        for (name, shape) in parameter_shapes() {
            let fan_in: usize = shape.iter().skip(1).product();
            let count: usize = shape.iter().product();
            let tensor = if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, &device)?
            } else {
                let std = (2.0 / fan_in as f64).sqrt();
                (Tensor::from_vec(standard_normal(&mut rng, count), shape.as_slice(), &device)?
                    * std)?
            };
            vars.insert(name, Var::from_tensor(&tensor)?);
        }
        let named = || vars.iter().map(|(k, v)| (k.as_str(), v));
        let config = AdamWConfig {
            lr: recipe.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut adam = AdamW::new(config, named())?;
        let shapes = Shapes::new(recipe.image_size, recipe.seed);
        for step in 0..recipe.steps {
            let first = step * recipe.batch as u64;
            let examples: Vec<_> = (first..first + recipe.batch as u64)
                .map(|i| shapes.train(i))
                .collect();
            let images = image_batch(&examples, recipe.image_size)?;
            let count = images.elem_count();
            let noise =
                Tensor::from_vec(standard_normal(&mut rng, count), images.shape(), &device)?;
            let images = (images + (noise * recipe.noise)?)?;
            let scenes: Vec<&Scene> = examples.iter().filter_map(|e| e.scene.as_ref()).collect();
            let params: BTreeMap<String, Tensor> = vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect();
            let (_, logits) = forward(&params, &images)?;
            let loss = label_loss(&logits, &scenes)?;
            let value = loss.to_scalar::<f32>()? as f64;
            let grads = loss.backward()?;
            let (grads, _) = collect_grads(&grads, named())?;
            adam.update(named(), &grads, recipe.lr, 1.0)?;
            progress(step + 1, recipe.steps, value);
        }
        Ok(Evaluator {
            params: vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                .collect(),
            recipe,
        })
    }

    /// Features `[N, FEATURES]` and predicted attributes of images `[N, 3, S, S]` in [-1, 1],
    /// evaluated in chunks of 256.
    pub fn read(&self, images: &Tensor) -> Result<(Tensor, Vec<Attributes>), TrainError> {
        let n = images.dim(0)?;
        let mut features = Vec::new();
        let mut attributes = Vec::with_capacity(n);
        for start in (0..n).step_by(256) {
            let chunk = images.narrow(0, start, 256.min(n - start))?;
            let (f, logits) = forward(&self.params, &chunk.to_dtype(DType::F32)?)?;
            features.push(f);
            attributes.extend(decode(&logits)?);
        }
        Ok((Tensor::cat(&features, 0)?, attributes))
    }

    /// Accuracy on the first `n` validation images of `shapes` (never seen in training: the
    /// validation split has its own seed).
    pub fn accuracy(&self, n: usize) -> Result<Accuracy, TrainError> {
        let (examples, images) = validation_batch(self.recipe.image_size, 0..n as u64)?;
        let (_, predicted) = self.read(&images)?;
        let truth: Vec<Attributes> = examples.iter().map(Attributes::of_example).collect();
        let (attribute, exact) = agreement_rates(&truth, &predicted);
        Ok(Accuracy {
            attribute,
            exact,
            images: n,
        })
    }
}

/// `(fraction of stated attributes found, fraction of images with every attribute right)` of
/// `predicted` against `truth`, pairwise (see [`Attributes::agreement`]).
pub fn agreement_rates(truth: &[Attributes], predicted: &[Attributes]) -> (f64, f64) {
    let (mut hits, mut total, mut exact) = (0, 0, 0);
    for (t, p) in truth.iter().zip(predicted) {
        let (h, n) = t.agreement(p);
        hits += h;
        total += n;
        exact += usize::from(h == n);
    }
    (
        hits as f64 / total.max(1) as f64,
        exact as f64 / predicted.len().max(1) as f64,
    )
}

/// Validation examples `range` of `shapes` at `size` (the split does not depend on the training
/// seed), with their images as one batch `[N, 3, S, S]`.
pub fn validation_batch(
    size: usize,
    range: std::ops::Range<u64>,
) -> Result<(Vec<Example>, Tensor), TrainError> {
    let shapes = Shapes::new(size, 0);
    let examples: Vec<Example> = range.map(|i| shapes.validation(i)).collect();
    let images = image_batch(&examples, size)?;
    Ok((examples, images))
}

/// The default evaluator cache: `$UNETLAB_CACHE`, else `$XDG_CACHE_HOME/unetlab`, else
/// `~/.cache/unetlab`, else `.unetlab-cache`.
pub fn default_cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("UNETLAB_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("unetlab")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("unetlab")))
        .unwrap_or_else(|| PathBuf::from(".unetlab-cache"))
}

/// The examples' CHW images as one batch `[N, 3, S, S]`.
fn image_batch(examples: &[Example], size: usize) -> Result<Tensor, TrainError> {
    let data: Vec<f32> = examples
        .iter()
        .flat_map(|e| e.image.iter().copied())
        .collect();
    Ok(Tensor::from_vec(
        data,
        (examples.len(), 3, size, size),
        &Device::Cpu,
    )?)
}

fn parameter_shapes() -> Vec<(String, Vec<usize>)> {
    let mut shapes = Vec::new();
    for (k, (cin, cout, _)) in CONVS.iter().enumerate() {
        shapes.push((format!("conv{k}.weight"), vec![*cout, *cin, 3, 3]));
        shapes.push((format!("conv{k}.bias"), vec![*cout]));
    }
    let flat = CONVS[CONVS.len() - 1].1 * 16;
    shapes.push(("features.weight".into(), vec![FEATURES, flat]));
    shapes.push(("features.bias".into(), vec![FEATURES]));
    let logits: usize = HEADS.iter().map(|(_, n)| n).sum();
    shapes.push(("heads.weight".into(), vec![logits, FEATURES]));
    shapes.push(("heads.bias".into(), vec![logits]));
    shapes
}

/// `(features, logits)` of images `[N, 3, 32, 32]`.
fn forward(p: &BTreeMap<String, Tensor>, images: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let mut x = images.clone();
    for (k, (_, cout, stride)) in CONVS.iter().enumerate() {
        let w = &p[&format!("conv{k}.weight")];
        let b = p[&format!("conv{k}.bias")].reshape((1, *cout, 1, 1))?;
        x = x.conv2d(w, 1, *stride, 1, 1)?.broadcast_add(&b)?.relu()?;
    }
    let x = x.flatten_from(1)?;
    let linear = |x: &Tensor, name: &str| {
        x.matmul(&p[&format!("{name}.weight")].t()?)?
            .broadcast_add(&p[&format!("{name}.bias")])
    };
    let features = linear(&x, "features")?.relu()?;
    let logits = linear(&features, "heads")?;
    Ok((features, logits))
}

/// Each head's logits `[N, classes]`, in [`HEADS`] order.
fn split_heads(logits: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let mut start = 0;
    HEADS
        .iter()
        .map(|(_, n)| {
            let head = logits.narrow(1, start, *n);
            start += n;
            head
        })
        .collect()
}

fn index<T: PartialEq>(items: &[T], x: T) -> Option<u32> {
    items.iter().position(|y| *y == x).map(|i| i as u32)
}

/// Per-head targets for a scene: `None` where the head does not apply.
fn targets(scene: &Scene) -> [Option<u32>; 8] {
    let a = Attributes::of(scene);
    let object = |k: usize| {
        a.objects.get(k).map(|(s, c, z)| {
            (
                index(Shape::ALL, *s),
                index(Colour::ALL, *c),
                index(Size::ALL, *z),
            )
        })
    };
    let (s0, c0, z0) = object(0).unwrap_or_default();
    let (s1, c1, z1) = object(1).unwrap_or_default();
    let relation = a.relation.map(|r| u32::from(r == Relation::Above));
    [
        Some(a.objects.len() as u32 - 1),
        relation,
        s0,
        c0,
        z0,
        s1,
        c1,
        z1,
    ]
}

/// Mean cross-entropy over every head that applies to each image.
fn label_loss(logits: &Tensor, scenes: &[&Scene]) -> candle_core::Result<Tensor> {
    let device = logits.device();
    let labels: Vec<[Option<u32>; 8]> = scenes.iter().map(|s| targets(s)).collect();
    let mut total: Option<Tensor> = None;
    let mut terms = 0usize;
    for (h, head) in split_heads(logits)?.into_iter().enumerate() {
        let index: Vec<u32> = labels.iter().map(|l| l[h].unwrap_or(0)).collect();
        let mask: Vec<f32> = labels
            .iter()
            .map(|l| f32::from(l[h].is_some() as u8))
            .collect();
        terms += mask.iter().filter(|m| **m > 0.0).count();
        let log_p = head.broadcast_sub(&head.log_sum_exp(D::Minus1)?.unsqueeze(1)?)?;
        let picked = log_p
            .gather(&Tensor::new(index, device)?.unsqueeze(1)?, 1)?
            .squeeze(1)?;
        let nll = (picked * Tensor::new(mask, device)?)?.sum_all()?.neg()?;
        total = Some(match total {
            Some(t) => (t + nll)?,
            None => nll,
        });
    }
    total.expect("at least one head") / terms.max(1) as f64
}

/// Predicted attributes from logits.
fn decode(logits: &Tensor) -> Result<Vec<Attributes>, TrainError> {
    let heads: Vec<Vec<u32>> = split_heads(logits)?
        .iter()
        .map(|h| h.argmax(1)?.to_vec1::<u32>())
        .collect::<candle_core::Result<_>>()?;
    let n = logits.dim(0)?;
    Ok((0..n)
        .map(|i| {
            let object = |k: usize| {
                (
                    Shape::ALL[heads[2 + 3 * k][i] as usize],
                    Colour::ALL[heads[3 + 3 * k][i] as usize],
                    Size::ALL[heads[4 + 3 * k][i] as usize],
                )
            };
            if heads[0][i] == 0 {
                Attributes {
                    objects: vec![object(0)],
                    relation: None,
                }
            } else {
                let relation = [Relation::LeftOf, Relation::Above][heads[1][i] as usize];
                Attributes {
                    objects: vec![object(0), object(1)],
                    relation: Some(relation),
                }
            }
        })
        .collect())
}
