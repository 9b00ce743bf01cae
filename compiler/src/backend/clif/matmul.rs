//! The matmul kernel: `out[r, c] = epi(Σ_k x[r, k]·w[c, k] + b[c]) · rw[r]` for a
//! range of rows and packed panels of one expert.
//!
//! Signature (every parameter pointer-sized; strides in floats):
//! `(x, ldx, w, bias, rw, ldrw, out, ldo, rows, p_begin, p_end)`. `x`, `rw` and
//! `out` point at the work item's first row; `w` and `bias` at the expert's packed
//! weights and biases (`pack.rs`); panels `p_begin..p_end` are computed for
//! `rows` rows. `bias`/`rw` are read only when the shape has them. The kernel
//! trusts its arguments: the runtime checks every extent before calling it.
//!
//! Structure: for each panel, rows go in tiles of `MR`; a tile keeps `2·MR` f32x4
//! accumulators in registers (`MR` rows × 8 columns), and each k-step broadcasts
//! one x value per row and loads two weight vectors (FMA when the target has it).
//! The k loop is unrolled `UNROLL` times; tiles of one or two rows spread the
//! unrolled k-steps over separate accumulators (8 in all), summed after it. A tail of `m < MR` rows uses the same
//! code specialised to `m`. The epilogue runs on the accumulators; the panel
//! that holds the last, partial columns stores lane by lane. bf16 panels
//! (`WeightDType::Bf16`) load one i32x4 per k-step and widen it with a shift
//! (even halves) and a mask (odd halves), in the slot order `pack.rs` writes.
//!
//! The epilogue kernel (`build_epilogue`) has the same signature and loops, but
//! reads each tile's accumulators instead of computing them: `x` row `r` holds
//! panel `p`'s `PANEL` sums at float `(p - p_begin)·PANEL` (a gemm's output in
//! panel column order); `w` is not read.

use super::math::{activation, splat};
use super::pack::PANEL;
use super::{MatmulShape, Target, WeightDType};
use crate::ir::{Epilogue, UnaryOp};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, BlockArg, Function, InstBuilder, MemFlagsData, Signature, UserFuncName, Value,
};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use target_lexicon::PointerWidth;

/// Rows per register tile.
pub const MR: usize = 6;
/// k-steps per loop iteration.
const UNROLL: usize = 4;
/// Accumulator registers a tile of few rows aims for (in up to `UNROLL` sets).
const ACCUMULATORS: usize = 8;
/// The kernel's parameter names, in order.
pub const PARAMS: [&str; 11] = [
    "x", "ldx", "w", "bias", "rw", "ldrw", "out", "ldo", "rows", "p_begin", "p_end",
];

/// The kernel's parameters as CLIF values (strides already in bytes).
struct Params {
    x: Value,
    ldx: Value,
    w: Value,
    bias: Value,
    rw: Value,
    ldrw: Value,
    out: Value,
    ldo: Value,
}

fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn args(values: &[Value]) -> Vec<BlockArg> {
    values.iter().map(|v| BlockArg::Value(*v)).collect()
}

/// Where a tile's accumulators come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `Σ_k x·w` over the packed weights: the matmul kernel.
    Weights,
    /// Read from `x`: the epilogue kernel.
    Accumulators,
}

/// The matmul kernel for `shape`.
pub fn build(shape: &MatmulShape, target: &Target) -> Function {
    build_kernel(shape, target, Source::Weights, shape.name())
}

/// The epilogue kernel for `shape`: the matmul kernel's epilogue and stores over
/// accumulators read from `x`.
pub fn build_epilogue(shape: &MatmulShape, target: &Target) -> Function {
    build_kernel(shape, target, Source::Accumulators, shape.epilogue_name())
}

fn build_kernel(shape: &MatmulShape, target: &Target, source: Source, name: String) -> Function {
    let ptr = target.pointer;
    let mut sig = Signature::new(target.call_conv);
    sig.params.extend(PARAMS.iter().map(|_| AbiParam::new(ptr)));
    let mut func = Function::with_name_signature(UserFuncName::testcase(name), sig);
    let mut ctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut ctx);

    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let a = b.block_params(entry).to_vec();
    let bytes = |b: &mut FunctionBuilder, v: Value| b.ins().ishl_imm_u(v, 2);
    let p = Params {
        x: a[0],
        ldx: bytes(&mut b, a[1]),
        w: a[2],
        bias: a[3],
        rw: a[4],
        ldrw: bytes(&mut b, a[5]),
        out: a[6],
        ldo: bytes(&mut b, a[7]),
    };
    let (rows, p_begin, p_end) = (a[8], a[9], a[10]);

    let panel_head = b.create_block();
    let panel = b.append_block_param(panel_head, ptr);
    let panel_body = b.create_block();
    let exit = b.create_block();
    b.ins().jump(panel_head, &args(&[p_begin]));

    b.switch_to_block(panel_head);
    let done = b.ins().icmp(IntCC::SignedGreaterThanOrEqual, panel, p_end);
    b.ins().brif(done, exit, &[], panel_body, &[]);

    b.switch_to_block(panel_body);
    let src = match source {
        Source::Weights => {
            let bytes = shape.k * PANEL * shape.weights.bytes();
            let wp = b.ins().imul_imm_s(panel, bytes as i64);
            b.ins().iadd(p.w, wp)
        }
        Source::Accumulators => {
            let i = b.ins().isub(panel, p_begin);
            b.ins().imul_imm_s(i, (PANEL * 4) as i64)
        }
    };
    let bp = b.ins().imul_imm_s(panel, (PANEL * 4) as i64);
    let bp = b.ins().iadd(p.bias, bp);
    let op = b.ins().imul_imm_s(panel, (shape.panel_cols() * 4) as i64);
    let op = b.ins().iadd(p.out, op);
    let is_last = b
        .ins()
        .icmp_imm_s(IntCC::Equal, panel, shape.panels() as i64 - 1);
    let row_head = b.create_block();
    let r = b.append_block_param(row_head, ptr);
    let next_panel = b.create_block();
    let zero = b.ins().iconst(ptr, 0);
    b.ins().jump(row_head, &args(&[zero]));

    // Dispatch on the rows left: a full tile, a tail of m < MR, or none.
    b.switch_to_block(row_head);
    let left = b.ins().isub(rows, r);
    let tiles: Vec<_> = (0..=MR).map(|_| b.create_block()).collect();
    let full = b
        .ins()
        .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, left, MR as i64);
    let mut check = b.create_block();
    b.ins().brif(full, tiles[MR], &[], check, &[]);
    for m in (1..MR).rev() {
        b.switch_to_block(check);
        let is_m = b.ins().icmp_imm_s(IntCC::Equal, left, m as i64);
        check = b.create_block();
        b.ins().brif(is_m, tiles[m], &[], check, &[]);
    }
    b.switch_to_block(check);
    b.ins().jump(next_panel, &[]);

    let wb = Panel {
        src,
        bp,
        op,
        is_last,
    };
    for (m, &tile) in tiles.iter().enumerate().skip(1) {
        b.switch_to_block(tile);
        emit_tile(&mut b, shape, (source, target.fma), &p, &wb, r, m);
        if m == MR {
            let r2 = b.ins().iadd_imm_s(r, MR as i64);
            b.ins().jump(row_head, &args(&[r2]));
        } else {
            b.ins().jump(next_panel, &[]);
        }
    }
    b.switch_to_block(next_panel);
    let p2 = b.ins().iadd_imm_s(panel, 1);
    b.ins().jump(panel_head, &args(&[p2]));

    b.switch_to_block(exit);
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(TargetFrontendConfig {
        default_call_conv: target.call_conv,
        pointer_width: if ptr.bits() == 32 {
            PointerWidth::U32
        } else {
            PointerWidth::U64
        },
        page_size_align_log2: 12,
    });
    func
}

/// Per-panel values: where the accumulators come from (the panel's weights, or
/// the byte offset of its sums in an `x` row), biases, output column, and whether
/// it is the last.
struct Panel {
    src: Value,
    bp: Value,
    op: Value,
    is_last: Value,
}

/// Emits a tile of `m` rows starting at row `r`; ends in a fresh block after the stores.
fn emit_tile(
    b: &mut FunctionBuilder,
    shape: &MatmulShape,
    (source, fused): (Source, bool),
    p: &Params,
    panel: &Panel,
    r: Value,
    m: usize,
) {
    let xrows: Vec<Value> = (0..m)
        .map(|i| {
            let ri = b.ins().iadd_imm_s(r, i as i64);
            let off = b.ins().imul(ri, p.ldx);
            b.ins().iadd(p.x, off)
        })
        .collect();
    let mut acc = match source {
        Source::Weights => {
            let zero = splat(b, 0.0);
            let w = Weights::new(b, shape.weights, panel.src);
            // Few rows make few accumulators, each a chain of dependent FMAs: give
            // the unrolled k-steps separate sets (summed after the loop) so the
            // FMA latency does not bound the weight stream.
            let sets = (ACCUMULATORS / (2 * m)).clamp(1, UNROLL);
            let acc = vec![zero; 2 * m * sets];
            let main = shape.k / UNROLL * UNROLL;
            let acc = k_loop(b, fused, &xrows, &w, (0, main), UNROLL, acc);
            let mut acc = k_loop(b, fused, &xrows, &w, (main, shape.k), 1, acc);
            for set in 1..sets {
                for j in 0..2 * m {
                    acc[j] = b.ins().fadd(acc[j], acc[set * 2 * m + j]);
                }
            }
            acc.truncate(2 * m);
            acc
        }
        Source::Accumulators => xrows
            .iter()
            .flat_map(|&x| {
                let at = b.ins().iadd(x, panel.src);
                [0, 16].map(|off| b.ins().load(types::F32X4, mem(), at, off))
            })
            .collect(),
    };

    // Epilogue: bias, activation or GLU, row weight.
    if shape.bias {
        let b0 = b.ins().load(types::F32X4, mem(), panel.bp, 0);
        let b1 = b.ins().load(types::F32X4, mem(), panel.bp, 16);
        for i in 0..m {
            acc[2 * i] = b.ins().fadd(acc[2 * i], b0);
            acc[2 * i + 1] = b.ins().fadd(acc[2 * i + 1], b1);
        }
    }
    let mut ys: Vec<Vec<Value>> = Vec::with_capacity(m);
    for i in 0..m {
        let (a0, a1) = (acc[2 * i], acc[2 * i + 1]);
        let mut y = match shape.epilogue {
            Epilogue::None => vec![a0, a1],
            Epilogue::Act(u) => vec![activation(b, u, a0), activation(b, u, a1)],
            Epilogue::Glu(u) => {
                let g = activation(b, u, a0);
                vec![b.ins().fmul(g, a1)]
            }
            Epilogue::ClampedGlu { alpha, limit } => {
                vec![clamped_glu(b, (alpha.get(), limit.get()), a0, a1)]
            }
        };
        if shape.weighted {
            let ri = b.ins().iadd_imm_s(r, i as i64);
            let off = b.ins().imul(ri, p.ldrw);
            let at = b.ins().iadd(p.rw, off);
            let s = b.ins().load(types::F32, mem(), at, 0);
            let s = b.ins().splat(types::F32X4, s);
            for v in &mut y {
                *v = b.ins().fmul(*v, s);
            }
        }
        ys.push(y);
    }

    // Stores: whole vectors, or lane by lane in the last panel when it is partial.
    let valid = shape.width() - (shape.panels() - 1) * shape.panel_cols();
    let after = b.create_block();
    let row_ptrs: Vec<Value> = (0..m)
        .map(|i| {
            let ri = b.ins().iadd_imm_s(r, i as i64);
            let off = b.ins().imul(ri, p.ldo);
            b.ins().iadd(panel.op, off)
        })
        .collect();
    let full = b.create_block();
    if valid < shape.panel_cols() {
        let partial = b.create_block();
        b.ins().brif(panel.is_last, partial, &[], full, &[]);
        b.switch_to_block(partial);
        for (y, &at) in ys.iter().zip(&row_ptrs) {
            for c in 0..valid {
                let lane = b.ins().extractlane(y[c / 4], (c % 4) as u8);
                b.ins().store(mem(), lane, at, (c * 4) as i32);
            }
        }
        b.ins().jump(after, &[]);
    } else {
        b.ins().jump(full, &[]);
    }
    b.switch_to_block(full);
    for (y, &at) in ys.iter().zip(&row_ptrs) {
        for (j, v) in y.iter().enumerate() {
            b.ins().store(mem(), *v, at, (j * 16) as i32);
        }
    }
    b.ins().jump(after, &[]);
    b.switch_to_block(after);
}

/// `Epilogue::ClampedGlu` on a gate vector and its up vector: `g = min(gate, limit)`,
/// `u = min(max(up, -limit), limit)`, `(u + 1) · g · sigmoid(alpha · g)` (fmin/fmax keep NaN).
fn clamped_glu(
    b: &mut FunctionBuilder,
    (alpha, limit): (f32, f32),
    gate: Value,
    up: Value,
) -> Value {
    let (hi, lo) = (splat(b, limit), splat(b, -limit));
    let g = b.ins().fmin(gate, hi);
    let u = b.ins().fmax(up, lo);
    let u = b.ins().fmin(u, hi);
    let a = splat(b, alpha);
    let ag = b.ins().fmul(g, a);
    let s = activation(b, UnaryOp::Sigmoid, ag);
    let glu = b.ins().fmul(g, s);
    let one = splat(b, 1.0);
    let u1 = b.ins().fadd(u, one);
    b.ins().fmul(u1, glu)
}

/// A panel's packed weights, and how to read one k-step of them.
struct Weights {
    dtype: WeightDType,
    /// The panel's first k-step.
    at: Value,
    /// bf16: the i32x4 mask that keeps the odd halves.
    odd: Option<Value>,
}

impl Weights {
    fn new(b: &mut FunctionBuilder, dtype: WeightDType, at: Value) -> Weights {
        let odd = (dtype == WeightDType::Bf16).then(|| {
            let m = b.ins().iconst(types::I32, 0xFFFF_0000_u32 as i64);
            b.ins().splat(types::I32X4, m)
        });
        Weights { dtype, at, odd }
    }

    /// Bytes of one k-step.
    fn step(&self) -> usize {
        PANEL * self.dtype.bytes()
    }

    /// The two f32x4 of k-step `u` after `wk`.
    fn load(&self, b: &mut FunctionBuilder, wk: Value, u: usize) -> [Value; 2] {
        let off = (u * self.step()) as i32;
        match self.odd {
            None => [off, off + 16].map(|o| b.ins().load(types::F32X4, mem(), wk, o)),
            Some(odd) => {
                let v = b.ins().load(types::I32X4, mem(), wk, off);
                let even = b.ins().ishl_imm_u(v, 16);
                let odd = b.ins().band(v, odd);
                [even, odd].map(|h| b.ins().bitcast(types::F32X4, MemFlagsData::new(), h))
            }
        }
    }
}

/// Accumulates k-steps `start..end` (`unroll` per iteration; `end - start` divisible
/// by it) into `acc`; returns the new accumulators, in a fresh block after the loop.
fn k_loop(
    b: &mut FunctionBuilder,
    fused: bool,
    xrows: &[Value],
    w: &Weights,
    (start, end): (usize, usize),
    unroll: usize,
    acc: Vec<Value>,
) -> Vec<Value> {
    let ptr = b.func.dfg.value_type(w.at);
    if end <= start {
        return acc;
    }
    let body = b.create_block();
    let kx = b.append_block_param(body, ptr);
    let accs: Vec<Value> = acc
        .iter()
        .map(|_| b.append_block_param(body, types::F32X4))
        .collect();
    let exit = b.create_block();
    let outs: Vec<Value> = acc
        .iter()
        .map(|_| b.append_block_param(exit, types::F32X4))
        .collect();
    let k0 = b.ins().iconst(ptr, (start * 4) as i64);
    let mut entry = vec![k0];
    entry.extend(&acc);
    b.ins().jump(body, &args(&entry));

    b.switch_to_block(body);
    // kx counts x bytes (4 per k-step); the weights take `step()` per k-step.
    let wk = b.ins().imul_imm_s(kx, (w.step() / 4) as i64);
    let wk = b.ins().iadd(w.at, wk);
    let xs: Vec<Value> = xrows.iter().map(|x| b.ins().iadd(*x, kx)).collect();
    let mut acc = accs.clone();
    // `acc` holds `acc.len() / (2·rows)` sets of `2·rows`; k-step `u` goes to set `u mod sets`.
    let sets = acc.len() / (2 * xs.len());
    for u in 0..unroll {
        let [w0, w1] = w.load(b, wk, u);
        let acc = &mut acc[(u % sets) * 2 * xs.len()..];
        for (i, x) in xs.iter().enumerate() {
            let s = b.ins().load(types::F32, mem(), *x, (u * 4) as i32);
            let s = b.ins().splat(types::F32X4, s);
            acc[2 * i] = fma(b, fused, s, w0, acc[2 * i]);
            acc[2 * i + 1] = fma(b, fused, s, w1, acc[2 * i + 1]);
        }
    }
    let next = b.ins().iadd_imm_s(kx, (unroll * 4) as i64);
    let more = b
        .ins()
        .icmp_imm_s(IntCC::SignedLessThan, next, (end * 4) as i64);
    let mut again = vec![next];
    again.extend(&acc);
    b.ins().brif(more, body, &args(&again), exit, &args(&acc));
    b.switch_to_block(exit);
    outs
}

/// `x·y + z`, fused when the target has FMA.
fn fma(b: &mut FunctionBuilder, fused: bool, x: Value, y: Value, z: Value) -> Value {
    if fused {
        b.ins().fma(x, y, z)
    } else {
        let m = b.ins().fmul(x, y);
        b.ins().fadd(m, z)
    }
}
