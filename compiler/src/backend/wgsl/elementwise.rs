//! Kernels with one invocation per output element (grid-stride loops):
//! activations, broadcasting arithmetic, column slices, the gathers and
//! scatters around the grouped matmul, and the combines.

use super::plan::Elem::{F32, I32};
use super::writer::{dim, read, write, Module};
use crate::ir::{BinaryOp, Dim, UnaryOp};
use std::fmt::{self, Write};

const SIZE: u32 = 64;

/// `out[i] = act(x[i])` over `n` elements.
pub(super) fn unary(u: UnaryOp, n: Dim) -> Result<Module, fmt::Error> {
    let mut m = Module::new(&format!("{u:?}"), false)?;
    m.bind_all(&[read("x", F32), write("out", F32)])?;
    m.activation(u)?;
    m.stride_loop(n, SIZE)?;
    m.line("        out[i] = act(x[i]);")?;
    m.end_loop()?;
    Ok(m)
}

/// `out = a op b`, `b` broadcast against `a`'s trailing dims (size-1 dims repeat).
pub(super) fn binary(op: BinaryOp, a: &[Dim], b: &[Dim], n: Dim) -> Result<Module, fmt::Error> {
    let mut m = Module::new(&format!("{op:?} with broadcasting"), false)?;
    m.bind_all(&[read("a", F32), read("b", F32), write("out", F32)])?;
    m.stride_loop(n, SIZE)?;
    m.line("        var rem = i;\n        var bi = 0u;")?;
    // Walk a's axes from the last; b's stride is 0 on its size-1 (or missing) axes.
    let offset = a.len() - b.len();
    let mut stride = String::from("1u");
    for axis in (0..a.len()).rev() {
        let b_dim = axis.checked_sub(offset).map(|j| b[j]);
        let broadcast = b_dim.is_none_or(|d| d == Dim::fixed(1));
        if !broadcast {
            writeln!(m, "        bi += (rem % {}) * {stride};", dim(a[axis]))?;
            stride = format!("{stride} * {}", dim(b_dim.expect("b has this axis")));
        }
        writeln!(m, "        rem = rem / {};", dim(a[axis]))?;
    }
    let value = match op {
        BinaryOp::Add => "a[i] + b[bi]",
        BinaryOp::Sub => "a[i] - b[bi]",
        BinaryOp::Mul => "a[i] * b[bi]",
        BinaryOp::Div => "a[i] / b[bi]",
        BinaryOp::Min => "min(a[i], b[bi])",
        BinaryOp::Max => "max(a[i], b[bi])",
    };
    writeln!(m, "        out[i] = {value};")?;
    m.end_loop()?;
    Ok(m)
}

/// Columns `start..start+len` of a `[T, width]` value (of every head: `T` counts
/// (token, head) rows and `width` is one head's).
pub(super) fn slice_cols(
    rows: Dim,
    width: u64,
    start: u64,
    len: u64,
) -> Result<Module, fmt::Error> {
    let mut m = Module::new("columns of a [T, E] value", false)?;
    m.bind_all(&[read("x", F32), write("out", F32)])?;
    m.stride_loop(mul(rows, len), SIZE)?;
    writeln!(
        m,
        "        out[i] = x[(i / {len}u) * {width}u + {start}u + i % {len}u];"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Rows of `x [T, d]` in dispatch order; dropped slots (-1) give zero rows.
pub(super) fn gather_rows(slots: Dim, d: u64, k: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("token rows in dispatch order", false)?;
    m.bind_all(&[read("x", F32), read("order", I32), write("out", F32)])?;
    m.stride_loop(mul(slots, d), SIZE)?;
    writeln!(
        m,
        "        let s = order[i / {d}u];\n        var v = 0.0;\n        if (s >= 0) {{\n            v = x[(u32(s) / {k}u) * {d}u + i % {d}u];\n        }}\n        out[i] = v;"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Routing weights in dispatch order; zero for dropped slots.
pub(super) fn gather_slots(slots: Dim) -> Result<Module, fmt::Error> {
    let mut m = Module::new("routing weights in dispatch order", false)?;
    m.bind_all(&[read("w", F32), read("order", I32), write("out", F32)])?;
    m.stride_loop(slots, SIZE)?;
    m.line("        let s = order[i];\n        var v = 0.0;\n        if (s >= 0) {\n            v = w[u32(s)];\n        }\n        out[i] = v;")?;
    m.end_loop()?;
    Ok(m)
}

/// `out[t, d] = Σ_e x[e, t, d]`.
pub(super) fn expert_sum(experts: u64, per_expert: Dim) -> Result<Module, fmt::Error> {
    let mut m = Module::new("sum over the expert axis", false)?;
    m.bind_all(&[read("x", F32), write("out", F32)])?;
    m.stride_loop(per_expert, SIZE)?;
    writeln!(
        m,
        "        var acc = 0.0;\n        for (var e = 0u; e < {experts}u; e++) {{\n            acc += x[e * count + i];\n        }}\n        out[i] = acc;"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Dropped tokens' pass-through output `w[t]·x[t]`, zero for routed tokens.
pub(super) fn pass_through(n: Dim, d: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("pass-through of dropped tokens", false)?;
    m.bind_all(&[
        read("x", F32),
        read("idx", I32),
        read("w", F32),
        write("out", F32),
    ])?;
    m.stride_loop(n, SIZE)?;
    writeln!(
        m,
        "        let t = i / {d}u;\n        out[i] = select(0.0, w[t] * x[i], idx[t] < 0);"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Dense gates `g[t, e] = Σ_j w[t, j]·[idx[t, j] = e]`.
pub(super) fn scatter_gates(
    tokens_by_experts: Dim,
    experts: u64,
    k: u64,
    mask: bool,
) -> Result<Module, fmt::Error> {
    let mut m = Module::new("dense gates from selections", false)?;
    m.bind_all(&[read("idx", I32), read("w", F32), write("out", F32)])?;
    m.stride_loop(tokens_by_experts, SIZE)?;
    // A mask counts each choice as 1 (`w` stays bound: the layout is the op's).
    let add = if mask {
        "1.0".to_string()
    } else {
        format!("w[t * {k}u + j]")
    };
    writeln!(
        m,
        "        let t = i / {experts}u;\n        let e = i32(i % {experts}u);\n        var g = 0.0;\n        for (var j = 0u; j < {k}u; j++) {{\n            if (idx[t * {k}u + j] == e) {{\n                g += {add};\n            }}\n        }}\n        out[i] = g;"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Step 1 of a scatter-add: every slot's row is unknown (-1).
pub(super) fn scatter_clear(slots: Dim) -> Result<Module, fmt::Error> {
    let mut m = Module::new("scatter-add, 1/3: clear the slot-to-row map", false)?;
    m.bind(write("row_of", I32))?;
    m.stride_loop(slots, SIZE)?;
    m.line("        row_of[i] = -1;")?;
    m.end_loop()?;
    Ok(m)
}

/// Step 2 of a scatter-add: invert the dispatch order (slot → row).
pub(super) fn scatter_invert(slots: Dim) -> Result<Module, fmt::Error> {
    let mut m = Module::new("scatter-add, 2/3: slot-to-row map", false)?;
    m.bind_all(&[read("order", I32), write("row_of", I32)])?;
    m.stride_loop(slots, SIZE)?;
    m.line("        let s = order[i];\n        if (s >= 0) {\n            row_of[u32(s)] = i32(i);\n        }")?;
    m.end_loop()?;
    Ok(m)
}

/// Step 3 of a scatter-add: each token sums its k rows (no atomics, fixed order).
pub(super) fn scatter_sum(n: Dim, d: u64, k: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("scatter-add, 3/3: each token sums its slots' rows", false)?;
    m.bind_all(&[read("x", F32), read("row_of", I32), write("out", F32)])?;
    m.stride_loop(n, SIZE)?;
    writeln!(
        m,
        "        let t = i / {d}u;\n        let c = i % {d}u;\n        var acc = 0.0;\n        for (var j = 0u; j < {k}u; j++) {{\n            let r = row_of[t * {k}u + j];\n            if (r >= 0) {{\n                acc += x[u32(r) * {d}u + c];\n            }}\n        }}\n        out[i] = acc;"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Experts a dense-combine launch reads at once: with the gates and the
/// output, 8 storage bindings, the WebGPU default limit.
pub(super) const COMBINE_GROUP: u64 = 6;

/// `out[t, d] (+)= Σ_e g[t, e] · x_e[t, d]` over experts `first..first+count`
/// of `experts`, each a separate operand; `accumulate` adds to `out`.
pub(super) fn dense_combine(
    n: Dim,
    d: u64,
    experts: u64,
    first: u64,
    count: u64,
    accumulate: bool,
) -> Result<Module, fmt::Error> {
    let mut m = Module::new("dense combine of experts' outputs", false)?;
    m.bind(read("g", F32))?;
    for e in 0..count {
        m.bind(read(&format!("x{e}"), F32))?;
    }
    m.bind(write("out", F32))?;
    m.stride_loop(n, SIZE)?;
    let init = if accumulate { "out[i]" } else { "0.0" };
    writeln!(m, "        let t = i / {d}u;\n        var acc = {init};")?;
    for e in 0..count {
        writeln!(
            m,
            "        acc += g[t * {experts}u + {}u] * x{e}[i];",
            first + e
        )?;
    }
    m.line("        out[i] = acc;")?;
    m.end_loop()?;
    Ok(m)
}

/// `d · c` as a dim.
pub(super) fn mul(d: Dim, c: u64) -> Dim {
    d.scale(c)
}

/// The last of `rows` rows of width `w` (zeros when there are none).
pub(super) fn last_row(rows: Dim, w: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("the last row", false)?;
    m.bind_all(&[read("x", F32), write("out", F32)])?;
    m.stride_loop(Dim::fixed(w), SIZE)?;
    writeln!(
        m,
        "        let rows = {};\n        var v = 0.0;\n        if (rows > 0u) {{\n            v = x[(rows - 1u) * {w}u + i];\n        }}\n        out[i] = v;",
        dim(rows)
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Per head, `a`'s `a_len` columns then `b`'s `b_len` (b's one head for every
/// head when `broadcast`), over `n` output elements.
pub(super) fn concat_cols(
    n: Dim,
    heads: u64,
    a_len: u64,
    b_len: u64,
    broadcast: bool,
) -> Result<Module, fmt::Error> {
    let mut m = Module::new("per-head column concat", false)?;
    m.bind_all(&[read("a", F32), read("b", F32), write("out", F32)])?;
    m.stride_loop(n, SIZE)?;
    let per = a_len + b_len;
    let (b_heads, b_head) = if broadcast { (1, "0u") } else { (heads, "h") };
    writeln!(
        m,
        "        let r = i / {}u;\n        let h = (i / {per}u) % {heads}u;\n        let c = i % {per}u;\n        if (c < {a_len}u) {{\n            out[i] = a[(r * {heads}u + h) * {a_len}u + c];\n        }} else {{\n            out[i] = b[(r * {b_heads}u + {b_head}) * {b_len}u + c - {a_len}u];\n        }}",
        heads * per
    )?;
    m.end_loop()?;
    Ok(m)
}
