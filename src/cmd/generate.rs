//! `moec generate SPEC --weights DIR (--prompt TEXT | --prompt-ids 1,2,3)`: text generation with a
//! whole model. Parses and checks the settings, then hands them to `runtime::generate::command`
//! (tokenizer, eos ids, the loop, streaming text or `--json`), which executables built by
//! `moec build` share; `open_decoder` compiles the spec and opens the model on the chosen backend.
//!
//! Decoding is greedy unless `--temperature` is given; `--top-k`/`--top-p` without it are an error
//! rather than a silent temperature of 1.

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
    let request = Request {
        weights: args.weights.clone(),
        prompt: command::prompt(args.prompt.clone(), args.prompt_ids.as_deref())?,
        max_new_tokens: args.max_new_tokens,
        sampling: command::sampling(args.temperature, args.top_k, args.top_p, args.seed)?,
        json: args.json,
    };
    command::run(&request, || open_decoder(&args), &mut io::stdout()).map(drop)
}

/// The model `args` name, ready to generate: compiled, its memory needs checked, its
/// weights bound, and a session on it.
fn open_decoder(args: &GenerateArgs) -> Result<Box<dyn Decoder>, String> {
    let engine = args.backend.engine(args.cpu.options());
    let model = super::open_for_generation(&args.spec, &args.weights, engine, &args.memory)?;
    Ok(Box::new(model.session(None)))
}
