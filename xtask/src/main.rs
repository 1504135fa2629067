//! Project automation: `cargo xtask <command>`.

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
    /// Regenerate the generated tables in the docs (configs/README.md) from the cost interpreter.
    Docs {
        /// Fail if a generated table is out of date instead of rewriting it.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Docs { check } => docs::run(check),
    }
}
