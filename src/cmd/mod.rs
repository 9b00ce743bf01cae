//! One module per subcommand, and the front end they share: read a spec, apply
//! `--set`, lower it, and render any diagnostic against the file.

pub mod check;
pub mod graph;
pub mod run;

use clap::Args as ClapArgs;
use moec_compiler::lower::{lower_source, Lowered};
use std::path::PathBuf;

/// The arguments every command that reads a spec takes.
#[derive(ClapArgs, Clone)]
pub struct SpecArgs {
    /// The `.moe` spec.
    pub spec: PathBuf,
    /// Override a param: `--set hidden_size=64` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String)>,
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, found `{s}`"))?;
    if k.trim().is_empty() {
        return Err(format!("expected NAME=VALUE, found `{s}`"));
    }
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Reads and lowers the spec; errors come back rendered.
pub fn load(args: &SpecArgs) -> Result<Lowered, String> {
    let name = args.spec.display().to_string();
    let source = std::fs::read_to_string(&args.spec).map_err(|e| format!("{name}: cannot read the spec: {e}"))?;
    let lowered = lower_source(&source, &args.sets).map_err(|d| d.render(&name, &source))?;
    for note in &lowered.notes {
        eprintln!("{}", note.render(&name, &source).replacen("×", "note:", 1).trim_end());
    }
    Ok(lowered)
}
