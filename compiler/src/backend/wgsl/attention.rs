//! Kernels of the whole-model ops: embedding lookup, positions, rotary position
//! embedding, the KV-cache append and attention.
//!
//! Attention runs a workgroup per (query token, kv head) over tiles of keys with
//! an online softmax (running max, rescaled denominator and output): the
//! `[tokens, past+tokens]` scores are never written to global memory, and the
//! query heads sharing a kv head read each of its key and value rows once — at
//! decode, the cache once. Queries are not tiled together: a long prompt reads
//! the cache once per query token.
//!
//! Rotary angles are `f32(position) · inv_freq` with `inv_freq` computed by the
//! interpreter (`interp::inv_freq`, every `rope_type`) and uploaded as data.

use super::plan::Elem::{F32, I32};
use super::writer::{dim, float, read, write, Module};
use crate::ir::{AttentionAttrs, Dim, RelativeBias, RopeAttrs};
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

/// Row numbers `0, 1, ..., n-1` (`Op::RowPositions`; the operand is not read).
pub(super) fn row_positions(n: Dim) -> Result<Module, fmt::Error> {
    let mut m = Module::new("row positions 0, 1, ...", false)?;
    m.bind(write("out", I32))?;
    m.stride_loop(n, SIZE)?;
    m.line("        out[i] = i32(i);")?;
    m.end_loop()?;
    Ok(m)
}

/// fairseq's sinusoidal position embeddings of `[rows, width]` (`n` elements): the
/// frequencies are `interp::sinusoidal_freqs` as data, the angle `f32(p + offset) · f`
/// rounded to f32 as the interpreter does; sin and cos are the GPU's.
pub(super) fn sinusoidal(n: Dim, width: u64, offset: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("sinusoidal position embeddings", false)?;
    m.bind_all(&[
        read("positions", I32),
        read("freqs", F32),
        write("out", F32),
    ])?;
    m.stride_loop(n, SIZE)?;
    let half = width / 2;
    writeln!(
        m,
        "        let c = i % {width}u;\n        if (c >= {}u) {{\n            out[i] = 0.0;\n            continue;\n        }}\n        let angle = f32(positions[i / {width}u] + {offset}) * freqs[c % {half}u];\n        out[i] = select(sin(angle), cos(angle), c >= {half}u);",
        2 * half
    )?;
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

/// Invocations per attention workgroup.
pub(super) const ATTENTION_SIZE: u32 = 64;

/// Keys one attention workgroup scores at a time: 64, fewer when the query
/// heads sharing a kv head are many (their scores are 8 KiB of workgroup memory at most).
fn key_tile(group: u64) -> u64 {
    (2048 / group.max(1)).clamp(1, ATTENTION_SIZE as u64)
}

/// Scaled dot-product attention of `[tokens, H·D]` queries over `keys` rows of
/// k `[P, KV·D]` and v `[P, KV·Dv]`, with optional sinks `[H]` and relative
/// position bias; see `Op::Attention`. The keys are a KV cache (`past + tokens`
/// rows: the queries are the last `tokens` positions), this call's own rows (an
/// encoder's `tokens`) or a decoder's encoder input (`source` rows, read without
/// positions: cross-attention is neither causal, windowed nor biased).
///
/// A relative bias adds `bias[bucket(key − query), head]` to each score: the
/// bucket of each relative position `r` in `-M..=M` (`M` the bias's max
/// distance) is `buckets[r + M]`, a table the compiler fills with
/// `interp::relative_bucket` (no logarithm on the GPU: one ulp flips a bucket),
/// and farther positions take the bucket of `±M`, which is already the last of
/// their direction.
///
/// One workgroup per (query token, kv head), in a grid-stride loop over those
/// pairs, serves the `H / KV` query heads that share the kv head: it walks the
/// keys the query sees in tiles, each invocation scoring one key of the tile
/// for every head (a k row read once), then every invocation owning output
/// columns `lix, lix + 64, ...` folds the tile into its accumulators with
/// the online-softmax rescaling (a v row read once). At decode the cache is read
/// once; no scores leave workgroup memory.
pub(super) fn attention(a: &AttentionAttrs, keys: Dim) -> Result<Module, fmt::Error> {
    let positional = a.causal || a.window.is_some() || a.bias.is_some();
    let mut m = Module::new(
        "attention: a workgroup per (query, kv head), key tiles, online softmax",
        false,
    )?;
    m.bind_all(&[read("q", F32), read("k", F32), read("v", F32)])?;
    if a.sinks {
        m.bind(read("sinks", F32))?;
    }
    if a.bias.is_some() {
        m.bind_all(&[read("bias", F32), read("buckets", F32)])?;
    }
    m.bind(write("out", F32))?;
    let (heads, kv_heads, d, dv) = (a.heads, a.kv_heads.max(1), a.head_dim, a.v_head_dim);
    let group = heads / kv_heads;
    let (qw, kw, vw) = (heads * d, kv_heads * d, kv_heads * dv);
    let size = ATTENTION_SIZE as u64;
    let bk = key_tile(group);
    // Output columns each invocation owns.
    let cols = dv.div_ceil(size).max(1);
    writeln!(m, "\nvar<workgroup> p: array<f32, {}>;", group * bk)?;
    m.main((ATTENTION_SIZE, 1))?;
    let last = if a.causal { "pos" } else { "keys - 1u" };
    let first = match a.window {
        Some(w) => format!("select(0u, pos + 1u - {w}u, pos + 1u > {w}u)"),
        None => "0u".into(),
    };
    let (max0, denom0) = if a.sinks {
        (
            "sinks[kv * {group}u + g]".replace("{group}", &group.to_string()),
            "1.0",
        )
    } else {
        ("-3.4028235e38".to_string(), "0.0")
    };
    writeln!(
        m,
        "    let keys = {keys};
    for (var w = wid.x; w < tokens * {kv_heads}u; w += groups.x) {{
        let t = w / {kv_heads}u;
        let kv = w % {kv_heads}u;
{pos}        let first = {first};
        let last = {last};
        var mx: array<f32, {group}>;
        var denom: array<f32, {group}>;
        var acc: array<f32, {acc}>;
        for (var g = 0u; g < {group}u; g++) {{
            mx[g] = {max0};
            denom[g] = {denom0};
        }}
        for (var start = first; start <= last; start += {bk}u) {{
            let n = min({bk}u, last + 1u - start);
            // Scores of key `start + lix` for every head of the group.
            if (lix < n) {{
                let kb = (start + lix) * {kw}u + kv * {d}u;
{bucket}                for (var g = 0u; g < {group}u; g++) {{
                    let qb = t * {qw}u + (kv * {group}u + g) * {d}u;
                    var dot = 0.0;
                    for (var c = 0u; c < {d}u; c++) {{
                        dot += q[qb + c] * k[kb + c];
                    }}
                    p[g * {bk}u + lix] = dot * {scale}{bias};
                }}
            }}
            workgroupBarrier();
            var next: array<f32, {group}>;
            for (var g = 0u; g < {group}u; g++) {{
                next[g] = mx[g];
                for (var j = 0u; j < n; j++) {{
                    next[g] = max(next[g], p[g * {bk}u + j]);
                }}
            }}
            workgroupBarrier();
            if (lix < n) {{
                for (var g = 0u; g < {group}u; g++) {{
                    p[g * {bk}u + lix] = exp(p[g * {bk}u + lix] - next[g]);
                }}
            }}
            workgroupBarrier();
            for (var g = 0u; g < {group}u; g++) {{
                let rescale = exp(mx[g] - next[g]);
                var sum = 0.0;
                for (var j = 0u; j < n; j++) {{
                    sum += p[g * {bk}u + j];
                }}
                denom[g] = denom[g] * rescale + sum;
                mx[g] = next[g];
                for (var cc = 0u; cc < {cols}u; cc++) {{
                    let c = lix + cc * {size}u;
                    if (c < {dv}u) {{
                        var o = acc[g * {cols}u + cc] * rescale;
                        for (var j = 0u; j < n; j++) {{
                            o += p[g * {bk}u + j] * v[(start + j) * {vw}u + kv * {dv}u + c];
                        }}
                        acc[g * {cols}u + cc] = o;
                    }}
                }}
            }}
            workgroupBarrier();
        }}
        for (var g = 0u; g < {group}u; g++) {{
            for (var cc = 0u; cc < {cols}u; cc++) {{
                let c = lix + cc * {size}u;
                if (c < {dv}u) {{
                    out[(t * {heads}u + kv * {group}u + g) * {dv}u + c] = acc[g * {cols}u + cc] / denom[g];
                }}
            }}
        }}
    }}
}}",
        keys = dim(keys),
        pos = if positional {
            "        let pos = keys - tokens + t;\n"
        } else {
            ""
        },
        bucket = match a.bias {
            Some(b) => format!(
                "                let rel = clamp(i32(start + lix) - i32(pos), -{m}, {m}) + {m};\n                let bucket = u32(buckets[u32(rel)]);\n",
                m = b.max_distance
            ),
            None => String::new(),
        },
        bias = if a.bias.is_some() {
            format!(" + bias[bucket * {heads}u + kv * {group}u + g]")
        } else {
            String::new()
        },
        acc = group * cols,
        scale = float(a.scale.get())
    )?;
    Ok(m)
}

/// The bucket of each relative position `-M..=M` (`M` the bias's max distance)
/// as f32s, for the attention kernel's `buckets` table.
pub(super) fn bucket_table(b: RelativeBias) -> Vec<f32> {
    let m = b.max_distance as i64;
    (-m..=m)
        .map(|r| crate::interp::relative_bucket(b, r) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel clamps relative positions to `±max_distance`: every farther one
    /// has the bucket of the clamped one, in both directions, bidirectional or not.
    #[test]
    fn positions_beyond_max_distance_share_the_clamped_bucket() {
        for (buckets, max_distance) in [(32, 128), (16, 12), (8, 5), (4, 3), (32, 40)] {
            for bidirectional in [false, true] {
                let b = RelativeBias {
                    buckets,
                    max_distance,
                    bidirectional,
                };
                if b.check().is_err() {
                    continue;
                }
                let table = bucket_table(b);
                let m = max_distance as i64;
                assert_eq!(table.len() as i64, 2 * m + 1);
                for r in -20 * m..=20 * m {
                    let want = crate::interp::relative_bucket(b, r);
                    assert_eq!(
                        table[(r.clamp(-m, m) + m) as usize] as usize,
                        want,
                        "{b:?} r={r}"
                    );
                }
            }
        }
    }
}
