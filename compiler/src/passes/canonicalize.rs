//! Canonicalization: small local rewrites that never make the graph worse, run to
//! a fixed point. It runs first (so the fusion passes see one shape of each
//! pattern) and again last as `cleanup` (to sweep up what fusion leaves behind).
//!
//! What it does:
//! - constant folding and algebraic identities, as the named rewrites in
//!   [`simplify`] (each directional, each with its justification);
//! - common-subexpression elimination: two nodes with an equal `Op` and the same
//!   operand list become one (every op but the stateful ones is pure; those are
//!   never merged). Equal `Op` already keeps apart inputs of different names,
//!   weights of different ids and constants of different bits;
//! - dead-node elimination (`rewrite::remove_dead`), keeping the graph's inputs
//!   and its stateful ops.
//!
//! What it does not do: fold anything but scalar `Binary` ops (unary or
//! reduction ops on constants never occur after lowering), reassociate or
//! commute (`(x·a)·b` is not `x·(a·b)` in f32; only the exact `-1·-1` case is
//! folded), or look through weights (their values are unknown until run time).

use super::rewrite::{constant, remove_dead, replace_uses};
use crate::ir::{BinaryOp, Graph, NodeIndex, Op, Value};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// Runs every rewrite and CSE until nothing changes, then removes dead nodes.
///
/// A round that rewrote and merged nothing is the fixed point: it removed only
/// dead nodes, and that makes no new rewrite or duplicate (both read only a live
/// node and its operands, which stay as they were), so no further round runs.
pub fn run(g: &mut Graph) -> Result<bool, String> {
    let mut changed = false;
    loop {
        let simplified = simplify(g);
        let merged = cse(g);
        let removed = remove_dead(g);
        changed |= simplified || merged || removed;
        if !simplified && !merged {
            return Ok(changed);
        }
    }
}

/// One sweep of the named rewrites over the graph, in topological order.
/// A rewrite replaces the uses of a node's value; the old node becomes dead.
fn simplify(g: &mut Graph) -> bool {
    let mut changed = false;
    for n in g.topo_order() {
        let Op::Binary(op) = g.node(n).op else {
            continue;
        };
        let [a, b]: [Value; 2] = g
            .operands(n)
            .try_into()
            .expect("binary ops have two operands");
        let (ca, cb) = (constant(g, a), constant(g, b));
        let out = Value::from(n);
        let replacement = match (op, ca, cb) {
            // fold_binary_consts: c1 ⊕ c2 == the constant, computed in f32 as the interpreter does.
            (_, Some(x), Some(y)) => Some(g.add_constant(op.apply(x, y))),
            // mul_x_one: x·1 == x (exact, NaN and -0 included).
            (BinaryOp::Mul, _, Some(1.0)) => Some(a),
            // div_x_one: x/1 == x (exact).
            (BinaryOp::Div, _, Some(1.0)) => Some(a),
            // sub_x_zero: x-0 == x (exact: -0 - 0 == -0).
            (BinaryOp::Sub, _, Some(y)) if y == 0.0 && y.is_sign_positive() => Some(a),
            // add_x_zero: x+0 == x (either zero), up to the sign of a zero result (-0 + 0 is +0).
            (BinaryOp::Add, _, Some(0.0)) => Some(a),
            // mul_neg_neg: (x·-1)·-1 == x (exact; how lowering spells a double negation).
            (BinaryOp::Mul, None, Some(-1.0)) => double_negation(g, a),
            _ => None,
        };
        // Never change a value's type: broadcasting can make `x` narrower than `x ⊕ c`.
        if let Some(r) = replacement.filter(|r| g.value_type(*r) == g.value_type(out)) {
            replace_uses(g, out, r);
            changed = true;
        }
    }
    changed
}

/// `x` when `v` is `mul(x, -1)`.
fn double_negation(g: &Graph, v: Value) -> Option<Value> {
    if g.node(v.node).op != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let [x, c]: [Value; 2] = g.operands(v.node).try_into().ok()?;
    (constant(g, c) == Some(-1.0)).then_some(x)
}

/// Common-subexpression elimination: in topological order, a node equal to an
/// earlier one (same op, same operands after earlier merges) is replaced by it.
/// The survivor keeps its label, or takes the duplicate's when it has none.
///
/// Earlier nodes are found by the hash of their op and operands; nodes of equal
/// hash but unequal contents (collisions) take the next `probe` under that hash.
/// A node's operands are final once it is visited (they come earlier in the order),
/// so comparing with the graph as it is now is comparing with the node as seen.
fn cse(g: &mut Graph) -> bool {
    let hasher = RandomState::new();
    let mut seen: HashMap<(u64, u32), NodeIndex> = HashMap::with_capacity(g.g.node_count());
    let mut changed = false;
    for n in g.topo_order() {
        let op = &g.node(n).op;
        if op.is_stateful() {
            continue;
        }
        let operands = g.operands(n);
        let hash = hasher.hash_one((op, &operands));
        let mut probe = 0;
        let keep = loop {
            match seen.get(&(hash, probe)) {
                None => break None,
                Some(&k) if g.node(k).op == *op && g.operands(k) == operands => break Some(k),
                Some(_) => probe += 1,
            }
        };
        let Some(keep) = keep else {
            seen.insert((hash, probe), n);
            continue;
        };
        for port in 0..g.node(n).outputs.len() as u8 {
            replace_uses(g, Value { node: n, port }, Value { node: keep, port });
        }
        if g.g[keep].label.is_none() {
            g.g[keep].label = g.g[n].label.take();
        }
        g.inputs.retain(|i| *i != n);
        g.g.remove_node(n);
        changed = true;
    }
    changed
}
