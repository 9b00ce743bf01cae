//! Printing graphs: a stable text form (what snapshots compare), Graphviz DOT for
//! people, and JSON for tools. Values are numbered `%0, %1, ...` in the graph's
//! deterministic topological order, so the text does not depend on node indices.

use crate::ir::{Graph, NodeIndex, Value};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write;

fn numbering(g: &Graph) -> (Vec<NodeIndex>, HashMap<NodeIndex, usize>) {
    let order = g.topo_order();
    let ids = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    (order, ids)
}

fn value_name(ids: &HashMap<NodeIndex, usize>, g: &Graph, v: Value) -> String {
    if g.node(v.node).outputs.len() > 1 {
        format!("%{}.{}", ids[&v.node], v.port)
    } else {
        format!("%{}", ids[&v.node])
    }
}

/// The text form: one line per weight, node and output.
pub fn text(g: &Graph) -> String {
    let (order, ids) = numbering(g);
    let mut out = String::new();
    let _ = writeln!(out, "graph {} {{", g.name);
    for (i, w) in g.weights.iter().enumerate() {
        let shape: Vec<String> = w.shape.iter().map(|d| d.to_string()).collect();
        let mut extra = String::new();
        if let Some(e) = w.expert_slice {
            let _ = write!(extra, " slice={e}");
        }
        if w.transposed {
            extra.push_str(" transposed");
        }
        if let Some(r) = w.rows {
            let _ = write!(extra, " rows({}, {})", r.start, r.step);
        }
        if let Some(c) = w.columns {
            let _ = write!(extra, " columns({}, {})", c.start, c.step);
        }
        let _ = writeln!(
            out,
            "  w{i} {} = \"{}\"{extra} [{}]",
            w.key,
            w.tensor,
            shape.join(", ")
        );
    }
    for n in &order {
        let node = g.node(*n);
        let operands: Vec<String> = g
            .operands(*n)
            .iter()
            .map(|v| value_name(&ids, g, *v))
            .collect();
        let types: Vec<String> = node.outputs.iter().map(|t| t.to_string()).collect();
        let attrs = node.op.attrs();
        let _ = write!(out, "  %{} = {}", ids[n], node.op.name());
        if !attrs.is_empty() {
            let _ = write!(out, "[{attrs}]");
        }
        if !operands.is_empty() {
            let _ = write!(out, " {}", operands.join(", "));
        }
        let _ = write!(out, " : {}", types.join(", "));
        if let Some(label) = &node.label {
            let _ = write!(out, "  // {label}");
        }
        out.push('\n');
    }
    for (name, v) in &g.outputs {
        let _ = writeln!(out, "  output {name} = {}", value_name(&ids, g, *v));
    }
    out.push_str("}\n");
    out
}

/// Graphviz DOT: nodes are ops, edges are labelled with the value's type.
pub fn dot(g: &Graph) -> String {
    let (order, ids) = numbering(g);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=monospace];",
        g.name
    );
    for n in &order {
        let node = g.node(*n);
        let mut label = format!("%{} {}", ids[n], node.op.name());
        let attrs = node.op.attrs();
        if !attrs.is_empty() {
            let _ = write!(label, "\\n{attrs}");
        }
        if let Some(l) = &node.label {
            let _ = write!(label, "\\n{l}");
        }
        let _ = writeln!(
            out,
            "  n{} [label=\"{}\"];",
            ids[n],
            label.replace('"', "'")
        );
    }
    for n in &order {
        for (i, v) in g.operands(*n).iter().enumerate() {
            let ty = g.value_type(*v);
            let _ = writeln!(
                out,
                "  n{} -> n{} [label=\"{i}: {ty}\"];",
                ids[&v.node], ids[n]
            );
        }
    }
    for (name, v) in &g.outputs {
        let _ = writeln!(
            out,
            "  \"out_{name}\" [shape=oval, label=\"{name}\"];\n  n{} -> \"out_{name}\";",
            ids[&v.node]
        );
    }
    out.push_str("}\n");
    out
}

#[derive(Serialize)]
struct JsonNode<'a> {
    id: usize,
    op: &'a crate::ir::Op,
    operands: Vec<String>,
    outputs: &'a [crate::ir::TensorType],
    label: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonGraph<'a> {
    name: &'a str,
    weights: &'a [crate::ir::WeightDecl],
    nodes: Vec<JsonNode<'a>>,
    outputs: Vec<(String, String)>,
}

/// JSON with the same numbering as the text form.
pub fn json(g: &Graph) -> String {
    let (order, ids) = numbering(g);
    let nodes = order
        .iter()
        .map(|n| {
            let node = g.node(*n);
            JsonNode {
                id: ids[n],
                op: &node.op,
                operands: g
                    .operands(*n)
                    .iter()
                    .map(|v| value_name(&ids, g, *v))
                    .collect(),
                outputs: &node.outputs,
                label: node.label.as_deref(),
            }
        })
        .collect();
    let outputs = g
        .outputs
        .iter()
        .map(|(n, v)| (n.clone(), value_name(&ids, g, *v)))
        .collect();
    let doc = JsonGraph {
        name: &g.name,
        weights: &g.weights,
        nodes,
        outputs,
    };
    serde_json::to_string_pretty(&doc).expect("graphs serialize")
}
