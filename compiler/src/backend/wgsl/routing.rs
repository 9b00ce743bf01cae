//! Routing kernels: the fused router (one invocation per token), capacity and
//! expert-choice limits (each slot ranks itself among its expert's slots, so no
//! sort and no atomics), expert counts, the dispatch that groups slots by
//! expert (one workgroup: counts, prefix sum, then each expert lists its slots
//! in token order, so the result is deterministic), and the two router losses.

use super::plan::Elem::{F32, I32};
use super::rows::{mask_groups, renorm, select_top, selection_helpers};
use super::writer::{float, read, write, Module};
use crate::ir::{Dim, DropPolicy, RouterAttrs, Score};
use std::fmt::{self, Write};

const SIZE: u32 = 64;
const DISPATCH_SIZE: u32 = 256;

/// The fused router over `[T, experts]` logits: weights and indices `[T, k]`.
pub(super) fn router(r: &RouterAttrs, experts: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new(
        "fused router: score, bias, group mask, top-k, gather, normalize, scale",
        false,
    )?;
    m.bind(read("logits", F32))?;
    if r.selection_bias {
        m.bind(read("bias", F32))?;
    }
    m.bind_all(&[write("weights", F32), write("indices", I32)])?;
    selection_helpers(&mut m)?;
    m.stride_loop(Dim::TOKENS, SIZE)?;
    let k = r.k;
    writeln!(
        m,
        "        let base = i * {experts}u;\n        var mx = -3.4028235e38;\n        for (var e = 0u; e < {experts}u; e++) {{\n            mx = max(mx, logits[base + e]);\n        }}\n        var sum = 0.0;\n        for (var e = 0u; e < {experts}u; e++) {{\n            sum += exp(logits[base + e] - mx);\n        }}\n        var scores: array<f32, {experts}>;\n        var choose: array<f32, {experts}>;\n        for (var e = 0u; e < {experts}u; e++) {{\n            let l = logits[base + e];"
    )?;
    let score = match (r.after_topk, r.score) {
        (true, _) => "l",
        (false, Score::Softmax) => "exp(l - mx) / sum",
        (false, Score::Sigmoid) => "1.0 / (1.0 + exp(-l))",
    };
    let bias = if r.selection_bias { " + bias[e]" } else { "" };
    writeln!(
        m,
        "            scores[e] = {score};\n            choose[e] = scores[e]{bias};\n        }}"
    )?;
    if let Some((groups, keep, gs)) = r.groups {
        mask_groups(&mut m, "choose", experts, groups, keep, gs, "        ")?;
    }
    writeln!(
        m,
        "        var sel: array<u32, {k}>;\n        var taken: array<bool, {experts}>;"
    )?;
    select_top(&mut m, "choose", experts, k, "sel", "        ")?;
    writeln!(m, "        var w: array<f32, {k}>;\n        for (var j = 0u; j < {k}u; j++) {{\n            w[j] = scores[sel[j]];\n        }}")?;
    if r.after_topk {
        match r.score {
            Score::Softmax => writeln!(
                m,
                "        var wmx = -3.4028235e38;\n        for (var j = 0u; j < {k}u; j++) {{\n            wmx = max(wmx, w[j]);\n        }}\n        var wsum = 0.0;\n        for (var j = 0u; j < {k}u; j++) {{\n            w[j] = exp(w[j] - wmx);\n            wsum += w[j];\n        }}\n        for (var j = 0u; j < {k}u; j++) {{\n            w[j] = w[j] / wsum;\n        }}"
            )?,
            Score::Sigmoid => writeln!(
                m,
                "        for (var j = 0u; j < {k}u; j++) {{\n            w[j] = 1.0 / (1.0 + exp(-w[j]));\n        }}"
            )?,
        }
    }
    if let Some(n) = r.normalize {
        let (term, denom) = renorm(n, "w[j]", "total");
        writeln!(
            m,
            "        var total = 0.0;\n        for (var j = 0u; j < {k}u; j++) {{\n            total += {term};\n        }}\n        for (var j = 0u; j < {k}u; j++) {{\n            w[j] = w[j] / {denom};\n        }}"
        )?;
    }
    let scale = if r.scale.get() != 1.0 {
        format!(" * {}", float(r.scale.get()))
    } else {
        String::new()
    };
    writeln!(
        m,
        "        for (var j = 0u; j < {k}u; j++) {{\n            weights[i * {k}u + j] = w[j]{scale};\n            indices[i * {k}u + j] = i32(sel[j]);\n        }}"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Capacity: a slot survives when fewer than `params.capacity` slots of its
/// expert come before it in the drop policy's order.
pub(super) fn capacity(k: u64, policy: DropPolicy) -> Result<Module, fmt::Error> {
    let mut m = Module::new("capacity: drop slots over their expert's limit", false)?;
    m.bind_all(&[read("idx", I32), read("w", F32), write("out", I32)])?;
    m.stride_loop(Dim::TOKENS.scale(k), SIZE)?;
    let before = match policy {
        DropPolicy::Arrival => "arrival2 < arrival",
        DropPolicy::Score => "w[s2] > w[i] || (w[s2] == w[i] && arrival2 < arrival)",
        // Slot-major; within a slot, tokens by their first slot's weight, then token order.
        DropPolicy::Priority => "s2 % K < i % K || (s2 % K == i % K && (w[s2 - s2 % K] > w[i - i % K] || (w[s2 - s2 % K] == w[i - i % K] && arrival2 < arrival)))",
    };
    let before = before.replace('K', &format!("{k}u"));
    writeln!(
        m,
        "        let e = idx[i];\n        if (e < 0) {{\n            out[i] = -1;\n            continue;\n        }}\n        let arrival = (i % {k}u) * tokens + i / {k}u;\n        var rank = 0u;\n        for (var s2 = 0u; s2 < count; s2++) {{\n            let arrival2 = (s2 % {k}u) * tokens + s2 / {k}u;\n            if (idx[s2] == e && ({before})) {{\n                rank++;\n            }}\n        }}\n        out[i] = select(-1, e, rank < params.capacity);"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// The weights of kept slots, 0 for dropped ones (`Op::KeptWeights`).
pub(super) fn kept_weights(n: Dim) -> Result<Module, fmt::Error> {
    let mut m = Module::new("kept slots' weights", false)?;
    m.bind_all(&[read("idx", I32), read("w", F32), write("out", F32)])?;
    m.stride_loop(n, SIZE)?;
    m.line("        out[i] = select(0.0, w[i], idx[i] >= 0);")?;
    m.end_loop()?;
    Ok(m)
}

/// Expert choice: expert e takes token t when fewer than `params.capacity`
/// tokens score higher in column e (ties: lower token first).
pub(super) fn expert_choice(experts: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("expert choice: each expert takes its best tokens", false)?;
    m.bind_all(&[read("s", F32), write("scores", F32), write("slots", I32)])?;
    selection_helpers(&mut m)?;
    m.stride_loop(Dim::TOKENS.scale(experts), SIZE)?;
    writeln!(
        m,
        "        let t = i / {experts}u;\n        let e = i % {experts}u;\n        let v = key(s[i]);\n        var rank = 0u;\n        for (var t2 = 0u; t2 < tokens; t2++) {{\n            let v2 = key(s[t2 * {experts}u + e]);\n            if (v2 > v || (v2 == v && t2 < t)) {{\n                rank++;\n            }}\n        }}\n        scores[i] = s[i];\n        slots[i] = select(-1, i32(e), rank < params.capacity);"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Token slots each expert received.
pub(super) fn expert_counts(experts: u64, k: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("slots per expert", false)?;
    m.bind_all(&[read("idx", I32), write("counts", I32)])?;
    m.stride_loop(Dim::fixed(experts), SIZE)?;
    writeln!(
        m,
        "        var c = 0;\n        for (var s = 0u; s < {k}u * tokens; s++) {{\n            c += select(0, 1, idx[s] == i32(i));\n        }}\n        counts[i] = c;"
    )?;
    m.end_loop()?;
    Ok(m)
}

/// Dispatch in one workgroup: counts, offsets, then each expert lists its slots.
pub(super) fn dispatch(experts: u64, k: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("dispatch: group slots by expert (offsets and order)", false)?;
    m.bind_all(&[read("idx", I32), write("order", I32), write("offsets", I32)])?;
    m.main((DISPATCH_SIZE, 1))?;
    let n = DISPATCH_SIZE;
    writeln!(
        m,
        "    let slots = {k}u * tokens;\n    for (var e = lix; e < {experts}u; e += {n}u) {{\n        var c = 0;\n        for (var s = 0u; s < slots; s++) {{\n            c += select(0, 1, idx[s] == i32(e));\n        }}\n        offsets[e + 1u] = c;\n    }}\n    storageBarrier();\n    if (lix == 0u) {{\n        offsets[0] = 0;\n        for (var e = 0u; e < {experts}u; e++) {{\n            offsets[e + 1u] += offsets[e];\n        }}\n    }}\n    storageBarrier();\n    for (var e = lix; e < {experts}u; e += {n}u) {{\n        var p = u32(offsets[e]);\n        for (var s = 0u; s < slots; s++) {{\n            if (idx[s] == i32(e)) {{\n                order[p] = i32(s);\n                p++;\n            }}\n        }}\n    }}\n    for (var r = u32(offsets[{experts}]) + lix; r < slots; r += {n}u) {{\n        order[r] = -1;\n    }}"
    )?;
    m.end()?;
    Ok(m)
}

/// The load-balancing loss `E · Σ_e f_e · P_e` in one invocation.
pub(super) fn aux_loss(experts: u64, k: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("load-balancing loss", false)?;
    m.bind_all(&[read("logits", F32), read("idx", I32), write("out", F32)])?;
    m.main((1, 1))?;
    writeln!(
        m,
        "    if (tokens == 0u) {{\n        out[0] = 0.0;\n        return;\n    }}\n    var p: array<f32, {experts}>;\n    var f: array<f32, {experts}>;\n    for (var t = 0u; t < tokens; t++) {{\n        let base = t * {experts}u;\n        var mx = -3.4028235e38;\n        for (var e = 0u; e < {experts}u; e++) {{\n            mx = max(mx, logits[base + e]);\n        }}\n        var sum = 0.0;\n        for (var e = 0u; e < {experts}u; e++) {{\n            sum += exp(logits[base + e] - mx);\n        }}\n        for (var e = 0u; e < {experts}u; e++) {{\n            p[e] += exp(logits[base + e] - mx) / sum;\n        }}\n        for (var j = 0u; j < {k}u; j++) {{\n            let e = idx[t * {k}u + j];\n            if (e >= 0) {{\n                f[u32(e)] += 1.0;\n            }}\n        }}\n    }}\n    var loss = 0.0;\n    let n = f32(tokens);\n    for (var e = 0u; e < {experts}u; e++) {{\n        loss += (f[e] / n) * (p[e] / n);\n    }}\n    out[0] = loss * {experts}.0;"
    )?;
    m.end()?;
    Ok(m)
}

/// The router z-loss `mean_t logsumexp(logits_t)²` in one invocation.
pub(super) fn z_loss(experts: u64) -> Result<Module, fmt::Error> {
    let mut m = Module::new("router z-loss", false)?;
    m.bind_all(&[read("logits", F32), write("out", F32)])?;
    m.main((1, 1))?;
    writeln!(
        m,
        "    var total = 0.0;\n    for (var t = 0u; t < tokens; t++) {{\n        let base = t * {experts}u;\n        var mx = -3.4028235e38;\n        for (var e = 0u; e < {experts}u; e++) {{\n            mx = max(mx, logits[base + e]);\n        }}\n        var sum = 0.0;\n        for (var e = 0u; e < {experts}u; e++) {{\n            sum += exp(logits[base + e] - mx);\n        }}\n        let lse = mx + log(sum);\n        total += lse * lse;\n    }}\n    out[0] = select(total / f32(tokens), 0.0, tokens == 0u);"
    )?;
    m.end()?;
    Ok(m)
}

/// `Op::SparseMixer`, one invocation per token: k rounds over the experts not yet chosen.
pub(super) fn sparse_mixer(experts: u64, k: u64, eps: f32) -> Result<Module, fmt::Error> {
    let mut m = Module::new(
        "PhiMoE's sparsemixer (inference): k masked-softmax rounds",
        false,
    )?;
    m.bind_all(&[
        read("logits", F32),
        write("weights", F32),
        write("indices", I32),
    ])?;
    m.stride_loop(Dim::TOKENS, SIZE)?;
    writeln!(
        m,
        "        let base = i * {experts}u;\n        var chosen: array<bool, {experts}>;\n        for (var r = 0u; r < {k}u; r++) {{\n            var best = 0u;\n            var mx = -3.4028235e38;\n            var found = false;\n            for (var e = 0u; e < {experts}u; e++) {{\n                if (!chosen[e] && (!found || logits[base + e] > mx)) {{\n                    best = e;\n                    mx = logits[base + e];\n                    found = true;\n                }}\n            }}\n            var sum = 0.0;\n            for (var e = 0u; e < {experts}u; e++) {{\n                let s = logits[base + e];\n                if (!chosen[e] && !((mx - s) / max(abs(s), mx) > {})) {{\n                    sum += exp(s - mx);\n                }}\n            }}\n            chosen[best] = true;\n            weights[i * {k}u + r] = 1.0 / sum;\n            indices[i * {k}u + r] = i32(best);\n        }}",
        float(2.0 * eps)
    )?;
    m.end_loop()?;
    Ok(m)
}
