//! Running a compiled graph call after call: a [`Model`] is a graph with its
//! weights prepared for one backend (the reference interpreter, the CPU
//! backend's compiled kernels, or the GPU backend's WGSL kernels); a [`Session`]
//! is one sequence run on it, owning the KV caches a stateful graph declares, so
//! each call appends its tokens to what the earlier calls left. On the GPU the
//! caches are device buffers (made at the session's first call, for its
//! position limit); elsewhere host vectors.
//!
//! A session refuses a call that would hold more positions than its limit
//! (the spec's `max_position_embeddings`, or a smaller one the caller asks for),
//! and token ids outside the vocabulary, before anything runs.
//! It does not tokenize or sample: `generate` builds on it.
//!
//! An encoder-decoder graph (one with a `source` input) is prepared as its two
//! programs (`passes::stages`): a call that gives the source sequence runs the
//! encoder once and starts a new sequence, keeping the encoder values the decoder
//! reads (cross-attention keys and values) in the session; every call runs the
//! decoder on them. Generation gives the prompt to the encoder and starts the
//! decoder from the graph's `decoder_start` token.

use crate::budget::{MemoryLimit, MemoryNeeds};
use crate::cpu::{CpuModel, MatmulIsa};
use crate::generate::{BoxError, Decoder};
use crate::gpu::{GpuCaches, GpuModel, GpuOptions};
use crate::weights::{
    bind, check, keep_checkpoint_bf16, Subset, WeightErrors, WeightSet, WeightSource,
};
use moec_compiler::interp::{self, Comm, SingleRank, State};
use moec_compiler::ir::{DType, Graph, Op};
use moec_compiler::passes;
use moec_compiler::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// How the CPU backend runs a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuOptions {
    /// Worker threads (None: one per core).
    pub threads: Option<usize>,
    /// The matmuls' inner loops (None: `MatmulIsa::host()`).
    pub isa: Option<MatmulIsa>,
}

impl CpuOptions {
    /// The defaults on `threads` threads.
    pub const fn threads(threads: usize) -> CpuOptions {
        CpuOptions {
            threads: Some(threads),
            isa: None,
        }
    }
}

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The reference interpreter.
    Interp,
    /// JIT-compiled kernels ([`CpuOptions`]).
    Cpu(CpuOptions),
    /// WGSL kernels on the best wgpu adapter.
    Gpu(GpuOptions),
}

/// What went wrong running a model.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionError {
    /// The call would need more positions than the session holds.
    PositionLimit {
        held: usize,
        new: usize,
        limit: usize,
    },
    /// The inputs do not fit the graph (names, shapes, token ids).
    Input(String),
    /// The graph is not a causal language model (`input_ids` in, `logits` out).
    NotALanguageModel(String),
    /// The backend failed to compile or run the graph.
    Backend(String),
    /// The checkpoint's weights are missing, mis-shaped or unreadable.
    Weights(String),
    /// The model would not fit in the memory available.
    Memory(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::PositionLimit { held, new, limit } => write!(
                f,
                "{new} new tokens after {held} do not fit: this model holds at most {limit} positions (max_position_embeddings)"
            ),
            SessionError::Input(m)
            | SessionError::Backend(m)
            | SessionError::Weights(m)
            | SessionError::Memory(m) => f.write_str(m),
            SessionError::NotALanguageModel(m) => write!(f, "not a language model: {m}"),
        }
    }
}

impl std::error::Error for SessionError {}

enum Prepared {
    Interp(Vec<Tensor>),
    Cpu(Box<CpuModel>),
    Gpu(Box<GpuModel>),
}

/// One graph prepared for an engine: a model's whole graph, or one stage of an encoder-decoder's.
struct Program {
    graph: Graph,
    prepared: Prepared,
}

/// An encoder-decoder model's encoder, run once per source sequence.
struct Encoder {
    program: Program,
    /// The input the source sequence comes in (`input_ids`).
    source_input: String,
    /// Its outputs the decoder reads as inputs.
    carried: Vec<String>,
}

/// A graph with its weights, prepared for one engine.
pub struct Model {
    /// The graph as compiled (both stages of an encoder-decoder).
    graph: Graph,
    /// What every call runs: the whole graph, or an encoder-decoder's decoder.
    main: Program,
    encoder: Option<Encoder>,
    /// Where a partitioned graph's collectives exchange (a single rank unless opened ranked).
    comm: Arc<dyn Comm>,
}

impl Model {
    /// Opens `graph` on the checkpoint at `weights` (a directory, a safetensors
    /// file or a sharded index): checks first that every tensor the graph reads is
    /// there (file headers only) and that the weights, the KV caches at the position
    /// limit and the activations fit in the memory available, then prepares the
    /// weights for `engine`. On the CPU a bf16 checkpoint's matmul weights stay bf16
    /// (`storage::keep_bf16`) and tensors are read one matmul at a time as they are
    /// packed, so the model is never held in f32 as a whole.
    pub fn open(graph: Graph, weights: &Path, engine: Engine) -> Result<Model, SessionError> {
        Model::open_within(graph, weights, engine, None)
    }

    /// [`Model::open`], with the memory it may plan for at most `max_memory`
    /// bytes (`--max-memory`) as well as what is available.
    pub fn open_within(
        graph: Graph,
        weights: &Path,
        engine: Engine,
        max_memory: Option<u64>,
    ) -> Result<Model, SessionError> {
        Model::open_ranked(graph, weights, engine, max_memory, Arc::new(SingleRank))
    }

    /// [`Model::open_within`] as one rank of a multi-process run: `graph` is this rank's
    /// partition (`passes::partition`), so only its experts' weights are read, and its
    /// collectives exchange through `comm`.
    pub fn open_ranked(
        mut graph: Graph,
        weights: &Path,
        engine: Engine,
        max_memory: Option<u64>,
        comm: Arc<dyn Comm>,
    ) -> Result<Model, SessionError> {
        let weights_error = |e: WeightErrors| SessionError::Weights(e.to_string());
        let source =
            WeightSource::open(weights).map_err(|e| SessionError::Weights(e.to_string()))?;
        if matches!(engine, Engine::Cpu(_)) {
            keep_checkpoint_bf16(&mut graph, &source).map_err(weights_error)?;
        }
        check_memory(&graph, engine, max_memory)?;
        let decls = graph.weights.clone();
        let checked = check(&decls, &source).map_err(weights_error)?;
        Model::prepare(graph, &checked, engine, comm)
    }

    /// A model on CPU code prepared elsewhere (kernels linked ahead of time).
    pub fn from_cpu(graph: Graph, cpu: CpuModel) -> Model {
        Model {
            main: Program {
                graph: graph.clone(),
                prepared: Prepared::Cpu(Box::new(cpu)),
            },
            graph,
            encoder: None,
            comm: Arc::new(SingleRank),
        }
    }

    /// Prepares `graph` (optimized or not) with its bound `weights` for `engine`.
    pub fn new(graph: Graph, weights: Vec<Tensor>, engine: Engine) -> Result<Model, SessionError> {
        Model::with_comm(graph, weights, engine, Arc::new(SingleRank))
    }

    /// [`Model::new`], with a partitioned graph's collectives exchanging through `comm`.
    pub fn with_comm(
        graph: Graph,
        weights: Vec<Tensor>,
        engine: Engine,
        comm: Arc<dyn Comm>,
    ) -> Result<Model, SessionError> {
        interp::check_weights(&graph, &weights).map_err(SessionError::Input)?;
        Model::prepare(graph, &weights, engine, comm)
    }

    /// Prepares `graph` with `weights` (one per decl) for `engine`, taking them one at
    /// a time where the engine can (the CPU backend packs matmul by matmul).
    pub fn with_weights(
        graph: Graph,
        weights: &dyn WeightSet,
        engine: Engine,
    ) -> Result<Model, SessionError> {
        Model::prepare(graph, weights, engine, Arc::new(SingleRank))
    }

    fn prepare(
        graph: Graph,
        weights: &dyn WeightSet,
        engine: Engine,
        comm: Arc<dyn Comm>,
    ) -> Result<Model, SessionError> {
        let Some(stages) = passes::stages::split(&graph).map_err(SessionError::Backend)? else {
            return Ok(Model {
                main: Program::new(graph.clone(), weights, engine, &comm)?,
                graph,
                encoder: None,
                comm,
            });
        };
        let source_input = stages
            .source_input()
            .ok_or_else(|| SessionError::Backend("the encoder reads no i32 source input".into()))?
            .to_string();
        // Each stage reads its own weights (a shared embedding: both).
        let encoder_weights = Subset {
            all: weights,
            ids: &stages.encoder_weights,
        };
        let decoder_weights = Subset {
            all: weights,
            ids: &stages.decoder_weights,
        };
        Ok(Model {
            main: Program::new(stages.decoder, &decoder_weights, engine, &comm)?,
            encoder: Some(Encoder {
                program: Program::new(stages.encoder, &encoder_weights, engine, &comm)?,
                source_input,
                carried: stages.carried,
            }),
            graph,
            comm,
        })
    }

    /// The graph as compiled (both stages of an encoder-decoder model).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The most positions a session can hold: the graph's own limit, for a stateful graph.
    pub fn max_positions(&self) -> Option<usize> {
        self.graph.max_positions.map(|m| m as usize)
    }

    /// A new session with nothing cached, holding at most `limit` positions (the
    /// model's own limit when None or larger). Sessions share the model.
    pub fn session(self: &Rc<Model>, limit: Option<usize>) -> Session {
        let own = self.max_positions().unwrap_or(usize::MAX);
        let limit = limit.map_or(own, |l| l.min(own));
        let main = &self.main;
        let state = match main.prepared {
            // The caches live on the device; the host state only counts positions.
            Prepared::Gpu(_) => State::new(&main.graph),
            _ => State::with_room(&main.graph, limit),
        };
        Session {
            model: Rc::clone(self),
            state,
            device_caches: None,
            encoded: None,
            limit,
        }
    }
}

impl Program {
    /// Prepares `graph` with its `weights` for `engine`.
    fn new(
        graph: Graph,
        weights: &dyn WeightSet,
        engine: Engine,
        comm: &Arc<dyn Comm>,
    ) -> Result<Program, SessionError> {
        let prepared = match engine {
            Engine::Interp => Prepared::Interp(weights.tensors().into_owned()),
            Engine::Cpu(o) => {
                let isa = o.isa.unwrap_or_else(MatmulIsa::host);
                let m = CpuModel::for_isa(&graph, weights, isa).map_err(SessionError::Backend)?;
                let m = m.with_comm(comm.clone());
                Prepared::Cpu(Box::new(match o.threads {
                    Some(t) => m.with_threads(t),
                    None => m,
                }))
            }
            Engine::Gpu(options) => Prepared::Gpu(Box::new(
                GpuModel::new(&graph, &weights.tensors(), options)
                    .map_err(SessionError::Backend)?,
            )),
        };
        Ok(Program { graph, prepared })
    }

    /// Runs one call after `state`; on the GPU, on `device_caches` (made for
    /// `limit` positions when there are none yet).
    fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        state: &mut State,
        device_caches: &mut Option<GpuCaches>,
        limit: usize,
        comm: &dyn Comm,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        match &self.prepared {
            Prepared::Interp(weights) => {
                interp::run_with_comm(&self.graph, weights, inputs, state, comm)
            }
            Prepared::Cpu(m) => m.run_with_state(inputs, state),
            Prepared::Gpu(m) => {
                let caches = match device_caches {
                    Some(c) => c,
                    None => device_caches.insert(m.caches(limit)?),
                };
                let tokens = interp::token_count(&self.graph, inputs)?;
                let out = m.run_with_caches(inputs, caches, state.past)?;
                state.past += tokens;
                Ok(out)
            }
        }
    }

    /// Runs a stateless program (an encoder) once.
    fn run_once(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        comm: &dyn Comm,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        let mut state = State::new(&self.graph);
        self.run(inputs, &mut state, &mut None, 0, comm)
    }
}

/// The weights of `graph` from the checkpoint at `weights` (a directory, a
/// safetensors file or a sharded index), all read as f32, after checking that they,
/// the KV caches at the position limit and the activations fit in the memory
/// available (and in `max_memory` bytes, when given).
pub fn load_weights(
    graph: &Graph,
    weights: &Path,
    engine: Engine,
    max_memory: Option<u64>,
) -> Result<Vec<Tensor>, SessionError> {
    let source = open_checkpoint(graph, weights, engine, max_memory)?;
    bind(&graph.weights, &source).map_err(|e| SessionError::Weights(e.to_string()))
}

/// The checkpoint at `weights` opened for `graph` (nothing read yet: `weights::check`
/// then reads tensor by tensor), after checking that `graph` fits in the memory
/// available (and in `max_memory` bytes, when given) on `engine`.
pub fn open_checkpoint(
    graph: &Graph,
    weights: &Path,
    engine: Engine,
    max_memory: Option<u64>,
) -> Result<WeightSource, SessionError> {
    check_memory(graph, engine, max_memory)?;
    WeightSource::open(weights).map_err(|e| SessionError::Weights(e.to_string()))
}

/// Refuses `graph` on `engine` when its weights, KV caches at the position limit and
/// activations do not fit in the memory available (or in `max_memory` bytes).
fn check_memory(
    graph: &Graph,
    engine: Engine,
    max_memory: Option<u64>,
) -> Result<(), SessionError> {
    let positions = graph.max_positions.unwrap_or(0) as usize;
    let needs = MemoryNeeds::of(graph, engine, positions.max(1), positions);
    match MemoryLimit::new(max_memory) {
        Some(limit) => needs.check_within(limit).map_err(SessionError::Memory),
        None => Ok(()),
    }
}

/// One sequence on a model: its KV caches and how many positions they hold.
pub struct Session {
    model: Rc<Model>,
    state: State,
    /// The KV caches on the device, for a model on the GPU.
    device_caches: Option<GpuCaches>,
    /// An encoder-decoder's encoder values for this sequence: the decoder's inputs
    /// besides its token ids (None before the first call and after a reset).
    encoded: Option<BTreeMap<String, Tensor>>,
    limit: usize,
}

impl Session {
    /// Runs the next call: named inputs in, named outputs out; caches grow by the call's tokens.
    /// On an encoder-decoder model a call that gives the source sequence runs the
    /// encoder and starts a new sequence (its outputs join the decoder's); the
    /// other calls continue the sequence on the encoder values held.
    pub fn run(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, SessionError> {
        let model = Rc::clone(&self.model);
        let Some(encoder) = &model.encoder else {
            return self.run_main(inputs);
        };
        let mut outputs = BTreeMap::new();
        let mut decoder_inputs = inputs.clone();
        if let Some(source) = decoder_inputs.remove(&encoder.source_input) {
            let source = BTreeMap::from([(encoder.source_input.clone(), source)]);
            let mut out = encoder
                .program
                .run_once(&source, &*model.comm)
                .map_err(SessionError::Input)?;
            let carried = encoder
                .carried
                .iter()
                .map(|name| {
                    let t = out.remove(name).ok_or_else(|| {
                        SessionError::Backend(format!("internal error: no encoder output `{name}`"))
                    })?;
                    Ok((name.clone(), t))
                })
                .collect::<Result<BTreeMap<_, _>, SessionError>>()?;
            self.reset();
            self.encoded = Some(carried);
            outputs = out;
        }
        let Some(mut held) = self.encoded.take() else {
            return Err(SessionError::Input(format!(
                "no source sequence yet: the first call of an encoder-decoder model gives `{}`",
                encoder.source_input
            )));
        };
        let names: Vec<String> = decoder_inputs.keys().cloned().collect();
        held.append(&mut decoder_inputs);
        let result = self.run_main(&held);
        held.retain(|name, _| !names.contains(name));
        self.encoded = Some(held);
        outputs.append(&mut result?);
        Ok(outputs)
    }

    /// Runs a call of the model's main program (the whole graph, or the decoder).
    fn run_main(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, SessionError> {
        let g = &self.model.main.graph;
        let new = interp::token_count(g, inputs).map_err(SessionError::Input)?;
        if g.is_stateful() && self.state.past + new > self.limit {
            return Err(SessionError::PositionLimit {
                held: self.state.past,
                new,
                limit: self.limit,
            });
        }
        let before = self.state.past;
        let limit = self.limit;
        let model = Rc::clone(&self.model);
        model
            .main
            .run(
                inputs,
                &mut self.state,
                &mut self.device_caches,
                limit,
                &*model.comm,
            )
            .map_err(|e| {
                // A failed call leaves the caches as they were.
                self.state.truncate(before);
                SessionError::Input(e)
            })
    }

    /// Runs token ids through a language model (`input input_ids: i32[tokens]`,
    /// `output logits`), returning the logits `[ids.len(), vocab]`. On an
    /// encoder-decoder model the first call's ids are the source sequence and the
    /// decoder starts from its start token (logits `[1, vocab]`); later calls' ids
    /// continue the decoder.
    pub fn forward(&mut self, ids: &[i32]) -> Result<Tensor, SessionError> {
        let name = self.model.ids_input()?;
        let as_ids = |ids: &[i32]| Tensor::i32(vec![ids.len()], ids.to_vec());
        let mut inputs = BTreeMap::from([(name, as_ids(ids))]);
        if let (Some(encoder), None) = (&self.model.encoder, &self.encoded) {
            let start = self.model.graph.decoder_start.ok_or_else(|| {
                SessionError::NotALanguageModel("the model has no decoder start token".into())
            })?;
            let source = inputs.insert(self.model.ids_input()?, as_ids(&[start]));
            inputs.extend(source.map(|s| (encoder.source_input.clone(), s)));
        }
        let mut out = self.run(&inputs)?;
        out.remove("logits").ok_or_else(|| {
            SessionError::NotALanguageModel("the spec has no output `logits`".into())
        })
    }

    /// Positions the caches hold.
    pub fn position(&self) -> usize {
        self.state.past
    }

    /// The most positions this session holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Empties the caches (keeping their room) and forgets the source sequence.
    pub fn reset(&mut self) {
        self.state.truncate(0);
        self.encoded = None;
    }
}

impl Model {
    /// The name of the one i32 input a language model (or an encoder-decoder's
    /// decoder) reads its token ids from.
    fn ids_input(&self) -> Result<String, SessionError> {
        let g = &self.main.graph;
        let carried = self.encoder.as_ref().map_or(0, |e| e.carried.len());
        let ids: Vec<&String> = g
            .inputs
            .iter()
            .filter_map(|n| match &g.node(*n).op {
                Op::Input { name, ty } if ty.dtype == DType::I32 => Some(name),
                _ => None,
            })
            .collect();
        match (ids.as_slice(), g.inputs.len() - carried) {
            ([name], 1) => Ok((*name).clone()),
            _ => Err(SessionError::NotALanguageModel(
                "a language model reads one input, `input_ids: i32[tokens]`".into(),
            )),
        }
    }

    /// The width of the `logits` output: the vocabulary size.
    pub fn vocab_size(&self) -> Option<usize> {
        let (_, v) = self.graph.outputs.iter().find(|(n, _)| n == "logits")?;
        self.graph.value_type(*v).width().map(|w| w as usize)
    }
}

impl Decoder for Session {
    fn vocab_size(&self) -> usize {
        self.model.vocab_size().unwrap_or(0)
    }

    fn max_positions(&self) -> usize {
        self.limit
    }

    fn position(&self) -> usize {
        self.state.past
    }

    fn reset(&mut self) {
        Session::reset(self)
    }

    /// The last row of the `logits` output (all of it when the graph keeps only the
    /// last token's row: `passes::last_token`).
    fn forward(&mut self, ids: &[i32]) -> Result<Vec<f32>, BoxError> {
        let vocab = self.vocab_size();
        match Session::forward(self, ids)?.data {
            TensorData::F32(v) => Ok(v[v.len().saturating_sub(vocab)..].to_vec()),
            TensorData::I32(_) => Err("the `logits` output is i32".into()),
        }
    }
}
