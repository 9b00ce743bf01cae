//! Kernels of the whole-model ops: embedding lookup, positions, rotary position
//! embedding, the KV-cache append and attention.
//!
//! Attention runs one invocation per (query token, head) with an online softmax
//! (running max, rescaled denominator and output): the `[tokens, past+tokens]`
//! scores of a head are never written to memory, and each query reads every key
//! and value row it sees once — at decode, the cache once per query head. It is
//! not tiled through workgroup memory: a long prompt reads the cache once per
//! query, which is correct but not fast.
//!
//! Rotary angles are `f32(position) · inv_freq` with `inv_freq` computed by the
//! interpreter (`interp::inv_freq`, every `rope_type`) and uploaded as data.

use super::plan::Elem::{F32, I32};
use super::writer::{dim, float, read, write, Module};
use crate::ir::{AttentionAttrs, Dim, RopeAttrs};
use std::fmt::{self, Write};

const SIZE: u32 = 64;

/// `out[t, :] = table[ids[t], :]` over `n` output elements of rows of `d`, the
/// table's rows split across `chunks` bindings of `rows_per_chunk` rows.
pub(super) fn embedding(
    n: Dim,
    d: u64,
    chunks: u64,
    rows_per_chunk: u64,
) -> Result<Module, fmt::Error> {
    let mut m = Module::new("embedding rows picked by token ids", false)?;
    m.bind(read("ids", I32))?;
    let names: Vec<String> = (0..chunks).map(|c| format!("table{c}")).collect();
    for name in &names {
        m.bind(read(name, F32))?;
    }
    m.bind(write("out", F32))?;
    m.chunk_reader("row_at", &names, rows_per_chunk, d)?;
    m.stride_loop(n, SIZE)?;
    writeln!(m, "        out[i] = row_at(u32(ids[i / {d}u]), i % {d}u);")?;
    m.end_loop()?;
    Ok(m)
}

/// The absolute positions of this call's tokens: `past + i`.
pub(super) fn positions() -> Result<Module, fmt::Error> {
    let mut m = Module::new("positions past, past + 1, ...", false)?;
    m.bind(write("out", I32))?;
    m.stride_loop(Dim::TOKENS, SIZE)?;
    m.line("        out[i] = i32(params.past + i);")?;
    m.end_loop()?;
    Ok(m)
}

/// Rotary embedding of `[T, width]` (`width` a multiple of the head dim): the
/// first `rotary_dim` dims of every head rotated by `positions[t] · inv_freq`,
/// cos and sin scaled by `scale`; the other dims copied.
pub(super) fn rope(n: Dim, r: &RopeAttrs, width: u64, scale: f32) -> Result<Module, fmt::Error> {
    let mut m = Module::new("rotary position embedding of every head", false)?;
    m.bind_all(&[
        read("x", F32),
        read("positions", I32),
        read("inv_freq", F32),
        write("out", F32),
    ])?;
    m.stride_loop(n, SIZE)?;
    let (hd, rot, half) = (r.head_dim, r.rotary_dim, r.rotary_dim / 2);
    writeln!(m, "        let e = i % {hd}u;")?;
    if rot < hd {
        writeln!(
            m,
            "        if (e >= {rot}u) {{\n            out[i] = x[i];\n            continue;\n        }}"
        )?;
    }
    // Each element is the first or second of its rotated pair.
    if r.interleaved {
        m.line("        let first = e % 2u == 0u;\n        let pair = e / 2u;\n        let partner = select(i - 1u, i + 1u, first);")?;
    } else {
        writeln!(
            m,
            "        let first = e < {half}u;\n        let pair = select(e - {half}u, e, first);\n        let partner = select(i - {half}u, i + {half}u, first);"
        )?;
    }
    writeln!(
        m,
        "        let angle = f32(positions[i / {width}u]) * inv_freq[pair];\n        let c = cos(angle) * {s};\n        let s = sin(angle) * {s};\n        out[i] = select(x[i] * c + x[partner] * s, x[i] * c - x[partner] * s, first);",
        s = float(scale)
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Appends this call's `n` elements (rows of `width`) to a KV cache at row `past`.
pub(super) fn cache_append(n: Dim, width: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("KV cache: append this call's rows at `past`", false)?;
    m.bind_all(&[read("x", F32), write("cache", F32)])?;
    m.stride_loop(n, SIZE)?;
    writeln!(m, "        cache[params.past * {width}u + i] = x[i];")?;
    m.end_loop()?;
    Ok(m)
}

/// Scaled dot-product attention of `[tokens, H·D]` queries over `keys` rows of
/// k `[P, KV·D]` and v `[P, KV·Dv]` (the queries are the last `tokens` of the P
/// positions), with optional sinks `[H]`; see `Op::Attention`.
pub(super) fn attention(a: &AttentionAttrs, keys: Dim) -> Result<Module, fmt::Error> {
    let mut m = Module::new(
        "attention: one query head per invocation, online softmax",
        false,
    )?;
    m.bind_all(&[read("q", F32), read("k", F32), read("v", F32)])?;
    if a.sinks {
        m.bind(read("sinks", F32))?;
    }
    m.bind(write("out", F32))?;
    let (heads, d, dv) = (a.heads, a.head_dim, a.v_head_dim);
    let group = heads / a.kv_heads.max(1);
    let (qw, kw, vw) = (heads * d, a.kv_heads * d, a.kv_heads * dv);
    m.stride_loop(Dim::TOKENS.scale(heads), SIZE)?;
    writeln!(
        m,
        "        let t = i / {heads}u;\n        let h = i % {heads}u;\n        let kv = h / {group}u;\n        let keys = {};\n        let pos = keys - tokens + t;",
        dim(keys)
    )?;
    let last = if a.causal { "pos" } else { "keys - 1u" };
    let first = match a.window {
        Some(w) => format!("select(0u, pos + 1u - {w}u, pos + 1u > {w}u)"),
        None => "0u".into(),
    };
    let (max0, denom0) = if a.sinks {
        ("sinks[h]", "1.0")
    } else {
        ("-3.4028235e38", "0.0")
    };
    writeln!(
        m,
        "        var mx = {max0};\n        var denom = {denom0};\n        var acc: array<f32, {dv}>;\n        let qb = t * {qw}u + h * {d}u;\n        for (var j = {first}; j <= {last}; j++) {{\n            let kb = j * {kw}u + kv * {d}u;\n            var dot = 0.0;\n            for (var c = 0u; c < {d}u; c++) {{\n                dot += q[qb + c] * k[kb + c];\n            }}\n            let s = dot * {scale};\n            let next = max(mx, s);\n            let rescale = exp(mx - next);\n            let p = exp(s - next);\n            denom = denom * rescale + p;\n            let vb = j * {vw}u + kv * {dv}u;\n            for (var c = 0u; c < {dv}u; c++) {{\n                acc[c] = acc[c] * rescale + p * v[vb + c];\n            }}\n            mx = next;\n        }}\n        for (var c = 0u; c < {dv}u; c++) {{\n            out[i * {dv}u + c] = acc[c] / denom;\n        }}",
        scale = float(a.scale.get())
    )?;
    m.end_loop()?;
    Ok(m)
}
