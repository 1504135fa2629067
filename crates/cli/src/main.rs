//! The `unetlab` command line.

mod bench;
mod compare;
mod convert;
mod count;
mod export;
mod forward;
mod precision;
mod sample;
mod score;
mod table;
mod text_encoder;
mod train;

use clap::{Parser, Subcommand};

/// Design, count and compare text-to-image diffusion UNets (a MobileDiffusion study workbench).
///
/// A config is a preset name (sd15, sd21, sdxl, mobilediffusion, md-lite) or a YAML file path.
#[derive(Parser)]
#[command(name = "unetlab", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Count(count::CountArgs),
    Bench(bench::BenchArgs),
    Compare(compare::CompareArgs),
    Forward(forward::ForwardArgs),
    Convert(convert::ConvertArgs),
    Export(export::ExportArgs),
    Precision(precision::PrecisionArgs),
    Train(train::TrainArgs),
    TextEncoder(text_encoder::TextEncoderArgs),
    Sample(sample::SampleArgs),
    Score(score::ScoreArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Count(args) => count::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Forward(args) => forward::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Precision(args) => precision::run(&args),
        Command::Train(args) => train::run(&args),
        Command::TextEncoder(args) => text_encoder::run(&args),
        Command::Sample(args) => sample::run(&args),
        Command::Score(args) => score::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
