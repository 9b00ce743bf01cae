//! `moec bench SPEC`: times runs of the scheduled graph and of the dense one
//! (`--passes none`: every expert on every token) at several token counts, on
//! random weights and inputs. Each figure is the median of `--repeats` runs after
//! one warm-up run; GFLOP/s and weight GB/s use `stats`' counting rules (weight
//! bytes: what the kernels read, so routed experts only for the scheduled graph).

use super::{Backend, Passes, SpecArgs};
use moec_compiler::ir::Graph;
use moec_compiler::stats::stats;
use moec_compiler::tensor::Tensor;
use moec_runtime::cpu::CpuModel;
use moec_runtime::random::{random_inputs, random_weights};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// Token counts (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 128, 512])]
    tokens: Vec<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Timed runs per token count, after one warm-up run.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Time only the scheduled graph, not the dense one.
    #[arg(long)]
    no_dense: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A graph ready to run on the chosen backend.
enum Runner {
    Interp(Graph, Vec<Tensor>),
    Cpu(Box<CpuModel>),
}

impl Runner {
    fn run(&self, inputs: &BTreeMap<String, Tensor>) -> Result<(), String> {
        match self {
            Runner::Interp(g, w) => moec_compiler::interp::run(g, w, inputs).map(drop),
            Runner::Cpu(m) => m.run(inputs).map(drop),
        }
    }
}

pub fn main(args: Args) -> Result<(), String> {
    let backend = match args.backend {
        Backend::Interp => "interp",
        Backend::Cpu => "cpu",
    };
    if !args.json {
        println!(
            "{:<10} {:>7} {:>11} {:>9} {:>12}",
            "graph", "tokens", "median_ms", "GFLOP/s", "weight GB/s"
        );
    }
    let graphs: &[(Passes, &str)] = if args.no_dense {
        &[(Passes::All, "scheduled")]
    } else {
        &[(Passes::All, "scheduled"), (Passes::None, "dense")]
    };
    for &(passes, label) in graphs {
        let mut g = super::load(&args.spec)?.graph;
        super::optimize(&mut g, super::upto(passes, None)?)?;
        let weights = random_weights(&g.weights, args.seed);
        let runner = match args.backend {
            Backend::Interp => Runner::Interp(g.clone(), weights),
            Backend::Cpu => Runner::Cpu(Box::new(CpuModel::new(&g, &weights)?)),
        };
        for &t in &args.tokens {
            let inputs = random_inputs(&g, t, args.seed);
            runner.run(&inputs)?;
            let mut times = Vec::with_capacity(args.repeats.max(1));
            for _ in 0..args.repeats.max(1) {
                let start = Instant::now();
                runner.run(&inputs)?;
                times.push(start.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let secs = times[times.len() / 2];
            let s = stats(&g, t);
            let gflops = s.flops as f64 / secs / 1e9;
            let gbps = s.weight_bytes as f64 / secs / 1e9;
            let ms = secs * 1e3;
            if args.json {
                println!(
                    "{{\"graph\":\"{label}\",\"tokens\":{t},\"backend\":\"{backend}\",\"median_ms\":{ms:.4},\"gflops\":{gflops:.3},\"weight_gbps\":{gbps:.3}}}"
                );
            } else {
                println!("{label:<10} {t:>7} {ms:>11.3} {gflops:>9.2} {gbps:>12.2}");
            }
        }
    }
    Ok(())
}
