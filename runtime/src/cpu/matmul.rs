//! Running one matmul kernel over a graph op: splitting it into work items
//! (segment, row chunk, panel chunk), checking every item's extents against the
//! buffers, then calling the JIT code on all threads.
//!
//! A segment is a run of rows that share one expert's weights: a whole
//! `Linear`, one expert of an `ExpertLinear`, or one expert's rows
//! `offsets[e]..offsets[e+1]` of a `GroupedLinear`. Items write disjoint parts
//! of the output (distinct rows or distinct panels), so threads never race.

use super::jit::KernelFn;
use moec_compiler::backend::clif::matmul::MR;
use moec_compiler::backend::clif::pack::PANEL;
use moec_compiler::backend::clif::MatmulShape;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Rows per work item: 16 register tiles.
const ROW_CHUNK: usize = 16 * MR;
/// Work items to aim for per thread, for balance when experts differ in size.
const ITEMS_PER_THREAD: usize = 8;

/// Weights packed for the kernel, and their biases.
pub struct Packed {
    pub shape: MatmulShape,
    pub experts: usize,
    pub weights: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// Rows `rows` that use expert `expert`: x rows from `x0`, output rows from `out0`,
/// and row weights at `rw0 + i·ldrw`.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub expert: usize,
    pub x0: usize,
    pub out0: usize,
    pub rw0: usize,
    pub rows: usize,
}

/// One kernel call: a segment's rows `r0..r1`, panels `p0..p1`.
#[derive(Clone, Copy, Debug)]
struct Item {
    seg: Segment,
    r0: usize,
    r1: usize,
    p0: usize,
    p1: usize,
}

/// The operands of one matmul op.
pub struct Call<'a> {
    pub kernel: KernelFn,
    pub packed: &'a Packed,
    pub x: &'a [f32],
    /// Row weights and their stride (floats between consecutive rows' weights).
    pub rw: Option<(&'a [f32], usize)>,
    pub segments: Vec<Segment>,
}

/// Raw pointers handed to the workers.
#[derive(Clone, Copy)]
struct Ptrs {
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    rw: *const f32,
    out: *mut f32,
}

// SAFETY: the pointers are only dereferenced by kernel calls whose extents were
// checked against the buffers (which outlive the thread scope), and items write
// disjoint output elements.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

/// Runs `call` into `out` (`rows × shape.width()` floats, zeroed by the caller) on
/// `threads` threads. Every item is checked before any kernel runs.
pub fn run(call: &Call, out: &mut [f32], threads: usize) -> Result<(), String> {
    let shape = &call.packed.shape;
    let items = split(shape, &call.segments, threads);
    for it in &items {
        check(call, out.len(), it)?;
    }
    let ptrs = Ptrs {
        x: call.x.as_ptr(),
        w: call.packed.weights.as_ptr(),
        bias: call
            .packed
            .bias
            .as_ref()
            .map_or(std::ptr::null(), |b| b.as_ptr()),
        rw: call.rw.map_or(std::ptr::null(), |(rw, _)| rw.as_ptr()),
        out: out.as_mut_ptr(),
    };
    let ldrw = call.rw.map_or(0, |(_, ld)| ld);
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(it) = items.get(i) else { break };
        let s = &it.seg;
        let (k, width) = (shape.k, shape.width());
        // SAFETY: `check` proved every address this call touches lies inside its
        // buffer: x rows `x0+r0..x0+r1` (K floats each), the expert's packed panels
        // and biases, row weights `rw0 + r·ldrw`, and output rows `out0+r0..out0+r1`
        // at columns below the output width.
        unsafe {
            let p = ptrs;
            (call.kernel)(
                p.x.add((s.x0 + it.r0) * k),
                k as isize,
                p.w.add(s.expert * shape.packed_len()),
                if p.bias.is_null() {
                    p.bias
                } else {
                    p.bias.add(s.expert * shape.panels() * PANEL)
                },
                if p.rw.is_null() {
                    p.rw
                } else {
                    p.rw.add(s.rw0 + it.r0 * ldrw)
                },
                ldrw as isize,
                p.out.add((s.out0 + it.r0) * width),
                width as isize,
                (it.r1 - it.r0) as isize,
                it.p0 as isize,
                it.p1 as isize,
            );
        }
    };
    if threads <= 1 || items.len() <= 1 {
        work();
    } else {
        std::thread::scope(|scope| {
            for _ in 1..threads.min(items.len()) {
                scope.spawn(work);
            }
            work();
        });
    }
    Ok(())
}

/// Row chunks of `ROW_CHUNK`, each cut into panel chunks so there are enough items.
fn split(shape: &MatmulShape, segments: &[Segment], threads: usize) -> Vec<Item> {
    let chunks: usize = segments.iter().map(|s| s.rows.div_ceil(ROW_CHUNK)).sum();
    let panels = shape.panels();
    let cuts = (threads * ITEMS_PER_THREAD)
        .div_ceil(chunks.max(1))
        .min(panels);
    let per = panels.div_ceil(cuts.max(1)).max(1);
    let mut items = Vec::new();
    for seg in segments {
        for r0 in (0..seg.rows).step_by(ROW_CHUNK) {
            for p0 in (0..panels).step_by(per) {
                items.push(Item {
                    seg: *seg,
                    r0,
                    r1: (r0 + ROW_CHUNK).min(seg.rows),
                    p0,
                    p1: (p0 + per).min(panels),
                });
            }
        }
    }
    items
}

/// Checks that the kernel call for `it` stays inside every buffer.
fn check(call: &Call, out_len: usize, it: &Item) -> Result<(), String> {
    let shape = &call.packed.shape;
    let s = &it.seg;
    let fail = |what: &str| {
        Err(format!(
            "internal error: {} call out of bounds ({what}): {it:?}",
            shape.name()
        ))
    };
    if it.r0 >= it.r1 || it.p0 >= it.p1 || it.p1 > shape.panels() {
        return fail("empty or past the panels");
    }
    if s.expert >= call.packed.experts
        || call.packed.weights.len() < (s.expert + 1) * shape.packed_len()
    {
        return fail("weights");
    }
    if let Some(b) = &call.packed.bias {
        if b.len() < (s.expert + 1) * shape.panels() * PANEL {
            return fail("bias");
        }
    } else if shape.bias {
        return fail("missing bias");
    }
    let last = it.r1 - 1;
    if call.x.len() < (s.x0 + last + 1) * shape.k {
        return fail("input rows");
    }
    let cols = (it.p1 * shape.panel_cols()).min(shape.width());
    if out_len < (s.out0 + last) * shape.width() + cols {
        return fail("output rows");
    }
    match call.rw {
        Some((rw, ld)) if rw.len() <= s.rw0 + last * ld => fail("row weights"),
        None if shape.weighted => fail("missing row weights"),
        _ => Ok(()),
    }
}
