//! The per-op computations of the reference interpreter, written as plain
//! functions on tensors so the unfused ops and their fused forms (the router,
//! stacked and grouped matmuls) share one definition of each step.

use crate::ir::{BinaryOp, Epilogue, GroupScore, Renorm, RouterAttrs, Score, UnaryOp};
use crate::tensor::Tensor;

pub(super) fn rows(t: &Tensor) -> (usize, usize) {
    let w = *t.shape.last().unwrap_or(&1);
    (t.len().checked_div(w).unwrap_or(0), w)
}

pub(super) fn map_rows(x: &Tensor, f: impl Fn(&[f32], &mut [f32])) -> Tensor {
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
pub(super) fn ranked(row: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    idx.sort_by(|&a, &b| {
        key(row[b])
            .partial_cmp(&key(row[a]))
            .expect("no NaN keys")
            .then(a.cmp(&b))
    });
    idx
}

pub(super) fn softmax_row(s: &[f32], o: &mut [f32]) {
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = s.iter().map(|v| ((*v - m) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    for (o, e) in o.iter_mut().zip(exps) {
        *o = (e / sum) as f32;
    }
}

pub(super) fn unary(u: UnaryOp, x: &Tensor) -> Tensor {
    Tensor::f32(
        x.shape.clone(),
        x.as_f32().iter().map(|v| activation(u, *v)).collect(),
    )
}

pub(super) fn activation(u: UnaryOp, v: f32) -> f32 {
    let x = v as f64;
    let y = match u {
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        UnaryOp::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    };
    y as f32
}

/// Each row divided by `max(‖row‖_p, min)`; p = 1 is the plain sum (see `Renorm`).
pub(super) fn normalize(x: &Tensor, n: Renorm) -> Tensor {
    let (p, min) = (n.p.get() as f64, n.min.get() as f64);
    map_rows(x, |s, o| {
        let norm = if p == 1.0 {
            s.iter().map(|v| *v as f64).sum::<f64>()
        } else {
            let sum: f64 = s.iter().map(|v| (*v as f64).abs().powf(p)).sum();
            sum.powf(1.0 / p)
        };
        let norm = norm.max(min);
        for (o, v) in o.iter_mut().zip(s) {
            *o = (*v as f64 / norm) as f32;
        }
    })
}

pub(super) fn group_mask(x: &Tensor, groups: u64, keep: u64, score: GroupScore) -> Tensor {
    let g = groups as usize;
    map_rows(x, |s, o| {
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
        let kept = &ranked(&group_scores)[..keep as usize];
        for (i, o) in o.iter_mut().enumerate() {
            *o = if kept.contains(&(i / size)) {
                s[i]
            } else {
                f32::NEG_INFINITY
            };
        }
    })
}

/// The k largest per row: (values, indices).
pub(super) fn topk(x: &Tensor, k: usize) -> (Tensor, Tensor) {
    let (r, w) = rows(x);
    let (mut vals, mut idx) = (Vec::with_capacity(r * k), Vec::with_capacity(r * k));
    for row in x.as_f32().chunks(w.max(1)).take(r) {
        for &i in &ranked(row)[..k] {
            vals.push(row[i]);
            idx.push(i as i32);
        }
    }
    (Tensor::f32(vec![r, k], vals), Tensor::i32(vec![r, k], idx))
}

/// `Op::SparseMixer`: k rounds per row, each choosing the best expert not yet chosen and
/// weighting it by the softmax over the experts within the jitter threshold of it.
pub(super) fn sparse_mixer(x: &Tensor, k: usize, eps: f32) -> (Tensor, Tensor) {
    let (r, e) = rows(x);
    let (mut w, mut idx) = (Vec::with_capacity(r * k), Vec::with_capacity(r * k));
    for row in x.as_f32().chunks(e.max(1)).take(r) {
        let mut chosen = vec![false; e];
        for _ in 0..k {
            // The first of the best: ties go to the lower index.
            let best = (0..e)
                .filter(|&j| !chosen[j])
                .fold(None, |b: Option<usize>, j| match b {
                    Some(b) if row[b] >= row[j] => Some(b),
                    _ => Some(j),
                })
                .expect("k ≤ E leaves an expert to choose");
            let m = row[best] as f64;
            let sum: f64 = (0..e)
                .filter(|&j| !chosen[j])
                .filter(|&j| {
                    let s = row[j] as f64;
                    // NaN (0/0) is not above the threshold: kept, as in torch.
                    let gap = (m - s) / s.abs().max(m);
                    gap.partial_cmp(&(2.0 * eps as f64)) != Some(std::cmp::Ordering::Greater)
                })
                .map(|j| (row[j] as f64 - m).exp())
                .sum();
            chosen[best] = true;
            w.push((1.0 / sum) as f32);
            idx.push(best as i32);
        }
    }
    (Tensor::f32(vec![r, k], w), Tensor::i32(vec![r, k], idx))
}

pub(super) fn gather(src: &Tensor, idx: &Tensor) -> Tensor {
    let (s, i) = (src.as_f32(), idx.as_i32());
    let (e, k) = (src.shape[1], idx.shape[1]);
    Tensor::f32(
        idx.shape.clone(),
        i.iter()
            .enumerate()
            .map(|(p, &x)| s[(p / k) * e + x as usize])
            .collect(),
    )
}

/// The fused router: the same steps as the unfused chain `lower` emits, in order.
pub(super) fn router(r: &RouterAttrs, logits: &Tensor, bias: Option<&Tensor>) -> (Tensor, Tensor) {
    let score = |t: &Tensor| match r.score {
        Score::Softmax => map_rows(t, softmax_row),
        Score::Sigmoid => unary(UnaryOp::Sigmoid, t),
    };
    let scores = if r.after_topk {
        logits.clone()
    } else {
        score(logits)
    };
    let mut choose = match bias {
        Some(b) => binary(BinaryOp::Add, &scores, b),
        None => scores.clone(),
    };
    if let Some((groups, keep, gs)) = r.groups {
        choose = group_mask(&choose, groups, keep, gs);
    }
    let (_, idx) = topk(&choose, r.k as usize);
    let mut w = gather(&scores, &idx);
    if r.after_topk {
        w = score(&w);
    }
    if let Some(n) = r.normalize {
        w = normalize(&w, n);
    }
    if r.scale.get() != 1.0 {
        w = binary(BinaryOp::Mul, &w, &Tensor::f32(vec![], vec![r.scale.get()]));
    }
    (w, idx)
}

/// `epi(x · w[e]ᵀ + b[e])` for one row.
pub(super) fn expert_row(
    x: &[f32],
    w: &Tensor,
    b: Option<&Tensor>,
    e: usize,
    epilogue: Epilogue,
) -> Vec<f32> {
    let (n, k) = (w.shape[1], w.shape[2]);
    let ws = &w.as_f32()[e * n * k..(e + 1) * n * k];
    let h: Vec<f32> = (0..n)
        .map(|j| {
            let bias = b.map_or(0.0, |b| b.as_f32()[e * n + j] as f64);
            (bias
                + x.iter()
                    .zip(&ws[j * k..(j + 1) * k])
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()) as f32
        })
        .collect();
    if epilogue.is_glu() {
        let half = n / 2;
        return (0..half)
            .map(|j| glu(epilogue, h[j], h[half + j]))
            .collect();
    }
    match epilogue {
        Epilogue::Act(u) => h.iter().map(|v| activation(u, *v)).collect(),
        _ => h,
    }
}

/// A GLU epilogue's output for one (gate, up) pair, as `Epilogue` defines it.
pub(super) fn glu(epilogue: Epilogue, gate: f32, up: f32) -> f32 {
    match epilogue {
        Epilogue::Glu(u) => activation(u, gate) * up,
        Epilogue::ClampedGlu { alpha, limit } => {
            let limit = limit.get();
            let g = BinaryOp::Min.apply(gate, limit);
            let u = BinaryOp::Min.apply(BinaryOp::Max.apply(up, -limit), limit);
            let x = g as f64;
            let swish = x / (1.0 + (-(alpha.get() as f64) * x).exp());
            ((u as f64 + 1.0) * swish) as f32
        }
        Epilogue::None | Epilogue::Act(_) => unreachable!("not a GLU epilogue"),
    }
}

/// Elementwise `x op y` with `y` broadcast against `x`'s trailing dims.
pub(super) fn binary(op: BinaryOp, x: &Tensor, y: &Tensor) -> Tensor {
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
            op.apply(a, ys[yi])
        })
        .collect();
    Tensor::f32(x.shape.clone(), out)
}
