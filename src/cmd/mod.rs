//! One module per subcommand, and the front end they share: read a spec, take its
//! params from a checkpoint's config.json (`--weights DIR`) and `--set`, lower it,
//! render any diagnostic against the file, and run the pass pipeline (`--passes`).

pub mod bench;
pub mod build;
pub mod check;
pub mod compile;
pub mod generate;
pub mod graph;
pub mod ranks;
pub mod report;
pub mod run;
pub mod trace;

use clap::{Args as ClapArgs, ValueEnum};
use moec_compiler::driver::{Compiled, Compiler};
use moec_compiler::lower::{Limit, Limits, ParamSource};
use moec_compiler::passes::{self, Upto};
use moec_compiler::quant::WeightFormat;
use moec_compiler::storage::Storage;
use moec_runtime::budget::{parse_bytes, MemoryLimit, MemoryNeeds};
use moec_runtime::session::{CpuOptions, Engine};
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

impl Backend {
    /// The engine whose memory needs this backend has on the host with `cpu`'s
    /// options (the gpu backend keeps one f32 copy of the weights there, as the
    /// interpreter does).
    pub fn engine(self, cpu: CpuOptions) -> Engine {
        match self {
            Backend::Cpu => Engine::Cpu(cpu),
            Backend::Interp | Backend::Gpu => Engine::Interp,
        }
    }
}

/// A command-line value that names one of the weight formats `allowed` (by
/// `WeightFormat`'s names: the one vocabulary of the spec, the runtime and messages).
pub fn formats(
    allowed: &'static [&'static str],
) -> impl clap::builder::TypedValueParser<Value = WeightFormat> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(allowed).try_map(|s| s.parse::<WeightFormat>())
}

/// Which matmul weights are stored in another format than they were loaded in
/// (`storage::Storage`, recorded in the graph after the pass pipeline): the cpu
/// backend packs them so and the interpreter computes as it does; also what
/// `graph --stats` counts.
#[derive(clap::Args)]
pub struct StorageArgs {
    /// Store the experts' weights as bf16 or GGUF's q8_0 / q4_0 blocks (cpu with
    /// the avx512 matmuls, or interp); other weights stay as loaded
    #[arg(long, value_parser = formats(&["f32", "bf16", "q8_0", "q4_0"]), value_name = "FORMAT", conflicts_with = "weight_format")]
    pub expert_format: Option<WeightFormat>,
    /// Store every matmul's weights (experts, attention, dense layers, lm_head) as
    /// FORMAT, as llama.cpp quantizes a model; routers and matrices of fewer than 32
    /// columns stay as loaded. q8_0 / q4_0 matmuls also quantize their activations
    /// to 8-bit blocks
    #[arg(long, value_parser = formats(&["f32", "bf16", "q8_0", "q4_0"]), value_name = "FORMAT")]
    pub weight_format: Option<WeightFormat>,
}

impl StorageArgs {
    /// The choice, for a run on the gpu backend (which takes none) or another.
    pub fn storage(&self, gpu: bool) -> Result<Option<Storage>, String> {
        let experts = self.expert_format.map(Storage::experts);
        let storage = experts.or(self.weight_format.map(Storage::matmuls));
        if gpu && storage.is_some() {
            return Err(
                "--expert-format and --weight-format are for --backend cpu or interp: \
                 the gpu backend reads f32 weights (or f16 with --f16-weights)"
                    .into(),
            );
        }
        Ok(storage)
    }

    /// Records the choice in `g` (`Storage::apply`), for a run on the gpu backend or another.
    pub fn apply(&self, g: &mut moec_compiler::ir::Graph, gpu: bool) -> Result<(), String> {
        if let Some(s) = self.storage(gpu)? {
            s.apply(g);
        }
        Ok(())
    }
}

/// The CPU backend's options on the command line (`generate`, `trace`, `run`, `bench`),
/// and how the weights are stored.
#[derive(clap::Args)]
pub struct CpuArgs {
    /// cpu backend: the matmuls' inner loops (default: the fastest exact ones this CPU runs)
    #[arg(long, value_enum)]
    pub matmul_isa: Option<MatmulIsaArg>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

impl CpuArgs {
    /// The options, for a run on the cpu backend or (`cpu` false) another one,
    /// which takes none of them.
    pub fn options(&self, cpu: bool) -> Result<CpuOptions, String> {
        if !cpu && self.matmul_isa.is_some() {
            return Err("--matmul-isa is an option of --backend cpu".into());
        }
        Ok(CpuOptions {
            threads: None,
            isa: self.matmul_isa.map(Into::into),
        })
    }
}

/// The CPU backend's matmul inner loops, as `--matmul-isa` names them.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MatmulIsaArg {
    /// Cranelift's 128-bit kernels and the gemm crate (any CPU)
    Portable,
    /// AVX-512 register tiles (CPUs with AVX-512F)
    Avx512,
    /// AVX-512, and AMX-BF16 tiles for bf16 weights at 16+ rows, rounding their
    /// activations to bf16 (CPUs with AMX)
    Amx,
}

impl From<MatmulIsaArg> for moec_runtime::cpu::MatmulIsa {
    fn from(a: MatmulIsaArg) -> Self {
        match a {
            MatmulIsaArg::Portable => moec_runtime::cpu::MatmulIsa::Portable,
            MatmulIsaArg::Avx512 => moec_runtime::cpu::MatmulIsa::Avx512,
            MatmulIsaArg::Amx => moec_runtime::cpu::MatmulIsa::Amx,
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
    /// Raise (or lower) a limit on what the spec unrolls: `--limit layers=4096`
    /// (limits: layers per repeat, experts per moe, nodes of the graph; repeatable).
    #[arg(long = "limit", value_name = "NAME=N", value_parser = Limits::parse)]
    pub limits: Vec<(Limit, u64)>,
}

/// `--weights DIR` for the commands that read only a checkpoint's config.json.
#[derive(ClapArgs, Clone)]
pub struct ConfigArgs {
    /// A checkpoint directory: its config.json supplies params (no tensor is read; `build`
    /// reads the weight files' headers to keep a bf16 checkpoint's matmuls bf16).
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

/// Compiles the spec through `upto` of the pipeline, with params from the config.json
/// of `weights` (a checkpoint directory, if it has one) and `--set`; notes go to
/// stderr, errors come back rendered.
pub fn compile(args: &SpecArgs, weights: Option<&Path>, upto: Upto) -> Result<Compiled, String> {
    let mut compiler = Compiler::new()
        .sets(args.sets.clone())
        .limits(
            args.limits
                .iter()
                .fold(Limits::default(), |l, &(what, n)| l.with(what, n)),
        )
        .upto(upto);
    if let Some(dir) = weights.filter(|w| w.is_dir()) {
        compiler = compiler.checkpoint(dir);
    }
    let compiled = compiler
        .compile_file(&args.spec)
        .map_err(|e| e.to_string())?;
    for note in &compiled.notes {
        eprintln!("{}", note.trim_end());
    }
    Ok(compiled)
}

/// A model that did not open; when its weights did not fit the spec, followed by
/// the params that kept their defaults (`explain_weights_error`).
pub fn explain_open_error(
    error: moec_runtime::session::SessionError,
    compiled: &Compiled,
) -> String {
    match error {
        moec_runtime::session::SessionError::Weights(e) => explain_weights_error(e, compiled),
        e => e.to_string(),
    }
}

/// A weights error, followed, when a checkpoint's config.json supplied params,
/// by the params that kept the spec's default because the config has no field
/// for them: the usual cause of tensors of the wrong shape.
pub fn explain_weights_error(error: String, compiled: &Compiled) -> String {
    let from_config = compiled
        .params
        .iter()
        .any(|(_, _, s)| matches!(s, ParamSource::Config(_)));
    let defaulted: Vec<String> = compiled
        .params
        .iter()
        .filter(|(name, _, s)| *s == ParamSource::Default && name != "model_type")
        .map(|(name, value, _)| format!("{name} = {value}"))
        .collect();
    if !from_config || defaulted.is_empty() {
        return error;
    }
    format!(
        "{}\nnote: config.json has no field for these params, so they kept the spec's defaults: {}",
        error.trim_end(),
        defaulted.join(", ")
    )
}

/// `--max-memory`, for every command that allocates a model's weights and activations.
#[derive(ClapArgs, Clone)]
pub struct MemoryArgs {
    /// The most memory to plan for (`8GiB`, `512MiB`); a run that needs more is refused
    /// before anything is allocated. Without it, the memory the system has available.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
}

impl MemoryArgs {
    /// An error with both numbers when `needs` exceeds the limit.
    pub fn check(&self, needs: &MemoryNeeds) -> Result<(), String> {
        match MemoryLimit::new(self.max_memory) {
            Some(limit) => needs.check_within(limit),
            None => Ok(()),
        }
    }
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

/// Compiles the spec with the params of the checkpoint at `weights` for
/// generation (only the last token's logits: `passes::last_token`) and opens it
/// on `engine` (memory checked against what is available and `memory`, weights
/// bound and prepared).
///
/// With `ranks` (an `mpirun` launch), the graph is this rank's partition
/// (`ranks::partition`), so only its experts' weights are read.
pub fn open_for_generation(
    spec: &SpecArgs,
    weights: &Path,
    engine: moec_runtime::session::Engine,
    storage: &StorageArgs,
    memory: &MemoryArgs,
    ranks: Option<ranks::Ranked>,
) -> Result<std::rc::Rc<moec_runtime::session::Model>, String> {
    use moec_runtime::session::Model;
    let compiled = compile(spec, Some(weights), Upto::All)?;
    let mut g = compiled.graph.clone();
    passes::last_token::run(&mut g)?;
    let comm = ranks.map(|ranked| ranked.partition(&mut g)).transpose()?;
    storage.apply(&mut g, matches!(engine, Engine::Gpu(_)))?;
    let model = match comm {
        None => Model::open_within(g, weights, engine, memory.max_memory),
        Some(comm) => Model::open_ranked(g, weights, engine, memory.max_memory, comm),
    };
    model
        .map(std::rc::Rc::new)
        .map_err(|e| explain_open_error(e, &compiled))
}
