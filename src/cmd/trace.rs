//! `moec trace SPEC --weights DIR (--prompt TEXT | --prompt-ids IDS | --input FILE) -o TRACE`:
//! runs the optimized graph once with its probes as extra outputs
//! (`runtime::trace`) and writes the routing trace of every MoE block as one
//! safetensors file (`docs/trace.md`). Parses the options and prints; the
//! tracing itself is the runtime's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use moec_compiler::ir::{DType, Op};
use moec_compiler::passes::Upto;
use moec_compiler::tensor::{Tensor, TensorData};
use moec_runtime::generate::command::{self, Prompt};
use moec_runtime::generate::eos_ids;
use moec_runtime::generate::Tokenizer;
use moec_runtime::io::read_tensors;
use moec_runtime::session::Model;
use moec_runtime::trace::{probed, Recorder};

use super::generate::GenerateBackend;
use super::SpecArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// The checkpoint directory (config.json, weights; tokenizer.json for --prompt).
    #[arg(long, value_name = "DIR")]
    pub weights: PathBuf,
    /// The tokens to trace, as text encoded with the checkpoint's tokenizer.json.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["prompt_ids", "input"])]
    pub prompt: Option<String>,
    /// The tokens to trace, as ids: `--prompt-ids 1,2,3`.
    #[arg(
        long,
        value_name = "IDS",
        allow_hyphen_values = true,
        conflicts_with = "input"
    )]
    pub prompt_ids: Option<String>,
    /// A safetensors file of the spec's inputs (a block spec's `x`, say).
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// After the prompt, generate this many tokens greedily (stopping at an eos id), tracing each.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "input")]
    pub max_new_tokens: usize,
    /// Where to write the trace (safetensors).
    #[arg(long, short, value_name = "TRACE")]
    pub output: PathBuf,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "interp")]
    pub backend: GenerateBackend,
    #[command(flatten)]
    pub cpu: super::CpuArgs,
    #[command(flatten)]
    pub memory: super::MemoryArgs,
}

pub fn main(args: Args) -> Result<(), String> {
    let compiled = super::compile(&args.spec, Some(&args.weights), Upto::All)?;
    let (mut graph, blocks) = probed(&compiled.graph)?;
    let (inputs, ids) = inputs(&args, &graph)?;
    let tokens = moec_compiler::interp::token_count(&graph, &inputs)?;
    let engine = args.backend.engine(
        args.cpu
            .options(matches!(args.backend, GenerateBackend::Cpu))?,
    );
    let gpu = matches!(args.backend, GenerateBackend::Gpu);
    args.cpu.storage.apply(&mut graph, gpu)?;
    let model = std::rc::Rc::new(
        Model::open_within(graph, &args.weights, engine, args.memory.max_memory)
            .map_err(|e| super::explain_open_error(e, &compiled))?,
    );
    let mut session = model.session(None);
    let mut recorder = Recorder::default();
    let outputs = session.run(&inputs).map_err(|e| e.to_string())?;
    recorder.add(&outputs, tokens)?;
    let mut ids = ids;
    if let Some(ids) = ids.as_mut().filter(|_| args.max_new_tokens > 0) {
        let eos = eos_ids(&args.weights).map_err(|e| e.to_string())?;
        let (name, _) = inputs.iter().next().expect("a prompt is one input");
        let mut logits = outputs;
        for _ in 0..args.max_new_tokens {
            let next = greedy(&logits)?;
            ids.push(next);
            if eos.contains(&next) {
                break;
            }
            let step = BTreeMap::from([(name.clone(), Tensor::i32(vec![1], vec![next]))]);
            logits = session.run(&step).map_err(|e| e.to_string())?;
            recorder.add(&logits, 1)?;
        }
        ids.truncate(recorder.tokens());
    }
    let mut trace = recorder.finish(&blocks)?;
    trace
        .metadata
        .insert("spec".into(), args.spec.spec.display().to_string());
    trace
        .metadata
        .insert("prompt_tokens".into(), tokens.to_string());
    if let Some(ids) = ids {
        let strings = token_strings(&args.weights, &ids);
        let ids = serde_json::to_string(&ids).expect("ids serialize");
        trace.metadata.insert("ids".into(), ids);
        if let Some(strings) = strings {
            let strings = serde_json::to_string(&strings).expect("strings serialize");
            trace.metadata.insert("tokens".into(), strings);
        }
    }
    trace.write(&args.output)?;
    println!(
        "wrote {}: {} tokens, {} MoE blocks",
        args.output.display(),
        recorder.tokens(),
        blocks.len()
    );
    Ok(())
}

/// The run's inputs, and the token ids when they are a prompt.
type Inputs = (BTreeMap<String, Tensor>, Option<Vec<i32>>);

fn inputs(args: &Args, graph: &moec_compiler::ir::Graph) -> Result<Inputs, String> {
    if let Some(file) = &args.input {
        return Ok((read_tensors(file).map_err(|e| e.to_string())?, None));
    }
    let ids = match command::prompt(args.prompt.clone(), args.prompt_ids.as_deref())
        .map_err(|_| "no tokens: give --prompt TEXT, --prompt-ids 1,2,3 or --input FILE")?
    {
        Prompt::Ids(ids) => ids,
        Prompt::Text(text) => Tokenizer::from_dir(&args.weights)
            .and_then(|t| t.encode(&text))
            .map_err(|e| e.to_string())?,
    };
    let name = graph
        .inputs
        .iter()
        .find_map(|n| match &graph.node(*n).op {
            Op::Input { name, ty } if ty.dtype == DType::I32 => Some(name.clone()),
            _ => None,
        })
        .ok_or("the spec reads no token ids (an i32 input): give --input FILE")?;
    let t = Tensor::i32(vec![ids.len()], ids.clone());
    Ok((BTreeMap::from([(name, t)]), Some(ids)))
}

/// The id of the largest logit of the last row (ties to the lower id).
fn greedy(outputs: &BTreeMap<String, Tensor>) -> Result<i32, String> {
    let logits = outputs
        .get("logits")
        .ok_or("the spec has no output `logits` to generate from")?;
    let vocab = *logits.shape.last().unwrap_or(&0);
    let TensorData::F32(v) = &logits.data else {
        return Err("the `logits` output is i32".into());
    };
    let row = &v[v.len().saturating_sub(vocab)..];
    let best = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
    Ok(best as i32)
}

/// Each id's text, when the checkpoint has a tokenizer.
fn token_strings(dir: &std::path::Path, ids: &[i32]) -> Option<Vec<String>> {
    let tokenizer = Tokenizer::from_dir(dir).ok()?;
    ids.iter().map(|id| tokenizer.decode(&[*id]).ok()).collect()
}
