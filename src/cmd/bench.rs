//! `moec bench SPEC`: times runs of the scheduled graph and of the dense one
//! (`--passes none`: every expert on every token) at several token counts, on
//! random inputs and random weights (or a checkpoint, `--weights`). Each figure is
//! the median of `--repeats` runs after one warm-up run; GFLOP/s and weight GB/s
//! use `stats`' counting rules (weight bytes: what the kernels read, so routed
//! experts only for the scheduled graph). `--bandwidth` first measures the
//! machine's memory read bandwidth (`bandwidth.rs`), to compare weight GB/s with.
//! `--traced` also times the scheduled graph with its trace probes as outputs.

mod bandwidth;

use super::{Backend, Passes, SpecArgs};
use moec_compiler::ir::Graph;
use moec_compiler::quant::WeightFormat;
use moec_compiler::stats::stats;
use moec_compiler::storage;
use moec_compiler::tensor::Tensor;
use moec_runtime::budget::MemoryNeeds;
use moec_runtime::cpu::{CpuModel, MatmulIsa};
use moec_runtime::gpu::GpuModel;
use moec_runtime::random::{random_inputs, RandomWeights};
use moec_runtime::weights::{check, keep_checkpoint_bf16, WeightSet, WeightSource};
use std::collections::BTreeMap;
use std::path::PathBuf;
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
    /// Also time the scheduled graph with its routing-trace probes as outputs
    /// (`traced`: what `moec trace` runs), for tracing's overhead.
    #[arg(long)]
    traced: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weights: a safetensors file, a sharded `model.safetensors.index.json`, or a
    /// directory, whose config.json (if any) supplies params (default: random weights
    /// from `--seed`).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Worker threads of the cpu backend (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Also measure the memory read bandwidth (all cores, a 1 GiB buffer).
    #[arg(long)]
    bandwidth: bool,
    /// Round the random weights to this dtype: bf16 makes the cpu backend stream bf16 panels
    /// (a checkpoint's weights are used as it stores them: a bf16 one's stay bf16).
    #[arg(long, value_parser = super::formats(&["f32", "f16", "bf16", "q8_0", "q4_0"]), default_value = "f32", conflicts_with = "weights")]
    weight_dtype: WeightFormat,
    /// gpu backend: store matmul weights as f16 (rounded; needs the adapter's `shader-f16`).
    #[arg(long)]
    f16_weights: bool,
    #[command(flatten)]
    memory: super::MemoryArgs,
    /// cpu backend: matmul segments of at least this many rows use the gemm path
    /// (default: the runtime's measured threshold; 0 always, a huge value never).
    #[arg(long)]
    gemm_rows: Option<usize>,
    #[command(flatten)]
    cpu: super::CpuArgs,
}

/// A graph ready to run on the chosen backend.
enum Runner {
    Interp(Box<Graph>, Vec<Tensor>),
    Cpu(Box<CpuModel>),
    Gpu(Box<GpuModel>),
}

impl Runner {
    fn run(&self, inputs: &BTreeMap<String, Tensor>) -> Result<(), String> {
        match self {
            Runner::Interp(g, w) => moec_compiler::interp::run(g, w, inputs).map(drop),
            Runner::Cpu(m) => m.run(inputs).map(drop),
            Runner::Gpu(m) => m.run(inputs).map(drop),
        }
    }
}

pub fn main(args: Args) -> Result<(), String> {
    let gpu_options = super::gpu_options(args.backend, args.f16_weights)?;
    let backend = match args.backend {
        Backend::Interp => "interp",
        Backend::Cpu => "cpu",
        Backend::Gpu => "gpu",
    };
    let source = match &args.weights {
        Some(path) => Some(WeightSource::open(path).map_err(|e| e.to_string())?),
        None => None,
    };
    if args.bandwidth {
        let b = bandwidth::measure();
        let (gbps, threads, mib) = (b.read_gbps, b.threads, b.buffer_bytes >> 20);
        if args.json {
            println!(
                "{{\"backend\":\"memory\",\"read_gbps\":{gbps:.3},\"threads\":{threads},\"buffer_mib\":{mib}}}"
            );
        } else {
            println!("memory read bandwidth: {gbps:.2} GB/s ({threads} threads, {mib} MiB buffer)");
        }
    }
    if !args.json {
        println!(
            "{:<10} {:>7} {:>11} {:>9} {:>12}",
            "graph", "tokens", "median_ms", "GFLOP/s", "weight GB/s"
        );
    }
    let mut graphs = vec![(Passes::All, "scheduled")];
    if args.traced {
        graphs.push((Passes::All, "traced"));
    }
    if !args.no_dense {
        graphs.push((Passes::None, "dense"));
    }
    let cpu = args.cpu.options(matches!(args.backend, Backend::Cpu))?;
    for (passes, label) in graphs {
        let mut g = super::compile(
            &args.spec,
            args.weights.as_deref(),
            super::upto(passes, None)?,
        )?
        .graph;
        let tokens = args.tokens.iter().copied().max().unwrap_or(0);
        args.memory
            .check(&MemoryNeeds::of(&g, args.backend.engine(cpu), tokens, 0))?;
        if label == "traced" {
            g = moec_runtime::trace::probed(&g)?.0;
        }
        args.cpu
            .storage
            .apply(&mut g, matches!(args.backend, Backend::Gpu))?;
        if matches!(args.backend, Backend::Cpu) {
            // What the kernels pack, and what the GB/s below count: bf16 stays bf16.
            match &source {
                Some(source) => keep_checkpoint_bf16(&mut g, source).map_err(|e| e.to_string())?,
                None if args.weight_dtype == WeightFormat::Bf16 => {
                    storage::keep_bf16(&mut g, |_| true)
                }
                None => {}
            }
        }
        let checked;
        let random = RandomWeights {
            decls: &g.weights,
            seed: args.seed,
            format: args.weight_dtype,
        };
        let weights: &dyn WeightSet = match &source {
            Some(source) => {
                checked = check(&g.weights, source).map_err(|e| e.to_string())?;
                &checked
            }
            None => &random,
        };
        let runner = match args.backend {
            Backend::Interp => Runner::Interp(Box::new(g.clone()), weights.tensors().into_owned()),
            Backend::Cpu => {
                let isa = cpu.isa.unwrap_or_else(MatmulIsa::host);
                let mut model = CpuModel::for_isa(&g, weights, isa)?;
                if let Some(n) = args.threads {
                    model = model.with_threads(n);
                }
                if let Some(rows) = args.gemm_rows {
                    model = model.with_gemm_rows(rows);
                }
                Runner::Cpu(Box::new(model))
            }
            Backend::Gpu => {
                let model = GpuModel::new(&g, &weights.tensors(), gpu_options)?;
                eprintln!("gpu: {}", model.adapter());
                Runner::Gpu(Box::new(model))
            }
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
