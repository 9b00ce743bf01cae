//! `moec graph SPEC [--passes none|all] [--after NAME|all] [--format text|dot|json]
//! [--stats [--tokens N]]`: prints the graph IR after the selected passes, or with
//! `--stats` its cost figures next to the dense (lowered) graph's.

use super::{ConfigArgs, PassArgs, SpecArgs};
use clap::ValueEnum;
use moec_compiler::passes::{run_pipeline, Upto};
use moec_compiler::{print, stats};
use std::io::Write;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Dot,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    passes: PassArgs,
    /// Run the pipeline up to and including this step (`all`: every step).
    #[arg(long, value_name = "NAME", conflicts_with = "passes")]
    after: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Print cost figures (FLOPs, weight bytes, peak activation memory, kernels)
    /// against the dense graph instead of the graph.
    #[arg(long)]
    stats: bool,
    /// The token count for --stats.
    #[arg(long, default_value_t = 1, requires = "stats")]
    tokens: usize,
    /// For --stats: count the matmul weights --expert-format or --weight-format
    /// covers in that format, as the cpu backend stores them (the dense graph has no
    /// stacked expert weights: they stay f32 there)
    #[command(flatten)]
    storage: super::StorageArgs,
}

pub fn main(args: Args) -> Result<(), String> {
    let upto = super::upto(args.passes.passes, args.after.as_deref())?;
    let storage = args.storage.storage(false)?;
    if storage.is_some() && !args.stats {
        return Err(
            "--expert-format and --weight-format count bytes for --stats: give it too".into(),
        );
    }
    let mut dense = super::compile(&args.spec, args.config.weights.as_deref(), Upto::None)?.graph;
    let mut g = dense.clone();
    run_pipeline(&mut g, upto, true).map_err(|e| format!("internal error: {e}"))?;
    if let Some(s) = storage {
        s.apply(&mut g);
        s.apply(&mut dense);
    }
    let text = if args.stats {
        stats::table(
            &stats::stats(&g, args.tokens),
            &stats::stats(&dense, args.tokens),
        )
    } else {
        match args.format {
            Format::Text => print::text(&g),
            Format::Dot => print::dot(&g),
            Format::Json => print::json(&g) + "\n",
        }
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write the graph: {e}"))
        }
        _ => Ok(()),
    }
}
