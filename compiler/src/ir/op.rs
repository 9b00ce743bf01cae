//! The closed set of IR operations, each with its typing rule.
//!
//! Operands are numbered in the order their edges carry (`Edge::operand`).
//! "Rows" means the leading dims of an operand; every op here computes along the
//! last axis and keeps the leading dims. Routing ops work on `[T, E]` (tokens by
//! experts) and `[T, k]` (tokens by selected slots) values; a slot's expert index
//! is `-1` once capacity has dropped it.

use super::types::{DType, Dim, TensorType};
use super::weight::StorageDType;
use serde::Serialize;
use std::fmt;

/// An f32 stored as its bits, so ops can derive `Eq` and `Hash`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct F32Bits(pub u32);

impl F32Bits {
    pub fn new(v: f32) -> Self {
        F32Bits(v.to_bits())
    }
    pub fn get(self) -> f32 {
        f32::from_bits(self.0)
    }
}

impl fmt::Debug for F32Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.get())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum UnaryOp {
    Silu,
    /// Exact gelu: x·Φ(x).
    Gelu,
    /// The tanh approximation of gelu.
    GeluTanh,
    Relu,
    Sigmoid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// How a group of experts is scored for group-limited routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum GroupScore {
    /// Sum of the group's two largest scores (DeepSeek-V3).
    Top2Sum,
    /// The group's largest score (DeepSeek-V2).
    Max,
}

/// How many token slots one expert may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum CapacityLimit {
    /// ⌈factor · tokens · k / experts⌉.
    Factor(F32Bits),
    /// A fixed count per expert.
    Fixed(u64),
}

/// Which slots win when an expert is over capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum DropPolicy {
    /// Slot-major arrival: every token's first choice in token order, then every second choice, ...
    Arrival,
    /// Highest routing weight first (ties: arrival order).
    Score,
}

/// What a stacked or grouped matmul applies to its result before storing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Epilogue {
    None,
    /// `act(h)`.
    Act(UnaryOp),
    /// Gated linear unit over a fused `[gate; up]` projection: `act(h[..N/2]) · h[N/2..]`.
    Glu(UnaryOp),
}

/// The router's score function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Score {
    Softmax,
    Sigmoid,
}

/// Every step of a router after its logits, as one op (see `Op::Router`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RouterAttrs {
    pub score: Score,
    /// Select on the logits and score only the k selected (softmax over k).
    pub after_topk: bool,
    /// A selection-only bias operand is present.
    pub selection_bias: bool,
    /// Group-limited selection: (groups, groups kept, group score).
    pub groups: Option<(u64, u64, GroupScore)>,
    pub k: u64,
    pub normalize: bool,
    pub scale: F32Bits,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Op {
    /// A run-time input. Typing: no operands; output: the declared type.
    Input { name: String, ty: TensorType },
    /// A weight tensor, index into `Graph::weights`. Typing: no operands; f32 of the declared shape.
    Weight {
        id: usize,
        storage: Option<StorageDType>,
    },
    /// A scalar constant. Typing: no operands; f32 `[]`.
    Constant(F32Bits),
    /// `x · wᵀ (+ b)`. Typing: x f32 `[.., K]`, w `[N, K]`, optional b `[N]`; output `[.., N]`.
    Linear { bias: bool },
    /// Elementwise activation. Typing: f32 x; output like x.
    Unary(UnaryOp),
    /// Elementwise arithmetic with broadcasting of the right operand. Typing: a, b f32 where b's dims,
    /// aligned to a's last dims, are each 1 or equal to a's; output like a.
    Binary(BinaryOp),
    /// Softmax along the last axis. Typing: f32 x; output like x.
    Softmax,
    /// Divide each row by its sum. Typing: f32 x; output like x.
    NormalizeSum,
    /// `x / rms(x) · w`. Typing: x f32 `[.., D]`, w `[D]`; output like x.
    RmsNorm { eps: F32Bits },
    /// `(x - mean) / std · w + b`. Typing: x f32 `[.., D]`, w `[D]`, b `[D]`; output like x.
    LayerNorm { eps: F32Bits },
    /// Keep the scores of each row's best `keep` groups of `experts / groups` consecutive experts;
    /// the rest become -inf. Typing: f32 `[T, E]`, `groups` divides E; output like it.
    GroupMask {
        groups: u64,
        keep: u64,
        score: GroupScore,
    },
    /// The k largest per row, in descending order (ties: lower index first).
    /// Typing: f32 `[T, E]`; outputs: values f32 `[T, k]`, indices i32 `[T, k]`.
    TopK { k: u64 },
    /// Pick `src[t, idx[t, j]]`. Typing: src f32 `[T, E]`, idx i32 `[T, k]`; output f32 `[T, k]`.
    Gather,
    /// Drop slots over an expert's capacity by setting their index to -1.
    /// Typing: idx i32 `[T, k]`, w f32 `[T, k]`; output i32 `[T, k]`.
    Capacity {
        experts: u64,
        limit: CapacityLimit,
        policy: DropPolicy,
    },
    /// Dense gates: `g[t, e] = Σ_j w[t, j]·[idx[t, j] = e]`.
    /// Typing: idx i32 `[T, k]`, w f32 `[T, k]`; output f32 `[T, experts]`.
    ScatterGates { experts: u64 },
    /// Expert-choice routing: each expert takes its ⌈T·factor/E⌉ best tokens (ties: lower token
    /// first). Typing: scores f32 `[T, E]`; outputs: the scores f32 `[T, E]`, and slots i32 `[T, E]`
    /// where slot `e` holds `e` if expert e took the token, else -1.
    ExpertChoice { factor: F32Bits },
    /// `Σ_e g[:, e] · out_e`. Typing: g f32 `[T, E]`, then E operands f32 `[T, D]`; output `[T, D]`.
    DenseCombine,
    /// The output of tokens whose only slot was dropped, under the pass-through rule:
    /// `w[t, 0] · x[t]` where `idx[t, 0] = -1`, else 0. Typing: x f32 `[T, D]`, idx i32 `[T, 1]`,
    /// w f32 `[T, 1]`; output like x.
    PassThrough,
    /// Token slots each expert received. Typing: idx i32 `[T, k]`; output i32 `[experts]`.
    ExpertCounts { experts: u64 },
    /// Load-balancing loss `E · Σ_e f_e · P_e`. Typing: logits f32 `[T, E]`, idx i32 `[T, k]`;
    /// output f32 `[]`.
    AuxLoss,
    /// Router z-loss `mean_t logsumexp(logits_t)²`. Typing: f32 `[T, E]`; output f32 `[]`.
    ZLoss,
    /// Stack equal-typed operands along a new leading axis. Typing: n ≥ 1 operands of one type;
    /// output `[n, ..]`.
    Stack,

    // ---- Fused forms, made by the expert-fusion passes ----
    /// The fused router: score, selection bias, group mask, top-k, gather, normalize and scale.
    /// Typing: logits f32 `[T, E]`, and with `selection_bias` a bias `[E]`; outputs: weights f32
    /// `[T, k]`, indices i32 `[T, k]` (the same values the unfused chain computes).
    Router(RouterAttrs),
    /// Concatenate along the second-to-last axis (the only axis of vectors, so stacked GLU biases
    /// can be built as `[N_gate + N_up]`). Typing: operands `[.., N_i, K]` (or `[N_i]`) equal but
    /// in N; output `[.., ΣN_i, K]` (or `[ΣN_i]`).
    ConcatRows,
    /// Columns `start..start+len` of a `[T, E]` value. Typing: f32 `[T, E]`; output `[T, len]`.
    SliceCols { start: u64, len: u64 },
    /// Stacked experts' linear layer on every token: `out[e, t] = epi(x_e[t] · w[e]ᵀ + b[e]) · g[t, e]`.
    /// Typing: x f32 `[T, K]` (one input for all experts) or `[E, T, K]`, w `[E, N, K]`, then b
    /// `[E, N]` if `bias`, then gates `[T, E]` if `weighted`; output `[E, T, N']` with N' = N/2 for a
    /// GLU epilogue, else N.
    ExpertLinear {
        epilogue: Epilogue,
        bias: bool,
        weighted: bool,
    },
    /// Sum over the expert axis. Typing: f32 `[E, T, D]`; output `[T, D]`.
    ExpertSum,

    // ---- Scheduled forms, made by sparsity-aware scheduling ----
    /// Groups token slots by expert. Typing: idx i32 `[T, k]` (-1 = dropped); outputs: order i32
    /// `[k·T]` (slot ids `t·k + j` sorted by expert, token order within an expert, then -1 for the
    /// dropped), offsets i32 `[experts + 1]` (expert e's rows are `offsets[e]..offsets[e+1]`).
    Dispatch { experts: u64 },
    /// Rows in dispatch order. Typing: x f32 `[T, D]`, order i32 `[k·T]` of a `[T, k]` routing;
    /// output `[k·T, D]`; a row whose slot is -1 is zero.
    GatherRows { k: u64 },
    /// Per-row routing weights in dispatch order. Typing: w f32 `[T, k]`, order i32 `[k·T]`;
    /// output f32 `[k·T, 1]`, zero for dropped slots.
    GatherSlots,
    /// The grouped matmul: row r in expert e's segment becomes `epi(x[r] · w[e]ᵀ + b[e]) · rw[r]`.
    /// Only (expert, row-tile) pairs holding rows do work; rows past `offsets[E]` are zero.
    /// Typing: x f32 `[R, K]`, w `[E, N, K]`, offsets i32 `[E + 1]`, then b `[E, N]` if `bias`,
    /// then rw `[R, 1]` if `weighted`; output `[R, N']`.
    GroupedLinear {
        epilogue: Epilogue,
        bias: bool,
        weighted: bool,
    },
    /// Adds rows back to their tokens: `y[order[r] / k] += x[r]`. Typing: x f32 `[k·T, D]`, order
    /// i32 `[k·T]`; output `[T, D]`.
    ScatterAdd { k: u64 },
}

impl Op {
    /// The op's typing rule: the output types for these operand types, or what is wrong.
    pub fn infer(&self, operands: &[&TensorType]) -> Result<Vec<TensorType>, String> {
        use Op::*;
        let arity = |n: usize| -> Result<(), String> {
            if operands.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "{} takes {n} operands, found {}",
                    self.name(),
                    operands.len()
                ))
            }
        };
        match self {
            Input { ty, .. } => {
                arity(0)?;
                Ok(vec![ty.clone()])
            }
            Weight { .. } | Constant(_) => unreachable!("leaf types are set when the node is made"),
            Linear { bias } => {
                arity(2 + usize::from(*bias))?;
                let (x, w) = (operands[0], operands[1]);
                expect_f32(x, "linear input")?;
                if w.rank() != 2 {
                    return Err(format!("linear weight must be 2-D [out, in], found {w}"));
                }
                let k = x.width();
                if k.is_none() || w.shape[1].as_fixed() != k {
                    return Err(format!(
                        "linear input {x} has width {}, but the weight {w} expects {}",
                        x.shape.last().map_or("none".into(), |d| d.to_string()),
                        w.shape[1]
                    ));
                }
                if *bias && operands[2].shape != [w.shape[0]] {
                    return Err(format!(
                        "linear bias must be [{}], found {}",
                        w.shape[0], operands[2]
                    ));
                }
                let mut shape = x.shape.clone();
                *shape.last_mut().expect("width checked") = w.shape[0];
                Ok(vec![TensorType::f32(shape)])
            }
            Unary(_) | Softmax | NormalizeSum => {
                arity(1)?;
                expect_f32(operands[0], self.name())?;
                Ok(vec![operands[0].clone()])
            }
            Binary(_) => {
                arity(2)?;
                let (a, b) = (operands[0], operands[1]);
                expect_f32(a, "left operand")?;
                expect_f32(b, "right operand")?;
                let fits = b.rank() <= a.rank()
                    && b.shape
                        .iter()
                        .rev()
                        .zip(a.shape.iter().rev())
                        .all(|(bd, ad)| *bd == Dim::fixed(1) || bd == ad);
                if !fits {
                    return Err(format!("shapes {a} and {b} do not match"));
                }
                Ok(vec![a.clone()])
            }
            RmsNorm { .. } | LayerNorm { .. } => {
                arity(if matches!(self, RmsNorm { .. }) { 2 } else { 3 })?;
                let x = operands[0];
                expect_f32(x, "norm input")?;
                for w in &operands[1..] {
                    if w.shape.as_slice() != [*x.shape.last().ok_or("norm input has no axis")?] {
                        return Err(format!("norm weight {w} does not match the input {x}"));
                    }
                }
                Ok(vec![x.clone()])
            }
            GroupMask { groups, keep, .. } => {
                arity(1)?;
                let e = routing_width(operands[0])?;
                if *groups == 0 || e % groups != 0 {
                    return Err(format!("{groups} groups do not divide {e} experts"));
                }
                if *keep == 0 || keep > groups {
                    return Err(format!("cannot keep {keep} of {groups} groups"));
                }
                Ok(vec![operands[0].clone()])
            }
            TopK { k } => {
                arity(1)?;
                let e = routing_width(operands[0])?;
                if *k == 0 || *k > e {
                    return Err(format!("top-{k} of {e} experts"));
                }
                let rows = operands[0].shape[0];
                Ok(vec![
                    TensorType::f32(vec![rows, Dim::fixed(*k)]),
                    TensorType::i32(vec![rows, Dim::fixed(*k)]),
                ])
            }
            Gather => {
                arity(2)?;
                routing_width(operands[0])?;
                expect_slots(operands[1], operands[0].shape[0])?;
                Ok(vec![TensorType::f32(operands[1].shape.clone())])
            }
            Capacity { .. } => {
                arity(2)?;
                expect_slots(
                    operands[0],
                    operands[0].shape.first().copied().unwrap_or(Dim::TOKENS),
                )?;
                if operands[1].shape != operands[0].shape || operands[1].dtype != DType::F32 {
                    return Err(format!(
                        "capacity weights {} do not match indices {}",
                        operands[1], operands[0]
                    ));
                }
                Ok(vec![operands[0].clone()])
            }
            ScatterGates { experts } => {
                arity(2)?;
                let rows = operands[0].shape.first().copied().unwrap_or(Dim::TOKENS);
                expect_slots(operands[0], rows)?;
                if operands[1].shape != operands[0].shape || operands[1].dtype != DType::F32 {
                    return Err(format!(
                        "gate weights {} do not match indices {}",
                        operands[1], operands[0]
                    ));
                }
                Ok(vec![TensorType::f32(vec![rows, Dim::fixed(*experts)])])
            }
            ExpertChoice { .. } => {
                arity(1)?;
                routing_width(operands[0])?;
                Ok(vec![
                    operands[0].clone(),
                    TensorType::i32(operands[0].shape.clone()),
                ])
            }
            DenseCombine => {
                let e = routing_width(operands.first().ok_or("combine needs gates")?)?;
                if operands.len() as u64 != e + 1 {
                    return Err(format!(
                        "combine of {e} experts has {} expert operands",
                        operands.len() - 1
                    ));
                }
                let out = operands[1];
                expect_f32(out, "expert output")?;
                for o in &operands[2..] {
                    if *o != out {
                        return Err(format!("expert outputs differ: {out} and {o}"));
                    }
                }
                if out.rank() != 2 || out.shape[0] != operands[0].shape[0] {
                    return Err(format!(
                        "expert output {out} does not have the gates' rows {}",
                        operands[0]
                    ));
                }
                Ok(vec![out.clone()])
            }
            PassThrough => {
                arity(3)?;
                let x = operands[0];
                expect_f32(x, "pass-through input")?;
                expect_slots(operands[1], x.shape[0])?;
                if operands[1].shape[1] != Dim::fixed(1) || operands[2].shape != operands[1].shape {
                    return Err("pass-through needs exactly one slot per token".into());
                }
                Ok(vec![x.clone()])
            }
            ExpertCounts { experts } => {
                arity(1)?;
                expect_slots(
                    operands[0],
                    operands[0].shape.first().copied().unwrap_or(Dim::TOKENS),
                )?;
                Ok(vec![TensorType::i32(vec![Dim::fixed(*experts)])])
            }
            AuxLoss => {
                arity(2)?;
                routing_width(operands[0])?;
                expect_slots(operands[1], operands[0].shape[0])?;
                Ok(vec![TensorType::scalar()])
            }
            ZLoss => {
                arity(1)?;
                routing_width(operands[0])?;
                Ok(vec![TensorType::scalar()])
            }
            Stack => {
                let first = operands.first().ok_or("stack needs at least one operand")?;
                if operands.iter().any(|o| o != first) {
                    return Err("stacked values differ in type".into());
                }
                let mut shape = vec![Dim::fixed(operands.len() as u64)];
                shape.extend(first.shape.iter().copied());
                Ok(vec![TensorType {
                    dtype: first.dtype,
                    shape,
                }])
            }
            Router(r) => {
                arity(1 + usize::from(r.selection_bias))?;
                let e = routing_width(operands[0])?;
                if r.k == 0 || r.k > e {
                    return Err(format!("top-{} of {e} experts", r.k));
                }
                if r.selection_bias && operands[1].shape != [Dim::fixed(e)] {
                    return Err(format!(
                        "selection bias must be [{e}], found {}",
                        operands[1]
                    ));
                }
                if let Some((g, keep, _)) = r.groups {
                    if g == 0 || e % g != 0 || keep == 0 || keep > g {
                        return Err(format!("bad groups: keep {keep} of {g} over {e} experts"));
                    }
                }
                let rows = operands[0].shape[0];
                let k = Dim::fixed(r.k);
                Ok(vec![
                    TensorType::f32(vec![rows, k]),
                    TensorType::i32(vec![rows, k]),
                ])
            }
            ConcatRows => {
                let first = operands.first().ok_or("concat needs operands")?;
                if first.rank() < 1 {
                    return Err(format!("concat operands must have rank ≥ 1, found {first}"));
                }
                let axis = first.rank().saturating_sub(2);
                let mut rows = 0;
                for o in operands {
                    let mut a = o.shape.clone();
                    let mut b = first.shape.clone();
                    a[axis] = Dim::fixed(0);
                    b[axis] = Dim::fixed(0);
                    if a != b || o.dtype != first.dtype {
                        return Err(format!("cannot concatenate {first} and {o}"));
                    }
                    rows += o.shape[axis]
                        .as_fixed()
                        .ok_or("concat rows must be fixed")?;
                }
                let mut shape = first.shape.clone();
                shape[axis] = Dim::fixed(rows);
                Ok(vec![TensorType {
                    dtype: first.dtype,
                    shape,
                }])
            }
            SliceCols { start, len } => {
                arity(1)?;
                let e = routing_width(operands[0])?;
                if *len == 0 || start + len > e {
                    return Err(format!("columns {start}..{} of {e}", start + len));
                }
                Ok(vec![TensorType::f32(vec![
                    operands[0].shape[0],
                    Dim::fixed(*len),
                ])])
            }
            ExpertLinear {
                epilogue,
                bias,
                weighted,
            } => {
                arity(2 + usize::from(*bias) + usize::from(*weighted))?;
                let (x, w) = (operands[0], operands[1]);
                let (e, n, k) = stacked_weight(w)?;
                expect_f32(x, "expert input")?;
                let rows = match x.shape.as_slice() {
                    [t, kk] if kk.as_fixed() == Some(k) => *t,
                    [ee, t, kk] if ee.as_fixed() == Some(e) && kk.as_fixed() == Some(k) => *t,
                    _ => return Err(format!("expert input {x} does not fit the weights {w}")),
                };
                let gates = [rows, Dim::fixed(e)];
                check_bias_and_weights(&operands[2..], *bias, *weighted, (e, n), &gates)?;
                let out = epilogue_width(*epilogue, n)?;
                Ok(vec![TensorType::f32(vec![
                    Dim::fixed(e),
                    rows,
                    Dim::fixed(out),
                ])])
            }
            ExpertSum => {
                arity(1)?;
                match operands[0].shape.as_slice() {
                    [_, t, d] if operands[0].dtype == DType::F32 => {
                        Ok(vec![TensorType::f32(vec![*t, *d])])
                    }
                    _ => Err(format!(
                        "expected f32 [experts, tokens, width], found {}",
                        operands[0]
                    )),
                }
            }
            Dispatch { experts } => {
                arity(1)?;
                let idx = operands[0];
                let (rows, k) = match (idx.dtype, idx.shape.as_slice()) {
                    (DType::I32, [r, k]) => (*r, k.as_fixed().ok_or("slot count must be fixed")?),
                    _ => return Err(format!("expected i32 [tokens, k] indices, found {idx}")),
                };
                let slots = scale_dim(rows, k);
                Ok(vec![
                    TensorType::i32(vec![slots]),
                    TensorType::i32(vec![Dim::fixed(experts + 1)]),
                ])
            }
            GatherRows { k } => {
                arity(2)?;
                let (x, order) = (operands[0], operands[1]);
                expect_f32(x, "gathered rows")?;
                let slots = scale_dim(x.shape[0], *k);
                if x.rank() != 2 || order.shape != [slots] || order.dtype != DType::I32 {
                    return Err(format!(
                        "gather rows of {x} by {order}: expected order i32 [{slots}]"
                    ));
                }
                Ok(vec![TensorType::f32(vec![slots, x.shape[1]])])
            }
            GatherSlots => {
                arity(2)?;
                let (w, order) = (operands[0], operands[1]);
                let slots = match w.shape.as_slice() {
                    [t, k] => scale_dim(*t, k.as_fixed().ok_or("slot count must be fixed")?),
                    _ => return Err(format!("expected f32 [tokens, k] weights, found {w}")),
                };
                if order.shape != [slots] || order.dtype != DType::I32 || w.dtype != DType::F32 {
                    return Err(format!("gather slots of {w} by {order}"));
                }
                Ok(vec![TensorType::f32(vec![slots, Dim::fixed(1)])])
            }
            GroupedLinear {
                epilogue,
                bias,
                weighted,
            } => {
                arity(3 + usize::from(*bias) + usize::from(*weighted))?;
                let (x, w, offsets) = (operands[0], operands[1], operands[2]);
                let (e, n, k) = stacked_weight(w)?;
                expect_f32(x, "grouped input")?;
                if x.rank() != 2 || x.shape[1].as_fixed() != Some(k) {
                    return Err(format!("grouped input {x} does not fit the weights {w}"));
                }
                if offsets.dtype != DType::I32 || offsets.shape != [Dim::fixed(e + 1)] {
                    return Err(format!("offsets must be i32 [{}], found {offsets}", e + 1));
                }
                let row_weights = [x.shape[0], Dim::fixed(1)];
                check_bias_and_weights(&operands[3..], *bias, *weighted, (e, n), &row_weights)?;
                let out = epilogue_width(*epilogue, n)?;
                Ok(vec![TensorType::f32(vec![x.shape[0], Dim::fixed(out)])])
            }
            ScatterAdd { k } => {
                arity(2)?;
                let (x, order) = (operands[0], operands[1]);
                expect_f32(x, "scattered rows")?;
                let s = x.shape.first().copied().ok_or("scatter needs rows")?;
                if s.per_token % k != 0 || s.fixed % k != 0 || order.shape != [s] || x.rank() != 2 {
                    return Err(format!("scatter of {x} by {order} with k = {k}"));
                }
                let rows = Dim {
                    per_token: s.per_token / k,
                    fixed: s.fixed / k,
                };
                Ok(vec![TensorType::f32(vec![rows, x.shape[1]])])
            }
        }
    }

    /// The op's name in printed IR.
    pub fn name(&self) -> &'static str {
        use Op::*;
        match self {
            Input { .. } => "input",
            Weight { .. } => "weight",
            Constant(_) => "const",
            Linear { .. } => "linear",
            Unary(UnaryOp::Silu) => "silu",
            Unary(UnaryOp::Gelu) => "gelu",
            Unary(UnaryOp::GeluTanh) => "gelu_tanh",
            Unary(UnaryOp::Relu) => "relu",
            Unary(UnaryOp::Sigmoid) => "sigmoid",
            Binary(BinaryOp::Add) => "add",
            Binary(BinaryOp::Sub) => "sub",
            Binary(BinaryOp::Mul) => "mul",
            Binary(BinaryOp::Div) => "div",
            Softmax => "softmax",
            NormalizeSum => "normalize_sum",
            RmsNorm { .. } => "rmsnorm",
            LayerNorm { .. } => "layernorm",
            GroupMask { .. } => "group_mask",
            TopK { .. } => "topk",
            Gather => "gather",
            Capacity { .. } => "capacity",
            ScatterGates { .. } => "scatter_gates",
            ExpertChoice { .. } => "expert_choice",
            DenseCombine => "dense_combine",
            PassThrough => "pass_through",
            ExpertCounts { .. } => "expert_counts",
            AuxLoss => "aux_loss",
            ZLoss => "z_loss",
            Stack => "stack",
            Router(_) => "router",
            ConcatRows => "concat_rows",
            SliceCols { .. } => "slice_cols",
            ExpertLinear { .. } => "expert_linear",
            ExpertSum => "expert_sum",
            Dispatch { .. } => "dispatch",
            GatherRows { .. } => "gather_rows",
            GatherSlots => "gather_slots",
            GroupedLinear { .. } => "grouped_linear",
            ScatterAdd { .. } => "scatter_add",
        }
    }

    /// Attributes for printing, `key=value` separated by spaces (empty when none).
    pub fn attrs(&self) -> String {
        use Op::*;
        match self {
            Input { name, .. } => format!("name={name}"),
            Weight { id, storage } => match storage {
                Some(s) => format!("id={id} storage={s:?}"),
                None => format!("id={id}"),
            },
            Constant(v) => format!("value={v:?}"),
            Linear { bias } => {
                if *bias {
                    "bias".into()
                } else {
                    String::new()
                }
            }
            RmsNorm { eps } | LayerNorm { eps } => format!("eps={eps:?}"),
            GroupMask {
                groups,
                keep,
                score,
            } => format!("groups={groups} keep={keep} score={score:?}"),
            TopK { k } => format!("k={k}"),
            Capacity {
                experts,
                limit,
                policy,
            } => {
                let limit = match limit {
                    CapacityLimit::Factor(f) => format!("factor={f:?}"),
                    CapacityLimit::Fixed(n) => format!("fixed={n}"),
                };
                format!("experts={experts} {limit} policy={policy:?}")
            }
            ScatterGates { experts } | ExpertCounts { experts } => format!("experts={experts}"),
            ExpertChoice { factor } => format!("factor={factor:?}"),
            Router(r) => {
                let mut a = format!("score={:?} k={}", r.score, r.k);
                if r.after_topk {
                    a.push_str(" after_topk");
                }
                if r.selection_bias {
                    a.push_str(" selection_bias");
                }
                if let Some((g, keep, score)) = r.groups {
                    a.push_str(&format!(" groups={g} keep={keep} group_score={score:?}"));
                }
                if r.normalize {
                    a.push_str(" normalize");
                }
                if r.scale.get() != 1.0 {
                    a.push_str(&format!(" scale={:?}", r.scale));
                }
                a
            }
            SliceCols { start, len } => format!("start={start} len={len}"),
            ExpertLinear {
                epilogue,
                bias,
                weighted,
            }
            | GroupedLinear {
                epilogue,
                bias,
                weighted,
            } => {
                let mut a = match epilogue {
                    Epilogue::None => String::new(),
                    Epilogue::Act(u) => format!("act={u:?}"),
                    Epilogue::Glu(u) => format!("glu={u:?}"),
                };
                for (on, word) in [(*bias, "bias"), (*weighted, "weighted")] {
                    if on {
                        if !a.is_empty() {
                            a.push(' ');
                        }
                        a.push_str(word);
                    }
                }
                a
            }
            Dispatch { experts } => format!("experts={experts}"),
            GatherRows { k } | ScatterAdd { k } => format!("k={k}"),
            _ => String::new(),
        }
    }
}

/// A stacked weight `[E, N, K]`; returns (E, N, K).
fn stacked_weight(w: &TensorType) -> Result<(u64, u64, u64), String> {
    match w.shape.as_slice() {
        [e, n, k] if w.dtype == DType::F32 => match (e.as_fixed(), n.as_fixed(), k.as_fixed()) {
            (Some(e), Some(n), Some(k)) => Ok((e, n, k)),
            _ => Err(format!("stacked weights must have fixed dims, found {w}")),
        },
        _ => Err(format!(
            "expected stacked weights f32 [experts, out, in], found {w}"
        )),
    }
}

/// The optional trailing operands of a stacked or grouped matmul: a bias `[E, N]`
/// if `bias`, then routing weights of shape `weights` if `weighted`.
fn check_bias_and_weights(
    tail: &[&TensorType],
    bias: bool,
    weighted: bool,
    (e, n): (u64, u64),
    weights: &[Dim],
) -> Result<(), String> {
    let mut next = 0;
    if bias {
        if tail[next].shape != [Dim::fixed(e), Dim::fixed(n)] {
            return Err(format!(
                "expert bias must be [{e}, {n}], found {}",
                tail[next]
            ));
        }
        next += 1;
    }
    if weighted && tail[next].shape != weights {
        let want: Vec<String> = weights.iter().map(|d| d.to_string()).collect();
        return Err(format!(
            "routing weights must be [{}], found {}",
            want.join(", "),
            tail[next]
        ));
    }
    Ok(())
}

fn epilogue_width(epilogue: Epilogue, n: u64) -> Result<u64, String> {
    match epilogue {
        Epilogue::Glu(_) if !n.is_multiple_of(2) => {
            Err(format!("a GLU epilogue needs an even width, found {n}"))
        }
        Epilogue::Glu(_) => Ok(n / 2),
        _ => Ok(n),
    }
}

/// `k` slots per row of `rows`.
fn scale_dim(rows: Dim, k: u64) -> Dim {
    Dim {
        per_token: rows.per_token * k,
        fixed: rows.fixed * k,
    }
}

fn expect_f32(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype == DType::F32 {
        Ok(())
    } else {
        Err(format!("{what} must be f32, found {t}"))
    }
}

/// A `[T, E]` routing value; returns E.
fn routing_width(t: &TensorType) -> Result<u64, String> {
    match (t.dtype, t.shape.as_slice()) {
        (DType::F32, [_, e]) => e
            .as_fixed()
            .ok_or_else(|| format!("expert axis of {t} must be fixed")),
        _ => Err(format!("expected f32 [tokens, experts], found {t}")),
    }
}

/// An i32 `[T, k]` slot-index value with the given rows.
fn expect_slots(t: &TensorType, rows: Dim) -> Result<(), String> {
    match (t.dtype, t.shape.as_slice()) {
        (DType::I32, [r, k]) if *r == rows && k.as_fixed().is_some() => Ok(()),
        _ => Err(format!(
            "expected i32 [{rows}, k] expert indices, found {t}"
        )),
    }
}
