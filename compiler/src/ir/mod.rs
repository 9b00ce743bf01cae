//! The graph IR: typed values flowing between [`Op`]s in a petgraph `StableGraph`.
//!
//! A graph is built by `lower` from a spec, checked by `verify`, rewritten by
//! passes, printed by `print` and executed by `interp`. Node indices survive
//! deletion, so passes can hold on to them while they rewrite.

mod attrs;
mod format;
mod graph;
mod op;
mod probe;
mod types;
mod typing;
mod typing_models;
pub mod weight;

pub use attrs::{
    AttentionAttrs, BinaryOp, CapacityLimit, DropPolicy, Epilogue, F32Bits, F64Bits, GroupScore,
    RelativeBias, Renorm, RopeAttrs, RopeScaling, RouterAttrs, Score, UnaryOp,
};
pub use format::WeightFormat;
pub use graph::{Edge, Graph, Node, StateDecl, Value};
pub use op::Op;
pub use petgraph::stable_graph::NodeIndex;
pub use probe::{Probe, ProbeKind};
pub use types::{DType, Dim, Syms, TensorType};
pub use weight::{AxisSlice, WeightDecl};
