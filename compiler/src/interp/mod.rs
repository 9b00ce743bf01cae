//! The reference interpreter: runs any graph, before or after any pass, on f32
//! with plain loops that are obviously correct. Sums accumulate in f64. This is
//! the semantics every pass must preserve and every backend must match.
//!
//! Ties are broken towards the lower index everywhere (top-k, groups, expert
//! choice), and capacity drops follow `DropPolicy`. A matmul whose weights the
//! graph stores in another format (`Graph::stored`) computes with the values
//! that format holds, and q8_0 / q4_0 ones with 8-bit-block activations
//! (`quant.rs`), as every backend does.

mod attention;
mod check;
mod collective;
mod heads;
mod inputs;
mod kernels;
mod simulate;

pub use attention::{inv_freq, relative_bucket, sinusoidal_freqs};
pub use check::check_operands;
pub use collective::{eval_collective, source_block, Comm, SingleRank};
pub use inputs::{
    check_inputs, check_token_ids, check_weight, check_weights, input_syms, token_count,
};
pub use simulate::simulate;

use crate::ir::{CapacityLimit, DropPolicy, Graph, Op, Syms, Value, WeightFormat};
use crate::quant;
use crate::tensor::{Tensor, TensorData};
use kernels::{
    binary, expert_row, gather, group_mask, map_rows, normalize, ranked, router, rows, softmax_row,
    sparse_mixer, topk, unary,
};
use std::collections::{BTreeMap, HashMap};

/// What a stateful graph carries from one run to the next: the rows appended to
/// every KV cache so far. A graph without state has an empty one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Positions already held (every cache has this many rows).
    pub past: usize,
    /// Each state's rows, `past × width` values, in `Graph::states` order.
    pub caches: Vec<Vec<f32>>,
    widths: Vec<usize>,
}

impl State {
    /// An empty state for `g`: nothing cached.
    pub fn new(g: &Graph) -> State {
        State {
            past: 0,
            caches: vec![Vec::new(); g.states.len()],
            widths: g.states.iter().map(|s| s.width as usize).collect(),
        }
    }

    /// An empty state for `g` whose caches have room for `positions` positions
    /// reserved up front (address space: pages are touched as rows arrive), so
    /// appending never moves a cache. Where the reservation fails, caches grow
    /// as needed instead.
    pub fn with_room(g: &Graph, positions: usize) -> State {
        let mut s = State::new(g);
        for (c, w) in s.caches.iter_mut().zip(&s.widths) {
            if let Some(n) = positions.checked_mul(*w) {
                let _ = c.try_reserve_exact(n);
            }
        }
        s
    }

    /// Forgets every position from `past` on (a call that failed halfway).
    pub fn truncate(&mut self, past: usize) {
        self.past = self.past.min(past);
        for (c, w) in self.caches.iter_mut().zip(&self.widths) {
            c.truncate(past * w);
        }
    }
}

/// Runs `g` on bound `weights` (one per `g.weights`, in order) and named inputs,
/// with nothing cached: a stateful graph starts from an empty state.
pub fn run(
    g: &Graph,
    weights: &[Tensor],
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, String> {
    run_with_state(g, weights, inputs, &mut State::new(g))
}

/// Runs `g` as the next call after `state`: positions continue from `state.past`,
/// and every cache gets this call's rows appended.
pub fn run_with_state(
    g: &Graph,
    weights: &[Tensor],
    inputs: &BTreeMap<String, Tensor>,
    state: &mut State,
) -> Result<BTreeMap<String, Tensor>, String> {
    run_with_comm(g, weights, inputs, state, &SingleRank)
}

/// `run_with_state` as one rank of `comm`, through which the collectives exchange.
pub fn run_with_comm(
    g: &Graph,
    weights: &[Tensor],
    inputs: &BTreeMap<String, Tensor>,
    state: &mut State,
    comm: &dyn Comm,
) -> Result<BTreeMap<String, Tensor>, String> {
    let syms = check_inputs(g, weights, inputs)?;
    if state.caches.len() != g.states.len() {
        return Err(format!(
            "the state holds {} caches, the graph has {}",
            state.caches.len(),
            g.states.len()
        ));
    }
    let syms = Syms {
        past: state.past,
        ..syms
    };
    let mut values: HashMap<Value, Tensor> = HashMap::new();
    for n in g.topo_order() {
        let node = g.node(n);
        let args: Vec<&Tensor> = g.operands(n).iter().map(|v| &values[v]).collect();
        let outs = match &node.op {
            Op::Input { name, .. } => vec![inputs[name].clone()],
            Op::Weight { id, .. } => vec![weights[*id].clone()],
            op @ (Op::Positions | Op::CacheAppend { .. }) => {
                vec![eval_stateful(g, op, &args, syms.tokens, state)]
            }
            op if op.is_collective() => {
                check_operands(op, &args)?;
                eval_collective(op, &args, comm)?
            }
            op => {
                check_operands(op, &args)?;
                match g.stored.get(&n) {
                    Some(&format) => eval_stored(op, &args, format),
                    None => eval(op, &args),
                }
            }
        };
        for (port, t) in outs.into_iter().enumerate() {
            debug_assert_eq!(
                t.shape,
                node.outputs[port].concrete_shape(syms),
                "{} output shape",
                node.op.name()
            );
            values.insert(
                Value {
                    node: n,
                    port: port as u8,
                },
                t,
            );
        }
    }
    state.past += syms.tokens;
    Ok(g.outputs
        .iter()
        .map(|(name, v)| (name.clone(), values[v].clone()))
        .collect())
}

/// Evaluates one computed op on its operands, exactly as `run` does. Backends call
/// it for the ops they do not compile, so those keep the interpreter's semantics;
/// operands that a graph input may have set must pass [`check_operands`] first.
/// Leaves and stateful ops (inputs, weights, positions, caches) are the caller's.
pub fn eval_op(op: &Op, operands: &[&Tensor]) -> Vec<Tensor> {
    assert!(
        !matches!(
            op,
            Op::Input { .. } | Op::Weight { .. } | Op::Positions | Op::CacheAppend { .. }
        ) && !op.is_collective(),
        "eval_op evaluates computed, stateless, local ops only"
    );
    eval(op, operands)
}

/// Evaluates a matmul whose weights (operand 1) are stored as `format`
/// (`Graph::stored`) as the backends compute it: on the weights `format`
/// holds (`quant::dequantize`), and for q8_0 / q4_0 on activations rounded to
/// 8-bit blocks (`quant::round_activations`).
fn eval_stored(op: &Op, a: &[&Tensor], format: WeightFormat) -> Vec<Tensor> {
    let mut x = a[0].clone();
    if format.is_quantized() {
        let k = x.shape.last().copied().unwrap_or(1);
        if let TensorData::F32(v) = &mut x.data {
            quant::round_activations(v, k);
        }
    }
    let w = quant::dequantize(format, a[1].clone());
    let mut operands = vec![&x, &w];
    operands.extend(&a[2..]);
    eval(op, &operands)
}

/// Evaluates a stateful op (`Positions`, `CacheAppend`) of `g` for a call of
/// `tokens` tokens after `state`; the caller advances `state.past` once the
/// whole call has run.
pub fn eval_stateful(
    g: &Graph,
    op: &Op,
    operands: &[&Tensor],
    tokens: usize,
    state: &mut State,
) -> Tensor {
    match op {
        Op::Positions => Tensor::i32(
            vec![tokens],
            (state.past..state.past + tokens)
                .map(|p| p as i32)
                .collect(),
        ),
        Op::CacheAppend { state: s } => {
            let cache = &mut state.caches[*s];
            cache.extend_from_slice(operands[0].as_f32());
            let width = g.states[*s].width as usize;
            Tensor::f32(vec![cache.len() / width, width], cache.clone())
        }
        _ => unreachable!("{} is not stateful", op.name()),
    }
}

/// Slots each expert keeps under `limit` for `tokens` tokens routed to `k` of `experts`.
pub fn capacity(limit: CapacityLimit, tokens: usize, k: usize, experts: usize) -> usize {
    match limit {
        CapacityLimit::Fixed(n) => n as usize,
        CapacityLimit::Factor(f) => {
            (f.get() as f64 * tokens as f64 * k as f64 / experts as f64).ceil() as usize
        }
        CapacityLimit::Fraction(f) => (f.get() * tokens as f64).ceil() as usize,
    }
}

/// Tokens each of `experts` takes under expert-choice routing: ⌈T·factor/E⌉, at most T.
pub fn expert_choice_capacity(factor: f32, tokens: usize, experts: usize) -> usize {
    ((tokens as f64 * factor as f64 / experts as f64).ceil() as usize).min(tokens)
}

/// One stateless op on its operands (`run` handles leaves and stateful ops).
fn eval(op: &Op, a: &[&Tensor]) -> Vec<Tensor> {
    use Op::*;
    let one = |t: Tensor| vec![t];
    match op {
        Input { .. } | Weight { .. } | Positions | CacheAppend { .. } => {
            unreachable!("`run` evaluates leaves and stateful ops")
        }
        Embedding => one(attention::embedding(a[0], a[1])),
        RowPositions => {
            let n = a[0].shape[0];
            one(Tensor::i32(vec![n], (0..n as i32).collect()))
        }
        Sinusoidal { width, offset } => one(attention::sinusoidal(
            a[0],
            *width as usize,
            *offset as usize,
        )),
        KeptWeights => {
            let (idx, w) = (a[0].as_i32(), a[1].as_f32());
            let kept = idx
                .iter()
                .zip(w)
                .map(|(&i, &w)| if i >= 0 { w } else { 0.0 })
                .collect();
            one(Tensor::f32(a[1].shape.clone(), kept))
        }
        LastRow => {
            let (rows, w) = (a[0].shape[0], a[0].shape[1]);
            let x = a[0].as_f32();
            let last = match rows {
                0 => vec![0.0; w],
                r => x[(r - 1) * w..r * w].to_vec(),
            };
            one(Tensor::f32(vec![1, w], last))
        }
        Rope(r) => one(attention::rope(r, a[0], a[1])),
        Attention(at) => one(attention::attention(
            at,
            a[0],
            a[1],
            a[2],
            at.sinks.then(|| a[3]),
            at.bias.and(a.last().copied()),
        )),
        Constant(v) => one(Tensor::f32(vec![], vec![v.get()])),
        Linear { bias } => {
            let (x, w) = (a[0], a[1]);
            let (r, k) = rows(x);
            let n = w.shape[0];
            let (xs, ws) = (x.as_f32(), w.as_f32());
            let b = bias.then(|| a[2].as_f32());
            let mut out = vec![0.0f32; r * n];
            for i in 0..r {
                for j in 0..n {
                    let mut acc: f64 = b.map_or(0.0, |b| b[j] as f64);
                    for p in 0..k {
                        acc += xs[i * k + p] as f64 * ws[j * k + p] as f64;
                    }
                    out[i * n + j] = acc as f32;
                }
            }
            let mut shape = x.shape.clone();
            *shape.last_mut().expect("linear input has a width") = n;
            one(Tensor::f32(shape, out))
        }
        Unary(u) => one(unary(*u, a[0])),
        Binary(b) => one(binary(*b, a[0], a[1])),
        Softmax => one(map_rows(a[0], softmax_row)),
        Normalize(n) => one(normalize(a[0], *n)),
        RmsNorm { eps } => {
            let w = a[1].as_f32();
            // Each group of the weight's width is normalized on its own (per-head norms).
            one(map_rows(a[0], |s, o| {
                for (s, o) in s.chunks(w.len()).zip(o.chunks_mut(w.len())) {
                    let ms: f64 =
                        s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / s.len() as f64;
                    let inv = 1.0 / (ms + eps.get() as f64).sqrt();
                    for ((o, v), w) in o.iter_mut().zip(s).zip(w) {
                        *o = (*v as f64 * inv * *w as f64) as f32;
                    }
                }
            }))
        }
        LayerNorm { eps } => {
            let (w, b) = (a[1].as_f32(), a[2].as_f32());
            one(map_rows(a[0], |s, o| {
                let n = s.len() as f64;
                let mean: f64 = s.iter().map(|v| *v as f64).sum::<f64>() / n;
                let var: f64 = s.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
                let inv = 1.0 / (var + eps.get() as f64).sqrt();
                for (i, o) in o.iter_mut().enumerate() {
                    *o = ((s[i] as f64 - mean) * inv * w[i] as f64 + b[i] as f64) as f32;
                }
            }))
        }
        GroupMask {
            groups,
            keep,
            score,
        } => one(group_mask(a[0], *groups, *keep, *score)),
        TopK { k } => {
            let (vals, idx) = topk(a[0], *k as usize);
            vec![vals, idx]
        }
        SparseMixer { k, eps } => {
            let (w, idx) = sparse_mixer(a[0], *k as usize, eps.get());
            vec![w, idx]
        }
        Gather => one(gather(a[0], a[1])),
        Capacity {
            experts,
            limit,
            policy,
        } => {
            let (idx, w) = (a[0].as_i32(), a[1].as_f32());
            let (t, k) = (a[0].shape[0], a[0].shape[1]);
            let cap = capacity(*limit, t, k, *experts as usize);
            // Slot-major arrival order: all first choices by token, then second choices...
            let mut order: Vec<usize> = (0..k)
                .flat_map(|j| (0..t).map(move |i| i * k + j))
                .collect();
            match policy {
                DropPolicy::Arrival => {}
                DropPolicy::Score => order
                    .sort_by(|&x, &y| w[y].partial_cmp(&w[x]).unwrap_or(std::cmp::Ordering::Equal)),
                // Within each slot, tokens by their first slot's weight (a stable sort keeps
                // token order on ties).
                DropPolicy::Priority => order.sort_by(|&x, &y| {
                    (x % k).cmp(&(y % k)).then_with(|| {
                        w[y - y % k]
                            .partial_cmp(&w[x - x % k])
                            .unwrap_or(std::cmp::Ordering::Equal)
                    })
                }),
            }
            let mut used = vec![0usize; *experts as usize];
            let mut out = idx.to_vec();
            for s in order {
                if idx[s] >= 0 {
                    let e = idx[s] as usize;
                    if used[e] < cap {
                        used[e] += 1;
                    } else {
                        out[s] = -1;
                    }
                }
            }
            one(Tensor::i32(a[0].shape.clone(), out))
        }
        ScatterGates { experts, mask } => {
            let (idx, w) = (a[0].as_i32(), a[1].as_f32());
            let (t, k, e) = (a[0].shape[0], a[0].shape[1], *experts as usize);
            let mut g = vec![0.0f32; t * e];
            for (s, &i) in idx.iter().enumerate() {
                if i >= 0 {
                    g[(s / k) * e + i as usize] += if *mask { 1.0 } else { w[s] };
                }
            }
            one(Tensor::f32(vec![t, e], g))
        }
        ExpertChoice { factor } => {
            let (t, e) = (a[0].shape[0], a[0].shape[1]);
            let s = a[0].as_f32();
            let cap = expert_choice_capacity(factor.get(), t, e);
            let mut idx = vec![-1i32; t * e];
            for ex in 0..e {
                let column: Vec<f32> = (0..t).map(|i| s[i * e + ex]).collect();
                for &tok in &ranked(&column)[..cap] {
                    idx[tok * e + ex] = ex as i32;
                }
            }
            vec![a[0].clone(), Tensor::i32(vec![t, e], idx)]
        }
        DenseCombine => {
            let g = a[0].as_f32();
            let (t, e) = (a[0].shape[0], a[0].shape[1]);
            let d = a[1].shape[1];
            let mut out = vec![0.0f32; t * d];
            for i in 0..t {
                for j in 0..d {
                    let acc: f64 = (0..e)
                        .map(|x| g[i * e + x] as f64 * a[1 + x].as_f32()[i * d + j] as f64)
                        .sum();
                    out[i * d + j] = acc as f32;
                }
            }
            one(Tensor::f32(vec![t, d], out))
        }
        PassThrough => {
            let (x, idx, w) = (a[0].as_f32(), a[1].as_i32(), a[2].as_f32());
            let d = a[0].shape[1];
            let out = x
                .iter()
                .enumerate()
                .map(|(p, v)| {
                    if idx[p / d] < 0 {
                        (w[p / d] as f64 * *v as f64) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            one(Tensor::f32(a[0].shape.clone(), out))
        }
        ExpertCounts { experts } => {
            let mut counts = vec![0i32; *experts as usize];
            for &i in a[0].as_i32() {
                if i >= 0 {
                    counts[i as usize] += 1;
                }
            }
            one(Tensor::i32(vec![*experts as usize], counts))
        }
        AuxLoss => {
            let (t, e) = (a[0].shape[0], a[0].shape[1]);
            if t == 0 {
                return one(Tensor::f32(vec![], vec![0.0]));
            }
            let probs = map_rows(a[0], softmax_row);
            let p = probs.as_f32();
            let mut f = vec![0.0f64; e];
            for &i in a[1].as_i32() {
                if i >= 0 {
                    f[i as usize] += 1.0 / t as f64;
                }
            }
            let loss: f64 = (0..e)
                .map(|x| f[x] * (0..t).map(|i| p[i * e + x] as f64).sum::<f64>() / t as f64)
                .sum();
            one(Tensor::f32(vec![], vec![(loss * e as f64) as f32]))
        }
        ZLoss => {
            let (t, e) = (a[0].shape[0], a[0].shape[1]);
            let l = a[0].as_f32();
            let sum: f64 = (0..t)
                .map(|i| {
                    let row = &l[i * e..(i + 1) * e];
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let lse = m + row.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln();
                    lse * lse
                })
                .sum();
            one(Tensor::f32(
                vec![],
                vec![if t == 0 { 0.0 } else { (sum / t as f64) as f32 }],
            ))
        }
        Router(r) => {
            let (w, idx) = router(r, a[0], a.get(1).copied());
            vec![w, idx]
        }
        ConcatRows => {
            // The second-to-last axis, or the only one of vectors.
            let axis = a[0].shape.len().saturating_sub(2);
            let outer: usize = a[0].shape[..axis].iter().product();
            let inner: usize = a[0].shape[axis + 1..].iter().product();
            let mut data = Vec::new();
            for o in 0..outer {
                for t in a {
                    let block = t.shape[axis] * inner;
                    data.extend_from_slice(&t.as_f32()[o * block..(o + 1) * block]);
                }
            }
            let mut shape = a[0].shape.clone();
            shape[axis] = a.iter().map(|t| t.shape[axis]).sum();
            one(Tensor::f32(shape, data))
        }
        SliceCols { heads, start, len } => one(heads::slice_cols(
            a[0],
            *heads as usize,
            *start as usize,
            *len as usize,
        )),
        ConcatCols { heads, broadcast } => {
            one(heads::concat_cols(a[0], a[1], *heads as usize, *broadcast))
        }
        ExpertLinear {
            epilogue,
            bias,
            weighted,
        } => {
            let (x, w) = (a[0], a[1]);
            let e = w.shape[0];
            let per_expert_input = x.shape.len() == 3;
            let t = if per_expert_input {
                x.shape[1]
            } else {
                x.shape[0]
            };
            let k = w.shape[2];
            let b = bias.then(|| a[2]);
            let gates = weighted.then(|| a[2 + usize::from(*bias)]);
            let mut data = Vec::new();
            let mut width = 0;
            for ex in 0..e {
                for tok in 0..t {
                    let row = if per_expert_input {
                        (ex * t + tok) * k
                    } else {
                        tok * k
                    };
                    let mut y = expert_row(&x.as_f32()[row..row + k], w, b, ex, *epilogue);
                    if let Some(g) = gates {
                        let gate = g.as_f32()[tok * e + ex];
                        y.iter_mut().for_each(|v| *v *= gate);
                    }
                    width = y.len();
                    data.extend(y);
                }
            }
            if data.is_empty() {
                width = epilogue.width(w.shape[1] as u64) as usize;
            }
            one(Tensor::f32(vec![e, t, width], data))
        }
        ExpertSum => {
            let (e, t, d) = (a[0].shape[0], a[0].shape[1], a[0].shape[2]);
            let x = a[0].as_f32();
            let data = (0..t * d)
                .map(|p| (0..e).map(|ex| x[ex * t * d + p] as f64).sum::<f64>() as f32)
                .collect();
            one(Tensor::f32(vec![t, d], data))
        }
        Dispatch { experts } => {
            let idx = a[0].as_i32();
            let e = *experts as usize;
            let mut order: Vec<i32> = Vec::with_capacity(idx.len());
            let mut offsets = vec![0i32; e + 1];
            for ex in 0..e {
                order.extend(
                    (0..idx.len())
                        .filter(|s| idx[*s] == ex as i32)
                        .map(|s| s as i32),
                );
                offsets[ex + 1] = order.len() as i32;
            }
            order.resize(idx.len(), -1);
            vec![
                Tensor::i32(vec![idx.len()], order),
                Tensor::i32(vec![e + 1], offsets),
            ]
        }
        GatherRows { k } => {
            let d = a[0].shape[1];
            let x = a[0].as_f32();
            let order = a[1].as_i32();
            let data = order
                .iter()
                .flat_map(|&s| {
                    if s < 0 {
                        vec![0.0; d]
                    } else {
                        let t = s as usize / *k as usize;
                        x[t * d..(t + 1) * d].to_vec()
                    }
                })
                .collect();
            one(Tensor::f32(vec![order.len(), d], data))
        }
        GatherSlots => {
            let (w, order) = (a[0].as_f32(), a[1].as_i32());
            one(Tensor::f32(
                vec![order.len(), 1],
                order
                    .iter()
                    .map(|&s| if s < 0 { 0.0 } else { w[s as usize] })
                    .collect(),
            ))
        }
        GroupedLinear {
            epilogue,
            bias,
            weighted,
        } => {
            let (x, w, offsets) = (a[0], a[1], a[2].as_i32());
            let (r, k) = (x.shape[0], x.shape[1]);
            let width = epilogue.width(w.shape[1] as u64) as usize;
            let b = bias.then(|| a[3]);
            let rw = weighted.then(|| a[3 + usize::from(*bias)].as_f32());
            let mut out = vec![0.0f32; r * width];
            for ex in 0..w.shape[0] {
                // Only experts holding rows do work.
                for row in offsets[ex] as usize..offsets[ex + 1] as usize {
                    let mut y =
                        expert_row(&x.as_f32()[row * k..(row + 1) * k], w, b, ex, *epilogue);
                    if let Some(rw) = rw {
                        y.iter_mut().for_each(|v| *v *= rw[row]);
                    }
                    out[row * width..(row + 1) * width].copy_from_slice(&y);
                }
            }
            one(Tensor::f32(vec![r, width], out))
        }
        ScatterAdd { k } => {
            let (x, order) = (a[0].as_f32(), a[1].as_i32());
            let d = a[0].shape[1];
            let t = order.len() / *k as usize;
            let mut acc = vec![0.0f64; t * d];
            for (row, &s) in order.iter().enumerate() {
                if s >= 0 {
                    let tok = s as usize / *k as usize;
                    for j in 0..d {
                        acc[tok * d + j] += x[row * d + j] as f64;
                    }
                }
            }
            one(Tensor::f32(
                vec![t, d],
                acc.into_iter().map(|v| v as f32).collect(),
            ))
        }
        EpRoute {
            ranks,
            rank,
            placement,
        } => collective::ep_route(*ranks as usize, *rank as usize, placement, a[0]),
        AllToAll { .. } | AllToAllV { .. } | AllGatherRows { .. } => {
            unreachable!("collectives are evaluated through a Comm")
        }
        Stack => {
            let mut shape = vec![a.len()];
            shape.extend(&a[0].shape);
            one(match a[0].data {
                TensorData::F32(_) => Tensor::f32(
                    shape,
                    a.iter().flat_map(|t| t.as_f32().iter().copied()).collect(),
                ),
                TensorData::I32(_) => Tensor::i32(
                    shape,
                    a.iter().flat_map(|t| t.as_i32().iter().copied()).collect(),
                ),
            })
        }
    }
}
