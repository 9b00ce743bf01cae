//! `moec check SPEC [--weights W]`: the spec's diagnostics, a summary, every param
//! with its value and where the value came from (default, config.json, `--set`),
//! and, given weights, every missing, mis-shaped or mistyped tensor at once.

use super::SpecArgs;
use moec_compiler::lower::{Const, ParamSource};
use moec_compiler::passes::Upto;
use moec_runtime::weights::{check, unused, WeightSource};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// Also check a weights file (safetensors, sharded index json, or a directory; a
    /// directory's config.json supplies params).
    #[arg(long)]
    weights: Option<PathBuf>,
}

pub fn main(args: Args) -> Result<(), String> {
    let lowered = super::compile(&args.spec, args.weights.as_deref(), Upto::None)?;
    let g = &lowered.graph;
    moec_compiler::verify::verify(g)
        .map_err(|e| format!("internal error: the lowered graph is invalid: {e}"))?;
    let weight_count: usize = g
        .weights
        .iter()
        .map(|w| w.shape.iter().product::<usize>())
        .sum();
    println!(
        "ok: model {} ({} nodes, {} weight tensors, {} weight values)",
        g.name,
        g.g.node_count(),
        g.weights.len(),
        weight_count,
    );
    print!("{}", params_table(&lowered.params));
    if let Some(path) = &args.weights {
        let source = WeightSource::open(path).map_err(|e| e.to_string())?;
        let extra = unused(&g.weights, &source);
        // Headers only: whether every tensor is there in a dtype and shape the spec reads
        // (reading the values could find nothing more, and a large checkpoint would not fit).
        check(&g.weights, &source)
            .map_err(|e| super::explain_weights_error(e.to_string(), &lowered))?;
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

/// One line per param: `name = value   source`, in aligned columns.
fn params_table(params: &[(String, Const, ParamSource)]) -> String {
    let rows: Vec<(&str, String, String)> = params
        .iter()
        .map(|(name, value, source)| {
            let source = match source {
                ParamSource::Default => "default".to_string(),
                ParamSource::Set => "--set".to_string(),
                ParamSource::Config(path) if path == name => "config.json".to_string(),
                ParamSource::Config(path) => format!("config.json {path}"),
            };
            (name.as_str(), value.to_string(), source)
        })
        .collect();
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let mut out = String::from("params:\n");
    for (name, value, source) in rows {
        out += &format!("  {name:<name_width$} = {value:<value_width$}   {source}\n");
    }
    out
}
