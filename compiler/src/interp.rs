//! The reference interpreter: runs any graph, before or after any pass, on f32
//! with plain loops that are obviously correct. Sums accumulate in f64. This is
//! the semantics every pass must preserve and every backend must match.
//!
//! Ties are broken towards the lower index everywhere (top-k, groups, expert
//! choice), and capacity drops follow `DropPolicy`.

use crate::ir::{BinaryOp, CapacityLimit, DropPolicy, Graph, GroupScore, Op, UnaryOp, Value};
use crate::tensor::{ShapeDisplay, Tensor, TensorData};
use std::collections::{BTreeMap, HashMap};

/// Runs `g` on bound `weights` (one per `g.weights`, in order) and named inputs.
pub fn run(
    g: &Graph,
    weights: &[Tensor],
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, String> {
    let tokens = check_inputs(g, weights, inputs)?;
    let mut values: HashMap<Value, Tensor> = HashMap::new();
    for n in g.topo_order() {
        let node = g.node(n);
        let args: Vec<&Tensor> = g.operands(n).iter().map(|v| &values[v]).collect();
        let outs = eval(&node.op, &args, weights, inputs);
        for (port, t) in outs.into_iter().enumerate() {
            debug_assert_eq!(t.shape, node.outputs[port].concrete_shape(tokens), "{} output shape", node.op.name());
            values.insert(Value { node: n, port: port as u8 }, t);
        }
    }
    Ok(g.outputs.iter().map(|(name, v)| (name.clone(), values[v].clone())).collect())
}

/// Checks inputs and weights against the graph; returns the token count.
pub fn check_inputs(g: &Graph, weights: &[Tensor], inputs: &BTreeMap<String, Tensor>) -> Result<usize, String> {
    if weights.len() != g.weights.len() {
        return Err(format!("{} weights bound, the graph needs {}", weights.len(), g.weights.len()));
    }
    for (w, d) in weights.iter().zip(&g.weights) {
        if w.shape != d.shape || !matches!(w.data, TensorData::F32(_)) {
            return Err(format!(
                "weight `{}` is {} {}, expected f32 {}",
                d.key,
                w.dtype_name(),
                ShapeDisplay(&w.shape),
                ShapeDisplay(&d.shape)
            ));
        }
    }
    let mut tokens = None;
    for &n in &g.inputs {
        let Op::Input { name, ty } = &g.node(n).op else { continue };
        let t = inputs.get(name).ok_or_else(|| format!("missing input `{name}` ({ty})"))?;
        let count = *t.shape.first().unwrap_or(&0);
        let want = ty.concrete_shape(count);
        if t.shape != want || !matches!(t.data, TensorData::F32(_)) {
            return Err(format!("input `{name}` is {} {}, expected {ty}", t.dtype_name(), ShapeDisplay(&t.shape)));
        }
        if let Some(prev) = tokens.filter(|p| *p != count) {
            return Err(format!("inputs disagree on the token count: {prev} and {count} (`{name}`)"));
        }
        tokens = Some(count);
    }
    Ok(tokens.unwrap_or(0))
}

fn rows(t: &Tensor) -> (usize, usize) {
    let w = *t.shape.last().unwrap_or(&1);
    (if w == 0 { 0 } else { t.len() / w }, w)
}

fn map_rows(x: &Tensor, f: impl Fn(&[f32], &mut [f32])) -> Tensor {
    let (_, w) = rows(x);
    let src = x.as_f32();
    let mut out = vec![0.0f32; src.len()];
    if w > 0 {
        for (s, o) in src.chunks(w).zip(out.chunks_mut(w)) {
            f(s, o);
        }
    }
    Tensor::f32(x.shape.clone(), out)
}

/// Indices of `row` in descending order (ties and NaNs: lower index first / last).
fn ranked(row: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    idx.sort_by(|&a, &b| key(row[b]).partial_cmp(&key(row[a])).expect("no NaN keys").then(a.cmp(&b)));
    idx
}

fn softmax_row(s: &[f32], o: &mut [f32]) {
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = s.iter().map(|v| ((*v - m) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    for (o, e) in o.iter_mut().zip(exps) {
        *o = (e / sum) as f32;
    }
}

fn eval(op: &Op, a: &[&Tensor], weights: &[Tensor], inputs: &BTreeMap<String, Tensor>) -> Vec<Tensor> {
    use Op::*;
    let one = |t: Tensor| vec![t];
    match op {
        Input { name, .. } => one(inputs[name].clone()),
        Weight { id, .. } => one(weights[*id].clone()),
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
        Unary(u) => {
            let f: fn(f32) -> f32 = match u {
                UnaryOp::Silu => |v| (v as f64 / (1.0 + (-v as f64).exp())) as f32,
                UnaryOp::Gelu => |v| (0.5 * v as f64 * (1.0 + libm::erf(v as f64 / std::f64::consts::SQRT_2))) as f32,
                UnaryOp::GeluTanh => |v| {
                    let v = v as f64;
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    (0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())) as f32
                },
                UnaryOp::Relu => |v| v.max(0.0),
                UnaryOp::Sigmoid => |v| (1.0 / (1.0 + (-v as f64).exp())) as f32,
            };
            one(Tensor::f32(a[0].shape.clone(), a[0].as_f32().iter().map(|v| f(*v)).collect()))
        }
        Binary(b) => one(binary(*b, a[0], a[1])),
        Softmax => one(map_rows(a[0], softmax_row)),
        NormalizeSum => one(map_rows(a[0], |s, o| {
            let sum: f64 = s.iter().map(|v| *v as f64).sum();
            for (o, v) in o.iter_mut().zip(s) {
                *o = (*v as f64 / sum) as f32;
            }
        })),
        RmsNorm { eps } => {
            let w = a[1].as_f32();
            one(map_rows(a[0], |s, o| {
                let ms: f64 = s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / s.len() as f64;
                let inv = 1.0 / (ms + eps.get() as f64).sqrt();
                for ((o, v), w) in o.iter_mut().zip(s).zip(w) {
                    *o = (*v as f64 * inv * *w as f64) as f32;
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
        GroupMask { groups, keep, score } => {
            let g = *groups as usize;
            one(map_rows(a[0], |s, o| {
                let size = s.len() / g;
                let group_scores: Vec<f32> = s
                    .chunks(size)
                    .map(|grp| {
                        let r = ranked(grp);
                        match score {
                            GroupScore::Max => grp[r[0]],
                            GroupScore::Top2Sum => grp[r[0]] + grp[r[1]],
                        }
                    })
                    .collect();
                let kept = &ranked(&group_scores)[..*keep as usize];
                for (i, o) in o.iter_mut().enumerate() {
                    *o = if kept.contains(&(i / size)) { s[i] } else { f32::NEG_INFINITY };
                }
            }))
        }
        TopK { k } => {
            let k = *k as usize;
            let (r, _) = rows(a[0]);
            let (mut vals, mut idx) = (Vec::with_capacity(r * k), Vec::with_capacity(r * k));
            for row in a[0].as_f32().chunks(a[0].shape[1].max(1)).take(r) {
                for &i in &ranked(row)[..k] {
                    vals.push(row[i]);
                    idx.push(i as i32);
                }
            }
            vec![Tensor::f32(vec![r, k], vals), Tensor::i32(vec![r, k], idx)]
        }
        Gather => {
            let (src, idx) = (a[0].as_f32(), a[1].as_i32());
            let (e, k) = (a[0].shape[1], a[1].shape[1]);
            let out = idx.iter().enumerate().map(|(s, &i)| src[(s / k) * e + i as usize]).collect();
            one(Tensor::f32(a[1].shape.clone(), out))
        }
        Capacity { experts, limit, policy } => {
            let (idx, w) = (a[0].as_i32(), a[1].as_f32());
            let (t, k) = (a[0].shape[0], a[0].shape[1]);
            let cap = match limit {
                CapacityLimit::Fixed(n) => *n as usize,
                CapacityLimit::Factor(f) => (f.get() as f64 * t as f64 * k as f64 / *experts as f64).ceil() as usize,
            };
            // Slot-major arrival order: all first choices by token, then second choices...
            let mut order: Vec<usize> = (0..k).flat_map(|j| (0..t).map(move |i| i * k + j)).collect();
            if *policy == DropPolicy::Score {
                order.sort_by(|&x, &y| w[y].partial_cmp(&w[x]).unwrap_or(std::cmp::Ordering::Equal));
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
        ScatterGates { experts } => {
            let (idx, w) = (a[0].as_i32(), a[1].as_f32());
            let (t, k, e) = (a[0].shape[0], a[0].shape[1], *experts as usize);
            let mut g = vec![0.0f32; t * e];
            for (s, &i) in idx.iter().enumerate() {
                if i >= 0 {
                    g[(s / k) * e + i as usize] += w[s];
                }
            }
            one(Tensor::f32(vec![t, e], g))
        }
        ExpertChoice { factor } => {
            let (t, e) = (a[0].shape[0], a[0].shape[1]);
            let s = a[0].as_f32();
            let cap = ((t as f64 * factor.get() as f64 / e as f64).ceil() as usize).min(t);
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
                    let acc: f64 = (0..e).map(|x| g[i * e + x] as f64 * a[1 + x].as_f32()[i * d + j] as f64).sum();
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
                .map(|(p, v)| if idx[p / d] < 0 { (w[p / d] as f64 * *v as f64) as f32 } else { 0.0 })
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
            let loss: f64 = (0..e).map(|x| f[x] * (0..t).map(|i| p[i * e + x] as f64).sum::<f64>() / t as f64).sum();
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
            one(Tensor::f32(vec![], vec![if t == 0 { 0.0 } else { (sum / t as f64) as f32 }]))
        }
        Stack => {
            let mut shape = vec![a.len()];
            shape.extend(&a[0].shape);
            one(match a[0].data {
                TensorData::F32(_) => Tensor::f32(shape, a.iter().flat_map(|t| t.as_f32().iter().copied()).collect()),
                TensorData::I32(_) => Tensor::i32(shape, a.iter().flat_map(|t| t.as_i32().iter().copied()).collect()),
            })
        }
    }
}

/// Elementwise `x op y` with `y` broadcast against `x`'s trailing dims.
fn binary(op: BinaryOp, x: &Tensor, y: &Tensor) -> Tensor {
    let (xs, ys) = (x.as_f32(), y.as_f32());
    let offset = x.shape.len() - y.shape.len();
    let mut strides = vec![0usize; x.shape.len()];
    let mut s = 1;
    for (i, &d) in y.shape.iter().enumerate().rev() {
        strides[offset + i] = if d == 1 { 0 } else { s };
        s *= d;
    }
    let out = xs
        .iter()
        .enumerate()
        .map(|(flat, &a)| {
            let (mut rem, mut yi) = (flat, 0);
            for (dim, stride) in x.shape.iter().zip(&strides).rev() {
                yi += (rem % dim) * stride;
                rem /= dim;
            }
            let b = ys[yi];
            match op {
                BinaryOp::Add => a + b,
                BinaryOp::Sub => a - b,
                BinaryOp::Mul => a * b,
                BinaryOp::Div => a / b,
            }
        })
        .collect();
    Tensor::f32(x.shape.clone(), out)
}
