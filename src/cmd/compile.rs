//! `moec compile SPEC --target clif|wgsl -o DIR`: runs the pass pipeline
//! (`--passes none` skips it) and writes what a backend would run, into DIR
//! (created if needed):
//!
//! - `clif`: the CLIF of every kernel the CPU backend would JIT, one
//!   `NAME.clif` per kernel, generated for a fixed target
//!   (`backend::clif::Target::default()`: x86-64 System V, FMA on), not the
//!   host's ISA, so it is the same on every machine;
//! - `wgsl`: one `NAME.wgsl` per GPU kernel and `plan.json` (buffers, what fills
//!   them, dispatch order and sizes), enough for any wgpu host to run them;
//!   `--max-binding-bytes` and `--f16-weights` pick what the plan assumes.

use super::{ConfigArgs, PassArgs, SpecArgs};
use clap::ValueEnum;
use moec_compiler::backend::clif::{clif_text, Target as ClifTarget};
use moec_compiler::backend::wgsl;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Cranelift IR of the CPU backend's kernels.
    Clif,
    /// WebGPU compute shaders and their plan.
    Wgsl,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    passes: PassArgs,
    /// What to generate.
    #[arg(long, value_enum)]
    target: Target,
    /// The directory to write the kernels into (created if missing).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,
    /// wgsl: the largest storage binding the plan may use; larger weights are split.
    #[arg(long, default_value_t = wgsl::Options::default().max_binding_bytes)]
    max_binding_bytes: u64,
    /// wgsl: store matmul weights as f16 (needs the adapter's `shader-f16`).
    #[arg(long)]
    f16_weights: bool,
}

pub fn main(args: Args) -> Result<(), String> {
    let upto = super::upto(args.passes.passes, None)?;
    let g = super::compile(&args.spec, args.config.weights.as_deref(), upto)?.graph;
    let files: Vec<(String, String)> = match args.target {
        Target::Clif => clif_text(&g, &ClifTarget::default())
            .into_iter()
            .map(|(name, text)| (format!("{name}.clif"), text))
            .collect(),
        Target::Wgsl => {
            if args.max_binding_bytes < 4 {
                return Err("--max-binding-bytes must be at least 4".into());
            }
            let options = wgsl::Options {
                max_binding_bytes: args.max_binding_bytes,
                f16_weights: args.f16_weights,
            };
            let program = wgsl::lower(&g, &options)?;
            let plan = serde_json::to_string_pretty(&program.plan)
                .map_err(|e| format!("internal error: writing plan.json: {e}"))?;
            let mut files: Vec<(String, String)> = program
                .plan
                .kernels
                .iter()
                .zip(program.sources)
                .map(|(k, src)| (format!("{}.wgsl", k.name), src))
                .collect();
            files.push(("plan.json".into(), plan));
            files
        }
    };
    let dir = &args.output;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("{}: cannot create the directory: {e}", dir.display()))?;
    for (name, text) in &files {
        write(&dir.join(name), text)?;
    }
    println!(
        "wrote {} file{} to {}",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        dir.display()
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
