//! Probes: values of a graph that a trace reads (`moec trace`), marked by the
//! lowering and kept pointing at an equivalent value by every rewrite. A probe
//! is not a use: it keeps nothing alive and blocks no fusion, so a graph with
//! probes compiles exactly as one without. A probe whose value a pass removes is
//! dropped with it.

use super::Value;
use serde::{Deserialize, Serialize};

/// What a probed value is, for one MoE block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProbeKind {
    /// The router's logits, f32 `[T, E]` (before any selection bias).
    RouterLogits,
    /// The weights the selected experts' outputs are combined with, f32 `[T, k]`.
    RoutingWeights,
    /// The selected experts, i32 `[T, k]`, in the router's order (before capacity).
    SelectedExperts,
    /// The selected experts after capacity, i32 `[T, k]` (-1: a dropped slot).
    KeptExperts,
    /// The routed experts' combined contribution, f32 `[T, D]`.
    Routed,
    /// The shared experts' contribution (gated, when they are), f32 `[T, D]`.
    Shared,
    /// Each routed slot's weighted expert output `w·E(x)`, f32 `[k·T, D]`, in the
    /// order of `SlotOrder` (exists once experts are scheduled sparsely).
    SlotRows,
    /// The slot (`token·k + j`) of each row of `SlotRows`, i32 `[k·T]` (-1: none).
    SlotOrder,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::RouterLogits => "router_logits",
            ProbeKind::RoutingWeights => "routing_weights",
            ProbeKind::SelectedExperts => "selected_experts",
            ProbeKind::KeptExperts => "kept_experts",
            ProbeKind::Routed => "routed",
            ProbeKind::Shared => "shared",
            ProbeKind::SlotRows => "slot_rows",
            ProbeKind::SlotOrder => "slot_order",
        }
    }
}

/// One probed value of the MoE block whose weights live under `block`
/// (`layers.3.mlp`): blocks are told apart, and ordered, by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub block: String,
    pub kind: ProbeKind,
    pub value: Value,
}
