//! Which matmuls' weights a storage choice covers: `--expert-format F` stores the
//! experts' stacked weights as `F`, `--weight-format F` every large matmul weight
//! (experts, attention projections, dense feed-forwards, lm_head), as llama.cpp
//! quantizes a model. [`Storage::apply`] records the choice in the graph
//! (`Graph::stored`), after the pass pipeline: the interpreter then computes
//! those matmuls as the CPU backend's kernels do (dequantized weights; q8_0 and
//! q4_0 also quantize their activations into 8-bit blocks), the CPU backend
//! packs their weights in `F`, memory planning and `--stats` count them at `F`'s
//! bytes.
//!
//! Whatever the scope, a matmul is covered only when its weight operand is a
//! weight-only value (known at load time, so it is stored once). The whole-model
//! scope leaves in f32:
//! - **routers**: a linear whose output reaches a routing op (softmax, top-k,
//!   `router`, group mask, sparse mixer, expert choice, the routing losses)
//!   through elementwise ops and column slices only: quantizing it would change
//!   which experts run, for a few KB saved;
//! - **narrow matrices**: fewer output columns than a quantization block (a
//!   shared expert's one-column gate), whose bytes do not matter.
//!
//! [`keep_bf16`] records what a checkpoint already stores: a matmul whose weights
//! are all a bf16 checkpoint's tensors (moved, stacked or sliced, never computed
//! on) is stored as bf16 unless a choice above stored it otherwise, so it keeps
//! the checkpoint's bytes (bf16 weights held as bf16 compute exactly what they
//! would widened to f32).
//!
//! It does not choose anything about activations, embeddings (a gather reads one
//! row per token) or the GPU backend, whose weights are f32 or f16.

use crate::ir::{Graph, NodeIndex, Op, WeightFormat};
use crate::passes::memory::weight_only;
use crate::passes::rewrite::users;
use std::collections::HashSet;

/// Stores as bf16 every matmul over weight-only values that has no stored format
/// yet and whose weight operand is made only of weights `bf16` says the checkpoint
/// holds as bf16, through ops that move values and compute nothing (stack,
/// concatenation, column slices).
pub fn keep_bf16(g: &mut Graph, bf16: impl Fn(usize) -> bool) {
    let fixed = weight_only(g);
    let exact = |root: NodeIndex| {
        let mut stack = vec![root];
        let mut seen = HashSet::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            match g.node(n).op {
                Op::Weight { id, .. } if bf16(id) => {}
                Op::Stack
                | Op::ConcatRows
                | Op::ConcatCols { .. }
                | Op::SliceCols { .. }
                | Op::PassThrough => stack.extend(g.operands(n).iter().map(|v| v.node)),
                _ => return false,
            }
        }
        true
    };
    let kept: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|n| !g.stored.contains_key(n) && is_matmul(&g.node(*n).op))
            .filter(|&n| {
                g.operands(n)
                    .get(1)
                    .is_some_and(|w| fixed.contains(&w.node) && exact(w.node))
            })
            .collect();
    g.stored
        .extend(kept.into_iter().map(|n| (n, WeightFormat::Bf16)));
}

fn is_matmul(op: &Op) -> bool {
    matches!(
        op,
        Op::Linear { .. } | Op::ExpertLinear { .. } | Op::GroupedLinear { .. }
    )
}

/// Which matmuls a storage choice covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Matmuls over stacked `[E, N, K]` expert weights (`--expert-format`).
    Experts,
    /// Every matmul but routers and narrow ones (`--weight-format`).
    Matmuls,
}

/// A storage choice: `format` for the weights of the matmuls `scope` covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storage {
    pub format: WeightFormat,
    pub scope: Scope,
}

impl Storage {
    pub const fn experts(format: WeightFormat) -> Storage {
        Storage {
            format,
            scope: Scope::Experts,
        }
    }

    pub const fn matmuls(format: WeightFormat) -> Storage {
        Storage {
            format,
            scope: Scope::Matmuls,
        }
    }

    /// Every choice that changes something (the command line's formats but f32,
    /// for the experts and for every matmul), in that order.
    pub fn all() -> Vec<Storage> {
        let formats = [WeightFormat::Bf16, WeightFormat::Q8_0, WeightFormat::Q4_0];
        let experts = formats.map(Storage::experts);
        experts
            .into_iter()
            .chain(formats.map(Storage::matmuls))
            .collect()
    }

    /// Records in `g.stored` that the matmuls this choice covers read their
    /// weights as `format` (f32: nothing to record).
    pub fn apply(&self, g: &mut Graph) {
        if self.format != WeightFormat::F32 {
            let covered = self.covered(g);
            g.stored
                .extend(covered.into_iter().map(|n| (n, self.format)));
        }
    }

    /// The matmul nodes of `g` whose weights (operand 1) are stored as `format`.
    pub fn covered(&self, g: &Graph) -> HashSet<NodeIndex> {
        let fixed = weight_only(g);
        g.g.node_indices()
            .filter(|&n| {
                let Some(&w) = g.operands(n).get(1) else {
                    return false;
                };
                let shape = &g.value_type(w).shape;
                is_matmul(&g.node(n).op)
                    && fixed.contains(&w.node)
                    && match self.scope {
                        Scope::Experts => shape.len() == 3,
                        Scope::Matmuls => {
                            let columns = shape.len().checked_sub(2).map(|i| shape[i]);
                            let wide = columns
                                .and_then(|c| c.as_fixed())
                                .is_some_and(|c| c >= WeightFormat::BLOCK as u64);
                            wide && !feeds_routing(g, n)
                        }
                    }
            })
            .collect()
    }
}

/// Whether some value computed from `n`'s output through elementwise ops and
/// column slices only is read by a routing op.
fn feeds_routing(g: &Graph, n: NodeIndex) -> bool {
    let mut stack = vec![n];
    let mut seen = HashSet::new();
    while let Some(m) = stack.pop() {
        for u in users(g, m) {
            match g.node(u).op {
                Op::Softmax
                | Op::TopK { .. }
                | Op::Router(_)
                | Op::GroupMask { .. }
                | Op::SparseMixer { .. }
                | Op::ExpertChoice { .. }
                | Op::AuxLoss
                | Op::ZLoss
                | Op::EpRoute { .. } => return true,
                Op::Unary(_) | Op::Binary(_) | Op::SliceCols { .. } if seen.insert(u) => {
                    stack.push(u)
                }
                _ => {}
            }
        }
    }
    false
}
