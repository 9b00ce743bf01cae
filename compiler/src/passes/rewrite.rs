//! Graph-editing helpers shared by the passes: redirect a value's uses, remove
//! nodes nothing depends on.

use crate::ir::{Edge, Graph, NodeIndex, Value};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// Makes every user of `old` (edges and graph outputs) read `new` instead.
pub fn replace_uses(g: &mut Graph, old: Value, new: Value) {
    let uses: Vec<(petgraph::stable_graph::EdgeIndex, NodeIndex, Edge)> =
        g.g.edges_directed(old.node, Direction::Outgoing)
            .filter(|e| e.weight().port == old.port)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
    for (id, target, edge) in uses {
        g.g.remove_edge(id);
        g.g.add_edge(
            new.node,
            target,
            Edge {
                port: new.port,
                operand: edge.operand,
            },
        );
    }
    for (_, v) in g.outputs.iter_mut() {
        if *v == old {
            *v = new;
        }
    }
}

/// The nodes that use any output of `n`.
pub fn users(g: &Graph, n: NodeIndex) -> Vec<NodeIndex> {
    let mut u: Vec<NodeIndex> =
        g.g.edges_directed(n, Direction::Outgoing)
            .map(|e| e.target())
            .collect();
    u.sort();
    u.dedup();
    u
}

/// Removes every node that no output depends on, and weights no node reads
/// (renumbering weight ids). Inputs are kept even when unused: they are the
/// graph's interface (and give the token count). Returns whether anything was removed.
pub fn remove_dead(g: &mut Graph) -> bool {
    let mut live = std::collections::HashSet::new();
    let mut stack: Vec<NodeIndex> = g
        .outputs
        .iter()
        .map(|(_, v)| v.node)
        .chain(g.inputs.iter().copied())
        .chain(g.g.node_indices().filter(|n| g.g[*n].op.is_stateful()))
        .collect();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.g.neighbors_directed(n, Direction::Incoming));
        }
    }
    let dead: Vec<NodeIndex> = g.g.node_indices().filter(|n| !live.contains(n)).collect();
    let changed = !dead.is_empty();
    for n in dead {
        g.g.remove_node(n);
    }
    compact_weights(g);
    changed
}

/// Drops weight declarations no node refers to and renumbers the rest, keeping order.
fn compact_weights(g: &mut Graph) {
    use crate::ir::Op;
    let mut used = vec![false; g.weights.len()];
    for n in g.g.node_indices() {
        if let Op::Weight { id, .. } = g.g[n].op {
            used[id] = true;
        }
    }
    if used.iter().all(|u| *u) {
        return;
    }
    let mut new_id = Vec::with_capacity(used.len());
    let mut next = 0;
    for u in &used {
        new_id.push(next);
        next += usize::from(*u);
    }
    let nodes: Vec<NodeIndex> = g.g.node_indices().collect();
    for n in nodes {
        if let Op::Weight { id, .. } = &mut g.g[n].op {
            *id = new_id[*id];
        }
    }
    let mut i = 0;
    g.weights.retain(|_| {
        i += 1;
        used[i - 1]
    });
}

/// The nodes that read the value `v` (one port), each once, in index order.
pub fn value_users(g: &Graph, v: Value) -> Vec<NodeIndex> {
    let mut u: Vec<NodeIndex> =
        g.g.edges_directed(v.node, Direction::Outgoing)
            .filter(|e| e.weight().port == v.port)
            .map(|e| e.target())
            .collect();
    u.sort();
    u.dedup();
    u
}

/// Whether `v` is read by no node outside `allowed` and is not a graph output:
/// a value a fusion may absorb.
pub fn used_only_by(g: &Graph, v: Value, allowed: &[NodeIndex]) -> bool {
    value_users(g, v).iter().all(|u| allowed.contains(u)) && !g.outputs.iter().any(|(_, o)| *o == v)
}
