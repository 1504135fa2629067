//! The paper's claims at a recipe's lengths: a claim group names experiments of several configs
//! trained the same way (seeds apart); each config's `paper.expect` quality entries are judged
//! against its baseline config in the group by the rule of [`crate::claims`], with the seed σ
//! pooled over the group's configs that have two or more experiments. Written as
//! `claims/<group>.{md,csv,parquet,png,svg}` and a README section per group.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use polars::prelude::{DataFrame, DataType};
use unetlab_report::{to_markdown, write_tables};
use unetlab_spec::{ClaimMetric, Config, PaperNote};

use super::{Experiment, Group};
use crate::claims::{self, is_quality, Measured, SectionText, Subject};

/// One config of a claim group: its final metrics, one value per experiment (seed) with a row.
struct ConfigRuns {
    config: Config,
    /// The experiments behind it, in the group's order.
    experiments: Vec<String>,
    /// Final values per quality metric, one per experiment with a row in the table.
    values: HashMap<ClaimMetric, Vec<f64>>,
}

impl Subject for ConfigRuns {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn paper(&self) -> Option<&PaperNote> {
        self.config.paper.as_ref()
    }

    /// Quality only: a recipe trains, and `ablate` counts and times.
    fn measures(&self, metric: ClaimMetric) -> bool {
        is_quality(metric)
    }

    fn seed_values(&self, metric: ClaimMetric) -> Option<Vec<f64>> {
        self.values.get(&metric).filter(|v| !v.is_empty()).cloned()
    }

    fn counted(&self, _: ClaimMetric) -> Option<Measured> {
        None
    }
}

/// How an experiment trains apart from its seed: what the experiments of a claim group must
/// share.
fn recipe_without_seed(e: &Experiment) -> String {
    let mut args = Vec::new();
    let mut rest = e.args.iter();
    while let Some(a) = rest.next() {
        if a == "--seed" {
            rest.next();
        } else if !a.starts_with("--seed=") {
            args.push(a.as_str());
        }
    }
    let parents: Vec<String> = e.parents().map(|(f, p)| format!("{f} {p}")).collect();
    format!(
        "{} x {} {} {}",
        e.steps,
        e.batch,
        args.join(" "),
        parents.join(" ")
    )
}

/// Checks the file's claim groups: every experiment in a group trains as the first one does
/// (steps, batch, arguments and parents, the seed aside), and its config loads.
pub fn check(file: &Path, groups: &[Group], experiments: &[Experiment]) -> Result<()> {
    for (i, g) in groups.iter().enumerate() {
        let members: Vec<&Experiment> = g
            .experiments
            .iter()
            .filter_map(|n| experiments.iter().find(|e| &e.name == n))
            .collect();
        let Some(first) = members.first() else {
            continue;
        };
        if let Some(other) = members
            .iter()
            .find(|e| recipe_without_seed(e) != recipe_without_seed(first))
        {
            bail!(
                "{}: claims[{i}] ({}): `{}` trains otherwise than `{}` ({} against {}); a claim group compares configs trained the same way, seeds apart",
                file.display(),
                g.name,
                other.name,
                first.name,
                recipe_without_seed(other).trim(),
                recipe_without_seed(first).trim()
            );
        }
        for e in &members {
            Config::load(&e.config).with_context(|| {
                format!(
                    "{}: claims[{i}] ({}): config of `{}`",
                    file.display(),
                    g.name,
                    e.name
                )
            })?;
        }
    }
    Ok(())
}

/// The group's configs with the final metrics of its experiments that have a row in `table`.
fn config_runs(
    group: &Group,
    experiments: &[Experiment],
    table: &DataFrame,
) -> Result<Vec<ConfigRuns>> {
    let names = table.column("experiment")?.str()?.clone();
    let number = |column: &str| -> Result<Vec<Option<f64>>> {
        let c = table.column(column)?.cast(&DataType::Float64)?;
        let c = c.f64()?;
        Ok((0..c.len()).map(|i| c.get(i)).collect())
    };
    let columns = [
        (ClaimMetric::Fd, number("FD")?),
        (ClaimMetric::ValidationLoss, number("validation loss")?),
        (
            ClaimMetric::AttributeAlignment,
            number("attribute alignment")?,
        ),
        (ClaimMetric::TextAlignment, number("text alignment")?),
    ];
    let mut out: Vec<ConfigRuns> = Vec::new();
    for name in &group.experiments {
        let e = experiments
            .iter()
            .find(|e| &e.name == name)
            .expect("checked when read");
        let config = Config::load(&e.config).with_context(|| format!("loading {}", e.config))?;
        let index = match out.iter().position(|c| c.config.name == config.name) {
            Some(i) => i,
            None => {
                out.push(ConfigRuns {
                    config,
                    experiments: Vec::new(),
                    values: HashMap::new(),
                });
                out.len() - 1
            }
        };
        let runs = &mut out[index];
        runs.experiments.push(name.clone());
        let Some(row) = (0..names.len()).find(|&i| names.get(i) == Some(name.as_str())) else {
            continue;
        };
        for (metric, values) in &columns {
            if let Some(v) = values[row] {
                runs.values.entry(*metric).or_default().push(v);
            }
        }
    }
    Ok(out)
}

/// Writes `claims/<group>.*` for every group with a verdict (other files there are removed)
/// and returns the README's sections.
pub fn write(
    out: &Path,
    groups: &[Group],
    experiments: &[Experiment],
    table: &DataFrame,
) -> Result<String> {
    let folder = out.join("claims");
    let mut sections = String::new();
    let mut written = Vec::new();
    for group in groups {
        let subjects = config_runs(group, experiments, table)?;
        let verdicts = claims::verdicts(&subjects);
        if verdicts.is_empty() {
            continue;
        }
        std::fs::create_dir_all(&folder)?;
        let mut frame = claims::frame(&verdicts)?;
        write_tables(&mut frame, &folder, &group.name)?;
        claims::plot(
            &folder.join(&group.name),
            &format!("{}: effect against the baseline, ± 2σ", group.title),
            &verdicts,
        )?;
        written.push(group.name.clone());
        let members: Vec<String> = subjects
            .iter()
            .map(|s| {
                let runs: Vec<String> = s.experiments.iter().map(|e| format!("`{e}`")).collect();
                format!("{} ({})", s.config.name, runs.join(", "))
            })
            .collect();
        let freedom = claims::pooled_sd(&subjects, ClaimMetric::Fd).map_or(0, |(_, dof)| dof);
        sections.push_str(&claims::section(
            &subjects,
            &verdicts,
            &format!(
                "The experiments of each config (its seeds; an experiment without a row is not counted): {}. \
                 The pooled σ rests on {freedom} degree(s) of freedom: with few, it is itself uncertain by a \
                 large factor, and a verdict near 2σ is a weak one.\n\n{}",
                members.join("; "),
                to_markdown(&frame)
            ),
            &SectionText {
                heading: &format!("## The paper's claims: {}", group.title),
                pooled_over: "the group",
                plot: &format!("claims/{}.png", group.name),
                no_seeds: "give one config of the group two experiments that differ in `--seed` only",
            },
        ));
    }
    // Every file in `claims/` is a group's: those of groups without verdicts now go.
    if folder.is_dir() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if !written.iter().any(|w| w == stem) {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(sections)
}
