//! Splits an encoder-decoder graph into the two programs a runtime runs: the
//! **encoder**, every node that depends on a `source` input (the source sequence)
//! and on nothing of a call's tokens or of the KV caches, run once per source
//! sequence; and the **decoder**, the rest, run call after call, which reads the
//! encoder values it needs (the final encoder states, or each layer's cross-attention
//! keys and values when those are computed from them alone) as inputs of `source`
//! rows. The encoder's outputs are the graph's outputs it computes plus those
//! carried values (named `encoder.N.LABEL`); the decoder's are the rest.
//!
//! In the encoder graph the source sequence is the call's tokens (`source` dims
//! read as `tokens`), so a backend runs it as any stateless graph. Values computed
//! from weights alone go with whichever program reads them (both, if both do).
//! Nodes keep their indices in both graphs (each is a copy of the whole with the
//! other program's nodes removed), so kernels keyed by node stay valid.
//!
//! Not a pipeline step: a graph with `source` inputs runs unsplit in the
//! interpreter (`moec run --backend interp`), and the runtime splits it when it
//! opens a model (`session.rs`), after the pipeline and `last_token`.

use super::rewrite::{remove_dead, replace_uses};
use crate::ir::{Graph, NodeIndex, Op, TensorType, Value};

/// An encoder-decoder graph as its two programs.
#[derive(Clone, Debug)]
pub struct Stages {
    /// Runs on the source sequence as its tokens.
    pub encoder: Graph,
    /// Runs on the decoder's tokens, with the carried values as `source` inputs.
    pub decoder: Graph,
    /// The encoder outputs the decoder reads as inputs of the same name.
    pub carried: Vec<String>,
    /// Each stage's weights as indices into the whole graph's weight table (a stage
    /// keeps the weights its nodes read, in the whole graph's order).
    pub encoder_weights: Vec<usize>,
    pub decoder_weights: Vec<usize>,
}

impl Stages {
    /// The whole graph's input the encoder reads the source sequence from (its one i32 input).
    pub fn source_input(&self) -> Option<&str> {
        self.encoder
            .inputs
            .iter()
            .find_map(|&n| match &self.encoder.node(n).op {
                Op::Input { name, ty } if ty.dtype == crate::ir::DType::I32 => Some(name.as_str()),
                _ => None,
            })
    }
}

/// The position of each of `stage`'s weights in `whole`'s table (`stage`'s are a
/// subsequence of `whole`'s, as `remove_dead` keeps their order).
fn weight_indices(whole: &Graph, stage: &Graph) -> Result<Vec<usize>, String> {
    let mut next = 0;
    stage
        .weights
        .iter()
        .map(|w| {
            let i = next
                + whole.weights[next..]
                    .iter()
                    .position(|x| x == w)
                    .ok_or_else(|| {
                        format!("internal error: stage weight `{}` not in the graph", w.key)
                    })?;
            next = i + 1;
            Ok(i)
        })
        .collect()
}

/// Which program a node belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Depends on the source sequence only.
    Encoder,
    /// Depends on a call's tokens or on the caches.
    Decoder,
    /// Depends on no input: weights and what is computed from them alone.
    Constant,
}

/// The two programs of `g`, or None when `g` reads no `source` input (a decoder-only model).
pub fn split(g: &Graph) -> Result<Option<Stages>, String> {
    if !g.inputs.iter().any(|&n| is_source_input(g, n)) {
        return Ok(None);
    }
    let stage = stages(g);
    let of = |v: Value| stage[v.node.index()];
    // Encoder values a decoder node reads, in a fixed order.
    let mut carried: Vec<Value> = Vec::new();
    for n in g.g.node_indices() {
        if stage[n.index()] == Stage::Decoder {
            for v in g.operands(n) {
                if of(v) == Stage::Encoder && !carried.contains(&v) {
                    carried.push(v);
                }
            }
        }
    }
    carried.sort();
    let names: Vec<String> = carried
        .iter()
        .enumerate()
        .map(|(i, v)| match &g.node(v.node).label {
            Some(label) => format!("encoder.{i}.{label}"),
            None => format!("encoder.{i}"),
        })
        .collect();
    let encoder = encoder_graph(g, &stage, &carried, &names)?;
    let decoder = decoder_graph(g, &stage, &carried, &names)?;
    Ok(Some(Stages {
        encoder_weights: weight_indices(g, &encoder)?,
        decoder_weights: weight_indices(g, &decoder)?,
        encoder,
        decoder,
        carried: names,
    }))
}

fn is_source_input(g: &Graph, n: NodeIndex) -> bool {
    matches!(&g.node(n).op, Op::Input { ty, .. } if ty.shape.first().is_some_and(|d| d.uses_source()))
}

/// Every node's stage, by its operands' (node index = position).
fn stages(g: &Graph) -> Vec<Stage> {
    let mut stage = vec![Stage::Constant; g.node_bound()];
    for n in g.topo_order() {
        let op = &g.node(n).op;
        stage[n.index()] = match op {
            Op::Input { .. } if is_source_input(g, n) => Stage::Encoder,
            Op::Input { .. } | Op::Positions => Stage::Decoder,
            _ if op.is_stateful() => Stage::Decoder,
            _ => {
                let of: Vec<Stage> = g
                    .operands(n)
                    .iter()
                    .map(|v| stage[v.node.index()])
                    .collect();
                if of.contains(&Stage::Decoder) {
                    Stage::Decoder
                } else if of.contains(&Stage::Encoder) {
                    Stage::Encoder
                } else {
                    Stage::Constant
                }
            }
        };
    }
    stage
}

/// The encoder: its nodes (and the constants they read), the graph's outputs it
/// computes and the carried values as outputs, `source` read as `tokens`.
fn encoder_graph(
    g: &Graph,
    stage: &[Stage],
    carried: &[Value],
    names: &[String],
) -> Result<Graph, String> {
    let mut e = g.clone();
    e.name = format!("{}.encoder", g.name);
    let decoder_nodes: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|n| stage[n.index()] == Stage::Decoder)
            .collect();
    for n in decoder_nodes {
        e.g.remove_node(n);
    }
    e.inputs.retain(|&n| is_source_input(g, n));
    e.outputs
        .retain(|(_, v)| stage[v.node.index()] == Stage::Encoder);
    e.outputs
        .extend(names.iter().cloned().zip(carried.iter().copied()));
    e.states.clear();
    e.max_positions = None;
    remove_dead(&mut e);
    for n in e.g.node_indices().collect::<Vec<_>>() {
        let node = &mut e.g[n];
        for t in &mut node.outputs {
            source_as_tokens(t)?;
        }
        if let Op::Input { ty, .. } = &mut node.op {
            source_as_tokens(ty)?;
        }
    }
    Ok(e)
}

/// `t` with `source` read as `tokens`; an encoder value never uses `tokens` itself.
fn source_as_tokens(t: &mut TensorType) -> Result<(), String> {
    if t.shape.iter().any(|d| d.per_token != 0 || d.uses_past()) {
        return Err(format!(
            "internal error: an encoder value {t} depends on the decoder's tokens"
        ));
    }
    for d in &mut t.shape {
        *d = d.source_as_tokens();
    }
    Ok(())
}

/// The decoder: every other node, reading each carried value from a new input of
/// its name and type; only inputs may have `source` dims.
fn decoder_graph(
    g: &Graph,
    stage: &[Stage],
    carried: &[Value],
    names: &[String],
) -> Result<Graph, String> {
    let mut d = g.clone();
    d.name = format!("{}.decoder", g.name);
    let encoder_side = |v: &Value| stage[v.node.index()] == Stage::Encoder;
    d.outputs.retain(|(_, v)| !encoder_side(v));
    d.probes.retain(|p| !encoder_side(&p.value));
    for (v, name) in carried.iter().zip(names) {
        let ty = g.value_type(*v).clone();
        let input = d.add_input(name, ty)?;
        replace_uses(&mut d, *v, input);
    }
    let encoder_nodes: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|n| stage[n.index()] == Stage::Encoder)
            .collect();
    for n in encoder_nodes {
        d.g.remove_node(n);
    }
    d.inputs.retain(|&n| d.g.contains_node(n));
    remove_dead(&mut d);
    for n in d.g.node_indices() {
        let node = d.node(n);
        if matches!(node.op, Op::Input { .. }) {
            continue;
        }
        if let Some(t) = node
            .outputs
            .iter()
            .find(|t| t.shape.iter().any(|x| x.uses_source()))
        {
            return Err(format!(
                "`{}` ({} {t}) depends on the source sequence and on the decoder's tokens; \
                 a decoder computes values over its tokens only (attention may read source rows)",
                node.label.as_deref().unwrap_or("a value"),
                node.op.name()
            ));
        }
    }
    Ok(d)
}
