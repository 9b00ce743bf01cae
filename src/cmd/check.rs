//! `moec check SPEC [--weights W]`: the spec's diagnostics, a summary, and, given
//! weights, every missing, mis-shaped or mistyped tensor at once.

use super::SpecArgs;
use moec_runtime::weights::{bind, unused, WeightSource};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// Also check a weights file (safetensors, sharded index json, or a directory).
    #[arg(long)]
    weights: Option<PathBuf>,
}

pub fn main(args: Args) -> Result<(), String> {
    let lowered = super::load(&args.spec)?;
    let g = &lowered.graph;
    moec_compiler::verify::verify(g)
        .map_err(|e| format!("internal error: the lowered graph is invalid: {e}"))?;
    let params: Vec<String> = lowered
        .params
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    let weight_count: usize = g
        .weights
        .iter()
        .map(|w| w.shape.iter().product::<usize>())
        .sum();
    println!(
        "ok: model {} ({} nodes, {} weight tensors, {} weight values)\n  params: {}",
        g.name,
        g.g.node_count(),
        g.weights.len(),
        weight_count,
        params.join(" ")
    );
    if let Some(path) = &args.weights {
        let source = WeightSource::open(path).map_err(|e| e.to_string())?;
        let extra = unused(&g.weights, &source);
        bind(&g.weights, &source).map_err(|e| e.to_string())?;
        println!(
            "ok: {} binds all {} weights",
            path.display(),
            g.weights.len()
        );
        if !extra.is_empty() {
            println!(
                "note: {} tensors near the bound ones are not used by the spec:",
                extra.len()
            );
            for name in extra {
                println!("  {name}");
            }
        }
    }
    Ok(())
}
