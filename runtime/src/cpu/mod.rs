//! The CPU backend: the scheduled graph's matmuls JIT-compiled with Cranelift,
//! everything else run by the interpreter's own op code, all in one process.
//!
//! Loading ([`CpuModel::new`], `load.rs`): weight-only values (stacked and
//! concatenated expert weights) are computed in order and every matmul's weights
//! and biases packed once into its kernel's panel layout as soon as they are
//! ready, each value dropped once nothing needs it (weights come from a
//! `WeightSet`: a checkpoint's are read one at a time, so the model is never all
//! in f32); bf16 panels for every matmul whose weights are all bf16 values (a
//! bf16 checkpoint, `as bf16`, or `--weight-dtype bf16`: lossless, so the
//! results are those of f32 panels) and f32 ones otherwise, unless
//! `Graph::stored` (`--weight-format`, `--expert-format`) stores them as bf16,
//! q8_0 or q4_0. Then the kernels of `backend::clif::lower_with` are
//! JIT-compiled for the host (FMA when it has it) for the shapes decided.
//!
//! Running ([`CpuModel::run`], `run.rs`): the steps `program.rs` laid out at
//! load time, in order, every computed value in one activation arena planned by
//! `passes::memory` (kept between calls). A matmul is split into work items on a
//! persistent thread pool (`matmul.rs`: the JIT kernel for segments of few rows,
//! the `gemm` crate plus the JIT epilogue kernel for segments of many,
//! [`CpuModel::with_gemm_rows`]); a call estimated below [`SPLIT_MIN_NS`] on one
//! thread runs on the caller's alone, as waking the pool would cost more; a `GroupedLinear`'s segments come from the
//! offsets its `Dispatch` computed earlier in the same run, which are validated
//! first. The layers around the matmuls (`layers.rs`) and the schedule's data
//! movement (`rows.rs`) are native; routing, dispatch and the rarer ops run
//! `interp::eval_op`. Every kernel call's extents are checked against its
//! buffers before any JIT code runs; a mismatch is an error, never undefined
//! behaviour.
//!
//! [`CpuModel::linked`] takes the kernels from elsewhere instead of the JIT: an
//! executable built by `moec build` passes the ones linked into it (`crate::aot`).

mod avx512;
mod isa;
mod jit;
mod layers;
mod load;
mod matmul;
mod program;
mod rows;
mod run;
mod workers;
mod workspace;

pub use isa::MatmulIsa;
pub use jit::{host_isa, target, KernelFn};

pub use matmul::GEMM_ROWS_DEFAULT;
pub use workers::SPLIT_MIN_NS;

use crate::weights::WeightSet;
use avx512::Wide;
use matmul::{Call, JitPanels, Packed, Panels, Segment};
use moec_compiler::backend::clif::pack::{pack_bias, pack_weights, pack_weights_bf16};
use moec_compiler::backend::clif::{self, MatmulShape, WeightDType};
use moec_compiler::interp;
use moec_compiler::ir::{Graph, NodeIndex, Op};
use moec_compiler::quant::{dequantize, WeightFormat};
use moec_compiler::tensor::Tensor;
use program::{Program, Step};
use run::Reader;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use workers::Workers;

/// A graph compiled for this CPU, with its weights prepared.
pub struct CpuModel {
    graph: Graph,
    /// The code of JIT-compiled kernels (none for linked ones): it lives as long as `kernels`.
    _jit: Option<jit::Jit>,
    kernels: Vec<KernelFn>,
    /// The kernels' epilogue kernels, in the same order.
    epilogues: Vec<KernelFn>,
    /// Kernel index of each matmul node.
    kernel_of: HashMap<NodeIndex, usize>,
    /// The shape each matmul node's kernel was generated for.
    shapes: HashMap<NodeIndex, MatmulShape>,
    /// The steps of a run, with the weight-only values they read and the arena layout.
    program: Program,
    /// The activation arena: kept between calls, grown to the largest call's plan.
    arena: Mutex<Vec<f32>>,
    /// Packed weights of each matmul whose weights are weight-only.
    packed: HashMap<NodeIndex, Packed>,
    /// The matmuls' inner loops (and so their weights' layout).
    isa: MatmulIsa,
    workers: Workers,
    /// Where a partitioned graph's collectives exchange (one rank unless `with_comm`).
    comm: Arc<dyn interp::Comm>,
}

impl CpuModel {
    /// Compiles `g` and prepares its bound `weights` (one per `g.weights`) for
    /// the fastest matmul inner loops this host runs ([`MatmulIsa::host`]).
    pub fn new(g: &Graph, weights: &dyn WeightSet) -> Result<CpuModel, String> {
        CpuModel::for_isa(g, weights, MatmulIsa::host())
    }

    /// Like [`CpuModel::new`], with the matmuls' inner loops `isa` (one of
    /// [`MatmulIsa::available`]). Matmuls whose weights `g` stores in another
    /// format (`Graph::stored`) pack them in it: bf16 panels (the weights rounded
    /// to bf16), or q8_0 / q4_0 blocks, which need the AVX-512 matmuls.
    pub fn for_isa(g: &Graph, weights: &dyn WeightSet, isa: MatmulIsa) -> Result<CpuModel, String> {
        if !MatmulIsa::available().contains(&isa) {
            return Err(format!("this CPU cannot run the {} matmuls", isa.name()));
        }
        check_stored(g, isa)?;
        let shapes =
            g.g.node_indices()
                .filter_map(|n| Some((n, clif::matmul_shape(g, n)?)))
                .collect();
        let loaded = load::load(g, weights, shapes, isa, load::Panels::Bf16WhenExact)?;
        let host = jit::host_isa(false)?;
        let program = clif::lower_with(g, &jit::target(&host), |n| loaded.shapes.get(&n).copied());
        let jit = jit::compile(&program, host)?;
        let code = (jit.kernels.clone(), jit.epilogues.clone(), Some(jit));
        CpuModel::prepare(g, loaded, program.by_node, code, isa)
    }

    /// Like [`CpuModel::new`], with kernels compiled ahead of time: `code` holds
    /// every kernel's functions in `Kernel::functions` order, and matmul node `n`
    /// calls kernel `kernel_of[n]`.
    ///
    /// # Safety
    /// Every matmul node of `g` must be in `kernel_of`, and kernel `kernel_of[n]`'s
    /// functions in `code` must be the code `backend::clif::lower` generates for
    /// `n`'s `MatmulShape` (the `KernelFn` ABI); the runtime cannot check machine code.
    pub unsafe fn linked(
        g: &Graph,
        weights: &dyn WeightSet,
        kernel_of: HashMap<NodeIndex, usize>,
        code: &[KernelFn],
    ) -> Result<CpuModel, String> {
        let isa = MatmulIsa::host();
        check_stored(g, isa)?;
        let shapes = kernel_of
            .keys()
            .map(|&n| {
                let shape = clif::matmul_shape(g, n)
                    .ok_or("internal error: a kernel for a node that is no matmul")?;
                Ok((n, shape))
            })
            .collect::<Result<_, String>>()?;
        let (kernels, epilogues) = jit::by_kernel(code);
        let loaded = load::load(g, weights, shapes, isa, load::Panels::AsShaped)?;
        CpuModel::prepare(g, loaded, kernel_of, (kernels, epilogues, None), isa)
    }

    /// Lays out the runs of `g` with `code` (kernels, epilogue kernels, the JIT module that
    /// holds them) on its `loaded` weights.
    fn prepare(
        g: &Graph,
        loaded: load::Loaded,
        kernel_of: HashMap<NodeIndex, usize>,
        (kernels, epilogues, jit): (Vec<KernelFn>, Vec<KernelFn>, Option<jit::Jit>),
        isa: MatmulIsa,
    ) -> Result<CpuModel, String> {
        let load::Loaded {
            fixed,
            packed,
            packed_operands,
            shapes,
            values,
        } = loaded;
        let matmuls = kernel_of.keys().copied().collect();
        let program = Program::new(g, &fixed, values, &packed_operands, &matmuls)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(CpuModel {
            graph: g.clone(),
            _jit: jit,
            kernels,
            epilogues,
            kernel_of,
            shapes,
            program,
            arena: Mutex::new(Vec::new()),
            packed,
            workers: Workers::new(threads, GEMM_ROWS_DEFAULT).with_amx(isa == MatmulIsa::Amx),
            isa,
            comm: Arc::new(interp::SingleRank),
        })
    }

    /// Runs a partitioned graph's collectives through `comm` (this process's rank of a
    /// multi-process run) instead of a single rank.
    pub fn with_comm(mut self, comm: Arc<dyn interp::Comm>) -> CpuModel {
        self.comm = comm;
        self
    }

    /// Uses `threads` worker threads (at least one) instead of one per core.
    pub fn with_threads(mut self, threads: usize) -> CpuModel {
        let split_from = self.workers.split_from;
        self.workers =
            Workers::new(threads, self.workers.gemm_rows).with_amx(self.isa == MatmulIsa::Amx);
        self.workers.split_from = split_from;
        self
    }

    /// Splits a matmul or layer over the threads only when it is estimated at
    /// `nanos` or more on one thread (0: whenever it has more than one work
    /// item); the default is [`SPLIT_MIN_NS`], below which waking the pool costs
    /// more than it saves.
    pub fn with_split_from(mut self, nanos: usize) -> CpuModel {
        self.workers.split_from = nanos;
        self
    }

    /// Runs matmul segments of at least `rows` rows on the `gemm` crate (plus the
    /// epilogue kernel) instead of the JIT kernel (`usize::MAX`: never); the
    /// default is [`GEMM_ROWS_DEFAULT`].
    pub fn with_gemm_rows(mut self, rows: usize) -> CpuModel {
        self.workers.gemm_rows = rows;
        self
    }

    /// Runs the graph on named inputs; returns the named outputs. A stateful graph
    /// starts from an empty state.
    pub fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        self.run_with_state(inputs, &mut interp::State::new(&self.graph))
    }

    /// Runs matmul step `step` (op `op`) with kernel `k`, writing `out`.
    fn matmul(
        &self,
        step: &Step,
        op: &Op,
        k: usize,
        r: &Reader,
        out: &mut [f32],
    ) -> Result<(), String> {
        let n = step.node;
        let shape = self.kernel_shape(n)?;
        let (bias_at, rw_at) = extra_operands(op, &shape);
        let owned;
        let packed = match self.packed.get(&n) {
            Some(p) => p,
            None => {
                let bias = bias_at.map(|i| r.tensor(i)).transpose()?;
                let format = self.graph.stored.get(&n).copied();
                owned = pack(shape, &r.tensor(1)?, bias.as_ref(), self.isa, format);
                &owned
            }
        };
        let rw = |ld: usize| rw_at.map(|i| r.f32s(i).map(|v| (v, ld))).transpose();
        let x_ty = self.graph.value_type(step.operands[0]);
        let dim = |i: usize| x_ty.shape[i].eval(r.syms());
        let rank = x_ty.shape.len();
        if rank == 0 || dim(rank - 1) != shape.k {
            return Err(format!("internal error: {} input {x_ty}", op.name()));
        }
        let e = packed.experts;
        let x = r.f32s(0)?;

        let (segments, rw) = match op {
            Op::Linear { .. } => {
                let rows = x.len() / shape.k.max(1);
                (vec![segment(0, 0, 0, 0, rows)], None)
            }
            Op::ExpertLinear { .. } => {
                let shared = rank == 2;
                let t = dim(rank - 2);
                let segs = (0..e)
                    .map(|ex| segment(ex, if shared { 0 } else { ex * t }, ex * t, ex, t))
                    .collect();
                (segs, rw(e)?)
            }
            Op::GroupedLinear { .. } => {
                let (offsets, rows) = (r.i32s(2)?, dim(0));
                let segs = grouped_segments(offsets, e, rows)?;
                // The segments write every row from the first expert's to the last's (checked
                // offsets); the rows before and after, which no expert holds (dropped or padding
                // slots), are zeros.
                let width = out.len() / rows.max(1);
                let (held0, held1) = (offsets[0] as usize * width, offsets[e] as usize * width);
                out[..held0].fill(0.0);
                out[held1..].fill(0.0);
                (segs, rw(1)?)
            }
            _ => return Err(format!("internal error: {} is not a matmul", op.name())),
        };
        let call = Call {
            kernel: *self
                .kernels
                .get(k)
                .ok_or_else(|| format!("internal error: no kernel {k}"))?,
            epilogue: self.epilogues.get(k).copied(),
            packed,
            x,
            rw,
            segments,
        };
        matmul::run(&call, out, &self.workers)
    }

    fn kernel_shape(&self, n: NodeIndex) -> Result<MatmulShape, String> {
        self.shapes
            .get(&n)
            .copied()
            .ok_or_else(|| "internal error: not a matmul".into())
    }
}

/// Operand positions of a matmul's bias and row weights (gates), when it has them.
fn extra_operands(op: &Op, shape: &MatmulShape) -> (Option<usize>, Option<usize>) {
    // Linear and ExpertLinear: x, w, [b], [gates]; GroupedLinear: x, w, offsets, [b], [rw].
    let first = if matches!(op, Op::GroupedLinear { .. }) {
        3
    } else {
        2
    };
    let bias = shape.bias.then_some(first);
    let rw = shape.weighted.then_some(first + usize::from(shape.bias));
    (bias, rw)
}

fn segment(expert: usize, x0: usize, out0: usize, rw0: usize, rows: usize) -> Segment {
    Segment {
        expert,
        x0,
        out0,
        rw0,
        rows,
    }
}

/// Expert `e`'s rows are `offsets[e]..offsets[e+1]`; the offsets must be `E + 1`
/// non-decreasing values in `0..=rows`.
fn grouped_segments(offsets: &[i32], experts: usize, rows: usize) -> Result<Vec<Segment>, String> {
    let ok = offsets.len() == experts + 1
        && offsets.first().is_some_and(|o| *o >= 0)
        && offsets.windows(2).all(|w| w[0] <= w[1])
        && offsets.last().is_some_and(|o| *o as usize <= rows);
    if !ok {
        return Err(format!(
            "internal error: dispatch offsets {offsets:?} invalid for {experts} experts and {rows} rows"
        ));
    }
    Ok((0..experts)
        .filter(|&e| offsets[e + 1] > offsets[e])
        .map(|e| {
            let o = offsets[e] as usize;
            segment(e, o, o, o, offsets[e + 1] as usize - o)
        })
        .collect())
}

/// Refuses stored formats (`Graph::stored`) the matmuls of `isa` cannot hold.
fn check_stored(g: &Graph, isa: MatmulIsa) -> Result<(), String> {
    for format in g.stored.values() {
        match format {
            WeightFormat::F16 => {
                return Err(
                    "matmul weights stored as f16: the cpu backend stores f32, bf16, q8_0 or q4_0"
                        .into(),
                )
            }
            f if f.is_quantized() && (isa == MatmulIsa::Portable || !isa::vnni_supported()) => {
                return Err(format!(
                    "{f} matmul weights need the AVX-512 matmuls and AVX512-VNNI, which this CPU lacks"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Packs a matmul's weights (`[N, K]`, or `[E, N, K]`: experts) for `isa`,
/// stored as `format` (None: as `shape.weights`), and its bias.
fn pack(
    shape: MatmulShape,
    w: &Tensor,
    b: Option<&Tensor>,
    isa: MatmulIsa,
    format: Option<WeightFormat>,
) -> Packed {
    let experts = if w.shape.len() == 3 { w.shape[0] } else { 1 };
    // Weights stored as bf16 are rounded to it first (the packers keep bf16 values' high halves).
    let rounded;
    let w = match format {
        Some(WeightFormat::Bf16) if !load::bf16_values(w) => {
            rounded = dequantize(WeightFormat::Bf16, w.clone());
            &rounded
        }
        _ => w,
    };
    let format = format.unwrap_or(shape.weights.into());
    let w = w.as_f32();
    Packed {
        shape,
        experts,
        weights: match (isa, shape.weights) {
            (MatmulIsa::Avx512 | MatmulIsa::Amx, _) => Panels::Wide(Wide::pack(&shape, w, format)),
            (MatmulIsa::Portable, WeightDType::F32) => {
                Panels::Jit(JitPanels::F32(pack_weights(&shape, w)))
            }
            (MatmulIsa::Portable, WeightDType::Bf16) => {
                Panels::Jit(JitPanels::Bf16(pack_weights_bf16(&shape, w)))
            }
        },
        bias: b.map(|b| pack_bias(&shape, b.as_f32())),
    }
}
