//! `moec compile SPEC --target clif -o DIR`: runs the pass pipeline (`--passes
//! none` skips it) and writes the CLIF of every kernel the CPU backend would JIT
//! for the graph, one `NAME.clif` file per kernel, into DIR (created if needed).
//!
//! The text is generated for a fixed target, `backend::clif::Target::default()`
//! (x86-64 System V, FMA on), not the host's ISA, so it is the same on every
//! machine. `--target wgsl` is not implemented yet.

use super::{PassArgs, SpecArgs};
use clap::ValueEnum;
use moec_compiler::backend::clif::{clif_text, Target as ClifTarget};
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Cranelift IR of the CPU backend's kernels.
    Clif,
    /// WebGPU shaders (not implemented yet).
    Wgsl,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    passes: PassArgs,
    /// What to generate.
    #[arg(long, value_enum)]
    target: Target,
    /// The directory to write the kernels into (created if missing).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,
}

pub fn main(args: Args) -> Result<(), String> {
    if args.target == Target::Wgsl {
        return Err("--target wgsl is not implemented yet; the only code target is `clif`".into());
    }
    let mut g = super::load(&args.spec)?.graph;
    super::optimize(&mut g, super::upto(args.passes.passes, None)?)?;
    let kernels = clif_text(&g, &ClifTarget::default());
    let dir = &args.output;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("{}: cannot create the directory: {e}", dir.display()))?;
    for (name, text) in &kernels {
        let path = dir.join(format!("{name}.clif"));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    println!(
        "wrote {} kernel{} to {}",
        kernels.len(),
        if kernels.len() == 1 { "" } else { "s" },
        dir.display()
    );
    Ok(())
}
