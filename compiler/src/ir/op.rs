//! The closed set of IR operations, each with its typing rule.
//!
//! Operands are numbered in the order their edges carry (`Edge::operand`).
//! "Rows" means the leading dims of an operand; every op here computes along the
//! last axis and keeps the leading dims. Routing ops work on `[T, E]` (tokens by
//! experts) and `[T, k]` (tokens by selected slots) values; a slot's expert index
//! is `-1` once capacity has dropped it.

use super::attrs::{
    AttentionAttrs, BinaryOp, CapacityLimit, DropPolicy, Epilogue, F32Bits, GroupScore, Renorm,
    RopeAttrs, RopeScaling, RouterAttrs, UnaryOp,
};
use super::types::TensorType;
use super::WeightFormat;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// A run-time input. Typing: no operands; output: the declared type.
    Input { name: String, ty: TensorType },
    /// A weight tensor, index into `Graph::weights`. Typing: no operands; f32 of the declared shape.
    Weight {
        id: usize,
        storage: Option<WeightFormat>,
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
    /// Divide each row by `max(‖row‖_p, min)` (p = 1: by its sum; see `Renorm`). Typing: f32 x;
    /// output like x.
    Normalize(Renorm),
    /// `x / rms(x) · w`. Typing: x f32 `[.., D]`, w `[D]`; output like x.
    RmsNorm { eps: F32Bits },
    /// `(x - mean) / std · w + b`. Typing: x f32 `[.., D]`, w `[D]`, b `[D]`; output like x.
    LayerNorm { eps: F32Bits },
    /// Keep the scores of each row's best `keep` groups of `experts / groups` consecutive experts;
    /// the rest become -inf. Typing: f32 `[T, E]`, `groups` divides E, 1 ≤ keep ≤ groups, and
    /// groups scored by `Top2Sum` hold at least 2 experts; output like it.
    GroupMask {
        groups: u64,
        keep: u64,
        score: GroupScore,
    },
    /// The k largest per row, in descending order (ties: lower index first).
    /// Typing: f32 `[T, E]`; outputs: values f32 `[T, k]`, indices i32 `[T, k]`.
    TopK { k: u64 },
    /// PhiMoE's sparsemixer at inference: k rounds on each row of logits s; round r takes the
    /// best logit m (lower index on ties) among the experts not yet chosen, and its weight is
    /// the softmax at it over those experts whose `(m - s_j) / max(|s_j|, m) ≤ 2·eps` (the
    /// others masked): `1 / Σ_kept exp(s_j - m)`. Typing: f32 `[T, E]`, k ≤ E; outputs:
    /// weights f32 `[T, k]`, indices i32 `[T, k]` (in the order chosen).
    SparseMixer { k: u64, eps: F32Bits },
    /// Pick `src[t, idx[t, j]]`. Typing: src f32 `[T, E]`, idx i32 `[T, k]`; output f32 `[T, k]`.
    Gather,
    /// Drop slots over an expert's capacity by setting their index to -1.
    /// Typing: idx i32 `[T, k]`, w f32 `[T, k]`; output i32 `[T, k]`.
    Capacity {
        experts: u64,
        limit: CapacityLimit,
        policy: DropPolicy,
    },
    /// The weights of the slots capacity kept: `w[t, j]` where `idx[t, j] ≥ 0`, else 0 (so a
    /// following `normalize` renormalizes over the kept slots only). Typing: idx i32 `[T, k]`,
    /// w f32 `[T, k]`; output f32 `[T, k]`.
    KeptWeights,
    /// Dense gates: `g[t, e] = Σ_j w[t, j]·[idx[t, j] = e]`; with `mask`, 1 instead of
    /// `w[t, j]` (which experts a token chose, for experts whose input the weights scale).
    /// Typing: idx i32 `[T, k]`, w f32 `[T, k]`; output f32 `[T, experts]`.
    ScatterGates { experts: u64, mask: bool },
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

    // ---- Whole models: embeddings, positions, attention and its state ----
    /// Rows of a table picked by token ids. Typing: ids i32 `[T]`, table f32 `[V, D]`; output f32
    /// `[T, D]`. Ids outside `0..V` are rejected before a run (`interp::check_inputs`).
    Embedding,
    /// The last of a value's rows, for a caller that reads only the last token's
    /// result (generation's logits); zeros when the value has no rows. Typing: f32
    /// `[T, W]`; output `[1, W]`.
    LastRow,
    /// The absolute positions of this call's tokens: `past, past + 1, ...`. Typing: no operands;
    /// output i32 `[tokens]`.
    Positions,
    /// The row numbers `0, 1, ..., N-1` of an operand's N rows (positions of a sequence that
    /// is given whole, such as an encoder's source). Typing: any value with rows `[N, ..]`;
    /// output i32 `[N]`.
    RowPositions,
    /// fairseq's (M2M100, NLLB) sinusoidal position embeddings: row `p + offset` of the table
    /// `[sin(r·f_0) .. sin(r·f_{h-1}), cos(r·f_0) .. cos(r·f_{h-1})]` (h = width/2, f_i =
    /// exp(-i·ln(10000)/(h-1)), computed in f32 as torch does; a zero last column when width
    /// is odd) for each position p. Typing: positions i32 `[N]`, width ≥ 4; output f32 `[N, width]`.
    Sinusoidal { width: u64, offset: u64 },
    /// Rotary position embedding of every head: x is `[T, heads·head_dim]`, and the first
    /// `rotary_dim` dims of each head are rotated by angles `position · inv_freq`, the rest pass
    /// through. Typing: x f32 `[T, H·head_dim]`, positions i32 `[T]`; output like x.
    Rope(RopeAttrs),
    /// Appends this call's rows to state `state` (the graph's `states[state]`, a KV cache the
    /// runtime owns across calls) and reads back every row it holds, oldest first. Stateful:
    /// passes never merge or remove it. Typing: x f32 `[tokens, W]`; output f32 `[past+tokens, W]`.
    CacheAppend { state: usize },
    /// `softmax(scale · q·kᵀ + bias + mask) · v` per query head, query head h reading kv head
    /// `h / (heads / kv_heads)`. The queries are the last rows of the positions: query i sits
    /// at position `P - T + i` of the P key rows. Typing: q f32 `[T, H·D]`, k f32 `[P, KV·D]`,
    /// v f32 `[P, KV·Dv]` with P = T + (a multiple of `past`), then sinks f32 `[H]` if `sinks`,
    /// then the relative bias table f32 `[buckets, H]` if `bias`; output f32 `[T, H·Dv]`.
    /// Cross-attention (not causal, no window, no bias: positions play no part) may read
    /// keys of any row count, e.g. an encoder's `source` rows.
    Attention(AttentionAttrs),

    // ---- Fused forms, made by the expert-fusion passes ----
    /// The fused router: score, selection bias, group mask, top-k, gather, normalize and scale.
    /// Typing: logits f32 `[T, E]`, and with `selection_bias` a bias `[E]`; outputs: weights f32
    /// `[T, k]`, indices i32 `[T, k]` (the same values the unfused chain computes).
    Router(RouterAttrs),
    /// Concatenate along the second-to-last axis (the only axis of vectors, so stacked GLU biases
    /// can be built as `[N_gate + N_up]`). Typing: operands `[.., N_i, K]` (or `[N_i]`) equal but
    /// in N; output `[.., ΣN_i, K]` (or `[ΣN_i]`).
    ConcatRows,
    /// Columns `start..start+len` of each of a row's `heads` equal blocks (heads; `heads = 1`:
    /// of the whole row), blocks kept in order. Typing: f32 `[T, H·D]` with `start + len ≤ D`;
    /// output `[T, H·len]`.
    SliceCols { heads: u64, start: u64, len: u64 },
    /// Per head, a's columns then b's: each row becomes `[a_0 | b_0 | a_1 | b_1 | …]` over
    /// `heads` heads (`heads = 1`: a plain column concat); with `broadcast`, b is one head
    /// that every head gets. Typing: a f32 `[R, H·A]`, b f32 `[R, H·B]` (`[R, B]` with
    /// `broadcast`); output `[R, H·(A+B)]`.
    ConcatCols { heads: u64, broadcast: bool },
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
    /// Rows in dispatch order. Typing: k ≥ 1, x f32 `[T, D]`, order i32 `[k·T]` of a `[T, k]` routing;
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
    /// Adds rows back to their tokens: `y[order[r] / k] += x[r]`. Typing: k ≥ 1, x f32 `[k·T, D]`, order
    /// i32 `[k·T]`; output `[T, D]`.
    ScatterAdd { k: u64 },

    // ---- Expert parallelism, made by the partition pass (`passes/partition.rs`) ----
    // A partitioned graph is one rank's program (SPMD): every rank runs the same graph but for
    // its `rank` and its own experts' weights. Activations outside the experts are replicated;
    // for the exchanges each rank is the source of one block of tokens, the rows
    // `⌊rank·T/ranks⌋ .. ⌊(rank+1)·T/ranks⌋` (empty on some ranks when T < ranks). The
    // collectives (`all_to_all`, `all_to_all_v`, `all_gather_rows`) are the points where the
    // ranks meet; the interpreter gives them their meaning through `interp::Comm`.
    /// This rank's routed slots, packed for sending: the slots of its source tokens whose
    /// expert is routed (not -1), ordered by destination rank (`placement[expert]`), then
    /// expert, then token. Typing: idx i32 `[T, k]`, rank < ranks, every placement entry <
    /// ranks; outputs: order i32 `[k·T]` (slot ids `t·k + j`, then -1), counts i32 `[ranks]`
    /// (slots per destination), local i32 `[k·T, 1]` (each slot's expert as an index among
    /// its destination's experts in ascending order, then -1). Expert indices must be below
    /// `placement.len()`.
    EpRoute {
        ranks: u64,
        rank: u64,
        placement: Vec<u32>,
    },
    /// Collective: entry d of this rank's operand goes to rank d; entry s of the result came
    /// from rank s (the transpose of the ranks' operands). Typing: i32 `[ranks]`; output like it.
    AllToAll { ranks: u64 },
    /// Collective: this rank's first `send[0]` rows go to rank 0, the next `send[1]` to rank 1,
    /// …; the result holds the rows received, rank 0's first, then zeros (f32) or -1 (i32) up
    /// to the operand's row count. Every rank's `recv[s]` must equal what rank s sends it.
    /// Typing: x f32 or i32 `[R, ..]`, send i32 `[ranks]`, recv i32 `[ranks]`; output like x.
    AllToAllV { ranks: u64 },
    /// Collective: the rows of each rank's source block taken from that rank, so every rank
    /// ends with the same value. Typing: f32 `[T, D]`; output like it.
    AllGatherRows { ranks: u64 },
}

impl Op {
    /// A matmul's epilogue, bias and routing-weight flags (`Linear` has neither
    /// epilogue nor routing weight); `None` for every other op.
    pub fn matmul_attrs(&self) -> Option<(Epilogue, bool, bool)> {
        match *self {
            Op::Linear { bias } => Some((Epilogue::None, bias, false)),
            Op::ExpertLinear {
                epilogue,
                bias,
                weighted,
            }
            | Op::GroupedLinear {
                epilogue,
                bias,
                weighted,
            } => Some((epilogue, bias, weighted)),
            _ => None,
        }
    }

    /// Whether the op reads or writes state that outlives a run: such an op is
    /// never merged with an equal one, nor removed when its value is unused.
    pub fn is_stateful(&self) -> bool {
        matches!(self, Op::CacheAppend { .. })
    }

    /// Whether the op is a collective: every rank must reach it, in the same order, and it
    /// is evaluated through an `interp::Comm`.
    pub fn is_collective(&self) -> bool {
        matches!(
            self,
            Op::AllToAll { .. } | Op::AllToAllV { .. } | Op::AllGatherRows { .. }
        )
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
            Binary(BinaryOp::Min) => "min",
            Binary(BinaryOp::Max) => "max",
            Softmax => "softmax",
            Normalize(_) => "normalize",
            RmsNorm { .. } => "rmsnorm",
            LayerNorm { .. } => "layernorm",
            GroupMask { .. } => "group_mask",
            TopK { .. } => "topk",
            SparseMixer { .. } => "sparsemixer",
            Gather => "gather",
            Capacity { .. } => "capacity",
            KeptWeights => "kept_weights",
            ScatterGates { .. } => "scatter_gates",
            ExpertChoice { .. } => "expert_choice",
            DenseCombine => "dense_combine",
            PassThrough => "pass_through",
            ExpertCounts { .. } => "expert_counts",
            AuxLoss => "aux_loss",
            ZLoss => "z_loss",
            Stack => "stack",
            Embedding => "embedding",
            LastRow => "last_row",
            Positions => "positions",
            RowPositions => "row_positions",
            Sinusoidal { .. } => "sinusoidal",
            Rope(_) => "rope",
            CacheAppend { .. } => "cache_append",
            Attention(_) => "attention",
            Router(_) => "router",
            ConcatRows => "concat_rows",
            SliceCols { .. } => "slice_cols",
            ConcatCols { .. } => "concat_cols",
            ExpertLinear { .. } => "expert_linear",
            ExpertSum => "expert_sum",
            Dispatch { .. } => "dispatch",
            GatherRows { .. } => "gather_rows",
            GatherSlots => "gather_slots",
            GroupedLinear { .. } => "grouped_linear",
            ScatterAdd { .. } => "scatter_add",
            EpRoute { .. } => "ep_route",
            AllToAll { .. } => "all_to_all",
            AllToAllV { .. } => "all_to_all_v",
            AllGatherRows { .. } => "all_gather_rows",
        }
    }

    /// Attributes for printing, `key=value` separated by spaces (empty when none).
    pub fn attrs(&self) -> String {
        use Op::*;
        match self {
            Input { name, .. } => format!("name={name}"),
            Weight { id, storage } => match storage {
                Some(s) => format!("id={id} storage={s}"),
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
            Normalize(n) => n.attrs(),
            GroupMask {
                groups,
                keep,
                score,
            } => format!("groups={groups} keep={keep} score={score:?}"),
            TopK { k } => format!("k={k}"),
            SparseMixer { k, eps } => format!("k={k} eps={eps:?}"),
            Capacity {
                experts,
                limit,
                policy,
            } => {
                let limit = match limit {
                    CapacityLimit::Factor(f) => format!("factor={f:?}"),
                    CapacityLimit::Fixed(n) => format!("fixed={n}"),
                    CapacityLimit::Fraction(f) => format!("fraction={f:?}"),
                };
                format!("experts={experts} {limit} policy={policy:?}")
            }
            ScatterGates { experts, mask } => {
                format!("experts={experts}{}", if *mask { " mask" } else { "" })
            }
            ExpertCounts { experts } => format!("experts={experts}"),
            ExpertChoice { factor } => format!("factor={factor:?}"),
            Sinusoidal { width, offset } => format!("width={width} offset={offset}"),
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
                if let Some(n) = r.normalize {
                    a.push_str(" normalize");
                    let na = n.attrs();
                    if !na.is_empty() {
                        a.push_str(&format!("({na})"));
                    }
                }
                if r.scale.get() != 1.0 {
                    a.push_str(&format!(" scale={:?}", r.scale));
                }
                a
            }
            SliceCols { heads, start, len } => match heads {
                1 => format!("start={start} len={len}"),
                h => format!("heads={h} start={start} len={len}"),
            },
            ConcatCols { heads, broadcast } => {
                let mut a = format!("heads={heads}");
                if *broadcast {
                    a.push_str(" broadcast");
                }
                a
            }
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
                    Epilogue::ClampedGlu { alpha, limit } => {
                        format!("clamped_glu alpha={alpha:?} limit={limit:?}")
                    }
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
            Rope(r) => {
                let mut a = format!(
                    "head_dim={} rotary_dim={} theta={:?}",
                    r.head_dim, r.rotary_dim, r.theta
                );
                if r.interleaved {
                    a.push_str(" interleaved");
                }
                if r.scaling != RopeScaling::Default {
                    a.push_str(&format!(" scaling={:?}", r.scaling));
                }
                a
            }
            CacheAppend { state } => format!("state={state}"),
            Attention(at) => {
                let mut a = format!(
                    "heads={} kv_heads={} head_dim={} v_head_dim={} scale={:?}",
                    at.heads, at.kv_heads, at.head_dim, at.v_head_dim, at.scale
                );
                if at.causal {
                    a.push_str(" causal");
                }
                if let Some(w) = at.window {
                    a.push_str(&format!(" window={w}"));
                }
                if at.sinks {
                    a.push_str(" sinks");
                }
                if let Some(b) = at.bias {
                    let dir = if b.bidirectional {
                        " bidirectional"
                    } else {
                        ""
                    };
                    a.push_str(&format!(
                        " relative_bias(buckets={} max_distance={}{dir})",
                        b.buckets, b.max_distance
                    ));
                }
                a
            }
            GatherRows { k } | ScatterAdd { k } => format!("k={k}"),
            EpRoute {
                ranks,
                rank,
                placement,
            } => {
                let experts: Vec<String> = placement.iter().map(u32::to_string).collect();
                format!("ranks={ranks} rank={rank} placement={}", experts.join(","))
            }
            AllToAll { ranks } | AllToAllV { ranks } | AllGatherRows { ranks } => {
                format!("ranks={ranks}")
            }
            _ => String::new(),
        }
    }
}
