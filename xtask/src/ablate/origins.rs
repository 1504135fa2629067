//! Where a study's rows came from: which build measured each latency and training run, when, and
//! whether this sweep measured it or read it from the cache. Rendered into `run.json` and the
//! study README, so a table never passes off an older build's numbers as the current one's.

use std::collections::BTreeMap;

use serde_json::{json, Value};
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
                cached: run.cached,
            });
        }
    }
    out
}

/// The rows of one build and kind of measurement with one source state.
struct Group<'a> {
    build: &'a Build,
    kind: &'static str,
    code: &'a str,
    rows: Vec<&'a Origin>,
}

fn groups(origins: &[Origin]) -> Vec<Group<'_>> {
    let mut by_key: BTreeMap<(String, &str, &str), Group> = BTreeMap::new();
    for o in origins {
        let p = &o.provenance;
        by_key
            .entry((p.build.label(), o.kind, p.code.as_str()))
            .or_insert_with(|| Group {
                build: &p.build,
                kind: o.kind,
                code: &p.code,
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
    let labels: std::collections::BTreeSet<String> =
        groups.iter().map(|g| g.build.label()).collect();
    let kinds: std::collections::BTreeSet<&str> = groups.iter().map(|g| g.kind).collect();
    labels.len() > 1 || kinds.len() < groups.len()
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
        "builds": groups.iter().map(|g| json!({
            "build": g.build.label(),
            "commit": g.build.commit,
            "dirty": g.build.dirty,
            "kind": g.kind,
            "code": g.code,
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
         from these builds (`+dirty`: the build's sources differed from the commit):\n\n",
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
            "- `{}` ({}, sources `{}`), {span}: {}\n",
            g.build.label(),
            g.kind,
            &g.code[..g.code.len().min(12)],
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
        assert!(text.contains("sd15 (cache), md"), "{text}");
        let json = to_json(&rows, &Build::current());
        assert_eq!(json["mode"], "measured");
        assert_eq!(json["mixed_builds"], false);
        assert_eq!(json["builds"].as_array().unwrap().len(), 2);
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
            text.contains("- `aaaaaaa` (latency, sources `lat1`)"),
            "{text}"
        );
        assert!(
            text.contains("- `bbbbbbb` (latency, sources `lat2`)"),
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
