//! Keeps only the last token's row of every per-token output: what generation
//! reads of the logits. Not a pipeline step (a graph that must give every row's
//! logits, for `moec run` or a test, keeps them): the generate paths apply it to
//! the optimized graph before opening a model.
//!
//! For each output of type f32 `[tokens, W]`, it climbs the chain of row-wise
//! nodes that compute only that output (the final norm and `lm_head`: `linear`,
//! the norms, activations, each reading its rows from the node above and
//! nothing per-token besides) and puts a `last_row` under the topmost one, so
//! that chain runs on one row instead of the prompt's: at prefill `lm_head` is a
//! large share of a small model's work. Everything above the chain (the layers,
//! whose rows fill the KV caches) is untouched.
//!
//! Nodes keep their indices (the chain is re-typed in place), so kernels
//! compiled for the graph, which are keyed by node and do not depend on the row
//! count, stay valid.

use super::rewrite::users;
use crate::ir::{Edge, Graph, NodeIndex, Op, TensorType, Value};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// Applies the rewrite; true when some output changed.
pub fn run(g: &mut Graph) -> Result<bool, String> {
    let mut changed = false;
    for i in 0..g.outputs.len() {
        let out = g.outputs[i].1;
        if !per_token_rows(g.value_type(out)) {
            continue;
        }
        let chain = chain_above(g, i);
        match chain.last() {
            None => {
                let last = g.add(Op::LastRow, &[out], Some("last_row".into()))?;
                g.outputs[i].1 = last.into();
            }
            Some(&top) => {
                let x = g.operands(top)[0];
                let last = g.add(Op::LastRow, &[x], Some("last_row".into()))?;
                rewire_first_operand(g, top, last.into());
                for &n in chain.iter().rev() {
                    let types: Vec<&TensorType> =
                        g.operands(n).iter().map(|v| g.value_type(*v)).collect();
                    let outputs = g.node(n).op.infer(&types)?;
                    g.g[n].outputs = outputs;
                }
            }
        }
        changed = true;
    }
    Ok(changed)
}

/// `[tokens, W]`: one row per token of this call.
fn per_token_rows(t: &TensorType) -> bool {
    let rows = t.shape.first();
    t.rank() == 2 && rows.is_some_and(|d| d.per_token == 1 && d.per_past == 0 && d.fixed == 0)
}

/// The row-wise nodes computing output `i`, from its node upwards: each reads
/// its rows as operand 0 and nothing else per-token, and nothing but the node
/// below it (for the first: nothing, and no other output) reads it.
fn chain_above(g: &Graph, i: usize) -> Vec<NodeIndex> {
    let mut chain: Vec<NodeIndex> = Vec::new();
    let mut v = g.outputs[i].1;
    loop {
        let (n, below) = (v.node, chain.last().copied());
        let sole_user = users(g, n).iter().all(|u| Some(*u) == below);
        let another_output = g
            .outputs
            .iter()
            .enumerate()
            .any(|(j, (_, o))| o.node == n && (j != i || below.is_some()));
        if !row_wise(g, n) || !sole_user || another_output {
            return chain;
        }
        chain.push(n);
        v = g.operands(n)[0];
    }
}

fn row_wise(g: &Graph, n: NodeIndex) -> bool {
    let node = g.node(n);
    let rows_op = matches!(
        node.op,
        Op::Linear { .. } | Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::Unary(_)
    );
    let operands = g.operands(n);
    rows_op
        && node.outputs.len() == 1
        && operands
            .first()
            .is_some_and(|x| per_token_rows(g.value_type(*x)))
        && operands[1..].iter().all(|v| {
            g.value_type(*v)
                .shape
                .iter()
                .all(|d| d.per_token == 0 && d.per_past == 0)
        })
}

/// Makes `n`'s operand 0 read `v`.
fn rewire_first_operand(g: &mut Graph, n: NodeIndex, v: Value) {
    let old: Vec<_> =
        g.g.edges_directed(n, Direction::Incoming)
            .filter(|e| e.weight().operand == 0)
            .map(|e| e.id())
            .collect();
    for e in old {
        g.g.remove_edge(e);
    }
    g.g.add_edge(
        v.node,
        n,
        Edge {
            port: v.port,
            operand: 0,
        },
    );
}
