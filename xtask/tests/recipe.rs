//! `cargo xtask recipe` end to end on a tiny recipe file at the smoke budget: every run in the
//! table with its images and by-kind scores, the curves at the asked-for points, a run started
//! from another's weights, a run under another's frozen text encoder, and the rescored sampler
//! settings equal to `unetlab score` run here on the same weights and read back, not sampled
//! again, by the next invocation; the rows of a study kept from an earlier session.

use std::path::{Path, PathBuf};
use std::process::Command;

use polars::prelude::{AnyValue, DataFrame};
use unetlab_report::read_csv;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn column(df: &DataFrame, name: &str) -> Vec<AnyValue<'static>> {
    let c = df.column(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    (0..df.height())
        .map(|i| c.get(i).unwrap().into_static())
        .collect()
}

fn number(v: &AnyValue) -> f64 {
    match v {
        AnyValue::Float64(x) => *x,
        AnyValue::Int64(x) => *x as f64,
        other => panic!("not a number: {other:?}"),
    }
}

fn text(v: &AnyValue) -> String {
    match v {
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        other => panic!("not text: {other:?}"),
    }
}

/// `cargo xtask recipe FILE --budget smoke --out OUT --runs RUNS EXTRA...`.
fn recipe(file: &Path, out: &Path, runs: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("recipe")
        .arg(file)
        .args(["--budget", "smoke"])
        .arg("--out")
        .arg(out)
        .arg("--runs")
        .arg(runs)
        .args(extra)
        .current_dir(workspace())
        .output()
        .unwrap()
}

/// `cargo xtask recipe FILE --out OUT --replot`.
fn replot(file: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("recipe")
        .arg(file)
        .arg("--out")
        .arg(out)
        .arg("--replot")
        .current_dir(workspace())
        .output()
        .unwrap()
}

fn run_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap()
}

#[test]
fn a_smoke_recipe_trains_scores_and_rescores() {
    let dir = tempfile::tempdir().unwrap();
    let (out, runs) = (dir.path().join("out"), dir.path().join("runs"));
    let file = workspace().join("ablations/fixtures/tiny-recipe.yaml");
    // Grids of an experiment the file no longer lists are removed.
    for folder in ["samples", "same-noise", "plots"] {
        std::fs::create_dir_all(out.join(folder)).unwrap();
        std::fs::write(out.join(folder).join("gone.png"), b"stale").unwrap();
    }
    // So are the plots of the layout before plot groups, beside the tables.
    std::fs::write(out.join("fd.png"), b"stale").unwrap();
    let output = recipe(&file, &out, &runs, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!out.join("samples/gone.png").exists());
    assert!(!out.join("same-noise/gone.png").exists());
    assert!(!out.join("plots/gone.png").exists());
    assert!(!out.join("fd.png").exists());

    // One set of curves per plot group, each with its own experiments alone.
    assert_eq!(plot_files(&out), group_plots(&["lite", "md"]));
    let svg = |name: &str| std::fs::read_to_string(out.join("plots").join(name)).unwrap();
    let named = |svg: &str, run: &str| svg.contains(&format!(">\n{run}\n<"));
    let md = svg("md-fd.svg");
    assert!(named(&md, "md-8x2") && named(&md, "md-8x2-tuned") && !named(&md, "lite-4x2"));
    let lite = svg("lite-attribute_alignment.svg");
    assert!(named(&lite, "lite-4x2") && !named(&lite, "md-8x2"));

    // Every run, with its images seen, the attribute alignment split by kind and the machine
    // that trained it.
    let table = read_csv(&out.join("table.csv")).unwrap();
    let names: Vec<String> = column(&table, "experiment").iter().map(text).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let this_cpu = unetlab_bench::Machine::current().cpu();
    for machine in column(&table, "trained on") {
        assert_eq!(text(&machine), this_cpu);
    }
    for (name, images) in [("md-8x2", 16.0), ("lite-4x2", 8.0), ("md-8x2-tuned", 24.0)] {
        let row = names.iter().position(|n| n == name).expect(name);
        assert_eq!(number(&column(&table, "images")[row]), images, "{name}");
        for kind in ["count", "relation", "shape", "colour", "size"] {
            let rate = number(&column(&table, kind)[row]);
            assert!((0.0..=1.0).contains(&rate), "{name} {kind}: {rate}");
        }
        // The direction is a rate of the scenes it judged; both are empty where it judged none.
        match (
            &column(&table, "direction")[row],
            &column(&table, "direction scenes")[row],
        ) {
            (AnyValue::Null, AnyValue::Null) => {}
            (rate, scenes) => {
                assert!(number(scenes) >= 1.0, "{name}");
                assert!((0.0..=1.0).contains(&number(rate)), "{name}");
            }
        }
    }

    // Scored every 8 images: the longer run at 8 and 16, the shorter at 8.
    let curves = read_csv(&out.join("curves.csv")).unwrap();
    let points = |name: &str| -> Vec<f64> {
        let (experiments, metrics) = (column(&curves, "experiment"), column(&curves, "metric"));
        let seen = column(&curves, "images");
        let mut v: Vec<f64> = (0..curves.height())
            .filter(|&i| text(&experiments[i]) == name && text(&metrics[i]) == "fd")
            .map(|i| number(&seen[i]))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    assert_eq!(points("md-8x2"), [8.0, 16.0]);
    assert_eq!(points("lite-4x2"), [8.0]);
    // The fine-tuned run's 8 images continue its parent's 16.
    assert_eq!(points("md-8x2-tuned"), [24.0]);
    assert!(out.join("samples").join("md-8x2.png").is_file());

    // The fine-tuned run trained after its parent, from its weights, and says so in the table.
    assert_eq!(
        run_json(&runs.join("md-8x2-tuned"))["initialised_from"],
        run_json(&runs.join("md-8x2"))["run_hash"]
    );
    let tuned = names.iter().position(|n| n == "md-8x2-tuned").unwrap();
    assert_eq!(
        text(&column(&table, "arguments")[tuned]),
        "--uniform-weighting --init-from md-8x2"
    );
    // The run under md-8x2's frozen text encoder trained after it, and counts its own images
    // alone (8, above).
    assert_eq!(
        run_json(&runs.join("lite-4x2"))["frozen_text_encoder"],
        run_json(&runs.join("md-8x2"))["run_hash"]
    );
    let lite = names.iter().position(|n| n == "lite-4x2").unwrap();
    assert_eq!(
        text(&column(&table, "arguments")[lite]),
        "--uniform-weighting --frozen-text-encoder md-8x2"
    );

    // A same-noise grid per run: two captions (rows) of two images, the rows' noise shared, so
    // the first column's two images differ only by what the captions changed.
    for name in ["md-8x2", "lite-4x2", "md-8x2-tuned"] {
        let grid = image::open(out.join("same-noise").join(format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        let (w, h) = grid.dimensions();
        assert_eq!(w, h, "{name}: two rows of two");
        let cell = (w - 2) / 2 - 2;
        let pixel_row = |r: u32| -> Vec<u8> {
            let y = 2 + r * (cell + 2) + cell / 2;
            (2..2 + cell).flat_map(|x| grid.get_pixel(x, y).0).collect()
        };
        assert_ne!(
            pixel_row(0),
            pixel_row(1),
            "{name}: the captions changed nothing"
        );
    }

    // The sampler settings: what `unetlab score` gives on the same weights, captions and noise.
    let sampler = read_csv(&out.join("sampler.csv")).unwrap();
    let guidance: Vec<f64> = column(&sampler, "guidance").iter().map(number).collect();
    assert_eq!(guidance, [1.0, 3.0]);
    let unetlab = Path::new(env!("CARGO_BIN_EXE_xtask")).with_file_name("unetlab");
    for (row, cfg) in guidance.iter().enumerate() {
        let score = Command::new(&unetlab)
            .arg("score")
            .arg(runs.join("md-8x2"))
            .args(["--budget", "smoke", "--images", "8", "--steps", "2"])
            .args(["--cfg", &cfg.to_string(), "--json"])
            .arg("--evaluator-cache")
            .arg(workspace().join("target").join("unetlab-cache"))
            .output()
            .unwrap();
        assert!(
            score.status.success(),
            "{}",
            String::from_utf8_lossy(&score.stderr)
        );
        let score: serde_json::Value = serde_json::from_slice(&score.stdout).unwrap();
        assert_eq!(score["options"]["images"], 8);
        let quality = &score["quality"];
        assert_eq!(
            number(&column(&sampler, "FD")[row]),
            quality["fd"].as_f64().unwrap()
        );
        assert_eq!(
            number(&column(&sampler, "relation")[row]),
            quality["by_kind"]["relation"].as_f64().unwrap()
        );
    }
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        readme.contains("on the smoke scoring (16 validation captions, 4 DDIM steps, guidance 3)"),
        "{readme}"
    );
    assert!(readme.contains("on the first 8 validation captions"));

    // Adding a run does not sample the rescore again: it is read back, to the same numbers.
    assert_eq!(stderr.matches("scoring with").count(), 2, "{stderr}");
    let before = std::fs::read_to_string(out.join("sampler.csv")).unwrap();
    let again = recipe(&file, &out, &runs, &["--only", "lite-4x2"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(!stderr.contains("scoring with"), "{stderr}");
    assert_eq!(stderr.matches("scored before").count(), 2, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.join("sampler.csv")).unwrap(),
        before
    );

    // Regrouped, the plots are redrawn from the curves alone: no run is read, nothing trains or
    // scores, and the tables and README stay as they were.
    let regrouped = dir.path().join("regrouped.yaml");
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &regrouped,
        yaml.replace("  - name: lite\n", "  - name: lite-only\n"),
    )
    .unwrap();
    let (curves, readme) = (
        std::fs::read(out.join("curves.parquet")).unwrap(),
        std::fs::read(out.join("README.md")).unwrap(),
    );
    std::fs::remove_dir_all(&runs).unwrap();
    let replot = replot(&regrouped, &out);
    let stderr = String::from_utf8_lossy(&replot.stderr);
    assert!(replot.status.success(), "{stderr}");
    assert!(!stderr.contains("scoring"), "{stderr}");
    assert_eq!(plot_files(&out), group_plots(&["lite-only", "md"]));
    let md = std::fs::read_to_string(out.join("plots/md-fd.svg")).unwrap();
    assert!(named(&md, "md-8x2") && named(&md, "md-8x2-tuned") && !named(&md, "lite-4x2"));
    assert_eq!(std::fs::read(out.join("curves.parquet")).unwrap(), curves);
    assert_eq!(std::fs::read(out.join("README.md")).unwrap(), readme);

    // A fresh checkout (the runs are gone) that trains one experiment again keeps the others'
    // rows as the study held them, with their curves and grids; a row the file now states
    // otherwise (md-8x2-tuned's steps) is dropped with its grids.
    let line_of = |name: &str| {
        std::fs::read_to_string(out.join("table.csv"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("{name},")))
            .map(String::from)
    };
    let lite_row = line_of("lite-4x2").expect("lite-4x2's row");
    let fresh = dir.path().join("fresh.yaml");
    let tuned = "    steps: 4\n    args: [--uniform-weighting]\n    init_from";
    assert!(yaml.contains(tuned));
    std::fs::write(&fresh, yaml.replace(tuned, &tuned.replace('4', "3"))).unwrap();
    let again = recipe(&fresh, &out, &runs, &["--only", "md-8x2"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("md-8x2-tuned: its committed row is dropped"),
        "{stderr}"
    );
    assert_eq!(line_of("lite-4x2").as_ref(), Some(&lite_row));
    assert!(line_of("md-8x2").is_some() && line_of("md-8x2-tuned").is_none());
    let curves = read_csv(&out.join("curves.csv")).unwrap();
    let experiments: Vec<String> = column(&curves, "experiment").iter().map(text).collect();
    assert!(experiments.iter().any(|e| e == "lite-4x2"));
    assert!(!experiments.iter().any(|e| e == "md-8x2-tuned"));
    for folder in ["samples", "same-noise"] {
        assert!(out.join(folder).join("lite-4x2.png").is_file(), "{folder}");
        assert!(
            !out.join(folder).join("md-8x2-tuned.png").exists(),
            "{folder}"
        );
    }
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("trained each: `lite-4x2`."), "{readme}");

    // A study written before a column existed keeps its rows, empty in that column.
    let path = out.join("table.parquet");
    let mut older = unetlab_report::read_parquet(&path)
        .unwrap()
        .drop("trained on")
        .unwrap();
    unetlab_report::write_parquet(&mut older, &path).unwrap();
    let again = recipe(&fresh, &out, &runs, &["--only", "md-8x2"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let table = read_csv(&out.join("table.csv")).unwrap();
    let machines = column(&table, "trained on");
    let names: Vec<String> = column(&table, "experiment").iter().map(text).collect();
    let row = |name: &str| names.iter().position(|n| n == name).unwrap();
    assert_eq!(text(&machines[row("md-8x2")]), this_cpu);
    assert_eq!(machines[row("lite-4x2")], AnyValue::Null);
}

/// The `.svg` plots in `out/plots`, sorted.
fn plot_files(out: &Path) -> Vec<String> {
    let mut plots: Vec<String> = std::fs::read_dir(out.join("plots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    plots.sort();
    plots
}

/// The four curves' `.svg` plots of these groups, sorted.
fn group_plots(groups: &[&str]) -> Vec<String> {
    let metrics = [
        "attribute_alignment",
        "fd",
        "text_alignment",
        "validation_loss",
    ];
    groups
        .iter()
        .flat_map(|g| metrics.iter().map(move |m| format!("{g}-{m}.svg")))
        .collect()
}

/// Without the study's curves there is nothing to redraw, and `--replot` says so.
#[test]
fn a_replot_needs_curves() {
    let dir = tempfile::tempdir().unwrap();
    let o = replot(
        &workspace().join("ablations/fixtures/tiny-recipe.yaml"),
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("curves.parquet: no curves to redraw"),
        "{stderr}"
    );
    assert!(!dir.path().join("plots").exists());
}

/// A run can only start from an experiment listed before it, and from a finished run or one
/// that trains first; a plot group names only experiments of the file.
#[test]
fn a_parent_must_come_first() {
    let dir = tempfile::tempdir().unwrap();
    let (out, runs) = (dir.path().join("out"), dir.path().join("runs"));
    let fixture = workspace().join("ablations/fixtures/tiny-recipe.yaml");
    let text = std::fs::read_to_string(&fixture).unwrap();

    // The fixture with one edit is refused with `message`, before anything trains.
    let refused = |file: &str, (from, to): (&str, &str), message: &str| {
        let edited = dir.path().join(file);
        std::fs::write(&edited, text.replace(from, to)).unwrap();
        let o = recipe(&edited, &out, &runs, &[]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(stderr.contains(message), "{stderr}");
    };
    refused(
        "backwards.yaml",
        ("init_from: md-8x2", "init_from: md-8x2-later"),
        "experiments[2].init_from: `md-8x2-later` is not an experiment listed before `md-8x2-tuned`",
    );
    refused(
        "backwards-text.yaml",
        ("frozen_text_encoder: md-8x2", "frozen_text_encoder: md-8x2-tuned"),
        "experiments[1].frozen_text_encoder: `md-8x2-tuned` is not an experiment listed before `lite-4x2`",
    );
    refused(
        "unknown-plot.yaml",
        ("experiments: [lite-4x2]", "experiments: [lite-8x2]"),
        "plots[1] (lite): no experiment is named `lite-8x2`",
    );
    assert!(!runs.exists());

    let o = recipe(&fixture, &out, &runs, &["--only", "md-8x2-tuned"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("md-8x2-tuned: starts from `md-8x2`, which has no finished run"),
        "{stderr}"
    );
    assert!(!runs.join("md-8x2-tuned").exists());
}

/// A claim group judges each config's paper claims on quality against its baseline in the
/// group, with the seed σ of the config that has two experiments: every number of
/// `claims/<group>.csv` recomputed here from `table.csv`. A group whose experiments train
/// otherwise than seeds apart is refused before anything trains.
#[test]
fn a_claim_group_judges_the_configs_claims_from_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let (out, runs) = (dir.path().join("out"), dir.path().join("runs"));
    let fixture = workspace().join("ablations/fixtures/tiny-claims.yaml");
    let yaml = std::fs::read_to_string(&fixture).unwrap();
    let uneven = dir.path().join("uneven.yaml");
    let chain03 = "    steps: 2\n    args: [--uniform-weighting]\n    note: cross";
    assert!(yaml.contains(chain03));
    std::fs::write(&uneven, yaml.replace(chain03, &chain03.replace('2', "3"))).unwrap();
    let o = recipe(&uneven, &out, &runs, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("claims[0] (chains): `chain03` trains otherwise than `chain01-seed0`"),
        "{stderr}"
    );
    assert!(!runs.exists());

    let o = recipe(&fixture, &out, &runs, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = read_csv(&out.join("table.csv")).unwrap();
    let names: Vec<String> = column(&table, "experiment").iter().map(text).collect();
    let value = |experiment: &str, metric: &str| {
        let row = names.iter().position(|n| n == experiment).unwrap();
        number(&column(&table, metric)[row])
    };
    let claims = read_csv(&out.join("claims/chains.csv")).unwrap();
    let rows: Vec<(String, String)> = (0..claims.height())
        .map(|i| {
            (
                text(&column(&claims, "config")[i]),
                text(&column(&claims, "metric")[i]),
            )
        })
        .collect();
    // chain-02's three quality claims and chain-03's two: its latency claim is ablate's.
    let expected = [
        ("chain-02-no-transformers-high-res", "fd"),
        ("chain-02-no-transformers-high-res", "validation_loss"),
        ("chain-02-no-transformers-high-res", "attribute_alignment"),
        ("chain-03-cross-attention-only-high-res", "fd"),
        ("chain-03-cross-attention-only-high-res", "validation_loss"),
    ];
    assert_eq!(
        rows,
        expected.map(|(c, m)| (c.to_string(), m.to_string())),
        "{claims}"
    );
    for (i, (config, metric)) in expected.iter().enumerate() {
        let column_name = match *metric {
            "fd" => "FD",
            "validation_loss" => "validation loss",
            _ => "attribute alignment",
        };
        let (s0, s1) = (
            value("chain01-seed0", column_name),
            value("chain01-seed1", column_name),
        );
        let base = (s0 + s1) / 2.0;
        let step = value(&config[..8].replace('-', ""), column_name);
        // The seed σ of chain-01's two runs (one degree of freedom), for means of 1 and 2 runs.
        let sd = (s0 - s1).abs() / 2f64.sqrt();
        let sigma = sd * (1.0 + 0.5f64).sqrt() / base.abs();
        let worse = if *metric == "attribute_alignment" {
            base - step
        } else {
            step - base
        } / base.abs();
        let close = |field: &str, want: f64| {
            let got = number(&column(&claims, field)[i]);
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{config} {metric} {field}: {got} vs {want}"
            );
        };
        close("baseline value", base);
        close("value", step);
        close("effect (% worse)", 100.0 * worse);
        close("2 sigma (%)", 200.0 * sigma);
        assert_eq!(text(&column(&claims, "seeds")[i]), "1 vs 2");
        let tolerance = match *metric {
            "fd" => 0.10,
            "validation_loss" => 0.03,
            _ => 0.05,
        };
        let verdict = if config.starts_with("chain-02") {
            if worse > 2.0 * sigma {
                "reproduced"
            } else if worse < -2.0 * sigma {
                "contradicted"
            } else {
                "unresolved"
            }
        } else if worse + 2.0 * sigma <= tolerance {
            "reproduced"
        } else if worse - 2.0 * sigma > tolerance {
            "contradicted"
        } else {
            "unresolved"
        };
        assert_eq!(
            text(&column(&claims, "verdict")[i]),
            verdict,
            "{config} {metric}"
        );
    }
    for ext in ["md", "parquet", "png", "svg"] {
        assert!(out.join(format!("claims/chains.{ext}")).is_file(), "{ext}");
    }
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        readme.contains("## The paper's claims: chain-01, -02 and -03"),
        "{readme}"
    );
    assert!(
        readme.contains("chain-01-uvit-middle (`chain01-seed0`, `chain01-seed1`)"),
        "{readme}"
    );
}
