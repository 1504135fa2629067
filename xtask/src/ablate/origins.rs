//! Where a study's rows came from: which build measured each latency and training run, on which
//! machine, when, and whether this sweep measured it or read it from the cache. Rendered into
//! `run.json` and the study README, so a table never passes off an older build's numbers as the
//! current one's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use unetlab_bench::Machine;
use unetlab_provenance::{Build, Provenance};

use super::Row;

/// One measured row: a config's latency, or one of its training runs.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `latency` or `training`.
    pub kind: &'static str,
    /// The config's name, with ` (seed N)` for training runs of several seeds.
    pub row: String,
    /// Who measured it and when.
    pub provenance: Provenance,
    /// The CPU it was measured on ([`Machine::cpu`]); None for training runs recorded before
    /// runs kept their machine.
    pub machine: Option<String>,
    /// Read from the cache rather than measured by this sweep.
    pub cached: bool,
}

/// Every measured row of `rows`, latency first, in row order.
pub fn origins(rows: &[Row]) -> Vec<Origin> {
    let mut out = Vec::new();
    for r in rows {
        if let Ok(b) = &r.bench {
            out.push(Origin {
                kind: "latency",
                row: r.config.name.clone(),
                provenance: b.provenance.clone(),
                machine: Some(b.machine.cpu()),
                cached: r.bench_cached,
            });
        }
    }
    for r in rows {
        let runs = r.trained.iter().flatten().flatten().collect::<Vec<_>>();
        for run in &runs {
            out.push(Origin {
                kind: "training",
                row: if runs.len() > 1 {
                    format!("{} (seed {})", r.config.name, run.summary.recipe.seed)
                } else {
                    r.config.name.clone()
                },
                provenance: run.summary.provenance.clone(),
                machine: run.summary.trained_on.as_ref().map(Machine::cpu),
                cached: run.cached,
            });
        }
    }
    out
}

/// The rows of one build and kind of measurement with one source state, on one machine.
struct Group<'a> {
    build: &'a Build,
    kind: &'static str,
    code: &'a str,
    machine: Option<&'a str>,
    rows: Vec<&'a Origin>,
}

fn groups(origins: &[Origin]) -> Vec<Group<'_>> {
    let mut by_key: BTreeMap<(String, &str, &str, Option<&str>), Group> = BTreeMap::new();
    for o in origins {
        let p = &o.provenance;
        let machine = o.machine.as_deref();
        by_key
            .entry((p.build.label(), o.kind, p.code.as_str(), machine))
            .or_insert_with(|| Group {
                build: &p.build,
                kind: o.kind,
                code: &p.code,
                machine,
                rows: Vec::new(),
            })
            .rows
            .push(o);
    }
    let mut out: Vec<Group> = by_key.into_values().collect();
    // Oldest measurements first.
    out.sort_by(|a, b| first_time(a).cmp(first_time(b)));
    out
}

fn first_time<'a>(g: &Group<'a>) -> &'a str {
    g.rows
        .iter()
        .map(|o| o.provenance.measured_utc.as_str())
        .min()
        .unwrap_or_default()
}

/// Whether the rows come from more than one build, or one kind of measurement from more than one
/// state of its sources.
fn mixed(groups: &[Group]) -> bool {
    let labels: BTreeSet<String> = groups.iter().map(|g| g.build.label()).collect();
    let kinds: BTreeSet<&str> = groups.iter().map(|g| g.kind).collect();
    let sources: BTreeSet<(&str, &str)> = groups.iter().map(|g| (g.kind, g.code)).collect();
    labels.len() > 1 || kinds.len() < sources.len()
}

/// Whether the rows that name their machine name more than one.
fn mixed_machines(groups: &[Group]) -> bool {
    groups
        .iter()
        .filter_map(|g| g.machine)
        .collect::<BTreeSet<_>>()
        .len()
        > 1
}

/// `measured`: this sweep measured at least one row; `re-rendered`: every row came from the cache.
pub fn mode(origins: &[Origin]) -> &'static str {
    if origins.iter().all(|o| o.cached) {
        "re-rendered"
    } else {
        "measured"
    }
}

/// The `provenance` object of `run.json`.
pub fn to_json(origins: &[Origin], rendered_by: &Build) -> Value {
    let groups = groups(origins);
    json!({
        "mode": mode(origins),
        "rendered_by": rendered_by,
        "rows_measured": origins.iter().filter(|o| !o.cached).count(),
        "rows_from_cache": origins.iter().filter(|o| o.cached).count(),
        "mixed_builds": mixed(&groups),
        "mixed_machines": mixed_machines(&groups),
        "builds": groups.iter().map(|g| json!({
            "build": g.build.label(),
            "commit": g.build.commit,
            "dirty": g.build.dirty,
            "kind": g.kind,
            "code": g.code,
            "machine": g.machine,
            "rows": g.rows.iter().map(|o| json!({
                "row": o.row,
                "measured_utc": o.provenance.measured_utc,
                "from_cache": o.cached,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The README's provenance section.
pub fn section(origins: &[Origin], rendered_by: &Build, started_utc: &str) -> String {
    let groups = groups(origins);
    let measured = origins.iter().filter(|o| !o.cached).count();
    let mut s = format!(
        "\n## Provenance\n\nThese files were written by build `{}` (started {started_utc}); {}. \
         Counts (parameters, MACs) are computed by that build on every run. The measured rows come \
         from these builds and machines (`+dirty`: the build's sources differed from the commit; \
         training runs recorded before runs kept their machine do not name it):\n\n",
        rendered_by.label(),
        if measured == 0 {
            "it measured nothing and re-rendered every row from the cache".to_string()
        } else if measured == origins.len() {
            "it measured every row".to_string()
        } else {
            format!(
                "it measured {measured} of {} rows and read the others from the cache",
                origins.len()
            )
        }
    );
    for g in &groups {
        let times: Vec<&str> = g
            .rows
            .iter()
            .map(|o| o.provenance.measured_utc.as_str())
            .collect();
        let (from, to) = (
            times.iter().min().copied().unwrap_or_default(),
            times.iter().max().copied().unwrap_or_default(),
        );
        let span = if from == to {
            from.to_string()
        } else {
            format!("{from} to {to}")
        };
        let rows: Vec<String> = g
            .rows
            .iter()
            .map(|o| format!("{}{}", o.row, if o.cached { " (cache)" } else { "" }))
            .collect();
        s.push_str(&format!(
            "- `{}` ({}, sources `{}`, {}), {span}: {}\n",
            g.build.label(),
            g.kind,
            &g.code[..g.code.len().min(12)],
            g.machine
                .map_or("machine not recorded".to_string(), |m| format!("on {m}")),
            rows.join(", ")
        ));
    }
    if mixed(&groups) {
        s.push_str(
            "\n**This study mixes rows measured by different builds or source states**: a \
             difference between rows of different builds may come from the code, not the design. \
             Re-run with `--force` to measure every row with one build.\n",
        );
    }
    if mixed_machines(&groups) {
        s.push_str(
            "\n**This study mixes rows measured on different machines**: a latency describes its \
             CPU alone, and a CPU with other SIMD extensions rounds a training run differently, \
             so rows of different machines may differ by the machine, not the design.\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(kind: &'static str, row: &str, commit: &str, code: &str, cached: bool) -> Origin {
        let mut build = Build::current();
        build.commit = commit.into();
        build.dirty = false;
        Origin {
            kind,
            row: row.into(),
            provenance: Provenance {
                build,
                code: code.into(),
                measured_utc: format!("2026-11-2{}T00:00:00Z", row.len() % 10),
            },
            machine: Some("AMD EPYC [avx2 fma]".into()),
            cached,
        }
    }

    #[test]
    fn one_build_is_not_mixed() {
        let rows = vec![
            origin("latency", "sd15", "aaaaaaa1", "lat1", true),
            origin("latency", "md", "aaaaaaa1", "lat1", false),
            origin("training", "md", "aaaaaaa1", "train1", false),
        ];
        let text = section(&rows, &Build::current(), "now");
        assert!(!text.contains("mixes rows"), "{text}");
        assert!(text.contains("measured 2 of 3 rows"), "{text}");
        assert!(text.contains("on AMD EPYC [avx2 fma]), "), "{text}");
        assert!(text.contains("sd15 (cache), md"), "{text}");
        let json = to_json(&rows, &Build::current());
        assert_eq!(json["mode"], "measured");
        assert_eq!(json["mixed_builds"], false);
        assert_eq!(json["mixed_machines"], false);
        assert_eq!(json["builds"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_study_mixing_two_machines_says_so_and_names_each() {
        let mut rows = vec![
            origin("training", "sd15", "aaaaaaa1", "train1", true),
            origin("training", "md", "aaaaaaa1", "train1", false),
            origin("training", "sdxl", "aaaaaaa1", "train1", true),
        ];
        rows[0].machine = Some("Intel Xeon [avx2 fma avx512f]".into());
        rows[2].machine = None;
        let text = section(&rows, &Build::current(), "now");
        assert!(
            text.contains("mixes rows measured on different machines"),
            "{text}"
        );
        assert!(!text.contains("different builds"), "{text}");
        assert!(
            text.contains("(training, sources `train1`, on Intel Xeon [avx2 fma avx512f])"),
            "{text}"
        );
        assert!(
            text.contains("(training, sources `train1`, machine not recorded)"),
            "{text}"
        );
        let json = to_json(&rows, &Build::current());
        assert_eq!(json["mixed_machines"], true);
        assert_eq!(json["mixed_builds"], false);
        assert_eq!(json["builds"].as_array().unwrap().len(), 3);

        // A run that does not name its machine is not a second machine.
        rows[0].machine = rows[1].machine.clone();
        assert_eq!(to_json(&rows, &Build::current())["mixed_machines"], false);
    }

    #[test]
    fn a_study_mixing_two_builds_says_so() {
        let rows = vec![
            origin("latency", "sd15", "aaaaaaa1", "lat1", true),
            origin("latency", "mobilediffusion", "bbbbbbb2", "lat2", false),
        ];
        let text = section(&rows, &Build::current(), "now");
        assert!(text.contains("mixes rows"), "{text}");
        assert!(
            text.contains("- `aaaaaaa` (latency, sources `lat1`, on "),
            "{text}"
        );
        assert!(
            text.contains("- `bbbbbbb` (latency, sources `lat2`, on "),
            "{text}"
        );
        assert!(to_json(&rows, &Build::current())["mixed_builds"] == true);

        // One commit, but the kernels' sources differed (a dirty tree edited between runs).
        let rows = vec![
            origin("latency", "sd15", "aaaaaaa1", "lat1", true),
            origin("latency", "md", "aaaaaaa1", "lat1-edited", true),
        ];
        let text = section(&rows, &Build::current(), "now");
        assert!(text.contains("mixes rows"), "{text}");
        assert!(text.contains("re-rendered every row"), "{text}");
        assert_eq!(to_json(&rows, &Build::current())["mode"], "re-rendered");
    }
}
