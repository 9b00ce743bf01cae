//! Cost figures of a graph at a token count: FLOPs, weight bytes read, peak
//! activation memory (from `passes::memory::plan`) and kernel count, and a
//! table comparing a scheduled graph with the dense one.
//!
//! Counting rules: a multiply-add is 2 FLOPs. `linear`: 2·rows·N·K;
//! `expert_linear`: 2·E·T·N·K; `grouped_linear`: 2·R·N·K for its R routed rows
//! (k·T for top-k); `dense_combine`: 2 per expert per output element;
//! `expert_sum`: 1 per expert per output element; any other kernel: 1 per output
//! element (small next to the matmuls). Biases and fused epilogues are not counted. Weight bytes are counted per kernel that
//! reads them: all of a `linear`'s or `expert_linear`'s weight, but for a
//! `grouped_linear` only the experts that can hold rows, `min(E, R)` of them,
//! and for an `embedding` only the rows its ids can read, `min(V, ids)`.
//! Kernels are the nodes that compute at run time: not inputs, weights,
//! constants, or weight-only values (`stack`/`concat_rows` of weights, made at
//! load time). The dense figures are the lowered graph's, which runs every
//! expert on every token. Weights count 4 bytes each (f32), or, for the matmul
//! weights stored in another format (`Graph::stored`: `--expert-format`,
//! `--weight-format`), that format's bytes (`WeightFormat::bytes`: q4_0 is 18 bytes per 32 values).

use crate::ir::{Graph, Op, TensorType};
use crate::passes::memory;
use std::fmt::Write;

/// What one run of a graph costs at `tokens` tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub tokens: usize,
    pub flops: u64,
    pub weight_bytes: u64,
    pub peak_bytes: u64,
    pub kernels: usize,
}

fn elements(t: &TensorType, tokens: usize) -> u64 {
    t.concrete_shape(tokens).iter().map(|d| *d as u64).product()
}

fn bytes(t: &TensorType, tokens: usize) -> u64 {
    4 * elements(t, tokens)
}

/// The figures of `g` at `tokens` tokens.
pub fn stats(g: &Graph, tokens: usize) -> Stats {
    let weight_only = memory::weight_only(g);
    let mut s = Stats {
        tokens,
        peak_bytes: memory::plan(g).peak_bytes(tokens),
        ..Stats::default()
    };
    // Every figure is a sum over nodes: any order will do.
    for n in g.g.node_indices() {
        let node = g.node(n);
        if weight_only.contains(&n) || matches!(node.op, Op::Input { .. }) {
            continue;
        }
        s.kernels += 1;
        let operands = g.operands(n);
        let ty = |i: usize| g.value_type(operands[i]);
        let out_elems: u64 = node.outputs.iter().map(|t| elements(t, tokens)).sum();
        let dims = |t: &TensorType| {
            t.concrete_shape(tokens)
                .iter()
                .map(|d| *d as u64)
                .collect::<Vec<u64>>()
        };
        // Weight bytes for every weight-only operand, with the fraction a grouped matmul touches.
        let mut weight_fraction = (1, 1);
        s.flops += match &node.op {
            Op::Linear { .. } => {
                let (x, w) = (dims(ty(0)), dims(ty(1)));
                let rows: u64 = x[..x.len() - 1].iter().product();
                2 * rows * w[0] * w[1]
            }
            Op::ExpertLinear { .. } => {
                let w = dims(ty(1));
                let rows = node.outputs[0].shape[1].eval(tokens) as u64;
                2 * w[0] * rows * w[1] * w[2]
            }
            Op::GroupedLinear { .. } => {
                let (x, w) = (dims(ty(0)), dims(ty(1)));
                weight_fraction = (w[0].min(x[0]), w[0]);
                2 * x[0] * w[1] * w[2]
            }
            Op::Embedding => {
                // A gather reads one table row per id.
                let (ids, table) = (elements(ty(0), tokens), dims(ty(1)));
                weight_fraction = (ids.min(table[0]), table[0].max(1));
                out_elems
            }
            Op::DenseCombine => 2 * (operands.len() as u64 - 1) * out_elems,
            Op::ExpertSum => elements(ty(0), tokens),
            _ => out_elems,
        };
        for (i, v) in operands.iter().enumerate() {
            if weight_only.contains(&v.node) {
                let t = g.value_type(*v);
                let stored = match g.stored.get(&n) {
                    Some(f) if i == 1 => f.bytes(elements(t, tokens), t.width().unwrap_or(1)),
                    _ => bytes(t, tokens),
                };
                s.weight_bytes += stored * weight_fraction.0 / weight_fraction.1;
            }
        }
    }
    s
}

/// A table row: name, scheduled, dense, how to show a value.
type Row = (&'static str, f64, f64, fn(f64) -> String);

/// A table of `scheduled` against `dense`: per token, totals, and the ratio.
pub fn table(scheduled: &Stats, dense: &Stats) -> String {
    let per = scheduled.tokens.max(1) as f64;
    let rows: [Row; 5] = [
        (
            "FLOPs per token",
            scheduled.flops as f64 / per,
            dense.flops as f64 / per,
            si,
        ),
        (
            "weight bytes per token",
            scheduled.weight_bytes as f64 / per,
            dense.weight_bytes as f64 / per,
            bin,
        ),
        (
            "weight bytes read",
            scheduled.weight_bytes as f64,
            dense.weight_bytes as f64,
            bin,
        ),
        (
            "peak activation memory",
            scheduled.peak_bytes as f64,
            dense.peak_bytes as f64,
            bin,
        ),
        (
            "kernels",
            scheduled.kernels as f64,
            dense.kernels as f64,
            |v| format!("{v}"),
        ),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24}{:>12}{:>12}{:>8}",
        format!("at {} tokens", scheduled.tokens),
        "scheduled",
        "dense",
        "ratio"
    );
    for (name, a, b, fmt) in rows {
        let ratio = if b == 0.0 {
            "-".to_string()
        } else {
            format!("{:.3}", a / b)
        };
        let _ = writeln!(out, "{name:<24}{:>12}{:>12}{ratio:>8}", fmt(a), fmt(b));
    }
    out
}

/// Decimal units: `1.25 G`.
fn si(v: f64) -> String {
    scaled(v, 1000.0, &["", " k", " M", " G", " T", " P"])
}

/// Binary units: `1.25 GiB`.
fn bin(v: f64) -> String {
    scaled(v, 1024.0, &[" B", " KiB", " MiB", " GiB", " TiB", " PiB"])
}

fn scaled(mut v: f64, base: f64, units: &[&str]) -> String {
    let mut i = 0;
    while v.abs() >= base && i + 1 < units.len() {
        v /= base;
        i += 1;
    }
    if i == 0 && v.fract() == 0.0 {
        format!("{v}{}", units[0])
    } else {
        format!("{v:.2}{}", units[i])
    }
}
