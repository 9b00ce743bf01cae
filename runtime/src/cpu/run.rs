//! One call of a [`CpuModel`]: the program's steps in order over one activation
//! arena (sized from the memory plan for the call's token count, reused by the
//! next call and grown only when a call has more tokens than any before it).
//!
//! Matmuls, embedding, RMSNorm, rope, attention, positions, same-shape
//! elementwise ops, the last row of a value and the sparse schedule's gathers and scatter-adds write
//! their arena places directly; a KV cache grows in the state and attention
//! reads it there. Every other op (routing, dispatch, capacity, losses,
//! broadcasting elementwise ops, per-head slices) runs `interp::eval_op` on
//! copies of its operands, and its results are copied into their places: those
//! values are a few numbers per token. A partitioned graph's collectives run the
//! same way, through the model's `Comm` (`interp::eval_collective`).

use super::layers;
use super::program::{Operand, Place, Step};
use super::rows;
use super::workspace::{as_i32, as_i32_mut, Frame};
use super::CpuModel;
use moec_compiler::interp;
use moec_compiler::ir::{DType, Graph, Op, Syms};
use moec_compiler::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

/// What a step's operands are read from, besides the arena.
struct Sources<'a> {
    consts: &'a [Tensor],
    inputs: &'a [&'a Tensor],
    caches: &'a [Vec<f32>],
    peak_fixed: u64,
    tokens: usize,
}

impl<'a> Sources<'a> {
    fn words(&self, p: &Place) -> std::ops::Range<usize> {
        p.words(self.peak_fixed, self.tokens)
    }

    /// An f32 operand.
    fn f32s(&self, frame: &Frame<'a>, a: Operand) -> Result<&'a [f32], String> {
        match a {
            Operand::Arena(p) => frame.read(self.words(&p)),
            Operand::Const(i) => tensor_f32(&self.consts[i]),
            Operand::Input(i) => tensor_f32(self.inputs[i]),
            Operand::Cache(s) => Ok(&self.caches[s]),
            Operand::Packed => Err("internal error: a packed operand read as values".into()),
        }
    }

    /// An i32 operand.
    fn i32s(&self, frame: &Frame<'a>, a: Operand) -> Result<&'a [i32], String> {
        let t = match a {
            Operand::Arena(p) => return frame.read(self.words(&p)).map(as_i32),
            Operand::Const(i) => &self.consts[i],
            Operand::Input(i) => self.inputs[i],
            Operand::Cache(_) | Operand::Packed => {
                return Err("internal error: an i32 operand that is a cache or packed".into())
            }
        };
        match &t.data {
            TensorData::I32(v) => Ok(v),
            TensorData::F32(_) => {
                Err("internal error: an f32 operand where i32 was expected".into())
            }
        }
    }
}

/// A step's operands, read through its frame.
pub(super) struct Reader<'s, 'a> {
    src: Sources<'a>,
    frame: Frame<'a>,
    step: &'s Step,
    op: &'s Op,
    graph: &'s Graph,
    syms: Syms,
}

impl<'a> Reader<'_, 'a> {
    fn arg(&self, i: usize) -> Result<Operand, String> {
        let missing = || format!("internal error: {} operand {i} missing", self.op.name());
        self.step.args.get(i).copied().ok_or_else(missing)
    }

    /// Operand `i`, f32.
    pub fn f32s(&self, i: usize) -> Result<&'a [f32], String> {
        self.src.f32s(&self.frame, self.arg(i)?)
    }

    /// Operand `i`, i32.
    pub fn i32s(&self, i: usize) -> Result<&'a [i32], String> {
        self.src.i32s(&self.frame, self.arg(i)?)
    }

    /// The call's symbols.
    pub fn syms(&self) -> Syms {
        self.syms
    }

    /// Operand `i` as a tensor of its concrete shape (a copy).
    pub fn tensor(&self, i: usize) -> Result<Tensor, String> {
        let ty = self.graph.value_type(self.step.operands[i]);
        let shape = ty.concrete_shape(self.syms);
        Ok(match ty.dtype {
            DType::I32 => Tensor::i32(shape, self.i32s(i)?.to_vec()),
            DType::F32 => Tensor::f32(shape, self.f32s(i)?.to_vec()),
        })
    }
}

fn tensor_f32(t: &Tensor) -> Result<&[f32], String> {
    match &t.data {
        TensorData::F32(v) => Ok(v),
        TensorData::I32(_) => Err("internal error: an i32 operand where f32 was expected".into()),
    }
}

impl CpuModel {
    /// Runs the graph as the next call after `state` (see `interp::run_with_state`).
    pub fn run_with_state(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        state: &mut interp::State,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        let g = &self.graph;
        let syms = Syms {
            past: state.past,
            ..interp::input_syms(g, inputs)?
        };
        let tokens = syms.tokens;
        interp::check_token_ids(g, inputs)?;
        if state.caches.len() != g.states.len() {
            return Err("internal error: the state does not belong to this graph".into());
        }
        let p = &self.program;
        let ins = p
            .inputs
            .iter()
            .map(|name| {
                inputs
                    .get(name)
                    .ok_or_else(|| format!("missing input `{name}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // One call at a time uses the model's arena; a concurrent one gets its own.
        let mut shared = self.arena.try_lock();
        let mut own = Vec::new();
        let arena: &mut Vec<f32> = match shared.as_deref_mut() {
            Ok(a) => a,
            Err(_) => &mut own,
        };
        let words = p.arena_words(tokens);
        if arena.len() < words {
            arena.resize(words, 0.0);
        }
        for step in &p.steps {
            self.step(step, arena, &ins, state, syms)?;
        }
        let src = self.sources(&ins, state, tokens);
        let (frame, _) = Frame::split(arena, 0..0)?;
        let outputs = p
            .outputs
            .iter()
            .zip(&g.outputs)
            .map(|((name, at), (_, v))| {
                let ty = g.value_type(*v);
                let shape = ty.concrete_shape(syms);
                let t = match ty.dtype {
                    DType::I32 => Tensor::i32(shape, src.i32s(&frame, *at)?.to_vec()),
                    DType::F32 => Tensor::f32(shape, src.f32s(&frame, *at)?.to_vec()),
                };
                Ok((name.clone(), t))
            })
            .collect();
        state.past += tokens;
        outputs
    }

    /// Runs one step of a call with `syms` (`past` as before the call).
    fn step(
        &self,
        step: &Step,
        arena: &mut [f32],
        ins: &[&Tensor],
        state: &mut interp::State,
        syms: Syms,
    ) -> Result<(), String> {
        let (p, op) = (&self.program, &self.graph.node(step.node).op);
        let words = |place: &Place| place.words(p.peak_fixed, syms.tokens);
        if let Op::CacheAppend { state: s } = op {
            let Some(Operand::Arena(rows)) = step.args.first() else {
                return Err("internal error: a cache append of a value not in the arena".into());
            };
            let (frame, _) = Frame::split(arena, 0..0)?;
            state.caches[*s].extend_from_slice(frame.read(words(rows))?);
            return Ok(());
        }
        let Some(out_place) = step.outs.first() else {
            return Err(format!("internal error: {} has no output", op.name()));
        };
        if !step.native {
            return self.fallback(step, op, arena, ins, state, syms);
        }
        let (frame, out) = Frame::split(arena, words(out_place))?;
        let r = self.reader(frame, step, ins, state, syms);
        let (f32s, i32s) = (|i| r.f32s(i), |i| r.i32s(i));
        if let Some(&k) = self.kernel_of.get(&step.node) {
            return self.matmul(step, op, k, &r, out);
        }
        match op {
            Op::Positions => {
                for (o, p) in as_i32_mut(out).iter_mut().zip(syms.past..) {
                    *o = p as i32;
                }
                Ok(())
            }
            Op::Embedding => {
                let table = self.graph.value_type(step.operands[1]);
                let width = table.shape[1].fixed as usize;
                layers::embedding(i32s(0)?, f32s(1)?, width, out)
            }
            Op::RmsNorm { eps } => {
                layers::rms_norm(f32s(0)?, f32s(1)?, eps.get(), out, &self.workers)
            }
            Op::Rope(r) => layers::rope(r, f32s(0)?, i32s(1)?, out),
            Op::Attention(at) => {
                let sinks = at.sinks.then(|| f32s(3)).transpose()?;
                let bias = at.bias.map(|_| f32s(step.operands.len() - 1)).transpose()?;
                let (q, k, v) = (f32s(0)?, f32s(1)?, f32s(2)?);
                layers::attention(at, q, k, v, sinks, bias, out, &self.workers)
            }
            Op::Binary(b) => rows::binary(*b, f32s(0)?, f32s(1)?, out),
            Op::LastRow => rows::last_row(f32s(0)?, out),
            Op::GatherRows { k } => {
                let d = self.width(step, 0);
                rows::gather_rows(f32s(0)?, i32s(1)?, *k as usize, d, out)
            }
            Op::ScatterAdd { k } => {
                let d = self.width(step, 0);
                rows::scatter_add(f32s(0)?, i32s(1)?, *k as usize, d, out)
            }
            _ => Err(format!(
                "internal error: {} has no native kernel",
                op.name()
            )),
        }
    }

    /// `step`'s operands, read through `frame`.
    fn reader<'s, 'a>(
        &'a self,
        frame: Frame<'a>,
        step: &'s Step,
        ins: &'a [&'a Tensor],
        state: &'a interp::State,
        syms: Syms,
    ) -> Reader<'s, 'a>
    where
        'a: 's,
    {
        Reader {
            src: self.sources(ins, state, syms.tokens),
            frame,
            step,
            op: &self.graph.node(step.node).op,
            graph: &self.graph,
            syms,
        }
    }

    fn sources<'a>(
        &'a self,
        ins: &'a [&'a Tensor],
        state: &'a interp::State,
        tokens: usize,
    ) -> Sources<'a> {
        Sources {
            consts: &self.program.consts,
            inputs: ins,
            caches: &state.caches,
            peak_fixed: self.program.peak_fixed,
            tokens,
        }
    }

    /// The last dim of operand `i` (a row width, never token-dependent).
    fn width(&self, step: &Step, i: usize) -> usize {
        let ty = self.graph.value_type(step.operands[i]);
        ty.shape.last().map_or(1, |d| d.fixed as usize)
    }

    /// Runs `op` with the interpreter's code on copies of its operands and copies
    /// its results into their places.
    fn fallback(
        &self,
        step: &Step,
        op: &Op,
        arena: &mut [f32],
        ins: &[&Tensor],
        state: &interp::State,
        syms: Syms,
    ) -> Result<(), String> {
        let p = &self.program;
        let results = {
            let (frame, _) = Frame::split(arena, 0..0)?;
            let r = self.reader(frame, step, ins, state, syms);
            let args = (0..step.args.len())
                .map(|i| r.tensor(i))
                .collect::<Result<Vec<_>, String>>()?;
            let args: Vec<&Tensor> = args.iter().collect();
            interp::check_operands(op, &args)?;
            if op.is_collective() {
                interp::eval_collective(op, &args, &*self.comm)?
            } else {
                interp::eval_op(op, &args)
            }
        };
        for (place, t) in step.outs.iter().zip(&results) {
            let words = place.words(p.peak_fixed, syms.tokens);
            let (_, out) = Frame::split(arena, words)?;
            match &t.data {
                TensorData::F32(v) if v.len() == out.len() => out.copy_from_slice(v),
                TensorData::I32(v) if v.len() == out.len() => as_i32_mut(out).copy_from_slice(v),
                _ => {
                    return Err(format!(
                        "internal error: {} gave {} values for a place of {}",
                        op.name(),
                        t.len(),
                        out.len()
                    ))
                }
            }
        }
        Ok(())
    }
}
