//! The typing rule of every op (`Op::infer`), in one place: the builder uses it
//! when a node is made, the verifier re-checks every node with it.

use super::attrs::{Epilogue, GroupScore};
use super::op::Op;
use super::types::{DType, Dim, TensorType};

impl Op {
    /// The op's typing rule: the output types for these operand types, or what is wrong.
    pub fn infer(&self, operands: &[&TensorType]) -> Result<Vec<TensorType>, String> {
        use Op::*;
        let arity = |n: usize| arity(self, operands, n);
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
            Unary(_) | Softmax | Normalize(_) => {
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
                let width = x.width().ok_or("norm input has no fixed width")?;
                // A weight narrower than the row normalizes each group of its width on its own
                // (per-head q/k norms); layer norms always span the row.
                let group = operands[1].shape.first().and_then(|d| d.as_fixed());
                let fits = |w: &TensorType| {
                    w.rank() == 1
                        && w.shape == operands[1].shape
                        && group.is_some_and(|g| {
                            g == width
                                || (matches!(self, RmsNorm { .. }) && g > 0 && width % g == 0)
                        })
                };
                if let Some(w) = operands[1..].iter().find(|w| !fits(w)) {
                    return Err(format!("norm weight {w} does not match the input {x}"));
                }
                Ok(vec![x.clone()])
            }
            GroupMask {
                groups,
                keep,
                score,
            } => {
                arity(1)?;
                let e = routing_width(operands[0])?;
                if *groups == 0 || e % groups != 0 {
                    return Err(format!("{groups} groups do not divide {e} experts"));
                }
                if *keep == 0 || keep > groups {
                    return Err(format!("cannot keep {keep} of {groups} groups"));
                }
                top2_fits(*score, e / groups)?;
                Ok(vec![operands[0].clone()])
            }
            TopK { k } | SparseMixer { k, .. } => {
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
            KeptWeights => {
                arity(2)?;
                slots_and_weights(operands, "kept weights")?;
                Ok(vec![operands[1].clone()])
            }
            Capacity { .. } => {
                arity(2)?;
                slots_and_weights(operands, "capacity weights")?;
                Ok(vec![operands[0].clone()])
            }
            ScatterGates { experts, .. } => {
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
                if let Some((g, keep, score)) = r.groups {
                    if g == 0 || e % g != 0 || keep == 0 || keep > g {
                        return Err(format!("bad groups: keep {keep} of {g} over {e} experts"));
                    }
                    top2_fits(score, e / g)?;
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
            SliceCols { heads, start, len } => {
                arity(1)?;
                let d = head_width(operands[0], *heads)?;
                if *len == 0 || start + len > d {
                    return Err(format!(
                        "columns {start}..{} of {heads} head(s) of {d}",
                        start + len
                    ));
                }
                Ok(vec![TensorType::f32(vec![
                    operands[0].shape[0],
                    Dim::fixed(heads * len),
                ])])
            }
            ConcatCols { heads, broadcast } => {
                arity(2)?;
                let (a, b) = (operands[0], operands[1]);
                let a_dims = head_width(a, *heads)?;
                let b_dims = head_width(b, if *broadcast { 1 } else { *heads })?;
                if a.shape[0] != b.shape[0] {
                    return Err(format!("cannot concatenate the columns of {a} and {b}"));
                }
                Ok(vec![TensorType::f32(vec![
                    a.shape[0],
                    Dim::fixed(heads * (a_dims + b_dims)),
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
                if *k == 0 {
                    return Err("k must be at least 1".into());
                }
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
            Embedding
            | LastRow
            | Positions
            | RowPositions
            | Sinusoidal { .. }
            | Rope(_)
            | CacheAppend { .. }
            | Attention(_) => super::typing_models::infer(self, operands),
            EpRoute {
                ranks,
                rank,
                placement,
            } => {
                arity(1)?;
                if rank >= ranks || placement.is_empty() {
                    return Err(format!(
                        "rank {rank} of {ranks} with {} experts placed",
                        placement.len()
                    ));
                }
                if let Some(r) = placement.iter().find(|r| u64::from(**r) >= *ranks) {
                    return Err(format!("an expert is placed on rank {r} of {ranks}"));
                }
                let idx = operands[0];
                let slots = match (idx.dtype, idx.shape.as_slice()) {
                    (DType::I32, [r, k]) => {
                        scale_dim(*r, k.as_fixed().ok_or("slot count must be fixed")?)
                    }
                    _ => return Err(format!("expected i32 [tokens, k] indices, found {idx}")),
                };
                Ok(vec![
                    TensorType::i32(vec![slots]),
                    TensorType::i32(vec![Dim::fixed(*ranks)]),
                    TensorType::i32(vec![slots, Dim::fixed(1)]),
                ])
            }
            AllToAll { ranks } => {
                arity(1)?;
                let counts = operands[0];
                if counts.dtype != DType::I32 || counts.shape != [Dim::fixed(*ranks)] {
                    return Err(format!("expected i32 [{ranks}] counts, found {counts}"));
                }
                Ok(vec![counts.clone()])
            }
            AllToAllV { ranks } => {
                arity(3)?;
                let x = operands[0];
                if x.rank() == 0 {
                    return Err(format!("all_to_all_v sends rows, found {x}"));
                }
                for counts in &operands[1..] {
                    if counts.dtype != DType::I32 || counts.shape != [Dim::fixed(*ranks)] {
                        return Err(format!("expected i32 [{ranks}] counts, found {counts}"));
                    }
                }
                Ok(vec![x.clone()])
            }
            AllGatherRows { .. } => {
                arity(1)?;
                let x = operands[0];
                expect_f32(x, "gathered rows")?;
                if x.rank() != 2 {
                    return Err(format!(
                        "all_gather_rows gathers [tokens, width], found {x}"
                    ));
                }
                Ok(vec![x.clone()])
            }
            ScatterAdd { k } => {
                arity(2)?;
                if *k == 0 {
                    return Err("k must be at least 1".into());
                }
                let (x, order) = (operands[0], operands[1]);
                expect_f32(x, "scattered rows")?;
                let s = x.shape.first().copied().ok_or("scatter needs rows")?;
                if s.per_token % k != 0
                    || s.per_past % k != 0
                    || s.per_source % k != 0
                    || s.fixed % k != 0
                    || order.shape != [s]
                    || x.rank() != 2
                {
                    return Err(format!("scatter of {x} by {order} with k = {k}"));
                }
                let rows = Dim {
                    per_token: s.per_token / k,
                    per_past: s.per_past / k,
                    per_source: s.per_source / k,
                    fixed: s.fixed / k,
                };
                Ok(vec![TensorType::f32(vec![rows, x.shape[1]])])
            }
        }
    }
}

/// Slot indices i32 `[T, k]` and their f32 weights of the same shape.
fn slots_and_weights(operands: &[&TensorType], what: &str) -> Result<(), String> {
    let (slots, weights) = (operands[0], operands[1]);
    expect_slots(slots, slots.shape.first().copied().unwrap_or(Dim::TOKENS))?;
    if weights.shape != slots.shape || weights.dtype != DType::F32 {
        return Err(format!("{what} {weights} do not match indices {slots}"));
    }
    Ok(())
}

/// Whether `op` has `n` operands.
pub(super) fn arity(op: &Op, operands: &[&TensorType], n: usize) -> Result<(), String> {
    if operands.len() == n {
        Ok(())
    } else {
        Err(format!(
            "{} takes {n} operands, found {}",
            op.name(),
            operands.len()
        ))
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
    if epilogue.is_glu() && !n.is_multiple_of(2) {
        return Err(format!("a GLU epilogue needs an even width, found {n}"));
    }
    Ok(epilogue.width(n))
}

/// `k` slots per row of `rows`.
/// A group scored by its two best experts needs two.
fn top2_fits(score: GroupScore, per_group: u64) -> Result<(), String> {
    if score == GroupScore::Top2Sum && per_group < 2 {
        return Err(format!(
            "groups of {per_group} expert cannot be scored by their top-2 sum; use groups of at least 2 experts"
        ));
    }
    Ok(())
}

fn scale_dim(rows: Dim, k: u64) -> Dim {
    rows.scale(k)
}

pub(super) fn expect_f32(t: &TensorType, what: &str) -> Result<(), String> {
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

/// An f32 `[rows, heads·D]` value; returns D.
fn head_width(t: &TensorType, heads: u64) -> Result<u64, String> {
    match (t.dtype, t.shape.as_slice(), t.width()) {
        (DType::F32, [_, _], Some(w)) if heads > 0 && w > 0 && w.is_multiple_of(heads) => {
            Ok(w / heads)
        }
        _ => Err(format!(
            "expected f32 [rows, {heads} heads · width], found {t}"
        )),
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
