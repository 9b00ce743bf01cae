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
    /// The arena size for a run with `tokens` tokens (saturating: a size past 64 bits
    /// reads as `u64::MAX`).
    pub fn peak_bytes(&self, tokens: usize) -> u64 {
        self.peak_per_token
            .saturating_mul(tokens as u64)
            .saturating_add(self.peak_fixed)
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
    weight_only_in_order(g, &g.topo_order())
}

/// [`weight_only`], given `g`'s topological order.
fn weight_only_in_order(g: &Graph, order: &[NodeIndex]) -> HashSet<NodeIndex> {
    let mut set = HashSet::new();
    for &n in order {
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

/// An arena value while planning: its live range (topological positions) and footprint.
struct Buffer {
    value: Value,
    live: (usize, usize),
    footprint: (u64, u64),
}

/// Plans every computed value of `g` into one arena.
pub fn plan(g: &Graph) -> MemoryPlan {
    let order = g.topo_order();
    let mut pos = vec![usize::MAX; g.node_bound()];
    for (i, n) in order.iter().enumerate() {
        pos[n.index()] = i;
    }
    let fixed = weight_only_in_order(g, &order);
    let outputs: HashSet<Value> = g.outputs.iter().map(|(_, v)| *v).collect();
    let end = order.len();
    // Every arena value, in order of definition.
    let mut buffers = Vec::new();
    for &n in &order {
        if fixed.contains(&n) || matches!(g.node(n).op, Op::Input { .. } | Op::CacheAppend { .. }) {
            continue;
        }
        for (port, ty) in g.node(n).outputs.iter().enumerate() {
            let value = Value {
                node: n,
                port: port as u8,
            };
            let last = if outputs.contains(&value) {
                end
            } else {
                g.g.edges_directed(n, Direction::Outgoing)
                    .filter(|e| e.weight().port as usize == port)
                    .map(|e| pos[e.target().index()])
                    .max()
                    .unwrap_or(pos[n.index()])
            };
            let (a, b) = byte_size(ty);
            buffers.push(Buffer {
                value,
                live: (pos[n.index()], last),
                footprint: if a > 0 && b > 0 { (a + b, b) } else { (a, b) },
            });
        }
    }
    // The buffers (indices into `buffers`) whose last use is at each position.
    let mut dies_at: Vec<Vec<usize>> = vec![Vec::new(); end];
    for (k, buffer) in buffers.iter().enumerate() {
        if buffer.live.1 < end {
            dies_at[buffer.live.1].push(k);
        }
    }
    let (mut per_token, mut fixed_arena) = (Arena::default(), Arena::default());
    let mut offsets: Vec<(u64, u64)> = Vec::with_capacity(buffers.len());
    for (i, dying) in dies_at.iter().enumerate() {
        while let Some(buffer) = buffers.get(offsets.len()).filter(|b| b.live.0 == i) {
            let (a, b) = buffer.footprint;
            offsets.push((per_token.alloc(a), fixed_arena.alloc(b)));
        }
        for &k in dying {
            let ((a_off, b_off), (a, b)) = (offsets[k], buffers[k].footprint);
            per_token.free(a_off, a);
            fixed_arena.free(b_off, b);
        }
    }
    MemoryPlan {
        offsets: buffers.iter().map(|b| b.value).zip(offsets).collect(),
        footprints: buffers.iter().map(|b| (b.value, b.footprint)).collect(),
        live: buffers.iter().map(|b| (b.value, b.live)).collect(),
        peak_per_token: per_token.peak,
        peak_fixed: fixed_arena.peak,
    }
}

/// One coordinate, first-fit: the free ranges between live buffers.
struct Arena {
    /// `(start, end)`, in address order, never adjacent (freeing merges them);
    /// the last one is unbounded. A buffer goes at the start of the first range it
    /// fits in, which is the lowest offset clear of every live buffer.
    free: Vec<(u64, u64)>,
    peak: u64,
}

impl Default for Arena {
    fn default() -> Arena {
        Arena {
            free: vec![(0, u64::MAX)],
            peak: 0,
        }
    }
}

impl Arena {
    /// Places `size` bytes at the lowest offset that fits between live buffers.
    /// An empty request takes offset 0 and occupies nothing.
    fn alloc(&mut self, size: u64) -> u64 {
        if size == 0 {
            return 0;
        }
        let i = self
            .free
            .iter()
            .position(|(start, end)| end - start >= size)
            .expect("the last free range is unbounded");
        let at = self.free[i].0;
        if self.free[i].1 - at == size {
            self.free.remove(i);
        } else {
            self.free[i].0 += size;
        }
        self.peak = self.peak.max(at + size);
        at
    }

    /// Frees the `size` bytes at `at` that `alloc` returned, merging them with the
    /// free ranges on either side.
    fn free(&mut self, at: u64, size: u64) {
        if size == 0 {
            return;
        }
        let end = at + size;
        let i = self.free.partition_point(|(start, _)| *start < at);
        let joins_before = i > 0 && self.free[i - 1].1 == at;
        let joins_after = self.free[i].0 == end;
        match (joins_before, joins_after) {
            (true, true) => {
                self.free[i - 1].1 = self.free[i].1;
                self.free.remove(i);
            }
            (true, false) => self.free[i - 1].1 = end,
            (false, true) => self.free[i].0 = at,
            (false, false) => self.free.insert(i, (at, end)),
        }
    }
}
