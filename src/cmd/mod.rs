//! One module per subcommand, and the front end they share: read a spec, take its
//! params from a checkpoint's config.json (`--weights DIR`) and `--set`, lower it,
//! render any diagnostic against the file, and run the pass pipeline (`--passes`).

pub mod bench;
pub mod build;
pub mod check;
pub mod compile;
pub mod generate;
pub mod graph;
pub mod run;

use clap::{Args as ClapArgs, ValueEnum};
use moec_compiler::config::HfConfig;
use moec_compiler::diagnostic::Diagnostic;
use moec_compiler::ir::Graph;
use moec_compiler::lower::{lower, Lowered, ParamInputs};
use moec_compiler::passes::{self, run_pipeline, Upto};
use moec_compiler::tensor::Tensor;
use moec_runtime::random::round_to_bf16;
use std::path::{Path, PathBuf};

/// Where a graph runs (`run` and `bench`).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Backend {
    /// The reference interpreter.
    Interp,
    /// Cranelift JIT-compiled kernels on all cores.
    Cpu,
    /// WGSL kernels on the best wgpu adapter (Mesa's software Vulkan driver where there is no GPU).
    Gpu,
}

/// `--weight-dtype` (`run` and `bench` with random weights): the values to use.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightDType {
    /// As generated.
    F32,
    /// Rounded to the nearest bf16 value (the cpu backend then packs bf16 panels).
    Bf16,
}

impl WeightDType {
    pub fn round(self, weights: Vec<Tensor>) -> Vec<Tensor> {
        match self {
            WeightDType::F32 => weights,
            WeightDType::Bf16 => weights.into_iter().map(round_to_bf16).collect(),
        }
    }
}

/// GPU model options from `--f16-weights`, which only the gpu backend takes.
pub fn gpu_options(
    backend: Backend,
    f16_weights: bool,
) -> Result<moec_runtime::gpu::GpuOptions, String> {
    if f16_weights && !matches!(backend, Backend::Gpu) {
        return Err("--f16-weights is an option of the gpu backend (--backend gpu)".into());
    }
    Ok(moec_runtime::gpu::GpuOptions {
        f16_weights,
        ..Default::default()
    })
}

/// The arguments every command that reads a spec takes.
#[derive(ClapArgs, Clone)]
pub struct SpecArgs {
    /// The `.moe` spec.
    pub spec: PathBuf,
    /// Override a param: `--set hidden_size=64` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String)>,
}

/// `--weights DIR` for the commands that read only a checkpoint's config.json.
#[derive(ClapArgs, Clone)]
pub struct ConfigArgs {
    /// A checkpoint directory: its config.json supplies params (its weights are not read).
    #[arg(long, value_name = "DIR")]
    pub weights: Option<PathBuf>,
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, found `{s}`"))?;
    if k.trim().is_empty() {
        return Err(format!("expected NAME=VALUE, found `{s}`"));
    }
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Reads and lowers the spec, its params taken from the config.json of the checkpoint
/// directory `weights` (if it has one) and `--set`; errors come back rendered.
pub fn load(args: &SpecArgs, weights: Option<&Path>) -> Result<Lowered, String> {
    let name = args.spec.display().to_string();
    let source = std::fs::read_to_string(&args.spec)
        .map_err(|e| format!("{name}: cannot read the spec: {e}"))?;
    let config = match weights {
        Some(dir) if dir.is_dir() => HfConfig::open(dir).map_err(|e| e.to_string())?,
        _ => None,
    };
    let inputs = ParamInputs {
        sets: args.sets.clone(),
        config,
    };
    let lowered = moec_grammar::parse(&source)
        .map_err(Diagnostic::from)
        .and_then(|spec| lower(&spec, &inputs))
        .map_err(|d| d.render(&name, &source))?;
    for note in &lowered.notes {
        eprintln!(
            "{}",
            note.render(&name, &source)
                .replacen("×", "note:", 1)
                .trim_end()
        );
    }
    Ok(lowered)
}

/// Which passes a command runs.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Passes {
    /// The graph as lowered: every expert on every token.
    None,
    /// The whole pipeline.
    All,
}

/// `--passes`, for every command that takes a graph past lowering.
#[derive(ClapArgs, Clone)]
pub struct PassArgs {
    /// Run the pass pipeline (`all`) or use the graph as lowered (`none`).
    #[arg(long, value_enum, default_value = "all")]
    pub passes: Passes,
}

/// Resolves `--after NAME|all` (or, without it, `--passes`) to the steps to run;
/// an unknown step name is an error listing the pipeline.
pub fn upto<'a>(passes: Passes, after: Option<&'a str>) -> Result<Upto<'a>, String> {
    match after {
        Some("all") => Ok(Upto::All),
        Some(name) if passes::names().contains(&name) => Ok(Upto::After(name)),
        Some(name) => Err(format!(
            "no pass named `{name}`; the pipeline is: {} (or `all`)",
            passes::names().join(", ")
        )),
        None if passes == Passes::None => Ok(Upto::None),
        None => Ok(Upto::All),
    }
}

/// Runs the pipeline up to `upto`, verifying after every step: a failure is a compiler bug.
pub fn optimize(g: &mut Graph, upto: Upto) -> Result<(), String> {
    run_pipeline(g, upto, true).map_err(|e| format!("internal error: {e}"))
}

/// Compiles the spec (every pass), checks that the model fits in the memory
/// available, binds the weights at `weights` and prepares them for `engine`.
pub fn open_model(
    spec: &SpecArgs,
    weights: &std::path::Path,
    engine: moec_runtime::session::Engine,
) -> Result<std::sync::Arc<moec_runtime::session::Model>, String> {
    use moec_runtime::budget::{available_memory, MemoryNeeds};
    use moec_runtime::weights::{bind, WeightSource};
    let mut g = load(spec, Some(weights))?.graph;
    optimize(&mut g, Upto::All)?;
    let positions = g.max_positions.unwrap_or(0) as usize;
    let needs = MemoryNeeds::of(&g, engine, positions.max(1), positions);
    if let Some(available) = available_memory() {
        needs.check(available)?;
    }
    let source = WeightSource::open(weights).map_err(|e| e.to_string())?;
    let bound = bind(&g.weights, &source).map_err(|e| e.to_string())?;
    moec_runtime::session::Model::new(g, bound, engine)
        .map(std::sync::Arc::new)
        .map_err(|e| e.to_string())
}
