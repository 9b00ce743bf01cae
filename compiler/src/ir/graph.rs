//! The graph container: a `StableGraph` of [`Node`]s whose edges carry one
//! operand each, plus the graph's inputs, outputs and weight table.

use super::attrs::F32Bits;
use super::format::WeightFormat;
use super::op::Op;
use super::probe::Probe;
use super::types::TensorType;
use super::weight::WeightDecl;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An operation and the types of the values it produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub outputs: Vec<TensorType>,
    /// The spec's name for this value, when it has one (for printing only).
    pub label: Option<String>,
}

/// Data flows from the source node's output `port` into the target's operand `operand`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Edge {
    pub port: u8,
    pub operand: u32,
}

/// One value: an output port of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Value {
    pub node: NodeIndex,
    pub port: u8,
}

impl Value {
    /// Node `n`'s outputs paired with their values, port by port.
    pub fn ports<T>(node: NodeIndex, outs: Vec<T>) -> impl Iterator<Item = (Value, T)> {
        outs.into_iter().enumerate().map(move |(port, t)| {
            (
                Value {
                    node,
                    port: port as u8,
                },
                t,
            )
        })
    }
}

impl From<NodeIndex> for Value {
    fn from(node: NodeIndex) -> Value {
        Value { node, port: 0 }
    }
}

/// State that outlives a run: one KV cache of `width`-wide rows, one row per position,
/// appended to by a `CacheAppend` op and owned by the runtime's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDecl {
    /// Where it comes from, e.g. `layers.3.self_attn.k` (for messages and printing).
    pub name: String,
    pub width: u64,
}

/// Serializable (serde) so a scheduled graph can be stored in an artifact (`moec build`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Graph {
    pub name: String,
    pub g: StableGraph<Node, Edge>,
    pub inputs: Vec<NodeIndex>,
    pub outputs: Vec<(String, Value)>,
    pub weights: Vec<WeightDecl>,
    /// Run-to-run state (KV caches), indexed by `Op::CacheAppend { state }`.
    #[serde(default)]
    pub states: Vec<StateDecl>,
    /// The most positions the states hold (a stateful graph's `max_position_embeddings`).
    #[serde(default)]
    pub max_positions: Option<u64>,
    /// An encoder-decoder model's first decoder token (its `decoder_start_token_id`):
    /// generation starts the decoder from it.
    #[serde(default)]
    pub decoder_start: Option<i32>,
    /// Values a trace reads (`probe.rs`): not uses, kept through rewrites.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Matmul nodes whose weights are stored in another format than they were
    /// loaded in (`storage.rs`, `--weight-format`): bf16, or q8_0 / q4_0 blocks,
    /// whose matmuls also quantize their activations into 8-bit blocks
    /// (`quant::quantize_activations`). Every engine that runs the graph computes
    /// with those values, or refuses it.
    #[serde(default)]
    pub stored: BTreeMap<NodeIndex, WeightFormat>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    /// Adds `op` applied to `operands`, typing it by the op's rule.
    pub fn add(
        &mut self,
        op: Op,
        operands: &[Value],
        label: Option<String>,
    ) -> Result<NodeIndex, String> {
        let types: Vec<&TensorType> = operands.iter().map(|v| self.value_type(*v)).collect();
        let outputs = op.infer(&types)?;
        for t in &outputs {
            t.check_size()?;
        }
        let node = self.g.add_node(Node { op, outputs, label });
        for (i, v) in operands.iter().enumerate() {
            self.g.add_edge(
                v.node,
                node,
                Edge {
                    port: v.port,
                    operand: i as u32,
                },
            );
        }
        Ok(node)
    }

    /// Adds an input; an error only when its type is too large (`check_size`).
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> Result<Value, String> {
        let op = Op::Input {
            name: name.to_string(),
            ty,
        };
        let node = self.add(op, &[], Some(name.to_string()))?;
        self.inputs.push(node);
        Ok(node.into())
    }

    pub fn add_weight(&mut self, decl: WeightDecl) -> Value {
        let shape = decl
            .shape
            .iter()
            .map(|&d| super::types::Dim::fixed(d as u64))
            .collect();
        let op = Op::Weight {
            id: self.weights.len(),
            storage: decl.storage,
        };
        let label = Some(decl.key.clone());
        self.weights.push(decl);
        self.g
            .add_node(Node {
                op,
                outputs: vec![TensorType::f32(shape)],
                label,
            })
            .into()
    }

    /// Declares a new state of `width`-wide rows; returns its index.
    pub fn add_state(&mut self, name: impl Into<String>, width: u64) -> usize {
        self.states.push(StateDecl {
            name: name.into(),
            width,
        });
        self.states.len() - 1
    }

    /// Whether runs of this graph carry state from one call to the next.
    pub fn is_stateful(&self) -> bool {
        !self.states.is_empty()
    }

    pub fn add_constant(&mut self, v: f32) -> Value {
        self.g
            .add_node(Node {
                op: Op::Constant(F32Bits::new(v)),
                outputs: vec![TensorType::scalar()],
                label: None,
            })
            .into()
    }

    pub fn node(&self, n: NodeIndex) -> &Node {
        &self.g[n]
    }

    pub fn value_type(&self, v: Value) -> &TensorType {
        &self.g[v.node].outputs[v.port as usize]
    }

    /// One more than the largest node index: the length of a table indexed by
    /// `NodeIndex::index()` (removed nodes leave holes, so it can exceed the node count).
    pub fn node_bound(&self) -> usize {
        petgraph::visit::NodeIndexable::node_bound(&self.g)
    }

    /// The node's operands in operand order.
    pub fn operands(&self, n: NodeIndex) -> Vec<Value> {
        let mut edges: Vec<(u32, Value)> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .map(|e| {
                (
                    e.weight().operand,
                    Value {
                        node: e.source(),
                        port: e.weight().port,
                    },
                )
            })
            .collect();
        edges.sort_unstable_by_key(|(operand, _)| *operand);
        edges.into_iter().map(|(_, v)| v).collect()
    }

    /// Nodes in a deterministic topological order: operands before users, and
    /// among ready nodes the lowest index (the one created first, unless it took
    /// the slot of a removed node).
    ///
    /// Kahn's algorithm, with the ready nodes split at a cursor that walks the
    /// indices once: a node that becomes ready at or past the cursor is found by
    /// the walk, one that becomes ready behind it goes to a min-heap, and every
    /// heap entry is lower than anything the walk can find. Graphs whose edges
    /// mostly point from lower to higher indices (as lowering builds them) leave
    /// the heap nearly empty: O(n + e), plus O(log n) per node created out of order.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        // Operands not yet placed, per index; removed nodes' slots never become ready.
        let mut pending = vec![usize::MAX; self.node_bound()];
        for n in self.g.node_indices() {
            pending[n.index()] = self.g.edges_directed(n, Direction::Incoming).count();
        }
        let mut behind = BinaryHeap::new();
        let mut cursor = 0;
        let mut order = Vec::with_capacity(self.g.node_count());
        loop {
            let n = match behind.pop() {
                Some(Reverse(n)) => n,
                None => {
                    while cursor < pending.len() && pending[cursor] != 0 {
                        cursor += 1;
                    }
                    if cursor == pending.len() {
                        return order;
                    }
                    cursor += 1;
                    NodeIndex::new(cursor - 1)
                }
            };
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let t = e.target().index();
                pending[t] -= 1;
                if pending[t] == 0 && t < cursor {
                    behind.push(Reverse(e.target()));
                }
            }
        }
    }
}
