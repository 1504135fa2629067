//! Project automation: `cargo xtask <command>`.

mod ablate;
mod cache;
mod claims;
mod counts;
mod docs;
mod export_results;
mod fuzz;
mod notebooks;
mod onnx_check;
mod peer_bench;
mod precision;
mod recipe;
pub(crate) mod search;
mod setup;
mod shard;
mod slurm;
mod stats;
mod tools;
mod training;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// unetlab project automation.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Count and time every config (the MobileDiffusion study and yours); tables, plots and
    /// run.json in `results/<study>/`. Measurements are cached: re-runs measure only what changed.
    Ablate(ablate::AblateArgs),
    /// Count every preset by place (direction, level, block kind: parameters and MACs by kind)
    /// into results/counts/ (seconds; no weights, no measurement).
    Counts,
    /// Regenerate the generated tables in the docs: Table 1 in configs/README.md (from the cost
    /// interpreter) and the results table in README.md (from results/ablate/table.md).
    Docs {
        /// Fail if a generated table is out of date instead of rewriting it.
        #[arg(long)]
        check: bool,
    },
    /// Fuzz every reader of user files (configs, study files, search files, weights, checkpoints,
    /// bundles, Parquet, image folders, tokenizers) from valid seeds; panics, hangs and crashes are
    /// findings, saved under target/fuzz/findings/.
    ///
    /// Each case mutates a valid seed input written by the project's own code (byte flips,
    /// truncation, insertions, deletions, splices, and format-aware edits of YAML/JSON trees,
    /// safetensors headers, PNG chunks and bundle manifests) and runs the real reader on it in a
    /// worker process. A panic, a case running longer than --hang-seconds or a crashed worker (an
    /// abort, an allocation past its 8 GiB) is a finding: its input is saved and the command
    /// fails. Every other case is a successful read or a named error, counted by kind. Case I is
    /// a function of --seed and I, so `--from I --cases I+1` reruns it alone.
    Fuzz(fuzz::FuzzArgs),
    /// Execute the Jupyter notebooks in notebooks/ headless against the committed results/
    /// (pinned packages in target/notebooks-venv), failing on any cell error; --update stores
    /// their outputs, --lab opens them in JupyterLab.
    Notebooks(notebooks::NotebooksArgs),
    /// Install the system packages the build and tests need, if missing (protoc for the
    /// test-only ONNX evaluator, a TrueType font for plots, Slurm and MUNGE for slurm-check).
    Setup,
    /// Check exported ONNX bundles with Python onnx.checker and ONNX Runtime (pip-installed into
    /// target/onnx-venv); --full also records the full-size MobileDiffusion export in results/export/.
    OnnxCheck(onnx_check::OnnxCheckArgs),
    /// Time proxy training in unetlab beside PyTorch eager on the identical network (a pinned
    /// torch in target/peer-venv; a check that both networks match comes first); writes
    /// results/peers/. A benchmark: minutes, not part of the tests.
    PeerBench(peer_bench::PeerBenchArgs),
    /// What f16, bf16 and int8 do to the gelu and swish steps of the chain and to MobileDiffusion
    /// (`unetlab precision`): at full size with seeded weights and on every seed of the proxies an
    /// ablate study trained; writes results/precision/. Minutes.
    Precision(precision::PrecisionArgs),
    /// The training-recipe study: train each experiment of a recipe file (default
    /// ablations/recipe.yaml) with quality scored along the way; curves against images seen,
    /// a table, plots and README in `results/<study>/`. Resumable: finished runs are read.
    Recipe(recipe::RecipeArgs),
    /// Walk a search file's design space (searches/*.yaml): count every candidate, predict its
    /// latency from a per-block table measured here, and write the Pareto front as configs ready
    /// for ablate, bench and export, in `results/<name>/`. Resumable: measurements are cached.
    Search(search::SearchArgs),
    /// Write the sbatch scripts that run a study (or a search) as Slurm job arrays (`cargo xtask
    /// slurm ablate|search <its arguments> --array N [--partition P] [--time T]
    /// [--cpus-per-task C] [--gpus-per-task G] [--submit]`): each task runs its `--shard` (from
    /// the array), a merge job that depends on them (afterok) writes the outputs; a search gets
    /// one array per stage. --submit submits them and prints their job ids.
    Slurm(slurm::SlurmArgs),
    /// Check the Slurm path on a real Slurm on this machine: start MUNGE, slurmctld and slurmd
    /// (one node, a generated slurm.conf), run a smoke study as a 2-task array plus merge and
    /// compare it with a single process, cancel a task of a second array mid-run and resubmit;
    /// stops every daemon it started. Part of `cargo xtask test`.
    SlurmCheck,
    /// The test suite: setup, `cargo test --workspace --release`, `onnx-check`, the notebooks,
    /// `slurm-check`.
    Test,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Ablate(args) => ablate::run(&args, docs::workspace()),
        Command::Counts => counts::run(&docs::workspace()),
        Command::Docs { check } => docs::run(check),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Setup => setup::run(),
        Command::Notebooks(args) => notebooks::run(&args, &docs::workspace()),
        Command::OnnxCheck(args) => onnx_check::run(&args),
        Command::PeerBench(args) => peer_bench::run(&args),
        Command::Precision(args) => precision::run(&args, &docs::workspace()),
        Command::Recipe(args) => recipe::run(&args, docs::workspace()),
        Command::Search(args) => search::run(&args, docs::workspace()),
        Command::Slurm(args) => slurm::run(&args, &docs::workspace()),
        Command::SlurmCheck => slurm::check::run(&docs::workspace()),
        Command::Test => test(),
    }
}

/// `cargo xtask test`: everything the README's test command promises.
fn test() -> Result<()> {
    setup::run()?;
    // The test binaries inherit the CLI's thread and spin settings through the environment
    // (without them candle reads /proc/cpuinfo on every matmul: ~10 % of the evaluator's test).
    unetlab_bench::prepare_process(None).map_err(anyhow::Error::msg)?;
    let status = tools::cargo()
        .current_dir(docs::workspace())
        .args(["test", "--workspace", "--release"])
        .status()?;
    if !status.success() {
        anyhow::bail!("cargo test failed ({status})");
    }
    onnx_check::run(&onnx_check::OnnxCheckArgs::default())?;
    notebooks::run(&notebooks::NotebooksArgs::default(), &docs::workspace())?;
    slurm::check::run(&docs::workspace())
}
