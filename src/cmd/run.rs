//! `moec run SPEC`: binds weights (a file, or `--random-weights SEED`), reads the
//! inputs (a file, or `--tokens N` random ones), runs the pass pipeline (`--passes
//! none` skips it), checks that weights and activations fit in memory (`--max-memory`),
//! runs it on the interpreter, the CPU or the GPU backend (`--backend`),
//! and writes the outputs.
//!
//! Under `mpirun -np N` (`ranks.rs`) each rank runs its partition of the graph on the
//! interpreter or the CPU backend; rank 0 reads or makes the inputs and hands them to the
//! others, and only rank 0 prints and writes the outputs (every rank computes them).

use super::{Backend, PassArgs, SpecArgs};
use moec_compiler::diagnostic::Diagnostic;
use moec_compiler::interp::{self, token_count, Comm, SingleRank, State};
use moec_compiler::ir::{Graph, Op};
use moec_compiler::quant::WeightFormat;
use moec_compiler::storage;
use moec_compiler::tensor::{ShapeDisplay, Tensor, TensorData};
use moec_runtime::budget::MemoryNeeds;
use moec_runtime::cpu::{CpuModel, MatmulIsa};
use moec_runtime::gpu::GpuModel;
use moec_runtime::io::{read_tensors, write_tensors};
use moec_runtime::random::{random_inputs, RandomWeights};
use moec_runtime::session::{Engine, Model};
use moec_runtime::weights::{check, keep_checkpoint_bf16, WeightErrors, WeightSet, WeightSource};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    passes: PassArgs,
    /// Weights: a safetensors file, a sharded `model.safetensors.index.json`, or a directory
    /// (whose config.json, if any, supplies params).
    #[arg(long, conflicts_with = "random_weights")]
    weights: Option<PathBuf>,
    /// Use deterministic random weights from this seed instead of a file.
    #[arg(long, value_name = "SEED")]
    random_weights: Option<u64>,
    /// Inputs: a safetensors file with one tensor per spec input.
    #[arg(long, conflicts_with = "tokens")]
    input: Option<PathBuf>,
    /// Without --input: random inputs with this many tokens.
    #[arg(long)]
    tokens: Option<usize>,
    /// Where to write the outputs (safetensors).
    #[arg(long)]
    output: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "interp")]
    backend: Backend,
    #[command(flatten)]
    cpu: super::CpuArgs,
    /// With --random-weights: round them to this dtype (bf16: the cpu backend streams bf16 panels).
    #[arg(long, value_parser = super::formats(&["f32", "f16", "bf16", "q8_0", "q4_0"]), default_value = "f32", requires = "random_weights")]
    weight_dtype: WeightFormat,
    /// gpu backend: store matmul weights as f16 (rounded; needs the adapter's `shader-f16`).
    #[arg(long)]
    f16_weights: bool,
    #[command(flatten)]
    memory: super::MemoryArgs,
    /// Under mpirun: the rank holding each expert of every MoE layer, in expert order
    /// (`--expert-ranks 0,0,1,1`); without it, contiguous blocks.
    #[arg(long, value_name = "RANKS")]
    expert_ranks: Option<String>,
}

pub fn main(args: Args) -> Result<(), String> {
    let world = super::ranks::start()?;
    let result = run(&args, world.as_ref());
    super::ranks::finish(world.as_ref(), result)
}

fn run(args: &Args, world: Option<&super::ranks::World>) -> Result<(), String> {
    let gpu_options = super::gpu_options(args.backend, args.f16_weights)?;
    let placement = super::ranks::placement(world, args.expert_ranks.as_deref())?;
    let writes = super::ranks::writes_output(world);
    let upto = super::upto(args.passes.passes, None)?;
    let compiled = super::compile(&args.spec, args.weights.as_deref(), upto)?;
    let mut g = compiled.graph.clone();
    let comm: Arc<dyn Comm> = match world {
        None => Arc::new(SingleRank),
        Some(_) if matches!(args.backend, Backend::Gpu) => {
            return Err("a run over MPI ranks uses --backend cpu or interp".into())
        }
        Some(world) => super::ranks::Ranked {
            world,
            placement,
            settings: format!(
                "{:?} {:?} {:?}",
                args.tokens, args.random_weights, args.passes.passes as u8
            ),
        }
        .partition(&mut g)?,
    };
    let gpu = matches!(args.backend, Backend::Gpu);
    args.cpu.storage.apply(&mut g, gpu)?;
    let explain = |e: WeightErrors| super::explain_weights_error(e.to_string(), &compiled);
    let source = match &args.weights {
        Some(path) => Some(WeightSource::open(path).map_err(|e| e.to_string())?),
        None => None,
    };
    if matches!(args.backend, Backend::Cpu) {
        // What the kernels pack: bf16 stays bf16.
        match &source {
            Some(source) => keep_checkpoint_bf16(&mut g, source).map_err(explain)?,
            None if args.weight_dtype == WeightFormat::Bf16 => storage::keep_bf16(&mut g, |_| true),
            None => {}
        }
    }
    let g = &g;
    let spec_file = args.spec.spec.display().to_string();
    let inputs = match &args.input {
        Some(path) if writes => Some(read_tensors(path).map_err(|e| e.to_string())?),
        _ => None,
    };
    // Rank 0's inputs, read or made, are every rank's.
    let inputs = match (world, inputs) {
        (None, inputs) => inputs,
        (Some(w), Some(inputs)) => Some(w.broadcast(Some(inputs))?),
        (Some(w), None) if writes => {
            let tokens = args
                .tokens
                .ok_or("no inputs: give --input FILE or --tokens N")?;
            let seed = args.random_weights.unwrap_or(0);
            Some(w.broadcast(Some(random_inputs(g, tokens, seed)))?)
        }
        (Some(w), None) => Some(w.broadcast(None)?),
    };
    let tokens = match (&inputs, &args.input) {
        (Some(inputs), Some(path)) => {
            let file = path.display().to_string();
            let count = token_count(g, inputs).map_err(|e| format!("{file}: {e}"))?;
            if let Some(w) = extra_tensors(g, inputs).filter(|_| writes) {
                eprintln!("{}", w.render(&file, "").trim_end());
            }
            count
        }
        _ => args
            .tokens
            .ok_or("no inputs: give --input FILE or --tokens N")?,
    };
    let cpu = args.cpu.options(matches!(args.backend, Backend::Cpu))?;
    // Nothing large is allocated before the plan is known to fit.
    args.memory
        .check(&MemoryNeeds::of(g, args.backend.engine(cpu), tokens, 0))?;
    // Weights are read (or made) as the backend takes them: the cpu backend one matmul at a time.
    let (checked, random);
    let weights: &dyn WeightSet = match (&source, args.random_weights) {
        (Some(source), _) => {
            checked = check(&g.weights, source).map_err(explain)?;
            &checked
        }
        (None, Some(seed)) => {
            random = RandomWeights {
                decls: &g.weights,
                seed,
                format: args.weight_dtype,
            };
            &random
        }
        (None, None) => {
            return Err("no weights: give --weights FILE or --random-weights SEED".into())
        }
    };
    let inputs = match inputs {
        Some(inputs) => inputs,
        None => random_inputs(g, tokens, args.random_weights.unwrap_or(0)),
    };
    let outputs = match args.backend {
        // An encoder-decoder runs as its two programs, on any backend (`passes::stages`).
        _ if g.decoder_start.is_some() && !matches!(args.backend, Backend::Interp) => {
            let engine = match args.backend {
                Backend::Gpu => Engine::Gpu(gpu_options),
                _ => Engine::Cpu(cpu),
            };
            Model::with_weights(g.clone(), weights, engine)
                .and_then(|m| Rc::new(m).session(None).run(&inputs))
                .map_err(|e| e.to_string())
        }
        Backend::Interp => {
            let weights = weights.tensors();
            interp::run_with_comm(g, &weights, &inputs, &mut State::new(g), &*comm)
        }
        Backend::Cpu => {
            let isa = cpu.isa.unwrap_or_else(MatmulIsa::host);
            CpuModel::for_isa(g, weights, isa).and_then(|m| m.with_comm(comm).run(&inputs))
        }
        Backend::Gpu => GpuModel::new(g, &weights.tensors(), gpu_options).and_then(|m| {
            eprintln!("gpu: {}", m.adapter());
            for w in m.warnings() {
                eprintln!("{}", w.render(&spec_file, "").trim_end());
            }
            m.run(&inputs)
        }),
    }
    .map_err(|e| match &args.input {
        Some(p) => format!("{}: {e}", p.display()),
        None => e,
    })?;
    if !writes {
        return Ok(());
    }
    for (name, t) in &outputs {
        println!(
            "{name}: {} {}{}",
            t.dtype_name(),
            ShapeDisplay(&t.shape),
            summary(t)
        );
    }
    if let Some(path) = &args.output {
        write_tensors(path, &outputs).map_err(|e| e.to_string())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// A warning naming the tensors of an input file that are no input of `g`.
fn extra_tensors(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> Option<Diagnostic> {
    let names: Vec<&str> = g
        .inputs
        .iter()
        .filter_map(|&n| match &g.node(n).op {
            Op::Input { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let extra: Vec<String> = inputs
        .keys()
        .filter(|name| !names.contains(&name.as_str()))
        .map(|name| format!("`{name}`"))
        .collect();
    (!extra.is_empty()).then(|| {
        Diagnostic::warning(format!(
            "{} tensor(s) in the file are no input of the spec and are ignored: {}",
            extra.len(),
            extra.join(", ")
        ))
    })
}

fn summary(t: &Tensor) -> String {
    match &t.data {
        TensorData::F32(v) if !v.is_empty() => {
            let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let mean = v.iter().map(|x| x.abs() as f64).sum::<f64>() / v.len() as f64;
            format!("  mean|x|={mean:.4} max|x|={max:.4}")
        }
        TensorData::I32(v) => format!("  {v:?}").chars().take(80).collect(),
        _ => String::new(),
    }
}
