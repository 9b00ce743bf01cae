//! Kernels with one invocation per row: softmax, sum-normalisation, RMSNorm,
//! LayerNorm, and the unfused routing steps (group mask, top-k, gather) that
//! only unoptimized graphs still contain. Sums accumulate in f32 in index order.

use super::plan::Elem::{F32, I32};
use super::writer::{read, write, Module};
use crate::ir::{Dim, GroupScore, Renorm};
use std::fmt::{self, Write};

const SIZE: u32 = 64;

/// Per-row normalisations of `[rows, d]`.
#[derive(Clone, Copy)]
pub(super) enum RowOp {
    Softmax,
    Normalize(Renorm),
    RmsNorm(f32),
    LayerNorm(f32),
}

pub(super) fn row_op(op: RowOp, rows: Dim, d: u64) -> Result<Module, fmt::Error> {
    let (doc, params): (&str, &[&str]) = match op {
        RowOp::Softmax => ("softmax of each row", &[]),
        RowOp::Normalize(_) => ("each row divided by its sum or p-norm", &[]),
        RowOp::RmsNorm(_) => ("RMSNorm of each row", &["w"]),
        RowOp::LayerNorm(_) => ("LayerNorm of each row", &["w", "b"]),
    };
    let mut m = Module::new(doc, false)?;
    m.bind(read("x", F32))?;
    for p in params {
        m.bind(read(p, F32))?;
    }
    m.bind(write("out", F32))?;
    m.stride_loop(rows, SIZE)?;
    writeln!(m, "        let base = i * {d}u;")?;
    let each = |m: &mut Module, body: &str| {
        writeln!(
            m,
            "        for (var c = 0u; c < {d}u; c++) {{\n            {body}\n        }}"
        )
    };
    match op {
        RowOp::Softmax => {
            m.line("        var mx = -3.4028235e38;")?;
            each(&mut m, "mx = max(mx, x[base + c]);")?;
            m.line("        var sum = 0.0;")?;
            each(&mut m, "sum += exp(x[base + c] - mx);")?;
            each(&mut m, "out[base + c] = exp(x[base + c] - mx) / sum;")?;
        }
        RowOp::Normalize(n) => {
            let (term, denom) = renorm(n, "x[base + c]", "sum");
            m.line("        var sum = 0.0;")?;
            each(&mut m, &format!("sum += {term};"))?;
            each(&mut m, &format!("out[base + c] = x[base + c] / {denom};"))?;
        }
        RowOp::RmsNorm(eps) => {
            m.line("        var ss = 0.0;")?;
            each(&mut m, "ss += x[base + c] * x[base + c];")?;
            writeln!(
                m,
                "        let inv = inverseSqrt(ss / {d}.0 + {});",
                super::writer::float(eps)
            )?;
            each(&mut m, "out[base + c] = x[base + c] * inv * w[c];")?;
        }
        RowOp::LayerNorm(eps) => {
            m.line("        var sum = 0.0;")?;
            each(&mut m, "sum += x[base + c];")?;
            writeln!(
                m,
                "        let mean = sum / {d}.0;\n        var var_sum = 0.0;"
            )?;
            each(
                &mut m,
                "let dev = x[base + c] - mean;\n            var_sum += dev * dev;",
            )?;
            writeln!(
                m,
                "        let inv = inverseSqrt(var_sum / {d}.0 + {});",
                super::writer::float(eps)
            )?;
            each(
                &mut m,
                "out[base + c] = (x[base + c] - mean) * inv * w[c] + b[c];",
            )?;
        }
    }
    m.end_loop()?;
    Ok(m)
}

/// WGSL helpers for selecting the largest values of a private array
/// (descending, ties to the lower index, NaN below everything).
pub(super) fn selection_helpers(m: &mut Module) -> fmt::Result {
    m.line("\nfn key(v: f32) -> f32 {\n    return select(v, -3.4028235e38, v != v);\n}")
}

/// Writes a loop choosing the `k` largest of `vals[0..n]` into `sel[0..k]`
/// (`taken` must be a zeroed `array<bool, n>`).
pub(super) fn select_top(
    m: &mut Module,
    vals: &str,
    n: u64,
    k: u64,
    sel: &str,
    indent: &str,
) -> fmt::Result {
    writeln!(
        m,
        "{indent}for (var j = 0u; j < {k}u; j++) {{\n\
         {indent}    var best = 0u;\n\
         {indent}    var best_v = 0.0;\n\
         {indent}    var found = false;\n\
         {indent}    for (var e = 0u; e < {n}u; e++) {{\n\
         {indent}        let v = key({vals}[e]);\n\
         {indent}        if (!taken[e] && (!found || v > best_v)) {{\n\
         {indent}            best = e;\n\
         {indent}            best_v = v;\n\
         {indent}            found = true;\n\
         {indent}        }}\n\
         {indent}    }}\n\
         {indent}    taken[best] = true;\n\
         {indent}    {sel}[j] = best;\n\
         {indent}}}"
    )
}

/// Writes the group mask over private `vals[0..experts]` in place: groups
/// outside the best `keep` (by max or top-2 sum) become the lowest float.
pub(super) fn mask_groups(
    m: &mut Module,
    vals: &str,
    experts: u64,
    groups: u64,
    keep: u64,
    score: GroupScore,
    indent: &str,
) -> fmt::Result {
    let size = experts / groups;
    writeln!(
        m,
        "{indent}var group_score: array<f32, {groups}>;\n\
         {indent}for (var g = 0u; g < {groups}u; g++) {{\n\
         {indent}    var first = -3.4028235e38;\n\
         {indent}    var second = -3.4028235e38;\n\
         {indent}    for (var e = g * {size}u; e < (g + 1u) * {size}u; e++) {{\n\
         {indent}        let v = key({vals}[e]);\n\
         {indent}        if (v > first) {{\n\
         {indent}            second = first;\n\
         {indent}            first = v;\n\
         {indent}        }} else if (v > second) {{\n\
         {indent}            second = v;\n\
         {indent}        }}\n\
         {indent}    }}\n\
         {indent}    group_score[g] = {};\n\
         {indent}}}\n\
         {indent}var kept: array<u32, {keep}>;\n\
         {indent}{{\n\
         {indent}    var taken: array<bool, {groups}>;",
        match score {
            GroupScore::Max => "first",
            GroupScore::Top2Sum => "first + second",
        }
    )?;
    select_top(
        m,
        "group_score",
        groups,
        keep,
        "kept",
        &format!("{indent}    "),
    )?;
    writeln!(
        m,
        "{indent}}}\n\
         {indent}for (var e = 0u; e < {experts}u; e++) {{\n\
         {indent}    var keep_it = false;\n\
         {indent}    for (var j = 0u; j < {keep}u; j++) {{\n\
         {indent}        keep_it = keep_it || kept[j] == e / {size}u;\n\
         {indent}    }}\n\
         {indent}    if (!keep_it) {{\n\
         {indent}        {vals}[e] = -3.4028235e38;\n\
         {indent}    }}\n\
         {indent}}}"
    )
}

/// The unfused group mask of `[rows, experts]` scores.
pub(super) fn group_mask(
    rows: Dim,
    experts: u64,
    groups: u64,
    keep: u64,
    score: GroupScore,
) -> Result<Module, fmt::Error> {
    let mut m = Module::new("group-limited routing mask", false)?;
    m.bind_all(&[read("x", F32), write("out", F32)])?;
    selection_helpers(&mut m)?;
    m.stride_loop(rows, SIZE)?;
    writeln!(
        m,
        "        var vals: array<f32, {experts}>;\n        for (var e = 0u; e < {experts}u; e++) {{\n            vals[e] = x[i * {experts}u + e];\n        }}"
    )?;
    mask_groups(&mut m, "vals", experts, groups, keep, score, "        ")?;
    writeln!(
        m,
        "        for (var e = 0u; e < {experts}u; e++) {{\n            out[i * {experts}u + e] = vals[e];\n        }}"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// The unfused top-k: values and indices of the `k` largest per row.
pub(super) fn topk(rows: Dim, width: u64, k: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("top-k of each row", false)?;
    m.bind_all(&[read("x", F32), write("vals", F32), write("idx", I32)])?;
    selection_helpers(&mut m)?;
    m.stride_loop(rows, SIZE)?;
    writeln!(
        m,
        "        var row: array<f32, {width}>;\n        for (var e = 0u; e < {width}u; e++) {{\n            row[e] = x[i * {width}u + e];\n        }}\n        var sel: array<u32, {k}>;\n        var taken: array<bool, {width}>;"
    )?;
    select_top(&mut m, "row", width, k, "sel", "        ")?;
    writeln!(
        m,
        "        for (var j = 0u; j < {k}u; j++) {{\n            vals[i * {k}u + j] = row[sel[j]];\n            idx[i * {k}u + j] = i32(sel[j]);\n        }}"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// The unfused gather `out[t, j] = src[t, idx[t, j]]`.
pub(super) fn gather(slots: Dim, width: u64, k: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("gather selected scores", false)?;
    m.bind_all(&[read("src", F32), read("idx", I32), write("out", F32)])?;
    m.stride_loop(slots, SIZE)?;
    writeln!(
        m,
        "        out[i] = src[(i / {k}u) * {width}u + u32(idx[i])];"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// `Renorm` in WGSL: the term summed for an entry `v`, and the denominator made from the
/// variable `sum` holding that sum (the sum itself for p = 1, without a lower bound).
pub(super) fn renorm(n: Renorm, v: &str, sum: &str) -> (String, String) {
    let p = n.p.get();
    let (term, mut denom) = if p == 1.0 {
        (v.to_string(), sum.to_string())
    } else {
        (
            format!("pow(abs({v}), {})", super::writer::float(p)),
            format!("pow({sum}, {})", super::writer::float(1.0 / p)),
        )
    };
    if n.min.get() != 0.0 {
        denom = format!("max({denom}, {})", super::writer::float(n.min.get()));
    }
    (term, denom)
}
