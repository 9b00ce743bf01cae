//! `moec report TRACE -o DIR`: the routing report of a trace written by
//! `moec trace` — `DIR/index.html` and its SVG figures (`moec_report`,
//! `docs/trace.md`). Parses the options and prints what was written.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A routing trace (safetensors) written by `moec trace`.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// The directory to write index.html and the figures into (created if missing).
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
}

pub fn main(args: Args) -> Result<(), String> {
    let written = moec_report::write(&args.trace, &args.output)?;
    println!(
        "wrote {}: {} tokens, {} MoE blocks, {} files",
        written.files[0].display(),
        written.tokens,
        written.blocks,
        written.files.len()
    );
    Ok(())
}
