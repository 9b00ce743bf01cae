//! The whole-model ops' semantics: embedding lookup, rotary position
//! embeddings (with the Hugging Face `rope_type` frequency rules) and
//! scaled dot-product attention (causal, grouped-query, sliding window, sinks).
//! Plain loops, f64 accumulation, like the rest of the interpreter.
//!
//! The rotary frequencies are computed in f32 exactly as transformers does
//! (`inv_freq` is an f32 tensor there), and the angles `position · inv_freq` in
//! f64; backends share [`inv_freq`] so every one rotates by the same angles.

use crate::ir::{AttentionAttrs, RelativeBias, RopeAttrs, RopeScaling};
use crate::tensor::Tensor;
use std::f64::consts::PI;

/// Rows `table[ids[t]]`. Ids are checked against the table before a run.
pub(super) fn embedding(ids: &Tensor, table: &Tensor) -> Tensor {
    let d = table.shape[1];
    let t = table.as_f32();
    let data = ids
        .as_i32()
        .iter()
        .flat_map(|&i| t[i as usize * d..(i as usize + 1) * d].iter().copied())
        .collect();
    Tensor::f32(vec![ids.len(), d], data)
}

/// fairseq's sinusoidal position embeddings (`Op::Sinusoidal`): for each position p, row
/// `p + offset` of the table, computed in f32 as torch's `get_embedding` does (the
/// frequencies `exp(i · -ln(10000)/(h-1))` and the angles rounded to f32), sines then cosines.
pub fn sinusoidal(positions: &Tensor, width: usize, offset: usize) -> Tensor {
    let half = width / 2;
    let freqs = sinusoidal_freqs(width);
    let pos = positions.as_i32();
    let mut out = vec![0.0f32; pos.len() * width];
    for (row, &p) in out.chunks_mut(width).zip(pos) {
        let r = (p as i64 + offset as i64) as f32;
        for (i, f) in freqs.iter().enumerate() {
            let angle = (r * f) as f64;
            row[i] = angle.sin() as f32;
            row[half + i] = angle.cos() as f32;
        }
    }
    Tensor::f32(vec![pos.len(), width], out)
}

/// The `width / 2` frequencies of fairseq's sinusoidal table, `exp(i · -ln(10000)/(h-1))` with
/// the product rounded to f32 first, as torch computes them (every backend reads these).
pub fn sinusoidal_freqs(width: usize) -> Vec<f32> {
    let half = width / 2;
    let step = -((10000f64).ln() / (half as f64 - 1.0)) as f32;
    (0..half)
        .map(|i| ((i as f32 * step) as f64).exp() as f32)
        .collect()
}

/// The rotary frequencies of each rotated pair (`rotary_dim / 2` of them) and the
/// factor cos and sin are multiplied by (1 except for YaRN).
pub fn inv_freq(r: &RopeAttrs) -> (Vec<f32>, f32) {
    let dim = r.rotary_dim as usize;
    let base = r.theta.get();
    let plain: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
        .collect();
    match r.scaling {
        RopeScaling::Default => (plain, 1.0),
        RopeScaling::Linear { factor } => (plain.iter().map(|f| f / factor.get()).collect(), 1.0),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions,
        } => {
            let (factor, low, high) = (factor.get(), low_freq_factor.get(), high_freq_factor.get());
            let old = original_max_positions as f32;
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            let freqs = plain
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (freqs, 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_max_positions,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            let factor = factor.get() as f64;
            let get_mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention = match (attention_factor.get(), mscale.get(), mscale_all_dim.get()) {
                (a, _, _) if a != 0.0 => a as f64,
                (_, m, all) if m != 0.0 && all != 0.0 => {
                    get_mscale(factor, m as f64) / get_mscale(factor, all as f64)
                }
                _ => get_mscale(factor, 1.0),
            };
            let (d, base) = (dim as f64, base as f64);
            let correction = |rotations: f64| {
                d * (original_max_positions as f64 / (rotations * 2.0 * PI)).ln()
                    / (2.0 * base.ln())
            };
            let (mut low, mut high) = (
                correction(beta_fast.get() as f64),
                correction(beta_slow.get() as f64),
            );
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0) as f32, high.min(d - 1.0) as f32);
            if low == high {
                high += 0.001;
            }
            let freqs = plain
                .iter()
                .enumerate()
                .map(|(i, &extrapolation)| {
                    let interpolation = extrapolation / factor as f32;
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let keep = 1.0 - ramp;
                    interpolation * (1.0 - keep) + extrapolation * keep
                })
                .collect();
            (freqs, attention as f32)
        }
    }
}

/// Rotates the first `rotary_dim` dims of every head of `x` ([T, H·head_dim]) by
/// `positions[t] · inv_freq`.
pub(super) fn rope(r: &RopeAttrs, x: &Tensor, positions: &Tensor) -> Tensor {
    let (freqs, scale) = inv_freq(r);
    let (hd, half) = (r.head_dim as usize, r.rotary_dim as usize / 2);
    let width = x.shape[1];
    let mut out = x.as_f32().to_vec();
    for (t, &p) in positions.as_i32().iter().enumerate() {
        for head in (0..width).step_by(hd) {
            let row = &mut out[t * width + head..t * width + head + hd];
            for (i, f) in freqs.iter().enumerate() {
                let angle = p as f64 * *f as f64;
                let (sin, cos) = (angle.sin() * scale as f64, angle.cos() * scale as f64);
                let (a, b) = if r.interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (x1, x2) = (row[a] as f64, row[b] as f64);
                row[a] = (x1 * cos - x2 * sin) as f32;
                row[b] = (x2 * cos + x1 * sin) as f32;
            }
        }
    }
    Tensor::f32(x.shape.clone(), out)
}

/// T5's bucket of the relative position `key − query` (`_relative_position_bucket` in
/// transformers): exact buckets for distances below half a direction's buckets, then
/// log-spaced ones up to `max_distance`, computed in f32 as torch does (a bucket
/// boundary falls where the f32 quotient crosses an integer) and truncated.
pub fn relative_bucket(b: RelativeBias, relative: i64) -> usize {
    let (per_direction, exact) = b.per_direction();
    let (offset, distance) = if b.bidirectional {
        (
            if relative > 0 { per_direction } else { 0 },
            relative.unsigned_abs(),
        )
    } else {
        (0, relative.min(0).unsigned_abs())
    };
    let bucket = if distance < exact {
        distance
    } else {
        let log_ratio = (b.max_distance as f64 / exact as f64).ln() as f32;
        let scaled = ((distance as f32) / (exact as f32)).ln() / log_ratio
            * ((per_direction - exact) as f32);
        (exact + scaled as u64).min(per_direction - 1)
    };
    (offset + bucket) as usize
}

/// Scaled dot-product attention; see `Op::Attention`.
pub(super) fn attention(
    a: &AttentionAttrs,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    sinks: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Tensor {
    let (t, p) = (q.shape[0], k.shape[0]);
    // Positions matter only to positional attention, whose keys end with the queries.
    let past = p.saturating_sub(t);
    let (d, dv) = (a.head_dim as usize, a.v_head_dim as usize);
    let (heads, group) = (a.heads as usize, (a.heads / a.kv_heads) as usize);
    let (qw, kw, vw) = (q.shape[1], k.shape[1], v.shape[1]);
    let (qs, ks, vs) = (q.as_f32(), k.as_f32(), v.as_f32());
    let mut out = vec![0.0f32; t * heads * dv];
    let mut scores = vec![0.0f64; p];
    for i in 0..t {
        let pos = past + i;
        let last = if a.causal { pos } else { p - 1 };
        let first = a.window.map_or(0, |w| (pos + 1).saturating_sub(w as usize));
        for h in 0..heads {
            let kv = h / group;
            let qrow = &qs[i * qw + h * d..i * qw + (h + 1) * d];
            let mut max = f64::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate().take(last + 1).skip(first) {
                let krow = &ks[j * kw + kv * d..j * kw + (kv + 1) * d];
                let dot: f64 = qrow
                    .iter()
                    .zip(krow)
                    .map(|(x, y)| *x as f64 * *y as f64)
                    .sum();
                *s = dot * a.scale.get() as f64;
                if let (Some(b), Some(table)) = (a.bias, bias) {
                    let bucket = relative_bucket(b, j as i64 - pos as i64);
                    *s += table.as_f32()[bucket * heads + h] as f64;
                }
                max = max.max(*s);
            }
            let sink = sinks.map(|s| s.as_f32()[h] as f64);
            if let Some(s) = sink {
                max = max.max(s);
            }
            let mut denom = sink.map_or(0.0, |s| (s - max).exp());
            for s in &mut scores[first..=last] {
                *s = (*s - max).exp();
                denom += *s;
            }
            let o = &mut out[(i * heads + h) * dv..(i * heads + h + 1) * dv];
            for (c, o) in o.iter_mut().enumerate() {
                let acc: f64 = (first..=last)
                    .map(|j| scores[j] * vs[j * vw + kv * dv + c] as f64)
                    .sum();
                *o = (acc / denom) as f32;
            }
        }
    }
    Tensor::f32(vec![t, heads * dv], out)
}
