//! Search files (`searches/*.yaml`): a base config, axes over its fields, constraints,
//! objectives, a strategy, and the latency and quality stages. `searches/README.md` documents the
//! format; every error names its field path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::{Mapping, Value};
use unetlab_spec::{ConfigTree, FieldError};

use crate::metric::Metric;
use crate::space::{Axis, AxisOption, Space};
use crate::SearchError;

/// A search file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchFileText {
    name: Option<String>,
    description: Option<String>,
    base: String,
    #[serde(default)]
    count: CountText,
    axes: Vec<AxisText>,
    #[serde(default)]
    constraints: BTreeMap<Metric, Bound>,
    objectives: ObjectivesText,
    #[serde(default)]
    strategy: Strategy,
    latency: Option<LatencySettings>,
    quality: Option<QualityStage>,
    #[serde(default)]
    compare: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountText {
    latent_size: Option<usize>,
    tokens: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AxisText {
    name: Option<String>,
    path: Option<String>,
    values: Option<Vec<Value>>,
    choices: Option<Mapping>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectivesText {
    #[serde(default)]
    minimize: Vec<Metric>,
    #[serde(default)]
    maximize: Vec<Metric>,
    /// Metrics to bring close to a target (relative distance minimised).
    #[serde(default)]
    near: BTreeMap<Metric, f64>,
}

/// Limits on one metric: `min`, `max`, or `near` a value `within` a relative tolerance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    /// Smallest allowed value.
    pub min: Option<f64>,
    /// Largest allowed value.
    pub max: Option<f64>,
    /// Target value (with `within`).
    pub near: Option<f64>,
    /// Relative tolerance around `near` (0.02 = ±2 %).
    pub within: Option<f64>,
    /// The largest allowed value is this reference config's (the base or a `compare` config, by
    /// name): its measured latency, or its count. Resolved once the references are measured.
    pub max_of: Option<String>,
    /// The smallest allowed value is this reference config's.
    pub min_of: Option<String>,
}

impl Bound {
    /// The allowed interval.
    pub fn interval(&self) -> (f64, f64) {
        match (self.near, self.within) {
            (Some(n), Some(w)) => (n * (1.0 - w), n * (1.0 + w)),
            _ => (
                self.min.unwrap_or(f64::NEG_INFINITY),
                self.max.unwrap_or(f64::INFINITY),
            ),
        }
    }

    /// How far `value` lies outside the interval, relative to the bound's scale (0 inside).
    pub fn violation(&self, value: f64) -> f64 {
        let (lo, hi) = self.interval();
        let scale = |b: f64| b.abs().max(1e-12);
        if value < lo {
            (lo - value) / scale(lo)
        } else if value > hi {
            (value - hi) / scale(hi)
        } else {
            0.0
        }
    }

    fn check(&self, path: &str, references: &[String], errors: &mut Vec<FieldError>) {
        for (field, name, plain) in [
            ("max_of", &self.max_of, self.max),
            ("min_of", &self.min_of, self.min),
        ] {
            let Some(name) = name else { continue };
            if plain.is_some() || self.near.is_some() {
                errors.push(FieldError::new(
                    format!("{path}.{field}"),
                    "give the limit once: a number or a reference",
                ));
            }
            if !references.contains(name) {
                errors.push(FieldError::new(
                    format!("{path}.{field}"),
                    format!(
                        "{name} is not the base or a compare config (those are: {})",
                        references.join(", ")
                    ),
                ));
            }
        }
        if self.max_of.is_some() || self.min_of.is_some() {
            return;
        }
        let ranged = self.min.is_some() || self.max.is_some();
        match (self.near, self.within) {
            (Some(_), Some(w)) if !ranged && (0.0..1.0).contains(&w) => {}
            (Some(_), Some(_)) if ranged => errors.push(FieldError::new(
                path,
                "give either near + within or min/max, not both",
            )),
            (Some(_), Some(w)) => errors.push(FieldError::new(
                format!("{path}.within"),
                format!("{w} is not a fraction in [0, 1)"),
            )),
            (Some(_), None) => errors.push(FieldError::new(path, "near needs within (e.g. 0.02)")),
            (None, Some(_)) => errors.push(FieldError::new(path, "within needs near")),
            (None, None) if !ranged => {
                errors.push(FieldError::new(path, "give min, max, or near + within"))
            }
            (None, None) => {
                if let (Some(lo), Some(hi)) = (self.min, self.max) {
                    if lo > hi {
                        errors.push(FieldError::new(path, format!("min {lo} > max {hi}")));
                    }
                }
            }
        }
    }
}

/// How candidates are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Every combination of the axes' values (refused above [`MAX_EXHAUSTIVE`]).
    #[default]
    Exhaustive,
    /// `samples` distinct combinations drawn uniformly with a seeded ChaCha8 stream.
    Random {
        /// How many.
        samples: usize,
        /// Stream seed.
        #[serde(default)]
        seed: u64,
    },
    /// NSGA-II (Deb et al. 2002): a population evolved by tournament selection on (front rank,
    /// crowding distance), uniform crossover and per-axis mutation, with constrained domination.
    Evolutionary {
        /// Population size (even, at least 4).
        population: usize,
        /// Generations after the initial population.
        generations: usize,
        /// Stream seed.
        #[serde(default)]
        seed: u64,
    },
}

/// Largest space `exhaustive` walks, and most genomes any strategy evaluates in one walk.
pub const MAX_EXHAUSTIVE: u128 = 2_000_000;

/// Where and how latency is measured for the per-block table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySettings {
    /// Device (`cpu`, `cuda:0`).
    #[serde(default = "default_device")]
    pub device: String,
    /// Dtype (`f32`, `f16`, `bf16`).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Most configs measured to build the table (the base and `compare` configs among them).
    #[serde(default = "default_probes")]
    pub probes: usize,
    /// Configs the table did not see, measured whole to check the predictor.
    #[serde(default = "default_check")]
    pub check: usize,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}
fn default_probes() -> usize {
    12
}
fn default_check() -> usize {
    20
}

/// Successive halving over the front: proxy-train `candidates`, keep the best `keep` fraction
/// by `metric` at each rung, and double the training budget for the next.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityStage {
    /// Candidates trained at the first rung.
    pub candidates: usize,
    /// Rungs (the last trains at the budget's full recipe).
    #[serde(default = "default_rungs")]
    pub rungs: usize,
    /// Fraction promoted from one rung to the next.
    #[serde(default = "default_keep")]
    pub keep: f64,
    /// What promotion ranks by.
    #[serde(default = "default_quality_metric")]
    pub metric: Metric,
    /// Seeds at the last rung, for the spread that judges differences (default: the budget's,
    /// as `ablate`: 1 for smoke, 2 for quick, 3 for full).
    pub seeds: Option<u64>,
}

fn default_rungs() -> usize {
    3
}
fn default_keep() -> f64 {
    0.5
}
fn default_quality_metric() -> Metric {
    Metric::Fd
}

/// What an objective wants of its metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Smaller is better.
    Minimize,
    /// Larger is better.
    Maximize,
    /// Closer to the target is better (relative distance |v − t| / |t|).
    Near(f64),
}

/// One objective: a metric and its goal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    /// What.
    pub metric: Metric,
    /// Which way is better.
    pub goal: Goal,
}

impl Objective {
    /// The value to minimise.
    pub fn oriented(&self, value: f64) -> f64 {
        match self.goal {
            Goal::Minimize => value,
            Goal::Maximize => -value,
            Goal::Near(t) => (value - t).abs() / t.abs().max(1e-12),
        }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.goal {
            Goal::Minimize => write!(f, "minimize {}", self.metric),
            Goal::Maximize => write!(f, "maximize {}", self.metric),
            Goal::Near(t) => write!(f, "{} near {t}", self.metric),
        }
    }
}

/// A loaded, checked search file.
#[derive(Debug, Clone)]
pub struct SearchFile {
    /// Name (the output folder `results/<name>`): the file's `name`, else its stem.
    pub name: String,
    /// What the search asks.
    pub description: Option<String>,
    /// The file it came from.
    pub origin: PathBuf,
    /// The design space.
    pub space: Space,
    /// Counting conditions: latent size (default: the base config's) and tokens.
    pub latent_size: usize,
    /// Text tokens counted with (default: the base config's).
    pub tokens: usize,
    /// Limits a feasible candidate meets, in metric order.
    pub constraints: Vec<(Metric, Bound)>,
    /// What the front trades off.
    pub objectives: Vec<Objective>,
    /// How candidates are chosen.
    pub strategy: Strategy,
    /// The latency table's settings (needed when a constraint or objective uses latency).
    pub latency: Option<LatencySettings>,
    /// The quality stage, if any.
    pub quality: Option<QualityStage>,
    /// Config references placed beside the candidates (measured and trained like them).
    pub compare: Vec<String>,
}

impl SearchFile {
    /// Reads and checks a search file.
    pub fn load(path: &Path) -> Result<SearchFile, SearchError> {
        let text = std::fs::read_to_string(path).map_err(|source| SearchError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks search-file text; `path` names it in errors and anchors relative
    /// config references.
    pub fn parse(text: &str, path: &Path) -> Result<SearchFile, SearchError> {
        let invalid = |errors: Vec<FieldError>| SearchError::Invalid {
            origin: path.display().to_string(),
            errors,
        };
        let value: Value = serde_norway::from_str(text)
            .map_err(|e| invalid(vec![FieldError::new("", format!("invalid YAML: {e}"))]))?;
        let file: SearchFileText = serde_path_to_error::deserialize(value).map_err(|e| {
            let p = e.path().to_string();
            let p = if p == "." { String::new() } else { p };
            invalid(vec![FieldError::new(p, e.into_inner().to_string())])
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let base = ConfigTree::load(&config_reference(&file.base, dir))
            .map_err(|e| invalid(vec![FieldError::new("base", e.to_string())]))?;
        let base_config = unetlab_spec::Config::from_tree(base.clone())
            .map_err(|e| invalid(vec![FieldError::new("base", e.to_string())]))?;

        let mut errors = Vec::new();
        let axes = axes(&file.axes, &base, &mut errors);
        let objectives = objectives(&file.objectives, &mut errors);
        let mut reference_names = vec![base_config.name.clone()];
        let compare: Vec<String> = file
            .compare
            .iter()
            .map(|r| config_reference(r, dir))
            .collect();
        for (i, r) in compare.iter().enumerate() {
            match unetlab_spec::Config::load(r) {
                Ok(c) => reference_names.push(c.name),
                Err(e) => errors.push(FieldError::new(format!("compare[{i}]"), e.to_string())),
            }
        }
        for (m, b) in &file.constraints {
            b.check(&format!("constraints.{m}"), &reference_names, &mut errors);
            if b.max_of.is_some() || b.min_of.is_some() {
                if m.needs_training() {
                    errors.push(FieldError::new(
                        format!("constraints.{m}"),
                        "a quality limit cannot come from a reference (it is known only after training)",
                    ));
                } else if *m == Metric::LatencyS && file.latency.is_none() {
                    errors.push(FieldError::new(
                        format!("constraints.{m}"),
                        "a reference's latency needs a latency section",
                    ));
                }
            }
        }
        let used: Vec<Metric> = objectives
            .iter()
            .map(|o| o.metric)
            .chain(file.constraints.keys().copied())
            .collect();
        if used.contains(&Metric::LatencyS) && file.latency.is_none() {
            errors.push(FieldError::new(
                "latency",
                "latency_s is constrained or optimised: say where it is measured \
                 (latency: {device: cpu, dtype: f32})",
            ));
        }
        if let Some(m) = used.iter().find(|m| m.needs_training()) {
            if file.quality.is_none() {
                errors.push(FieldError::new(
                    "quality",
                    format!("{m} needs trained proxies: add a quality stage"),
                ));
            }
        }
        check_strategy(&file.strategy, &axes, &mut errors);
        check_stages(&file, &mut errors);
        if !errors.is_empty() {
            return Err(invalid(errors));
        }
        let name = file.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "search".into(), |s| s.to_string_lossy().into_owned())
        });
        Ok(SearchFile {
            name,
            description: file.description,
            origin: path.to_path_buf(),
            space: Space { base, axes },
            latent_size: file
                .count
                .latent_size
                .unwrap_or(base_config.spec.latent_size),
            tokens: file.count.tokens.unwrap_or(base_config.spec.text_tokens),
            constraints: file.constraints.into_iter().collect(),
            objectives,
            strategy: file.strategy,
            latency: file.latency,
            quality: file.quality,
            compare,
        })
    }

    /// Replaces every `max_of` / `min_of` limit by the named reference's value of the metric
    /// (`value(name, metric)`); fails if a value is unknown.
    pub fn resolve_limits(
        &mut self,
        value: impl Fn(&str, Metric) -> Option<f64>,
    ) -> Result<(), String> {
        for (m, b) in &mut self.constraints {
            if let Some(name) = b.max_of.take() {
                b.max = Some(value(&name, *m).ok_or(format!("{m} of {name} is not known"))?);
            }
            if let Some(name) = b.min_of.take() {
                b.min = Some(value(&name, *m).ok_or(format!("{m} of {name} is not known"))?);
            }
        }
        Ok(())
    }

    /// The objectives the structural stage optimises: those that need no training.
    pub fn cost_objectives(&self) -> Vec<Objective> {
        self.objectives
            .iter()
            .copied()
            .filter(|o| !o.metric.needs_training())
            .collect()
    }

    /// Counts `config` under the search's conditions (batch 1, its latent size), at the config's
    /// own token count.
    pub fn count(
        &self,
        config: &unetlab_spec::Config,
    ) -> Result<unetlab_cost::CostReport, unetlab_cost::CostError> {
        unetlab_cost::count(
            &config.spec,
            unetlab_cost::Conditions {
                batch: 1,
                latent_size: self.latent_size,
                tokens: config.spec.text_tokens,
            },
        )
    }

    /// Whether latency must be predicted (a constraint or objective uses it).
    pub fn needs_latency(&self) -> bool {
        self.objectives.iter().any(|o| o.metric == Metric::LatencyS)
            || self.constraints.iter().any(|(m, _)| *m == Metric::LatencyS)
    }
}

/// A config reference relative to the search file's folder when that names a file, else as
/// given (a preset name or a path from the working directory).
fn config_reference(reference: &str, dir: &Path) -> String {
    let local = dir.join(reference);
    if local.is_file() {
        local.display().to_string()
    } else {
        reference.to_string()
    }
}

fn axes(texts: &[AxisText], base: &ConfigTree, errors: &mut Vec<FieldError>) -> Vec<Axis> {
    if texts.is_empty() {
        errors.push(FieldError::new("axes", "a search needs at least one axis"));
    }
    let mut out = Vec::new();
    for (i, a) in texts.iter().enumerate() {
        let at = format!("axes[{i}]");
        let options = match (&a.path, &a.values, &a.choices) {
            (Some(path), Some(values), None) => values
                .iter()
                .map(|v| AxisOption {
                    label: label(v),
                    patch: vec![(path.clone(), v.clone())],
                })
                .collect(),
            (None, None, Some(choices)) => choices
                .iter()
                .filter_map(|(k, v)| {
                    let label = label(k);
                    let Value::Mapping(fields) = v else {
                        errors.push(FieldError::new(
                            format!("{at}.choices.{label}"),
                            "a choice is a mapping of field paths to values",
                        ));
                        return None;
                    };
                    let patch = fields
                        .iter()
                        .filter_map(|(p, v)| match p {
                            Value::String(p) => Some((p.clone(), v.clone())),
                            _ => {
                                errors.push(FieldError::new(
                                    format!("{at}.choices.{label}"),
                                    "keys are field paths (strings)",
                                ));
                                None
                            }
                        })
                        .collect();
                    Some(AxisOption { label, patch })
                })
                .collect(),
            _ => {
                errors.push(FieldError::new(
                    &at,
                    "give `path` with `values`, or `choices` (label: {field.path: value, ...})",
                ));
                continue;
            }
        };
        let options: Vec<AxisOption> = options;
        if options.is_empty() {
            errors.push(FieldError::new(&at, "no values"));
            continue;
        }
        for (j, option) in options.iter().enumerate() {
            let mut tree = base.clone();
            for (path, value) in &option.patch {
                if let Err(e) = tree.set(path, value.clone()) {
                    errors.push(FieldError::new(format!("{at} option {j}"), e.to_string()));
                }
            }
            if let Err(e) = tree.check_types() {
                let detail = e
                    .field_errors()
                    .first()
                    .map_or_else(|| e.to_string(), |f| f.to_string());
                errors.push(FieldError::new(
                    format!("{at} option {j} ({})", option.label),
                    format!("not a field of a config: {detail}"),
                ));
            }
        }
        let name = a.name.clone().or_else(|| a.path.clone()).unwrap_or(at);
        out.push(Axis { name, options });
    }
    out
}

/// A value as a short label (`separable`, `15`, `[1, 0]`).
fn label(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other)
            .unwrap_or_default()
            .replace(',', ", "),
    }
}

fn objectives(text: &ObjectivesText, errors: &mut Vec<FieldError>) -> Vec<Objective> {
    let out: Vec<Objective> = text
        .minimize
        .iter()
        .map(|&metric| Objective {
            metric,
            goal: Goal::Minimize,
        })
        .chain(text.maximize.iter().map(|&metric| Objective {
            metric,
            goal: Goal::Maximize,
        }))
        .chain(text.near.iter().map(|(&metric, &t)| Objective {
            metric,
            goal: Goal::Near(t),
        }))
        .collect();
    if out.is_empty() {
        errors.push(FieldError::new(
            "objectives",
            "name at least one metric to minimize, maximize or bring near a target",
        ));
    }
    for (m, t) in &text.near {
        if *t == 0.0 || !t.is_finite() {
            errors.push(FieldError::new(
                format!("objectives.near.{m}"),
                format!("{t}: the target must be finite and non-zero"),
            ));
        }
    }
    for (i, o) in out.iter().enumerate() {
        if out[..i].iter().any(|p| p.metric == o.metric) {
            errors.push(FieldError::new(
                "objectives",
                format!("{} is named twice", o.metric),
            ));
        }
    }
    out
}

fn check_strategy(strategy: &Strategy, axes: &[Axis], errors: &mut Vec<FieldError>) {
    let size = Space::size_of(axes);
    match *strategy {
        Strategy::Exhaustive if size > MAX_EXHAUSTIVE => errors.push(FieldError::new(
            "strategy",
            format!(
                "the space has {size} combinations, more than exhaustive walks \
                 ({MAX_EXHAUSTIVE}): use random or evolutionary"
            ),
        )),
        Strategy::Random { samples: 0, .. } => {
            errors.push(FieldError::new("strategy.samples", "must be at least 1"))
        }
        Strategy::Random { samples, .. } if samples as u128 > MAX_EXHAUSTIVE => {
            errors.push(FieldError::new(
                "strategy.samples",
                format!("{samples}: at most {MAX_EXHAUSTIVE} per walk"),
            ))
        }
        Strategy::Evolutionary {
            population,
            generations,
            ..
        } => {
            if population < 4 || population % 2 == 1 {
                errors.push(FieldError::new(
                    "strategy.population",
                    format!("{population}: must be even and at least 4"),
                ));
            }
            if generations == 0 {
                errors.push(FieldError::new(
                    "strategy.generations",
                    "must be at least 1",
                ));
            }
            let evaluations = (population as u128).saturating_mul(generations as u128 + 1);
            if evaluations > MAX_EXHAUSTIVE {
                errors.push(FieldError::new(
                    "strategy",
                    format!(
                        "population × (generations + 1) = {evaluations}: at most {MAX_EXHAUSTIVE} \
                         per walk"
                    ),
                ));
            }
        }
        _ => {}
    }
}

fn check_stages(file: &SearchFileText, errors: &mut Vec<FieldError>) {
    if let Some(l) = &file.latency {
        if l.probes == 0 {
            errors.push(FieldError::new("latency.probes", "must be at least 1"));
        }
    }
    if let Some(q) = &file.quality {
        if q.candidates == 0 {
            errors.push(FieldError::new("quality.candidates", "must be at least 1"));
        }
        if q.rungs == 0 {
            errors.push(FieldError::new("quality.rungs", "must be at least 1"));
        }
        if q.seeds == Some(0) {
            errors.push(FieldError::new("quality.seeds", "must be at least 1"));
        }
        if !(q.keep > 0.0 && q.keep < 1.0) {
            errors.push(FieldError::new(
                "quality.keep",
                format!("{}: a fraction in (0, 1)", q.keep),
            ));
        }
        if !q.metric.needs_training() {
            errors.push(FieldError::new(
                "quality.metric",
                format!(
                    "{}: rank by a quality metric (fd, validation_loss, ...)",
                    q.metric
                ),
            ));
        }
    }
}
