//! The attributes IR operations carry: f32/f64 constants stored as bits (so ops
//! derive `Eq` and `Hash`), unary and binary functions, epilogues, router,
//! capacity and drop rules, rope and attention settings. `op.rs` holds the ops.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An f32 stored as its bits, so ops can derive `Eq` and `Hash`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct F32Bits(pub u32);

impl F32Bits {
    pub fn new(v: f32) -> Self {
        F32Bits(v.to_bits())
    }
    pub fn get(self) -> f32 {
        f32::from_bits(self.0)
    }
}

/// An f64 stored as its bits (a value the IR must keep in double precision, as Python computes it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct F64Bits(pub u64);

impl F64Bits {
    pub fn new(v: f64) -> Self {
        F64Bits(v.to_bits())
    }
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl fmt::Debug for F64Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.get())
    }
}

impl fmt::Debug for F32Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.get())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnaryOp {
    Silu,
    /// Exact gelu: x·Φ(x).
    Gelu,
    /// The tanh approximation of gelu.
    GeluTanh,
    Relu,
    Sigmoid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// The smaller operand; NaN if either is NaN (`torch.minimum`, a `clamp` bound).
    Min,
    /// The larger operand; NaN if either is NaN.
    Max,
}

impl BinaryOp {
    /// The op on two f32 values: what the interpreter computes and constant folding folds.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Min | BinaryOp::Max if a.is_nan() || b.is_nan() => f32::NAN,
            BinaryOp::Min => a.min(b),
            BinaryOp::Max => a.max(b),
        }
    }

    /// Whether `a op b == b op a`, so a constant on the left can move to the right.
    pub fn commutes(self) -> bool {
        !matches!(self, BinaryOp::Sub | BinaryOp::Div)
    }
}

/// How a group of experts is scored for group-limited routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupScore {
    /// Sum of the group's two largest scores (DeepSeek-V3).
    Top2Sum,
    /// The group's largest score (DeepSeek-V2).
    Max,
}

/// How many token slots one expert may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CapacityLimit {
    /// ⌈factor · tokens · k / experts⌉.
    Factor(F32Bits),
    /// A fixed count per expert.
    Fixed(u64),
    /// ⌈fraction · tokens⌉ per expert, in f64 (NLLB-MoE's `moe_eval_capacity_token_fraction`).
    Fraction(F64Bits),
}

/// Which slots win when an expert is over capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DropPolicy {
    /// Slot-major arrival: every token's first choice in token order, then every second choice, ...
    Arrival,
    /// Highest routing weight first (ties: arrival order).
    Score,
    /// Batch-prioritized (NLLB-MoE): slot-major like `Arrival`, but within each slot the tokens
    /// are taken in descending order of their first slot's weight (ties: lower token first).
    Priority,
}

/// What a stacked or grouped matmul applies to its result before storing it. The scalar
/// formulas here are the definition; `interp::kernels::epilogue` computes them, and the CLIF
/// and WGSL matmuls emit the same arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Epilogue {
    None,
    /// `act(h)`.
    Act(UnaryOp),
    /// Gated linear unit over a fused `[gate; up]` projection: `act(h[..N/2]) · h[N/2..]`.
    Glu(UnaryOp),
    /// GPT-OSS's clamped GLU over a fused `[gate; up]` projection (the layout of `Glu`): with
    /// `g = min(gate, limit)` and `u = clamp(up, -limit, limit)` (`min(max(up, -limit), limit)`),
    /// `(u + 1) · g · sigmoid(alpha · g)`.
    ClampedGlu {
        alpha: F32Bits,
        limit: F32Bits,
    },
}

impl Epilogue {
    /// Whether the weight rows are `[gate; up]` halves whose pairs make one output each.
    pub fn is_glu(self) -> bool {
        matches!(self, Epilogue::Glu(_) | Epilogue::ClampedGlu { .. })
    }

    /// Outputs per row of a matmul over `n` weight rows.
    pub fn width(self, n: u64) -> u64 {
        if self.is_glu() {
            n / 2
        } else {
            n
        }
    }
}

/// The router's score function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Score {
    Softmax,
    Sigmoid,
}

/// How the k selected routing weights are renormalized: each divided by `max(‖w‖_p, min)`.
/// The weights are never negative, so p = 1 is their sum (`normalize = true`); DBRX's
/// `moe_normalize_expert_weights` is p, Ernie 4.5's `moe_norm_min` is `min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Renorm {
    pub p: F32Bits,
    pub min: F32Bits,
}

impl Renorm {
    /// Division by the sum.
    pub fn sum() -> Renorm {
        Renorm {
            p: F32Bits::new(1.0),
            min: F32Bits::new(0.0),
        }
    }

    /// `p=2 min=1e-12`, leaving out what equals the sum's.
    pub fn attrs(&self) -> String {
        let mut a = Vec::new();
        if self.p.get() != 1.0 {
            a.push(format!("p={:?}", self.p));
        }
        if self.min.get() != 0.0 {
            a.push(format!("min={:?}", self.min));
        }
        a.join(" ")
    }
}

/// Every step of a router after its logits, as one op (see `Op::Router`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouterAttrs {
    pub score: Score,
    /// Select on the logits and score only the k selected (softmax over k).
    pub after_topk: bool,
    /// A selection-only bias operand is present.
    pub selection_bias: bool,
    /// Group-limited selection: (groups, groups kept, group score).
    pub groups: Option<(u64, u64, GroupScore)>,
    pub k: u64,
    pub normalize: Option<Renorm>,
    pub scale: F32Bits,
}

/// How rotary frequencies are rescaled for long contexts: the `rope_type` of a
/// Hugging Face config, with its parameters (formulas in `interp::rope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RopeScaling {
    /// `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: F32Bits },
    /// Llama 3: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: F32Bits,
        low_freq_factor: F32Bits,
        high_freq_factor: F32Bits,
        original_max_positions: u64,
    },
    /// YaRN: interpolation blended with extrapolation over a ramp of dims, and cos/sin scaled
    /// by an attention factor (`mscale`).
    Yarn {
        factor: F32Bits,
        original_max_positions: u64,
        beta_fast: F32Bits,
        beta_slow: F32Bits,
        /// The attention factor; 0 = derived from `factor`, `mscale` and `mscale_all_dim`.
        attention_factor: F32Bits,
        mscale: F32Bits,
        mscale_all_dim: F32Bits,
        /// Round the correction range outwards to whole dims.
        truncate: bool,
    },
}

/// A rotary position embedding (see `Op::Rope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RopeAttrs {
    pub head_dim: u64,
    /// The leading dims of each head that are rotated (partial rotary: fewer than `head_dim`).
    pub rotary_dim: u64,
    pub theta: F32Bits,
    /// Rotate pairs `(2i, 2i+1)` instead of `(i, i + rotary_dim/2)`.
    pub interleaved: bool,
    pub scaling: RopeScaling,
}

/// Scaled dot-product attention (see `Op::Attention`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttentionAttrs {
    pub heads: u64,
    /// Key/value heads; each serves `heads / kv_heads` query heads (grouped-query attention).
    pub kv_heads: u64,
    pub head_dim: u64,
    pub v_head_dim: u64,
    /// Multiplies `q·k` before the softmax.
    pub scale: F32Bits,
    /// A query sees only keys at or before its own position.
    pub causal: bool,
    /// Sliding window: a query at position p sees keys at positions `p-window+1 ..= p`.
    pub window: Option<u64>,
    /// A learned per-head logit (operand 3) joins each softmax's denominator (attention sinks).
    pub sinks: bool,
    /// A learned bias per head and bucket of key position − query position joins each
    /// score (T5's relative attention bias; the table `[buckets, heads]` is the last operand).
    #[serde(default)]
    pub bias: Option<RelativeBias>,
}

/// T5's bucketing of relative positions `key − query` (see `interp::relative_bucket`):
/// half the buckets (per direction, when bidirectional) hold one distance each, the
/// rest cover distances up to `max_distance` on a log scale, and farther ones share
/// the last bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelativeBias {
    pub buckets: u64,
    pub max_distance: u64,
    /// Keys after the query get buckets of their own (an encoder); otherwise they
    /// share bucket 0 (a causal decoder, which never sees them).
    pub bidirectional: bool,
}

impl RelativeBias {
    /// The buckets of one direction, and how many of them hold one distance each.
    pub fn per_direction(self) -> (u64, u64) {
        let n = if self.bidirectional {
            self.buckets / 2
        } else {
            self.buckets
        };
        (n, n / 2)
    }

    /// An error unless each direction has an exact bucket and the log-scale buckets
    /// span a distance beyond the exact ones (T5's formula divides by its log).
    pub fn check(self) -> Result<(), String> {
        let (_, exact) = self.per_direction();
        if exact == 0 {
            let (least, how) = match self.bidirectional {
                true => (4, "a bidirectional"),
                false => (2, "a causal"),
            };
            return Err(format!(
                "{how} relative bias needs at least {least} buckets, found {}",
                self.buckets
            ));
        }
        if self.max_distance <= exact {
            return Err(format!(
                "a relative bias of {} buckets holds distances below {exact} exactly, so its max distance must be above {exact}, found {}",
                self.buckets, self.max_distance
            ));
        }
        Ok(())
    }
}
