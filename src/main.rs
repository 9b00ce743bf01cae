//! `moec`, the command line: check, graph, run, bench, compile and build `.moe` specs,
//! generate text with a whole model, and trace its routing (and report on a trace).
//!
//! Every failure is reported as a message on stderr and exit status 1; spec
//! errors carry file:line:col and a source snippet.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "moec",
    version,
    about = "A compiler for Mixture-of-Experts layers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a spec (and, with --weights, a weights file against it).
    Check(cmd::check::Args),
    /// Print the graph IR of a spec.
    Graph(cmd::graph::Args),
    /// Run a spec on weights and inputs.
    Run(cmd::run::Args),
    /// Time a spec's scheduled and dense graphs at several token counts.
    Bench(cmd::bench::Args),
    /// Generate code for a spec's kernels (`--target clif`) into a directory.
    Compile(cmd::compile::Args),
    /// Build a standalone executable that runs a spec on the CPU (ahead of time).
    Build(cmd::build::Args),
    /// Generate text with a whole model from a prompt (greedy, or sampled with --temperature).
    Generate(cmd::generate::GenerateArgs),
    /// Record which experts every token went to in every MoE block (a safetensors trace).
    Trace(cmd::trace::Args),
    /// Write an HTML page and SVG figures from a routing trace (`moec trace`'s file).
    Report(cmd::report::Args),
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of stdout goes away (`moec bench | head`)
    // instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default SIGPIPE action before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(a) => cmd::check::main(a),
        Command::Graph(a) => cmd::graph::main(a),
        Command::Run(a) => cmd::run::main(a),
        Command::Bench(a) => cmd::bench::main(a),
        Command::Compile(a) => cmd::compile::main(a),
        Command::Build(a) => cmd::build::main(a),
        Command::Generate(a) => cmd::generate::main(a),
        Command::Trace(a) => cmd::trace::main(a),
        Command::Report(a) => cmd::report::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{}", message.trim_end());
            ExitCode::FAILURE
        }
    }
}
