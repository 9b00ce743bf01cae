//! Cranelift (CLIF) kernels for the CPU backend.
//!
//! What is compiled: every matmul of the graph — `Linear`, `ExpertLinear` and
//! `GroupedLinear` — becomes a call of one register-tiled kernel (`matmul.rs`)
//! specialised to its `MatmulShape` (K, N, epilogue, bias, row weights); ops of one
//! shape share a kernel. The epilogue (bias, activation, GLU product `act(gate)·up`,
//! routing weight) is fused into the kernel; activations are f32x4 polynomial
//! approximations (`math.rs`), within 1e-6 relative of the interpreter's f64 ones.
//!
//! What is not: the routing ops (router, top-k, dispatch, capacity, gathers and
//! scatters, losses), norms and elementwise ops are irregular or cheap next to the
//! matmuls; the runtime runs them with the interpreter's own implementation
//! (`interp::eval_op`), so they match the semantics by construction.
//!
//! Weights are read in a packed panel layout (`pack.rs`) made once at load time,
//! so the kernel streams each weight panel contiguously; panels hold f32 or bf16
//! (`WeightDType`: bf16 is widened to f32 in registers, accumulation is f32).
//!
//! Each shape also gets an epilogue kernel (`matmul::build_epilogue`): the same
//! epilogue over accumulators that something else computed (the runtime's
//! gemm-crate path for many rows), read in panel column order.

pub mod math;
pub mod matmul;
pub mod object;
pub mod pack;

use crate::ir::{Epilogue, Graph, NodeIndex, Op, WeightFormat};
use cranelift_codegen::ir::{types, Function, Type};
use cranelift_codegen::isa::CallConv;
use std::collections::HashMap;

/// What the generated code may assume about the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub pointer: Type,
    pub call_conv: CallConv,
    /// Fused multiply-add is native (x86: the FMA extension).
    pub fma: bool,
}

impl Default for Target {
    /// x86-64 System V with FMA: the target of the `moec compile` snapshots.
    fn default() -> Target {
        Target {
            pointer: types::I64,
            call_conv: CallConv::SystemV,
            fma: true,
        }
    }
}

/// How packed weight panels store their values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightDType {
    #[default]
    F32,
    /// bfloat16, widened to f32 in registers (a 16-bit shift).
    Bf16,
}

impl From<WeightDType> for WeightFormat {
    fn from(d: WeightDType) -> WeightFormat {
        match d {
            WeightDType::F32 => WeightFormat::F32,
            WeightDType::Bf16 => WeightFormat::Bf16,
        }
    }
}

impl WeightDType {
    /// Bytes per packed weight.
    pub fn bytes(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::Bf16 => 2,
        }
    }
}

/// A matmul `epi(x · wᵀ + b) · rw` over weights `[N, K]` (per expert).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulShape {
    pub k: usize,
    /// Weight rows; a GLU epilogue produces `n / 2` outputs.
    pub n: usize,
    pub epilogue: Epilogue,
    pub bias: bool,
    pub weighted: bool,
    /// What the packed weights hold.
    pub weights: WeightDType,
}

impl MatmulShape {
    /// Outputs per row.
    pub fn width(&self) -> usize {
        self.epilogue.width(self.n as u64) as usize
    }
    /// Output columns one packed panel produces.
    pub fn panel_cols(&self) -> usize {
        if self.epilogue.is_glu() {
            pack::PANEL / 2
        } else {
            pack::PANEL
        }
    }
    /// Packed panels per expert.
    pub fn panels(&self) -> usize {
        self.width().div_ceil(self.panel_cols())
    }
    /// Elements (f32 or bf16) of one expert's packed weights.
    pub fn packed_len(&self) -> usize {
        self.panels() * self.k * pack::PANEL
    }
    /// The epilogue kernel's symbol name.
    pub fn epilogue_name(&self) -> String {
        format!("{}_epilogue", self.name())
    }
    /// The symbol names of the shape's functions, in [`Kernel::functions`] order.
    pub fn function_names(&self) -> [String; 2] {
        [self.name(), self.epilogue_name()]
    }
    /// The kernel's symbol name.
    pub fn name(&self) -> String {
        let epi = match self.epilogue {
            Epilogue::None => String::new(),
            Epilogue::Act(u) => format!("_{}", Op::Unary(u).name()),
            Epilogue::Glu(u) => format!("_glu_{}", Op::Unary(u).name()),
            // The constants' bits keep kernels of different constants apart.
            Epilogue::ClampedGlu { alpha, limit } => {
                format!("_clamped_glu_{:08x}_{:08x}", alpha.0, limit.0)
            }
        };
        format!(
            "matmul_k{}_n{}{epi}{}{}{}",
            self.k,
            self.n,
            if self.bias { "_bias" } else { "" },
            if self.weighted { "_weighted" } else { "" },
            match self.weights {
                WeightDType::F32 => "",
                WeightDType::Bf16 => "_bf16",
            }
        )
    }
}

/// The matmul a node computes, if it is one (`Linear`, `ExpertLinear`, `GroupedLinear`),
/// with f32 weight panels (the runtime may choose bf16 ones, `lower_with`).
pub fn matmul_shape(g: &Graph, n: NodeIndex) -> Option<MatmulShape> {
    let op = &g.node(n).op;
    let (epilogue, bias, weighted) = op.matmul_attrs()?;
    let rank = if matches!(op, Op::Linear { .. }) {
        2
    } else {
        3
    };
    let w = g.value_type(*g.operands(n).get(1)?);
    let fixed = |i: usize| w.shape.get(i)?.as_fixed().map(|d| d as usize);
    Some(MatmulShape {
        k: fixed(rank - 1)?,
        n: fixed(rank - 2)?,
        epilogue,
        bias,
        weighted,
        weights: WeightDType::F32,
    })
}

/// The generated functions of one shape.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub shape: MatmulShape,
    /// The matmul kernel (`matmul::build`).
    pub func: Function,
    /// Its epilogue alone (`matmul::build_epilogue`).
    pub epilogue: Function,
}

impl Kernel {
    /// Every function of the kernel with its symbol name: the matmul kernel, then
    /// its epilogue (what the JIT and `object.rs` compile, in this order).
    pub fn functions(&self) -> [(String, &Function); 2] {
        let [matmul, epilogue] = self.shape.function_names();
        [(matmul, &self.func), (epilogue, &self.epilogue)]
    }
}

/// The kernels of a graph, and which node calls which.
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub kernels: Vec<Kernel>,
    pub by_node: HashMap<NodeIndex, usize>,
}

/// Lowers every matmul of `g` (in topological order; one kernel per distinct shape).
pub fn lower(g: &Graph, target: &Target) -> Program {
    lower_with(g, target, |n| matmul_shape(g, n))
}

/// Like `lower`, with each matmul node's shape given by `shape_of` (`None`: not a
/// matmul): the runtime picks bf16 panels for weights that are bf16 values.
pub fn lower_with(
    g: &Graph,
    target: &Target,
    shape_of: impl Fn(NodeIndex) -> Option<MatmulShape>,
) -> Program {
    let mut program = Program::default();
    let mut seen: HashMap<MatmulShape, usize> = HashMap::new();
    for n in g.topo_order() {
        let Some(shape) = shape_of(n) else {
            continue;
        };
        let id = *seen.entry(shape).or_insert_with(|| {
            program.kernels.push(Kernel {
                shape,
                func: matmul::build(&shape, target),
                epilogue: matmul::build_epilogue(&shape, target),
            });
            program.kernels.len() - 1
        });
        program.by_node.insert(n, id);
    }
    program
}

/// The CLIF text of every kernel the CPU backend compiles for `g`, as
/// `(kernel name, text)` in `lower`'s order (`Function`'s `Display`), each
/// matmul kernel followed by its epilogue kernel.
///
/// `moec compile --target clif` and the snapshots use `Target::default()` (x86-64
/// System V, FMA on) rather than the host's ISA, so the text is the same on every
/// machine; a host without FMA JITs the same kernels with `fmul` + `fadd` instead.
pub fn clif_text(g: &Graph, target: &Target) -> Vec<(String, String)> {
    lower(g, target)
        .kernels
        .iter()
        .flat_map(|k| {
            k.functions()
                .map(|(name, f)| (name, f.display().to_string()))
        })
        .collect()
}
