//! Project automation: `cargo xtask <command>`.

mod ablate;
mod docs;

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
    /// run.json in results/<study>/. Measurements are cached: re-runs measure only what changed.
    Ablate(ablate::AblateArgs),
    /// Regenerate the generated tables in the docs: Table 1 in configs/README.md (from the cost
    /// interpreter) and the results table in README.md (from results/ablate/table.md).
    Docs {
        /// Fail if a generated table is out of date instead of rewriting it.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Ablate(args) => ablate::run(&args, docs::workspace()),
        Command::Docs { check } => docs::run(check),
    }
}
