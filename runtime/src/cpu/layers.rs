//! The CPU backend's native kernels for the ops around the matmuls of a whole
//! model: embedding lookup, RMSNorm, rotary embeddings and attention, in f32 on
//! the worker threads. They are written in Rust rather than generated as CLIF: at
//! decode time they touch a few kilobytes next to the megabytes of weights the
//! matmuls stream, and at prefill attention is a loop over the cache that the
//! compiler auto-vectorizes well (see ARCHITECTURE.md).
//!
//! Each function checks its buffers' extents first (a mismatch is an internal
//! error, never a panic), and computes what `interp` computes, in f32 with the
//! interpreter's order of positions; rotary angles come from the same
//! `interp::inv_freq`.

use super::workers::{Work, Workers};
use moec_compiler::interp::inv_freq;
use moec_compiler::interp::relative_bucket;
use moec_compiler::ir::{AttentionAttrs, RopeAttrs};
use std::cell::RefCell;

/// `out[t] = table[ids[t]]`, rows of `width`; ids were checked against the vocabulary.
pub fn embedding(ids: &[i32], table: &[f32], width: usize, out: &mut [f32]) -> Result<(), String> {
    let vocab = table.len() / width.max(1);
    if out.len() != ids.len() * width {
        return Err(format!(
            "internal error: {} embedding rows of {width} into {} values",
            ids.len(),
            out.len()
        ));
    }
    for (&id, row) in ids.iter().zip(out.chunks_mut(width.max(1))) {
        if id < 0 || id as usize >= vocab {
            return Err(format!("internal error: token id {id} outside 0..{vocab}"));
        }
        row.copy_from_slice(&table[id as usize * width..(id as usize + 1) * width]);
    }
    Ok(())
}

/// RMSNorm of each `w.len()`-wide group of `x`: `v / rms(v) · w`.
pub fn rms_norm(
    x: &[f32],
    w: &[f32],
    eps: f32,
    out: &mut [f32],
    workers: &Workers,
) -> Result<(), String> {
    let g = w.len();
    if g == 0 || !x.len().is_multiple_of(g) || out.len() != x.len() {
        return Err(format!(
            "internal error: rmsnorm of {} values in groups of {g} into {}",
            x.len(),
            out.len()
        ));
    }
    let work = Work {
        bytes: x.len() * 8,
        macs: x.len(),
    };
    workers.split_mut(out, g, work, |first, run| {
        for (o, v) in run.chunks_mut(g).zip(x[first * g..].chunks(g)) {
            let ms = v.iter().map(|a| (*a as f64) * (*a as f64)).sum::<f64>() / g as f64;
            let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
            for ((o, v), w) in o.iter_mut().zip(v).zip(w) {
                *o = v * inv * w;
            }
        }
    });
    Ok(())
}

/// Rotates the first `rotary_dim` dims of every `head_dim`-wide head of each row
/// of `x` by its position's angles.
pub fn rope(r: &RopeAttrs, x: &[f32], positions: &[i32], out: &mut [f32]) -> Result<(), String> {
    let (hd, rot) = (r.head_dim as usize, r.rotary_dim as usize);
    let rows = positions.len();
    if rows == 0 {
        return Ok(());
    }
    let width = x.len() / rows;
    let bad = x.len() != rows * width || out.len() != x.len();
    if bad || hd == 0 || !width.is_multiple_of(hd) || rot > hd {
        return Err(format!(
            "internal error: rope over {} values, {rows} positions, heads of {hd}",
            x.len()
        ));
    }
    let (freqs, scale) = inv_freq(r);
    let half = rot / 2;
    out.copy_from_slice(x);
    let mut cos = vec![0.0f32; half];
    let mut sin = vec![0.0f32; half];
    for (row, &p) in out.chunks_mut(width).zip(positions) {
        for (i, f) in freqs.iter().enumerate() {
            let angle = p as f64 * *f as f64;
            cos[i] = (angle.cos() * scale as f64) as f32;
            sin[i] = (angle.sin() * scale as f64) as f32;
        }
        for head in row.chunks_mut(hd) {
            for i in 0..half {
                let (a, b) = if r.interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (x1, x2) = (head[a], head[b]);
                head[a] = x1 * cos[i] - x2 * sin[i];
                head[b] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
    Ok(())
}

thread_local! {
    /// A worker's attention scores for one (query, head) pair.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `softmax(scale · q·kᵀ + bias + mask) · v` for `q` `[T, H·D]` against the `P`
/// rows of `k` `[P, KV·D]` and `v` `[P, KV·Dv]` (the last T positions are the
/// queries', when positions matter: a causal mask, a window or a relative bias
/// `[buckets, H]`; cross-attention reads keys of any count).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    a: &AttentionAttrs,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sinks: Option<&[f32]>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    workers: &Workers,
) -> Result<(), String> {
    let (d, dv) = (a.head_dim as usize, a.v_head_dim as usize);
    let (heads, kv_heads) = (a.heads as usize, a.kv_heads as usize);
    let (qw, kw, vw) = (heads * d, kv_heads * d, kv_heads * dv);
    let (t, p) = (q.len() / qw.max(1), k.len() / kw.max(1));
    let positional = a.causal || a.window.is_some() || a.bias.is_some();
    let buckets = a.bias.map_or(0, |b| b.buckets as usize);
    let ok = q.len() == t * qw
        && k.len() == p * kw
        && v.len() == p * vw
        && (p >= t || !positional)
        && (p > 0 || t == 0)
        && kv_heads > 0
        && heads % kv_heads == 0
        && sinks.is_none_or(|s| s.len() == heads)
        && bias.is_some() == a.bias.is_some()
        && bias.is_none_or(|b| b.len() == buckets * heads)
        && out.len() == t * heads * dv;
    if !ok {
        return Err(format!(
            "internal error: attention over q {}, k {}, v {} values",
            q.len(),
            k.len(),
            v.len()
        ));
    }
    let (past, group, scale) = (p.saturating_sub(t), heads / kv_heads, a.scale.get());
    // The bias's bucket of each relative position key − query, from −(P−1) up to
    // P−1 (computed once per call, not per score: each takes a logarithm).
    let buckets: Vec<usize> = match a.bias {
        Some(b) => (0..2 * p)
            .map(|r| relative_bucket(b, r as i64 - p as i64 + 1))
            .collect(),
        None => Vec::new(),
    };
    out.fill(0.0);
    let wide = super::isa::avx512_supported();
    let call = Rows {
        a,
        q,
        k,
        v,
        sinks,
        bias,
        buckets: &buckets,
        p,
        past,
        group,
        scale,
    };
    // Each query row's heads score (up to) every key and sum as many values.
    let work = Work {
        bytes: 4 * (k.len() + v.len()),
        macs: t * heads * p * (d + dv),
    };
    workers.split_mut(out, dv.max(1), work, |first, run| {
        if wide {
            // SAFETY: the host has AVX-512F (checked above).
            unsafe { call.rows_avx512(first, run) }
        } else {
            call.rows(first, run)
        }
    });
    Ok(())
}

/// One attention call's operands, for the rows of output a worker computes.
struct Rows<'a> {
    a: &'a AttentionAttrs,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    sinks: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
    buckets: &'a [usize],
    p: usize,
    past: usize,
    group: usize,
    scale: f32,
}

impl Rows<'_> {
    /// [`Rows::rows`] compiled for AVX-512 (the same operations in the same
    /// order, on wider vectors).
    ///
    /// # Safety
    /// The host has AVX-512F.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    unsafe fn rows_avx512(&self, first: usize, run: &mut [f32]) {
        self.rows(first, run)
    }

    /// The output rows (one per query and head, `Dv` values each) from item `first` on.
    #[inline(always)]
    fn rows(&self, first: usize, run: &mut [f32]) {
        let a = self.a;
        let (d, dv) = (a.head_dim as usize, a.v_head_dim as usize);
        let (heads, kv_heads) = (a.heads as usize, a.kv_heads as usize);
        let (qw, kw, vw) = (heads * d, kv_heads * d, kv_heads * dv);
        let (p, past, group, scale) = (self.p, self.past, self.group, self.scale);
        let (q, k, v, bias, buckets) = (self.q, self.k, self.v, self.bias, self.buckets);
        // (Taken out of the thread-local for the whole run, so the loop below
        // is compiled inside this function, with its caller's target features.)
        let mut scores = SCORES.take();
        for (item, o) in (first..).zip(run.chunks_mut(dv.max(1))) {
            let (i, h) = (item / heads, item % heads);
            let kv = h / group;
            let pos = past + i;
            let last = if a.causal { pos } else { p - 1 };
            let first = a.window.map_or(0, |w| (pos + 1).saturating_sub(w as usize));
            let qrow = &q[i * qw + h * d..i * qw + (h + 1) * d];
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in first..=last {
                let mut s = dot(qrow, &k[j * kw + kv * d..j * kw + (kv + 1) * d]) * scale;
                if let Some(table) = bias {
                    s += table[buckets[j + p - 1 - pos] * heads + h];
                }
                max = max.max(s);
                scores.push(s);
            }
            let sink = self.sinks.map(|s| s[h]);
            if let Some(s) = sink {
                max = max.max(s);
            }
            let mut denom = sink.map_or(0.0, |s| (s - max).exp());
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                denom += *s;
            }
            let inv = 1.0 / denom;
            for (j, s) in (first..=last).zip(scores.iter()) {
                let vrow = &v[j * vw + kv * dv..j * vw + (kv + 1) * dv];
                let w = s * inv;
                for (o, x) in o.iter_mut().zip(vrow) {
                    *o += w * x;
                }
            }
        }
        SCORES.set(scores);
    }
}

/// `a · b` over eight independent lanes, so the compiler vectorizes it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}
