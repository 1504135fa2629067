//! Bad search files: every error names the field path where the problem is.

use std::path::{Path, PathBuf};

use unetlab_search::{Goal, Metric, SearchError, SearchFile, Strategy};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn with(body: &str) -> String {
    format!(
        "base: {}\n{body}",
        workspace()
            .join("configs/fixtures/every-choice.yaml")
            .display()
    )
}

const AXES: &str = "axes:\n  - path: unet.levels.1.channels\n    values: [16, 24]\n";
const OBJECTIVES: &str = "objectives: {minimize: [params]}\n";

fn errors(text: &str) -> Vec<String> {
    match SearchFile::parse(text, Path::new("bad.yaml")) {
        Err(SearchError::Invalid { origin, errors }) => {
            assert_eq!(origin, "bad.yaml");
            errors.iter().map(|e| e.to_string()).collect()
        }
        Err(e) => panic!("expected field errors, got {e}"),
        Ok(_) => panic!("accepted:\n{text}"),
    }
}

fn assert_error(text: &str, path: &str, words: &str) {
    let errors = errors(text);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(path) && e.contains(words)),
        "wanted `{path}: ...{words}...`, got {errors:?}"
    );
}

#[test]
fn a_good_file_loads_with_its_defaults() {
    let file = SearchFile::parse(
        &with(&format!(
            "{AXES}objectives: {{minimize: [latency_s], near: {{params: 1.0e5}}}}\n\
             latency: {{}}\nconstraints: {{params: {{near: 1.0e5, within: 0.5}}}}\n"
        )),
        Path::new("searches/good.yaml"),
    )
    .unwrap();
    assert_eq!(file.name, "good");
    assert_eq!(file.strategy, Strategy::Exhaustive);
    assert_eq!(file.latent_size, 8, "every-choice's own latent size");
    assert_eq!(file.tokens, 5);
    assert_eq!(file.space.size(), 2);
    assert_eq!(file.objectives[1].goal, Goal::Near(1.0e5));
    assert_eq!(file.objectives[1].oriented(1.5e5), 0.5);
    let latency = file.latency.as_ref().unwrap();
    assert_eq!(
        (latency.device.as_str(), latency.dtype.as_str()),
        ("cpu", "f32")
    );
    assert_eq!((latency.probes, latency.check), (12, 20));
    let (metric, bound) = &file.constraints[0];
    assert_eq!(*metric, Metric::Params);
    assert_eq!(bound.interval(), (0.5e5, 1.5e5));
    assert!(file.needs_latency());
}

#[test]
fn syntax_types_and_unknown_fields() {
    assert_error("base: [", "", "invalid YAML");
    assert_error(
        &with(&format!("{AXES}{OBJECTIVES}strategie: {{}}\n")),
        "",
        "unknown field `strategie`",
    );
    assert_error(
        &with("axes:\n  - path: unet.levels.1.channels\n    valeus: [16]\n"),
        "axes[0]",
        "unknown field `valeus`",
    );
    assert_error(
        &with(&format!("{AXES}objectives: {{minimize: [speed]}}\n")),
        "objectives.minimize[0]",
        "unknown variant `speed`",
    );
    assert_error(
        &with(&format!(
            "{AXES}{OBJECTIVES}strategy: {{kind: annealing}}\n"
        )),
        "strategy",
        "annealing",
    );
    assert_error(
        "base: no-such-config\naxes: []\nobjectives: {}\n",
        "base",
        "neither a file nor a preset",
    );
}

#[test]
fn axes_must_name_fields_of_a_config() {
    assert_error(
        &with(&format!(
            "axes:\n  - path: unet.levels.1.channles\n    values: [16]\n{OBJECTIVES}"
        )),
        "axes[0] option 0 (16)",
        "unknown field `channles`",
    );
    assert_error(
        &with(&format!(
            "axes:\n  - path: unet.levels.7.channels\n    values: [16]\n{OBJECTIVES}"
        )),
        "axes[0] option 0",
        "index out of range",
    );
    assert_error(
        &with(&format!(
            "axes:\n  - path: unet.levels.1.channels\n    values: [wide]\n{OBJECTIVES}"
        )),
        "axes[0] option 0 (wide)",
        "invalid type",
    );
    assert_error(
        &with(&format!("axes: []\n{OBJECTIVES}")),
        "axes",
        "at least one axis",
    );
    assert_error(
        &with(&format!(
            "axes:\n  - path: unet.levels.1.channels\n{OBJECTIVES}"
        )),
        "axes[0]",
        "give `path` with `values`",
    );
    assert_error(
        &with(&format!(
            "axes:\n  - path: unet.levels.1.channels\n    values: []\n{OBJECTIVES}"
        )),
        "axes[0]",
        "no values",
    );
    assert_error(
        &with(&format!("axes:\n  - choices: {{a: 3}}\n{OBJECTIVES}")),
        "axes[0].choices.a",
        "mapping of field paths",
    );
}

#[test]
fn constraints_objectives_and_stages_are_checked() {
    assert_error(
        &with(&format!("{AXES}objectives: {{}}\n")),
        "objectives",
        "at least one metric",
    );
    assert_error(
        &with(&format!(
            "{AXES}objectives: {{minimize: [params], maximize: [params]}}\n"
        )),
        "objectives",
        "named twice",
    );
    assert_error(
        &with(&format!(
            "{AXES}{OBJECTIVES}constraints: {{params: {{near: 1.0}}}}\n"
        )),
        "constraints.params",
        "near needs within",
    );
    assert_error(
        &with(&format!(
            "{AXES}{OBJECTIVES}constraints: {{params: {{min: 3, max: 2}}}}\n"
        )),
        "constraints.params",
        "min 3 > max 2",
    );
    assert_error(
        &with(&format!(
            "{AXES}{OBJECTIVES}constraints: {{params: {{}}}}\n"
        )),
        "constraints.params",
        "give min, max, or near + within",
    );
    assert_error(
        &with(&format!(
            "{AXES}{OBJECTIVES}constraints: {{params: {{max_of: sd15}}}}\n"
        )),
        "constraints.params.max_of",
        "not the base or a compare config",
    );
    assert_error(
        &with(&format!("{AXES}objectives: {{minimize: [latency_s]}}\n")),
        "latency",
        "say where it is measured",
    );
    assert_error(
        &with(&format!("{AXES}objectives: {{minimize: [fd]}}\n")),
        "quality",
        "needs trained proxies",
    );
    assert_error(
        &with(&format!(
            "{AXES}objectives: {{minimize: [fd]}}\nquality: {{candidates: 2, keep: 1.5, metric: params}}\n"
        )),
        "quality.keep",
        "a fraction",
    );
    assert_error(
        &with(&format!(
            "{AXES}objectives: {{minimize: [fd]}}\nquality: {{candidates: 2, metric: params}}\n"
        )),
        "quality.metric",
        "rank by a quality metric",
    );
    assert_error(
        &with(&format!(
            "{AXES}{OBJECTIVES}strategy: {{kind: evolutionary, population: 5, generations: 0}}\n"
        )),
        "strategy.population",
        "even and at least 4",
    );
    assert_error(
        &with(&format!(
            "{AXES}{OBJECTIVES}strategy: {{kind: evolutionary, population: 6, generations: 0}}\n"
        )),
        "strategy.generations",
        "at least 1",
    );
    assert_error(
        &with(&format!(
            "{AXES}{OBJECTIVES}strategy: {{kind: random, samples: 1000000000}}\n"
        )),
        "strategy.samples",
        "at most",
    );
    assert_error(
        &with(&format!(
            "{AXES}{OBJECTIVES}strategy: {{kind: evolutionary, population: 100000, generations: 100}}\n"
        )),
        "strategy",
        "population × (generations + 1)",
    );
    // 2^22 combinations: too many to walk exhaustively.
    let many: String = (0..22)
        .map(|_| "  - path: unet.levels.1.channels\n    values: [16, 24]\n")
        .collect();
    assert_error(
        &with(&format!("axes:\n{many}{OBJECTIVES}")),
        "strategy",
        "use random or evolutionary",
    );
}

#[test]
fn a_reference_limit_resolves_to_its_value() {
    let mut file = SearchFile::parse(
        &with(&format!(
            "{AXES}{OBJECTIVES}constraints: {{params: {{max_of: every-choice}}}}\n"
        )),
        Path::new("ref.yaml"),
    )
    .unwrap();
    assert_eq!(file.constraints[0].1.interval().1, f64::INFINITY);
    let err = file.clone().resolve_limits(|_, _| None).unwrap_err();
    assert!(err.contains("params of every-choice"), "{err}");
    file.resolve_limits(|name, m| (name == "every-choice" && m == Metric::Params).then_some(7.0))
        .unwrap();
    assert_eq!(file.constraints[0].1.interval(), (f64::NEG_INFINITY, 7.0));
}
