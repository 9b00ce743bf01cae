//! `moec generate SPEC --weights DIR (--prompt TEXT | --prompt-ids 1,2,3)`: text generation with a
//! whole model. Parses and checks the settings, then hands them to `runtime::generate::command`
//! (tokenizer, eos ids, the loop, streaming text or `--json`), which executables built by
//! `moec build` share; `open_decoder` compiles the spec and opens the model on the chosen backend.
//!
//! Decoding is greedy unless `--temperature` is given; `--top-k`/`--top-p` without it are an error
//! rather than a silent temperature of 1.
//!
//! Under `mpirun -np N` (`ranks.rs`) every rank runs the same loop on its partition of the
//! model: the logits, replicated on every rank, are bit-identical to one process's, so every
//! rank picks the same tokens; only rank 0 writes them.

use std::io;
use std::path::PathBuf;

use moec_runtime::generate::command::{self, Request};
use moec_runtime::generate::Decoder;

use super::SpecArgs;
use moec_runtime::session::{CpuOptions, Engine};

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// The checkpoint directory: weights, config.json, generation_config.json, tokenizer.json
    /// (a weights file stands for the directory holding it).
    #[arg(long, value_name = "DIR")]
    pub weights: PathBuf,
    /// The prompt as text, encoded with the checkpoint's tokenizer.json.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// The prompt as token ids: `--prompt-ids 1,2,3`.
    #[arg(long, value_name = "IDS", allow_hyphen_values = true)]
    pub prompt_ids: Option<String>,
    /// Generate at most this many new tokens.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sample at this temperature (without it, decoding is greedy).
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// With --temperature: sample from the K most likely tokens only.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// With --temperature: sample from the smallest most likely set of probability ≥ P.
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// With --temperature: the seed of the draws (the same seed draws the same tokens).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "interp")]
    pub backend: GenerateBackend,
    #[command(flatten)]
    pub cpu: super::CpuArgs,
    /// Print one JSON line at the end instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub memory: super::MemoryArgs,
    /// Under mpirun: the rank holding each expert of every MoE layer, in expert order
    /// (`--expert-ranks 0,0,0,1,1,1,1,2`); without it, contiguous blocks.
    #[arg(long, value_name = "RANKS")]
    pub expert_ranks: Option<String>,
}

/// `--backend`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GenerateBackend {
    /// The reference interpreter.
    Interp,
    /// Cranelift JIT-compiled kernels on all cores.
    Cpu,
    /// WGSL kernels on the best wgpu adapter, the KV caches on the device.
    Gpu,
}

impl GenerateBackend {
    /// The session engine this backend runs on.
    pub fn engine(self, cpu: CpuOptions) -> Engine {
        match self {
            GenerateBackend::Interp => Engine::Interp,
            GenerateBackend::Cpu => Engine::Cpu(cpu),
            GenerateBackend::Gpu => Engine::Gpu(moec_runtime::gpu::GpuOptions::default()),
        }
    }
}

pub fn main(args: GenerateArgs) -> Result<(), String> {
    let world = super::ranks::start()?;
    let result = generate(&args, world.as_ref());
    super::ranks::finish(world.as_ref(), result)
}

fn generate(args: &GenerateArgs, world: Option<&super::ranks::World>) -> Result<(), String> {
    let writes = super::ranks::writes_output(world);
    let request = Request {
        weights: args.weights.clone(),
        prompt: command::prompt(args.prompt.clone(), args.prompt_ids.as_deref())?,
        max_new_tokens: args.max_new_tokens,
        sampling: command::sampling(args.temperature, args.top_k, args.top_p, args.seed)?,
        // The other ranks print nothing: their one JSON line goes to a sink.
        json: args.json || !writes,
    };
    let ranked = match world {
        Some(world) => Some(super::ranks::Ranked {
            world,
            placement: super::ranks::placement(Some(world), args.expert_ranks.as_deref())?,
            settings: format!(
                "{:?} {:?} {} {:?} {:?} {:?} {}",
                args.prompt,
                args.prompt_ids,
                args.max_new_tokens,
                args.temperature,
                args.top_k,
                args.top_p,
                args.seed
            ),
        }),
        None => {
            super::ranks::placement(None, args.expert_ranks.as_deref())?;
            None
        }
    };
    let mut out: Box<dyn io::Write> = if writes {
        Box::new(io::stdout())
    } else {
        Box::new(io::sink())
    };
    command::run(&request, || open_decoder(args, ranked), &mut out).map(drop)
}

/// The model `args` name, ready to generate: compiled (and partitioned, as one of
/// `ranked`'s ranks), its memory needs checked, its weights bound, and a session on it.
fn open_decoder(
    args: &GenerateArgs,
    ranked: Option<super::ranks::Ranked>,
) -> Result<Box<dyn Decoder>, String> {
    let engine = args.backend.engine(
        args.cpu
            .options(matches!(args.backend, GenerateBackend::Cpu))?,
    );
    let model = super::open_for_generation(
        &args.spec,
        &args.weights,
        engine,
        &args.cpu.storage,
        &args.memory,
        ranked,
    )?;
    Ok(Box::new(model.session(None)))
}
