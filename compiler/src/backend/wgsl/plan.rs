//! The execution plan of a WGSL program: buffers, what fills them, and the
//! dispatches in order. It is plain serde data (`plan.json` next to the `.wgsl`
//! files), enough for any wgpu host to run the kernels:
//!
//! - every buffer has an element type and an element count `per_token · T +
//!   per_source · S + fixed` for a run on `T` tokens (`S`: the source length of
//!   an encoder-decoder model's decoder, the rows of its encoder inputs; 0 elsewhere);
//! - state buffers are the KV caches: `max_positions` rows of a state's width,
//!   owned by the host's session and kept on the device across calls (a call
//!   appends its rows at `past`, the positions held before it);
//! - weight buffers are filled once, at load time, from ranges of the bound
//!   weight tensors (`Segment`s, in the graph's weight order); input buffers from
//!   the named inputs; the rest are computed;
//! - every kernel's binding 0 is a uniform `Params { tokens, capacity, past, source }`
//!   (`u32`s) written per step; its other bindings are the step's buffers in
//!   order;
//! - steps run in order; a copy step copies elements between buffers.

use crate::ir::{CapacityLimit, Dim, Syms};
use serde::{Deserialize, Serialize};

/// Everything a host needs besides the kernel sources.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    /// Kernel `i` is the file `kernels[i].name + ".wgsl"`, entry point `main`.
    pub kernels: Vec<KernelInfo>,
    pub buffers: Vec<Buffer>,
    pub steps: Vec<Step>,
    /// Graph outputs: name, buffer, shape.
    pub outputs: Vec<Output>,
    /// The largest storage binding the plan was made for, in bytes.
    pub max_binding_bytes: u64,
    /// The most positions the state buffers hold (the graph's `max_positions`);
    /// None for a graph without KV caches.
    #[serde(default)]
    pub max_positions: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    /// The WGSL `enable f16;` extension (the adapter needs `shader-f16`).
    pub f16: bool,
    /// Storage bindings 1, 2, ... (binding 0 is the params uniform).
    pub bindings: Vec<Access>,
}

/// How a kernel uses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    ReadWrite,
}

/// Element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Elem {
    F32,
    I32,
    /// Weights stored as IEEE half floats (converted to f32 when read).
    F16,
}

impl Elem {
    pub fn bytes(self) -> u64 {
        match self {
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 => 2,
        }
    }
    /// The WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::I32 => "i32",
            Elem::F16 => "f16",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    /// The value it holds (printed IR name), with `#chunk` for a split weight.
    pub name: String,
    pub elem: Elem,
    pub elements: Dim,
    pub contents: Contents,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contents {
    /// The named f32 input, row-major.
    Input { name: String },
    /// Filled once from the bound weights, segments back to back.
    Weights { segments: Vec<Segment> },
    /// Written by the steps.
    Computed,
    /// KV cache `state` of the graph (`width` values per position): the
    /// session's, kept on the device across calls; its `elements` are for
    /// `max_positions` positions, and a host may allocate fewer for a session
    /// holding fewer.
    State { state: usize, width: u64 },
}

/// A run of elements of a weight buffer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// Elements `start..start + len` of bound weight `weight` (row-major, as bound).
    Weight {
        weight: usize,
        tensor: String,
        start: u64,
        len: u64,
    },
    /// `len` copies of a constant.
    Fill { value: f32, len: u64 },
    /// These values (tables the compiler computes, e.g. rotary frequencies).
    Values { values: Vec<f32> },
}

impl Segment {
    pub fn elements(&self) -> u64 {
        match self {
            Segment::Weight { len, .. } | Segment::Fill { len, .. } => *len,
            Segment::Values { values } => values.len() as u64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Dispatch `kernel` with `buffers` bound at 1, 2, ...
    Kernel {
        kernel: usize,
        /// The IR node it computes.
        node: String,
        buffers: Vec<usize>,
        workgroups: Workgroups,
        /// The `capacity` field of its params, when the kernel reads one.
        capacity: Option<CapacityRule>,
    },
    /// Copy `elements` elements from the start of `src` to `dst` at `dst_offset` elements.
    Copy {
        src: usize,
        dst: usize,
        dst_offset: Dim,
        elements: Dim,
    },
}

/// How many workgroups a step dispatches for a run on `T` tokens (and `S` source rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workgroups {
    /// A grid-stride loop over `items` invocations of `size`-wide workgroups:
    /// ⌈items / size⌉ workgroups along x, at most the device's limit; none for 0 items.
    Stride { items: Dim, size: u32 },
    /// ⌈items / per⌉ + extra workgroups along x (none for 0 items), `y` along y.
    Tiles {
        items: Dim,
        per: u32,
        extra: u32,
        y: u32,
    },
    /// One workgroup.
    One,
}

impl Workgroups {
    /// The dispatch size for a run with these symbols (a plain token count: no
    /// source), x capped at `max_x` for grid-stride loops. `None` when there is
    /// nothing to do.
    pub fn count(self, syms: impl Into<Syms>, max_x: u32) -> Option<(u32, u32)> {
        let syms = syms.into();
        let div_up = |items: Dim, per: u32| items.eval(syms).div_ceil(per as usize);
        match self {
            Workgroups::Stride { items, size } => {
                let n = div_up(items, size);
                (n > 0).then(|| (n.min(max_x as usize) as u32, 1))
            }
            Workgroups::Tiles {
                items,
                per,
                extra,
                y,
            } => {
                let n = div_up(items, per);
                (n > 0 && y > 0).then(|| ((n + extra as usize).min(u32::MAX as usize) as u32, y))
            }
            Workgroups::One => Some((1, 1)),
        }
    }
}

/// The run-time slot limit a capacity or expert-choice kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityRule {
    /// `Op::Capacity`: slots each expert keeps.
    Slots {
        limit: CapacityLimit,
        k: u64,
        experts: u64,
    },
    /// `Op::ExpertChoice`: tokens each expert takes.
    ExpertChoice { factor: f32, experts: u64 },
}

impl CapacityRule {
    pub fn eval(self, tokens: usize) -> u32 {
        let n = match self {
            CapacityRule::Slots { limit, k, experts } => {
                crate::interp::capacity(limit, tokens, k as usize, experts as usize)
            }
            CapacityRule::ExpertChoice { factor, experts } => {
                crate::interp::expert_choice_capacity(factor, tokens, experts as usize)
            }
        };
        n.min(u32::MAX as usize) as u32
    }
}

/// A graph output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    pub buffer: usize,
    pub shape: Vec<Dim>,
    pub elem: Elem,
}
