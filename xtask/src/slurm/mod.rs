//! `cargo xtask slurm ablate|search ...`: a study (or a search) as Slurm job arrays of `--shard`
//! tasks and a merge job that runs once they all succeed. A study is one array; a search is one
//! array per stage (the references' probes, each probe round, the check, each quality rung need
//! the stage before them), chained with afterok. `check.rs` is `cargo xtask slurm-check`.

pub mod check;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::ablate::AblateArgs;
use crate::search::SearchArgs;

/// Write (and with --submit, submit) the sbatch scripts that run a study as a job array.
#[derive(clap::Args)]
pub struct SlurmArgs {
    #[command(subcommand)]
    command: SlurmCommand,
}

#[derive(clap::Subcommand)]
enum SlurmCommand {
    /// `cargo xtask ablate` with the same arguments, sharded over an array.
    Ablate(SlurmAblate),
    /// `cargo xtask search` with the same arguments: one array per stage, then the merge.
    Search(SlurmSearch),
}

/// The study's arguments, then the array's.
#[derive(clap::Args)]
struct SlurmAblate {
    #[command(flatten)]
    ablate: AblateArgs,
    #[command(flatten)]
    array: ArrayOptions,
}

/// The search's arguments, then the arrays'.
#[derive(clap::Args)]
struct SlurmSearch {
    #[command(flatten)]
    search: SearchArgs,
    #[command(flatten)]
    array: ArrayOptions,
}

/// How the arrays are submitted.
#[derive(clap::Args, Clone, Debug)]
pub struct ArrayOptions {
    /// Tasks in the array (each runs shard K of N of the work units).
    #[arg(long, value_name = "N")]
    pub array: u64,
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit per task (Slurm's format, e.g. 02:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs per task (also the threads each task uses).
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// GPUs per task; the tasks then run on `cuda:0` unless the study names a device.
    #[arg(long)]
    pub gpus_per_task: Option<u32>,
    /// Submit the scripts (each array after the one before, the merge last, all afterok) and
    /// print the job ids.
    #[arg(long)]
    pub submit: bool,
    /// Where the scripts and task logs go (default: `target/slurm/<study>`).
    #[arg(long, value_name = "DIR")]
    pub scripts: Option<PathBuf>,
}

/// The flags of `ArrayOptions` and whether each takes a value: removed from the study's
/// arguments before they go into the scripts.
const ARRAY_FLAGS: &[(&str, bool)] = &[
    ("--array", true),
    ("--partition", true),
    ("--time", true),
    ("--cpus-per-task", true),
    ("--gpus-per-task", true),
    ("--submit", false),
    ("--scripts", true),
];

/// What the scripts run: the xtask command, its name for the jobs, and how many arrays.
pub struct Sweep {
    /// `ablate` or `search`.
    pub command: &'static str,
    /// The study's or search's name.
    pub name: String,
    /// Arrays in a chain (1 for a study; a search's stages).
    pub arrays: usize,
}

/// The scripts written and, when submitted, their job ids.
pub struct Submission {
    /// The array scripts, in the order they run.
    pub arrays: Vec<PathBuf>,
    /// The merge script.
    pub merge: PathBuf,
    /// (array job ids, merge job id) when submitted.
    pub jobs: Option<(Vec<String>, String)>,
}

/// Runs `cargo xtask slurm`.
pub fn run(args: &SlurmArgs, workspace: &Path) -> Result<()> {
    let (sweep, array, sharded) = match &args.command {
        SlurmCommand::Ablate(a) => (
            Sweep {
                command: "ablate",
                name: a.ablate.study_name()?,
                arrays: 1,
            },
            &a.array,
            a.ablate.sharded(),
        ),
        SlurmCommand::Search(s) => {
            let (name, arrays) = s.search.name_and_stages()?;
            (
                Sweep {
                    command: "search",
                    name,
                    arrays,
                },
                &s.array,
                s.search.sharded(),
            )
        }
    };
    if sharded {
        bail!("--shard and --merge are the scripts' to set: leave them out");
    }
    let raw: Vec<String> = std::env::args().collect();
    let after = raw
        .iter()
        .position(|x| x == sweep.command)
        .with_context(|| format!("no `{}` in the command line", sweep.command))?;
    let own_args = study_arguments(&raw[after + 1..], array);
    let s = write_and_submit(&sweep, &own_args, array, workspace)?;
    for (i, a) in s.arrays.iter().enumerate() {
        println!("array script {}: {}", i + 1, a.display());
    }
    println!("merge script: {}", s.merge.display());
    match s.jobs {
        Some((arrays, merge)) => println!(
            "submitted: array job(s) {} (each after the one before), merge job {merge} (afterok)",
            arrays.join(", ")
        ),
        None => println!(
            "submit each with sbatch --parsable, each after the one before \
             (--dependency=afterok:<job id>), the merge last"
        ),
    }
    Ok(())
}

/// The study's own arguments: the array's flags removed, `--threads` and `--device` added when
/// the array says how many CPUs and GPUs a task has.
fn study_arguments(args: &[String], array: &ArrayOptions) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let flag = a.split('=').next().unwrap_or(a);
        if let Some(&(_, takes_value)) = ARRAY_FLAGS.iter().find(|(f, _)| *f == flag) {
            skip_value = takes_value && !a.contains('=');
            continue;
        }
        out.push(a.clone());
    }
    let has = |out: &[String], flag: &str| {
        out.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    if let (Some(c), false) = (array.cpus_per_task, has(&out, "--threads")) {
        out.extend(["--threads".into(), c.to_string()]);
    }
    if array.gpus_per_task.is_some_and(|g| g > 0) && !has(&out, "--device") {
        out.extend(["--device".into(), "cuda:0".into()]);
    }
    out
}

/// Builds the binaries the tasks run, writes the scripts and, with `--submit`, submits them.
pub fn write_and_submit(
    sweep: &Sweep,
    study_args: &[String],
    array: &ArrayOptions,
    workspace: &Path,
) -> Result<Submission> {
    if array.array == 0 {
        bail!("--array must be at least 1");
    }
    crate::tools::run_ok(crate::tools::cargo().current_dir(workspace).args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "xtask",
        "--package",
        "unetlab",
    ]))
    .context("building the binaries the tasks run")?;
    let target = crate::tools::target_dir(workspace);
    let study = sweep.name.as_str();
    let dir = array
        .scripts
        .clone()
        .unwrap_or_else(|| target.join("slurm").join(study));
    std::fs::create_dir_all(dir.join("logs"))?;
    let xtask = target.join("release/xtask");
    let script = |job: &str, merge: bool| {
        sbatch_script(
            (&xtask, sweep.command),
            workspace,
            study_args,
            array,
            (job, &dir.join("logs")),
            merge,
        )
    };
    let mut arrays = Vec::new();
    for i in 1..=sweep.arrays.max(1) {
        let (path, job) = if sweep.arrays > 1 {
            (
                dir.join(format!("array-{i}.sbatch")),
                format!("unetlab-{study}-{i}"),
            )
        } else {
            (dir.join("array.sbatch"), format!("unetlab-{study}"))
        };
        unetlab_files::write_file(&path, script(&job, false).as_bytes())?;
        arrays.push(path);
    }
    let merge_path = dir.join("merge.sbatch");
    unetlab_files::write_file(
        &merge_path,
        script(&format!("unetlab-{study}-merge"), true).as_bytes(),
    )?;
    let jobs = if array.submit {
        let mut ids: Vec<String> = Vec::new();
        for path in &arrays {
            let id = sbatch(path, ids.last().map(String::as_str))?;
            ids.push(id);
        }
        let merge_job = sbatch(&merge_path, ids.last().map(String::as_str))?;
        Some((ids, merge_job))
    } else {
        None
    };
    Ok(Submission {
        arrays,
        merge: merge_path,
        jobs,
    })
}

/// A readable sbatch script: the array's tasks each run their shard (from Slurm's array
/// variables), the merge job writes the outputs.
fn sbatch_script(
    (xtask, command): (&Path, &str),
    workspace: &Path,
    study_args: &[String],
    array: &ArrayOptions,
    (name, logs): (&str, &Path),
    merge: bool,
) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let what = if merge {
        "the merge: the outputs from the shards' cache, once every task succeeded"
    } else {
        "one shard per array task (the shard comes from SLURM_ARRAY_TASK_ID)"
    };
    s.push_str(&format!(
        "# Written by `cargo xtask slurm {command}`: {what}.\n"
    ));
    s.push_str(&format!("#SBATCH --job-name={name}\n"));
    if merge {
        s.push_str(&format!("#SBATCH --output={}/%x-%j.out\n", logs.display()));
    } else {
        s.push_str(&format!("#SBATCH --array=1-{}\n", array.array));
        s.push_str(&format!(
            "#SBATCH --output={}/%x-%A_%a.out\n",
            logs.display()
        ));
    }
    s.push_str("#SBATCH --ntasks=1\n");
    if let Some(p) = &array.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(t) = &array.time {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    if let Some(c) = array.cpus_per_task {
        s.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
    }
    if let (Some(g), false) = (array.gpus_per_task, merge) {
        s.push_str(&format!("#SBATCH --gpus-per-task={g}\n"));
    }
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!("cd {}\n", quote(&workspace.display().to_string())));
    let mut line = vec![quote(&xtask.display().to_string()), command.to_string()];
    line.extend(study_args.iter().map(|a| quote(a)));
    if merge {
        line.push("--merge".into());
    }
    s.push_str(&format!("exec {}\n", line.join(" ")));
    s
}

/// A shell word: as is when it is plain, else in single quotes.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `sbatch --parsable [--dependency=afterok:ID] SCRIPT`: the job id.
fn sbatch(script: &Path, after: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if let Some(id) = after {
        cmd.arg(format!("--dependency=afterok:{id}"));
    }
    let out = cmd
        .arg(script)
        .output()
        .with_context(|| format!("running sbatch {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    if id.is_empty() {
        bail!("sbatch {} printed no job id", script.display());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ArrayOptions {
        ArrayOptions {
            array: 4,
            partition: Some("gpu".into()),
            time: Some("01:00:00".into()),
            cpus_per_task: Some(8),
            gpus_per_task: Some(1),
            submit: true,
            scripts: None,
        }
    }

    #[test]
    fn the_scripts_run_the_studys_own_arguments() {
        let raw: Vec<String> = [
            "configs/a.yaml",
            "--array",
            "4",
            "--budget",
            "smoke",
            "--partition=gpu",
            "--submit",
            "--out",
            "results/x y",
        ]
        .map(String::from)
        .to_vec();
        let args = study_arguments(&raw, &options());
        assert_eq!(
            args,
            [
                "configs/a.yaml",
                "--budget",
                "smoke",
                "--out",
                "results/x y",
                "--threads",
                "8",
                "--device",
                "cuda:0"
            ]
        );
        let script = sbatch_script(
            (Path::new("/w/target/release/xtask"), "ablate"),
            Path::new("/w"),
            &args,
            &options(),
            ("unetlab-x", Path::new("/w/target/slurm/x/logs")),
            false,
        );
        assert!(script.starts_with("#!/bin/bash\n"));
        for line in [
            "#SBATCH --array=1-4",
            "#SBATCH --partition=gpu",
            "#SBATCH --time=01:00:00",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --gpus-per-task=1",
            "exec /w/target/release/xtask ablate configs/a.yaml --budget smoke --out 'results/x y' --threads 8 --device cuda:0",
        ] {
            assert!(script.lines().any(|l| l == line), "{line} in:\n{script}");
        }
        let merge = sbatch_script(
            (Path::new("/w/target/release/xtask"), "ablate"),
            Path::new("/w"),
            &args,
            &options(),
            ("unetlab-x-merge", Path::new("/w/target/slurm/x/logs")),
            true,
        );
        assert!(merge.lines().any(|l| l.ends_with(" --merge")));
        assert!(!merge.contains("--array="));
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
