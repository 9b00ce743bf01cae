//! The IR verifier: the invariants every graph must satisfy between passes.
//!
//! Checks: operands numbered 0..n with no gaps, each edge's port exists on its
//! source, each node's stored output types equal its op's typing rule applied to
//! its operands, every tensor under `MAX_TENSOR_BYTES`, weight ids in range with matching shapes, state ids in range
//! (each state appended to by one op, as wide as its rows), outputs that exist,
//! and no cycles. It reports the first violation, naming the node.

use crate::ir::{Graph, Op, TensorType};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// Verifies `g`; the error names the node and says what is wrong.
pub fn verify(g: &Graph) -> Result<(), String> {
    for n in g.g.node_indices() {
        let node = &g.g[n];
        let at = || format!("node {} ({})", n.index(), node.op.name());
        let mut operands: Vec<u32> =
            g.g.edges_directed(n, Direction::Incoming)
                .map(|e| e.weight().operand)
                .collect();
        operands.sort_unstable();
        if operands.iter().enumerate().any(|(i, o)| *o as usize != i) {
            return Err(format!(
                "{}: operands are not numbered 0..{}: {operands:?}",
                at(),
                operands.len()
            ));
        }
        for e in g.g.edges_directed(n, Direction::Incoming) {
            let src = &g.g[e.source()];
            if e.weight().port as usize >= src.outputs.len() {
                return Err(format!(
                    "{}: reads port {} of a node with {} outputs",
                    at(),
                    e.weight().port,
                    src.outputs.len()
                ));
            }
        }
        for t in &node.outputs {
            t.check_size().map_err(|m| format!("{}: {m}", at()))?;
        }
        match &node.op {
            Op::Weight { id, .. } => {
                let decl = g
                    .weights
                    .get(*id)
                    .ok_or_else(|| format!("{}: weight id {id} out of range", at()))?;
                let shape: Vec<u64> = match node.outputs.as_slice() {
                    [t] => t
                        .shape
                        .iter()
                        .map(|d| d.as_fixed().unwrap_or(u64::MAX))
                        .collect(),
                    _ => return Err(format!("{}: a weight has one output", at())),
                };
                let want: Vec<u64> = decl.shape.iter().map(|d| *d as u64).collect();
                if shape != want {
                    return Err(format!(
                        "{}: weight `{}` typed {:?}, declared {:?}",
                        at(),
                        decl.key,
                        shape,
                        want
                    ));
                }
            }
            Op::Constant(_) => {
                if node.outputs != [TensorType::scalar()] {
                    return Err(format!("{}: a constant must be a scalar", at()));
                }
            }
            Op::CacheAppend { state } if *state >= g.states.len() => {
                return Err(format!("{}: state {state} out of range", at()));
            }
            op => {
                let vals = g.operands(n);
                let types: Vec<&TensorType> = vals.iter().map(|v| g.value_type(*v)).collect();
                let inferred = op.infer(&types).map_err(|m| format!("{}: {m}", at()))?;
                if inferred != node.outputs {
                    return Err(format!(
                        "{}: stored types {:?} differ from inferred {:?}",
                        at(),
                        node.outputs,
                        inferred
                    ));
                }
            }
        }
    }
    for (name, v) in &g.outputs {
        let node =
            g.g.node_weight(v.node)
                .ok_or_else(|| format!("output `{name}` refers to a removed node"))?;
        if v.port as usize >= node.outputs.len() {
            return Err(format!("output `{name}` reads a missing port"));
        }
    }
    for p in &g.probes {
        let what = || format!("probe {} of `{}`", p.kind.name(), p.block);
        let node = g.g.node_weight(p.value.node);
        if node.is_none_or(|node| p.value.port as usize >= node.outputs.len()) {
            return Err(format!("{} refers to a removed node or port", what()));
        }
    }
    let fixed = match g.stored.is_empty() {
        true => Default::default(),
        false => crate::passes::memory::weight_only(g),
    };
    for &n in g.stored.keys() {
        let matmul = g.g.node_weight(n).is_some_and(|node| {
            matches!(
                node.op,
                Op::Linear { .. } | Op::ExpertLinear { .. } | Op::GroupedLinear { .. }
            )
        });
        if !matmul
            || !g
                .operands(n)
                .get(1)
                .is_some_and(|w| fixed.contains(&w.node))
        {
            return Err(format!(
                "node {}: a stored weight format on what is not a matmul over weights",
                n.index()
            ));
        }
    }
    let mut appends = vec![0usize; g.states.len()];
    for n in g.g.node_indices() {
        if let Op::CacheAppend { state } = g.g[n].op {
            appends[state] += 1;
            let width = g.g[n].outputs[0].width();
            if width != Some(g.states[state].width) {
                return Err(format!(
                    "node {}: state `{}` is {} wide, its rows are {:?}",
                    n.index(),
                    g.states[state].name,
                    g.states[state].width,
                    width
                ));
            }
        }
    }
    if let Some(s) = appends.iter().position(|c| *c != 1) {
        return Err(format!(
            "state `{}` is appended to by {} ops, not one",
            g.states[s].name, appends[s]
        ));
    }
    if g.topo_order().len() != g.g.node_count() {
        return Err("the graph has a cycle".into());
    }
    Ok(())
}
