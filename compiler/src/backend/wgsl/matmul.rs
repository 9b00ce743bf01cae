//! The workgroup-tiled matmul behind `Linear`, `ExpertLinear` and
//! `GroupedLinear`: each workgroup computes a 32×32 output tile from 16-deep
//! slices of x and w staged in workgroup memory, each invocation a 4×4 block
//! (GLU: a gate block and an up block), with the epilogue (bias, activation,
//! `act(gate)·up` or the clamped GLU, routing weight) applied before the single store.
//!
//! Which rows a workgroup owns is data-dependent for grouped matmuls: the grid
//! is bounded by ⌈R/32⌉ + E + 1 tiles, workgroup `i` walks the dispatch offsets
//! to find the i-th (expert, row-tile) pair holding rows, and workgroups past
//! the last exit at once; tiles past `offsets[E]` (dropped slots) store zeros.
//! Nothing goes back to the host between routing and the matmuls.
//!
//! Weights may be split across several bindings (`w0`, `w1`, ...) of
//! `rows_per_chunk` rows of K each, since adapters cap one storage binding.

use super::plan::Elem;
use super::plan::Elem::{F32, I32};
use super::plan::Workgroups;
use super::writer::{dim, float, read, write, Module};
use crate::ir::{Dim, Epilogue};
use std::fmt::{self, Write};

pub(super) const TILE_M: u32 = 32;
pub(super) const TILE_N: u32 = 32;
const TILE_K: u32 = 16;

/// How output rows map to experts.
#[derive(Clone, Copy, Debug)]
pub(super) enum Rows {
    /// `rows` rows, all with expert 0's weights (`Linear`).
    Plain { rows: Dim },
    /// Expert e owns output rows `e·T..(e+1)·T`; x is shared `[T, K]` or per expert
    /// `[E, T, K]`; the routing weight of (t, e) is `g[t, e]` (`ExpertLinear`).
    Stacked {
        experts: u64,
        per_expert_input: bool,
    },
    /// Expert e owns rows `offsets[e]..offsets[e+1]` of `rows`; the rest are zero (`GroupedLinear`).
    Grouped { experts: u64, rows: Dim },
}

impl fmt::Display for Rows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rows::Plain { rows } => write!(f, "rows {rows}"),
            Rows::Stacked {
                experts,
                per_expert_input,
            } => {
                let x = if *per_expert_input {
                    "per expert"
                } else {
                    "shared"
                };
                write!(f, "{experts} experts × tokens, {x} input")
            }
            Rows::Grouped { experts, rows } => {
                write!(f, "rows {rows} grouped by {experts} experts")
            }
        }
    }
}

/// One matmul kernel's shape.
#[derive(Clone, Copy, Debug)]
pub(super) struct Matmul {
    pub rows: Rows,
    pub k: u64,
    /// Weight rows per expert (a GLU stores `n / 2` outputs).
    pub n: u64,
    pub epilogue: Epilogue,
    pub bias: bool,
    pub weighted: bool,
    pub weight_elem: Elem,
    /// Weight rows per binding, and the number of bindings.
    pub rows_per_chunk: u64,
    pub chunks: u64,
}

impl Matmul {
    fn width(&self) -> u64 {
        self.epilogue.width(self.n)
    }

    pub fn workgroups(&self) -> Workgroups {
        let y = self.width().div_ceil(TILE_N as u64) as u32;
        let (items, extra) = match self.rows {
            Rows::Plain { rows } => (rows, 0),
            Rows::Stacked { experts, .. } => (Dim::TOKENS.scale(experts), experts as u32),
            Rows::Grouped { experts, rows } => (rows, experts as u32 + 1),
        };
        Workgroups::Tiles {
            items,
            per: TILE_M,
            extra,
            y,
        }
    }
}

/// The kernel's source.
pub(super) fn matmul(mm: &Matmul) -> Result<Module, fmt::Error> {
    let f16 = mm.weight_elem == Elem::F16;
    let mut m = Module::new(
        &format!(
            "tiled matmul, {}, K = {}, N = {}, epilogue {:?}{}{}",
            mm.rows,
            mm.k,
            mm.n,
            mm.epilogue,
            if mm.bias { ", bias" } else { "" },
            if mm.weighted { ", routing weight" } else { "" }
        ),
        f16,
    )?;
    m.bind(read("x", F32))?;
    let names: Vec<String> = (0..mm.chunks).map(|c| format!("w{c}")).collect();
    for name in &names {
        m.bind(read(name, mm.weight_elem))?;
    }
    if let Rows::Grouped { .. } = mm.rows {
        m.bind(read("offsets", I32))?;
    }
    if mm.bias {
        m.bind(read("bias", F32))?;
    }
    if mm.weighted {
        m.bind(read("rw", F32))?;
    }
    m.bind(write("out", F32))?;
    let glu = mm.epilogue.is_glu();
    let (tm, tn, tk) = (TILE_M, TILE_N, TILE_K);
    writeln!(
        m,
        "\nvar<workgroup> xt: array<f32, {}>;\nvar<workgroup> wt: array<f32, {}>;",
        tm * tk,
        tn * tk
    )?;
    if glu {
        writeln!(m, "var<workgroup> ut: array<f32, {}>;", tn * tk)?;
    }
    writeln!(m, "var<workgroup> tile: vec4<u32>;")?;
    if let Epilogue::Act(u) | Epilogue::Glu(u) = mm.epilogue {
        m.activation(u)?;
    }
    weight_reader(&mut m, mm, &names)?;
    tile_finder(&mut m, mm)?;
    row_maps(&mut m, mm)?;
    let (k, width, half) = (mm.k, mm.width(), mm.n / 2);
    m.main((tn / 4, tm / 4))?;
    writeln!(
        m,
        "    if (lix == 0u) {{\n        tile = find_tile(wid.x, tokens);\n    }}\n    let info = workgroupUniformLoad(&tile);\n    if (info.w == 0u) {{\n        return;\n    }}\n    let e = info.x;\n    let n0 = wid.y * {tn}u;\n    if (info.w == 2u) {{\n        for (var l = lix; l < {tm}u * {tn}u; l += {threads}u) {{\n            let r = info.y + l / {tn}u;\n            let c = n0 + l % {tn}u;\n            if (r < info.z && c < {width}u) {{\n                out[out_row(e, r, tokens) * {width}u + c] = 0.0;\n            }}\n        }}\n        return;\n    }}",
        threads = (tm / 4) * (tn / 4)
    )?;
    writeln!(m, "    var acc: array<vec4<f32>, 4>;")?;
    if glu {
        writeln!(m, "    var acc_up: array<vec4<f32>, 4>;")?;
    }
    writeln!(
        m,
        "    for (var k0 = 0u; k0 < {k}u; k0 += {tk}u) {{\n        for (var l = lix; l < {tm}u * {tk}u; l += {threads}u) {{\n            let r = info.y + l / {tk}u;\n            let kk = l % {tk}u;\n            var v = 0.0;\n            if (r < info.z && k0 + kk < {k}u) {{\n                v = x[x_row(e, r, tokens) * {k}u + k0 + kk];\n            }}\n            xt[kk * {tm}u + l / {tk}u] = v;\n        }}\n        for (var l = lix; l < {tn}u * {tk}u; l += {threads}u) {{\n            let c = n0 + l / {tk}u;\n            let kk = l % {tk}u;\n            let inside = c < {width}u && k0 + kk < {k}u;\n            var v = 0.0;\n            if (inside) {{\n                v = w_at(e * {n}u + c, k0 + kk);\n            }}\n            wt[kk * {tn}u + l / {tk}u] = v;",
        threads = (tm / 4) * (tn / 4),
        n = mm.n
    )?;
    if glu {
        writeln!(
            m,
            "            var u = 0.0;\n            if (inside) {{\n                u = w_at(e * {n}u + {half}u + c, k0 + kk);\n            }}\n            ut[kk * {tn}u + l / {tk}u] = u;",
            n = mm.n
        )?;
    }
    writeln!(
        m,
        "        }}\n        workgroupBarrier();\n        for (var kk = 0u; kk < {tk}u; kk++) {{\n            let wb = kk * {tn}u + lid.x * 4u;\n            let b = vec4<f32>(wt[wb], wt[wb + 1u], wt[wb + 2u], wt[wb + 3u]);"
    )?;
    if glu {
        writeln!(
            m,
            "            let bu = vec4<f32>(ut[wb], ut[wb + 1u], ut[wb + 2u], ut[wb + 3u]);"
        )?;
    }
    writeln!(
        m,
        "            for (var i = 0u; i < 4u; i++) {{\n                let a = xt[kk * {tm}u + lid.y * 4u + i];\n                acc[i] += a * b;"
    )?;
    if glu {
        writeln!(m, "                acc_up[i] += a * bu;")?;
    }
    writeln!(
        m,
        "            }}\n        }}\n        workgroupBarrier();\n    }}\n    for (var i = 0u; i < 4u; i++) {{\n        let r = info.y + lid.y * 4u + i;\n        if (r >= info.z) {{\n            break;\n        }}\n        for (var j = 0u; j < 4u; j++) {{\n            let c = n0 + lid.x * 4u + j;\n            if (c >= {width}u) {{\n                break;\n            }}\n            var h = acc[i][j];"
    )?;
    let n = mm.n;
    if glu {
        let (bg, bu) = if mm.bias {
            (
                format!(" + bias[e * {n}u + c]"),
                format!(" + bias[e * {n}u + {half}u + c]"),
            )
        } else {
            (String::new(), String::new())
        };
        match mm.epilogue {
            Epilogue::ClampedGlu { alpha, limit } => {
                let (a, l, nl) = (float(alpha.get()), float(limit.get()), float(-limit.get()));
                writeln!(
                    m,
                    "            let g = min(h{bg}, {l});\n            let u = min(max(acc_up[i][j]{bu}, {nl}), {l});\n            h = (u + 1.0) * g / (1.0 + exp(-({a} * g)));"
                )?;
            }
            _ => writeln!(m, "            h = act(h{bg}) * (acc_up[i][j]{bu});")?,
        }
    } else {
        if mm.bias {
            writeln!(m, "            h += bias[e * {n}u + c];")?;
        }
        if let Epilogue::Act(_) = mm.epilogue {
            writeln!(m, "            h = act(h);")?;
        }
    }
    if mm.weighted {
        writeln!(m, "            h *= row_weight(e, r, tokens);")?;
    }
    writeln!(
        m,
        "            out[out_row(e, r, tokens) * {width}u + c] = h;\n        }}\n    }}\n}}"
    )?;
    Ok(m)
}

/// `fn w_at(row, k) -> f32`: element k of weight row `row` (expert-major rows).
fn weight_reader(m: &mut Module, mm: &Matmul, names: &[String]) -> fmt::Result {
    m.chunk_reader("w_at", names, mm.rows_per_chunk, mm.k)
}

/// `fn find_tile(id, tokens) -> vec4<u32>`: (expert, first row, end row, kind)
/// of workgroup `id`; kind 0 = no work, 1 = compute, 2 = store zeros.
fn tile_finder(m: &mut Module, mm: &Matmul) -> fmt::Result {
    let tm = TILE_M;
    writeln!(m, "\nfn find_tile(id: u32, tokens: u32) -> vec4<u32> {{")?;
    match mm.rows {
        Rows::Plain { rows } => writeln!(
            m,
            "    let r0 = id * {tm}u;\n    let rows = {};\n    if (r0 >= rows) {{\n        return vec4<u32>(0u);\n    }}\n    return vec4<u32>(0u, r0, min(r0 + {tm}u, rows), 1u);",
            dim(rows)
        )?,
        Rows::Stacked { experts, .. } => writeln!(
            m,
            "    let per_expert = (tokens + {}u) / {tm}u;\n    if (per_expert == 0u || id >= per_expert * {experts}u) {{\n        return vec4<u32>(0u);\n    }}\n    let r0 = (id % per_expert) * {tm}u;\n    return vec4<u32>(id / per_expert, r0, min(r0 + {tm}u, tokens), 1u);",
            tm - 1
        )?,
        Rows::Grouped { experts, rows } => writeln!(
            m,
            "    var left = id;\n    for (var e = 0u; e <= {experts}u; e++) {{\n        let start = u32(offsets[e]);\n        var end = {rows};\n        if (e < {experts}u) {{\n            end = u32(offsets[e + 1u]);\n        }}\n        let tiles = (max(end, start) - start + {tm1}u) / {tm}u;\n        if (left < tiles) {{\n            let r0 = start + left * {tm}u;\n            return vec4<u32>(e, r0, min(r0 + {tm}u, end), select(1u, 2u, e == {experts}u));\n        }}\n        left -= tiles;\n    }}\n    return vec4<u32>(0u);",
            rows = dim(rows),
            tm1 = tm - 1
        )?,
    }
    writeln!(m, "}}")
}

/// `x_row`, `out_row` and `row_weight` for (expert, row) as `find_tile` numbers rows.
fn row_maps(m: &mut Module, mm: &Matmul) -> fmt::Result {
    let (x_row, out_row, weight) = match mm.rows {
        Rows::Plain { .. } | Rows::Grouped { .. } => ("r", "r", "rw[r]".to_string()),
        Rows::Stacked {
            experts,
            per_expert_input,
        } => (
            if per_expert_input {
                "e * tokens + r"
            } else {
                "r"
            },
            "e * tokens + r",
            format!("rw[r * {experts}u + e]"),
        ),
    };
    writeln!(
        m,
        "\nfn x_row(e: u32, r: u32, tokens: u32) -> u32 {{\n    return {x_row};\n}}\n\nfn out_row(e: u32, r: u32, tokens: u32) -> u32 {{\n    return {out_row};\n}}"
    )?;
    if mm.weighted {
        writeln!(
            m,
            "\nfn row_weight(e: u32, r: u32, tokens: u32) -> f32 {{\n    return {weight};\n}}"
        )?;
    }
    Ok(())
}
