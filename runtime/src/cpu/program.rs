//! The run-time form of a graph for the CPU backend, built once at load time:
//! the nodes a run executes, in topological order, each with its operands
//! resolved (a value in the arena, a weight-only constant, an input, a KV
//! cache) and each output placed in the activation arena that
//! `passes::memory::plan` lays out. A run walks these steps; nothing about the
//! graph's structure (order, operands, placement) is recomputed per call.
//!
//! It does not run anything (`cpu/mod.rs` does) and owns no buffers (the arena
//! is `workspace.rs`).

use moec_compiler::ir::{Graph, NodeIndex, Op, Value};
use moec_compiler::passes::memory::{self, MemoryPlan};
use moec_compiler::tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// Where an arena value lives and how big it is, as affine functions of the
/// call's token count (`passes::memory` gives the rules).
#[derive(Clone, Copy, Debug)]
pub struct Place {
    /// Offsets in the per-token arena (bytes per token) and the fixed arena.
    a_off: u64,
    b_off: u64,
    /// The per-token part of its planned footprint.
    footprint_per_token: u64,
    /// Its size, `per_token·T + fixed` bytes.
    per_token: u64,
    fixed: u64,
}

impl Place {
    /// The value's `f32`-word range in an arena planned by `plan`, for `tokens` tokens.
    pub fn words(&self, peak_fixed: u64, tokens: usize) -> std::ops::Range<usize> {
        let t = tokens as u64;
        let start = if self.footprint_per_token > 0 && t > 0 {
            peak_fixed + self.a_off * t
        } else {
            self.b_off
        };
        let len = self.per_token * t + self.fixed;
        (start / 4) as usize..((start + len) / 4) as usize
    }
}

/// Where a step reads one operand from.
#[derive(Clone, Copy, Debug)]
pub enum Operand {
    /// A value computed earlier in the same call.
    Arena(Place),
    /// A weight-only value prepared at load time (index into `Program::consts`).
    Const(usize),
    /// A graph input, by its index in `Program::inputs`.
    Input(usize),
    /// The KV cache a `CacheAppend` appended to, read in place in the state.
    Cache(usize),
    /// Weights (or a bias) packed into the matmul's panels: the kernel reads those.
    Packed,
}

/// One node a run executes.
#[derive(Debug)]
pub struct Step {
    pub node: NodeIndex,
    /// Its operand values and where each is read from.
    pub operands: Vec<Value>,
    pub args: Vec<Operand>,
    /// Its outputs' places, by port (a `CacheAppend` has none: its value is the cache).
    pub outs: Vec<Place>,
    /// Whether a native kernel writes its place (else the interpreter's code runs on
    /// copies: `run.rs`), decided once here.
    pub native: bool,
}

/// A graph laid out for running.
pub struct Program {
    pub steps: Vec<Step>,
    pub consts: Vec<Tensor>,
    /// Input names, in the order `Operand::Input` indexes them.
    pub inputs: Vec<String>,
    pub outputs: Vec<(String, Operand)>,
    /// The arena's fixed part (bytes); the per-token part follows it.
    pub peak_fixed: u64,
    pub peak_per_token: u64,
}

impl Program {
    /// Lays out `g`'s run: `fixed` nodes were computed at load time (`consts` holds
    /// the values runs still read), and operand `(n, i)` in `packed` is read by
    /// matmul `n` from its packed panels.
    pub fn new(
        g: &Graph,
        fixed: &HashSet<NodeIndex>,
        consts: HashMap<Value, Tensor>,
        packed: &HashSet<(NodeIndex, usize)>,
        matmuls: &HashSet<NodeIndex>,
    ) -> Result<Program, String> {
        let plan = memory::plan(g);
        let mut const_index = HashMap::new();
        let mut const_values = Vec::new();
        for (v, t) in consts {
            const_index.insert(v, const_values.len());
            const_values.push(t);
        }
        let mut inputs = Vec::new();
        let mut caches: HashMap<Value, usize> = HashMap::new();
        let mut steps = Vec::new();
        let operand = |v: Value, caches: &HashMap<Value, usize>, inputs: &[String]| {
            if let Some(&s) = caches.get(&v) {
                return Ok(Operand::Cache(s));
            }
            if let Some(&c) = const_index.get(&v) {
                return Ok(Operand::Const(c));
            }
            if let Op::Input { name, .. } = &g.node(v.node).op {
                let i = inputs.iter().position(|n| n == name);
                return i.map(Operand::Input).ok_or_else(|| {
                    format!("internal error: input `{name}` read before it is defined")
                });
            }
            place(g, &plan, v).map(Operand::Arena)
        };
        for n in g.topo_order() {
            if fixed.contains(&n) {
                continue;
            }
            let node = g.node(n);
            match &node.op {
                Op::Input { name, .. } => {
                    inputs.push(name.clone());
                    continue;
                }
                Op::CacheAppend { state } => {
                    caches.insert(n.into(), *state);
                }
                _ => {}
            }
            let operands = g.operands(n);
            let args = operands
                .iter()
                .enumerate()
                .map(|(i, v)| match packed.contains(&(n, i)) {
                    true => Ok(Operand::Packed),
                    false => operand(*v, &caches, &inputs),
                })
                .collect::<Result<_, String>>()?;
            let outs = match node.op {
                Op::CacheAppend { .. } => Vec::new(),
                _ => (0..node.outputs.len())
                    .map(|port| {
                        let v = Value {
                            node: n,
                            port: port as u8,
                        };
                        place(g, &plan, v)
                    })
                    .collect::<Result<_, String>>()?,
            };
            let native = outs.len() == 1 && runs_natively(g, n, &operands, matmuls);
            steps.push(Step {
                node: n,
                operands,
                args,
                outs,
                native,
            });
        }
        let outputs = g
            .outputs
            .iter()
            .map(|(name, v)| Ok((name.clone(), operand(*v, &caches, &inputs)?)))
            .collect::<Result<_, String>>()?;
        Ok(Program {
            steps,
            consts: const_values,
            inputs,
            outputs,
            peak_fixed: plan.peak_fixed,
            peak_per_token: plan.peak_per_token,
        })
    }

    /// The arena's size in `f32` words for a call of `tokens` tokens.
    pub fn arena_words(&self, tokens: usize) -> usize {
        ((self.peak_per_token * tokens as u64 + self.peak_fixed) / 4) as usize
    }
}

/// Whether node `n` (one output, reading `operands`) has a native kernel: a
/// matmul, a layer op, the schedule's data movement, a same-shape elementwise op.
fn runs_natively(
    g: &Graph,
    n: NodeIndex,
    operands: &[Value],
    matmuls: &HashSet<NodeIndex>,
) -> bool {
    let same_shape =
        |i: usize, j: usize| g.value_type(operands[i]).shape == g.value_type(operands[j]).shape;
    match g.node(n).op {
        Op::Binary(_) => same_shape(0, 1),
        Op::Positions
        | Op::Embedding
        | Op::RmsNorm { .. }
        | Op::Rope(_)
        | Op::Attention(_)
        | Op::GatherRows { .. }
        | Op::ScatterAdd { .. }
        | Op::LastRow => true,
        _ => matmuls.contains(&n),
    }
}

/// `v`'s place in the arena of `plan`.
fn place(g: &Graph, plan: &MemoryPlan, v: Value) -> Result<Place, String> {
    let ty = g.value_type(v);
    if ty.shape.iter().any(|d| d.per_past != 0) {
        return Err(format!(
            "internal error: {ty} depends on the cached positions; only cache views may"
        ));
    }
    let (&(a_off, b_off), &(footprint_per_token, _)) = plan
        .offsets
        .get(&v)
        .zip(plan.footprints.get(&v))
        .ok_or_else(|| format!("internal error: {v:?} has no place in the arena"))?;
    let (per_token, fixed) = memory::byte_size(ty);
    Ok(Place {
        a_off,
        b_off,
        footprint_per_token,
        per_token,
        fixed,
    })
}
