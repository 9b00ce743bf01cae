//! Weight declarations: what the graph needs from a weights file, resolved from
//! the spec's `weights` blocks at lowering time. The runtime binds files to these.

use super::WeightFormat;
use moec_grammar::Span;
use serde::{Deserialize, Serialize};

/// Entries `start, start + step, ...` of an axis (`rows(start, step)` or `columns(start, step)`
/// in a binding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AxisSlice {
    pub start: usize,
    pub step: usize,
}

impl AxisSlice {
    /// The stored index of entry `i`.
    pub fn at(self, i: usize) -> usize {
        self.start + self.step * i
    }
}

/// One weight tensor of the graph, and where to find it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightDecl {
    /// Canonical key, unique in the graph: e.g. `layers.0.y.experts.3.gate`.
    pub key: String,
    /// The key as a `weights` block writes it: e.g. `experts[e].gate` (for messages).
    pub pattern: String,
    /// The tensor name in the safetensors file(s), templates already filled in.
    pub tensor: String,
    /// `Some(e)`: the file tensor holds all experts stacked `[E, ...]`; this weight is slice `e`.
    pub expert_slice: Option<usize>,
    /// The file stores the matrix `[in, out]`; the graph wants `[out, in]`.
    pub transposed: bool,
    /// The weight is every `step`-th entry of the stored tensor's second-to-last axis (as the
    /// file stores it, before transposing), from `start`: as many as `shape` needs.
    pub rows: Option<AxisSlice>,
    /// The same along the stored tensor's last axis.
    pub columns: Option<AxisSlice>,
    /// The shape the graph wants after slicing and transposing.
    pub shape: Vec<usize>,
    /// The dtype the file must store, if the spec says.
    pub storage: Option<WeightFormat>,
    /// Where in the spec this weight comes from (the binding, or else the layer that owns it).
    #[serde(skip)]
    pub span: Span,
}
