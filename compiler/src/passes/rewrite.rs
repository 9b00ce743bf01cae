//! Graph-editing helpers shared by the passes: redirect a value's uses, remove
//! nodes nothing depends on, ask who reads a value and what a constant holds.

use crate::ir::{Edge, Graph, NodeIndex, Op, Value};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// Makes every user of `old` (edges and graph outputs) read `new` instead; its
/// probes move to `new` too.
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
    for p in g.probes.iter_mut().filter(|p| p.value == old) {
        p.value = new;
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

/// Removes every node that no output depends on (probes keep nothing alive: a
/// removed node's probes and stored format go with it), and weights no node reads (renumbering
/// weight ids). Inputs are kept even when unused: they are the
/// graph's interface (and give the token count). Returns whether anything was removed.
pub fn remove_dead(g: &mut Graph) -> bool {
    let mut live = vec![false; g.node_bound()];
    let mut stack: Vec<NodeIndex> = g
        .outputs
        .iter()
        .map(|(_, v)| v.node)
        .chain(g.inputs.iter().copied())
        .chain(g.g.node_indices().filter(|n| g.g[*n].op.is_stateful()))
        .collect();
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut live[n.index()], true) {
            stack.extend(g.g.neighbors_directed(n, Direction::Incoming));
        }
    }
    let dead: Vec<NodeIndex> = g.g.node_indices().filter(|n| !live[n.index()]).collect();
    let changed = !dead.is_empty();
    detach_edges_into(g, &dead, &live);
    for n in dead {
        g.g.remove_node(n);
    }
    // A probe or stored format may name a node a caller removed before (beyond the
    // node bound now): it goes too.
    let alive = |n: NodeIndex| live.get(n.index()).copied().unwrap_or(false);
    g.probes.retain(|p| alive(p.value.node));
    g.stored.retain(|n, _| alive(*n));
    compact_weights(g);
    changed
}

/// Removes every edge into the `dead` nodes, cheaply. Removing an edge walks both
/// its endpoints' edge lists (most recent first) up to it, so removing the edges
/// of a wide fan-out (a moe input read by every expert, a combine reading every
/// expert) one node at a time would walk those lists once per edge. Here each
/// source's list is unlinked from its front, sources from the last created down,
/// so that an edge is (nearly) first in both of its lists. Only edges go; which
/// nodes are removed, and in what order, stays the caller's.
fn detach_edges_into(g: &mut Graph, dead: &[NodeIndex], live: &[bool]) {
    let mut sources: Vec<NodeIndex> = dead
        .iter()
        .flat_map(|d| g.g.neighbors_directed(*d, Direction::Incoming))
        .collect();
    sources.sort_unstable_by(|a, b| b.cmp(a));
    sources.dedup();
    let mut doomed = Vec::new();
    for n in sources {
        doomed.extend(
            g.g.edges_directed(n, Direction::Outgoing)
                .filter(|e| !live[e.target().index()])
                .map(|e| e.id()),
        );
        for e in doomed.drain(..) {
            g.g.remove_edge(e);
        }
    }
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
/// a value a fusion may absorb. Stops at the first other reader, so asking it of a
/// value with many readers costs no more than of a private one.
pub fn used_only_by(g: &Graph, v: Value, allowed: &[NodeIndex]) -> bool {
    g.g.edges_directed(v.node, Direction::Outgoing)
        .all(|e| e.weight().port != v.port || allowed.contains(&e.target()))
        && !g.outputs.iter().any(|(_, o)| *o == v)
}

/// The scalar value of `v` if it is a `Constant`.
pub fn constant(g: &Graph, v: Value) -> Option<f32> {
    match g.node(v.node).op {
        Op::Constant(c) => Some(c.get()),
        _ => None,
    }
}
