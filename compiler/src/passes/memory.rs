//! Buffer planning: an analysis, not a pass. It does not fit `PassFn` (it
//! changes nothing and returns a plan), so it is not a pipeline step; `stats`
//! uses it for peak activation memory, and a backend can use it to lay out one
//! arena.
//!
//! Every value a kernel computes gets space in one arena; a value's space is
//! reused once its last user (in `Graph::topo_order`) has run. Inputs, weights,
//! constants, weight-only values (a `Stack` of weights: prepared once at load
//! time) and views of state (a `CacheAppend` reads back the cache it appended to,
//! which the runtime owns across calls) live outside the arena.
//!
//! Sizes depend on the token count: a value of type `[tokens, k, D]` takes
//! `per_token·T + fixed` bytes (the typing rules give at most one token-dependent
//! dim). To make one plan valid for every `T`, the two coordinates are planned
//! independently: a buffer holds `[a_off, a_off + a)` in a per-token arena and
//! `[b_off, b_off + b)` in a fixed arena, and two buffers live at the same time
//! never overlap in a coordinate where both are non-empty. At run time the arena
//! is the fixed part (`peak_fixed` bytes) followed by the per-token part
//! (`peak_per_token·T` bytes), and [`MemoryPlan::address`] places a buffer:
//! - per-token only (`b = 0`, every `[tokens, ..]` value): `peak_fixed + a_off·T`;
//! - fixed only (`a = 0`): `b_off`;
//! - both (no op makes one today): it reserves `a + b` per token *and* `b` fixed,
//!   and lives in its per-token range when `T ≥ 1` (`(a+b)·T ≥ a·T + b`) and in
//!   its fixed range when `T = 0`. Either way it is contiguous.
//!
//! Allocation is first-fit in each arena, in topological order; a node's outputs
//! are placed while its operands are still live (no in-place reuse).

use crate::ir::{Graph, NodeIndex, Op, TensorType, Value};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{HashMap, HashSet};

/// Where each arena value lives, and how big the arena gets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPlan {
    /// `(a_off, b_off)`: offsets in the per-token arena (bytes per token) and the fixed arena.
    pub offsets: HashMap<Value, (u64, u64)>,
    /// Each value's footprint `(a, b)` as planned (see the module doc for mixed sizes).
    pub footprints: HashMap<Value, (u64, u64)>,
    /// Live range of each value: the topological positions of its definition and last use.
    pub live: HashMap<Value, (usize, usize)>,
    pub peak_per_token: u64,
    pub peak_fixed: u64,
}

impl MemoryPlan {
    /// The arena size for a run with `tokens` tokens.
    pub fn peak_bytes(&self, tokens: usize) -> u64 {
        self.peak_per_token * tokens as u64 + self.peak_fixed
    }

    /// The byte address of `v` in the arena for a run with `tokens` tokens.
    pub fn address(&self, v: Value, tokens: usize) -> Option<u64> {
        let (a_off, b_off) = *self.offsets.get(&v)?;
        let (a, _) = self.footprints[&v];
        Some(if a > 0 && tokens > 0 {
            self.peak_fixed + a_off * tokens as u64
        } else {
            b_off
        })
    }
}

/// Bytes of a value as `(per_token, fixed)`: `per_token·T + fixed`.
pub fn byte_size(t: &TensorType) -> (u64, u64) {
    t.shape.iter().fold((0, 4), |(p, f), d| {
        debug_assert!(
            p == 0 || d.per_token == 0,
            "at most one dim depends on the token count: {t}"
        );
        (p * d.fixed + f * d.per_token, f * d.fixed)
    })
}

/// Nodes whose value depends on weights and constants only (weights, constants,
/// and ops over nothing else): a backend prepares them once, at load time.
pub fn weight_only(g: &Graph) -> HashSet<NodeIndex> {
    let mut set = HashSet::new();
    for n in g.topo_order() {
        let only = match g.node(n).op {
            Op::Weight { .. } | Op::Constant(_) => true,
            Op::Input { .. } | Op::Positions | Op::CacheAppend { .. } => false,
            _ => {
                g.g.neighbors_directed(n, Direction::Incoming)
                    .all(|m| set.contains(&m))
            }
        };
        if only {
            set.insert(n);
        }
    }
    set
}

/// Plans every computed value of `g` into one arena.
pub fn plan(g: &Graph) -> MemoryPlan {
    let order = g.topo_order();
    let pos: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let fixed = weight_only(g);
    let end = order.len();
    let mut plan = MemoryPlan::default();
    for &n in &order {
        if fixed.contains(&n) || matches!(g.node(n).op, Op::Input { .. } | Op::CacheAppend { .. }) {
            continue;
        }
        for port in 0..g.node(n).outputs.len() {
            let v = Value {
                node: n,
                port: port as u8,
            };
            let last =
                g.g.edges_directed(n, Direction::Outgoing)
                    .filter(|e| e.weight().port as usize == port)
                    .map(|e| pos[&e.target()])
                    .max()
                    .unwrap_or(pos[&n]);
            let last = if g.outputs.iter().any(|(_, o)| *o == v) {
                end
            } else {
                last
            };
            plan.live.insert(v, (pos[&n], last));
            let (a, b) = byte_size(&g.node(n).outputs[port]);
            plan.footprints
                .insert(v, if a > 0 && b > 0 { (a + b, b) } else { (a, b) });
        }
    }
    let (mut per_token, mut fixed_arena) = (Arena::default(), Arena::default());
    for (i, &n) in order.iter().enumerate() {
        let outs = (0..g.node(n).outputs.len() as u8).map(|port| Value { node: n, port });
        for v in outs.filter(|v| plan.live.contains_key(v)) {
            let (a, b) = plan.footprints[&v];
            plan.offsets
                .insert(v, (per_token.alloc(v, a), fixed_arena.alloc(v, b)));
        }
        for (v, _) in plan.live.iter().filter(|(_, (_, last))| *last == i) {
            per_token.free(*v);
            fixed_arena.free(*v);
        }
    }
    plan.peak_per_token = per_token.peak;
    plan.peak_fixed = fixed_arena.peak;
    plan
}

/// One coordinate: live intervals, first-fit.
#[derive(Default)]
struct Arena {
    live: Vec<(u64, u64, Value)>,
    peak: u64,
}

impl Arena {
    /// Places `size` bytes at the lowest offset that fits between live intervals.
    /// An empty request takes offset 0 and occupies nothing.
    fn alloc(&mut self, v: Value, size: u64) -> u64 {
        if size == 0 {
            return 0;
        }
        self.live.sort_unstable();
        let mut at = 0;
        for &(start, end, _) in &self.live {
            if start >= at + size {
                break;
            }
            at = at.max(end);
        }
        self.live.push((at, at + size, v));
        self.peak = self.peak.max(at + size);
        at
    }

    fn free(&mut self, v: Value) {
        self.live.retain(|(_, _, w)| *w != v);
    }
}
