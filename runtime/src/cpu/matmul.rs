//! Running one matmul over a graph op: splitting it into work items (segment,
//! row chunk, panel chunk), checking every item's extents against the buffers,
//! then running them on a persistent pool of threads ([`Workers`]).
//!
//! A segment is a run of rows that share one expert's weights: a whole
//! `Linear`, one expert of an `ExpertLinear`, or one expert's rows
//! `offsets[e]..offsets[e+1]` of a `GroupedLinear`. Items write disjoint parts
//! of the output (distinct rows or distinct panels), so threads never race.
//!
//! Two paths, chosen per segment by its row count:
//! - few rows (decoding, small experts): the JIT matmul kernel, which streams
//!   the packed panels once for all its rows — memory-bound, so it reads bf16
//!   panels as they are and widens them in registers;
//! - at least [`Workers::gemm_rows`] rows: the micro-kernel pattern. An item
//!   widens `GEMM_PANELS` panels into an f32 `[K, cols]` block (in cache), the
//!   `gemm` crate (AVX-512 tiles with `x86-v4`, which Cranelift's 128-bit SIMD
//!   cannot match)
//!   multiplies the item's rows by it into an accumulator block, and the JIT
//!   epilogue kernel applies bias, activation / GLU and row weights on the way to
//!   the output. Needs the shape's epilogue kernel; without one every segment
//!   takes the first path.

use super::jit::KernelFn;
use moec_compiler::backend::clif::matmul::MR;
use moec_compiler::backend::clif::pack::{position, PANEL};
use moec_compiler::backend::clif::{MatmulShape, WeightDType};
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Rows per work item: 16 register tiles.
const ROW_CHUNK: usize = 16 * MR;
/// Work items to aim for per thread, for balance when experts differ in size.
const ITEMS_PER_THREAD: usize = 8;
/// Panels per gemm item: a `[K, 128]` f32 block, which stays in L2.
const GEMM_PANELS: usize = 16;
/// Rows per gemm item.
const GEMM_ROWS: usize = 512;
/// Rows from which a segment takes the gemm path, by default. Measured on the
/// Mixtral-shaped layer (K 1024, N 7168 / K 3584, N 1024, 2 cores): at ~4 rows per
/// expert the kernel wins slightly (14.5 vs 15.9 ms), at ~8 the gemm path by far
/// (17.5 vs 31.5 ms); thresholds 4 / 6 / 8 / 12 measured best at 6.
pub const GEMM_ROWS_DEFAULT: usize = 6;

/// Packed weight panels (`pack.rs`), one element type per matmul.
pub enum Panels {
    F32(Vec<f32>),
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
}

impl Panels {
    fn len(&self) -> usize {
        match self {
            Panels::F32(v) => v.len(),
            Panels::Bf16(v) => v.len(),
        }
    }

    fn as_ptr(&self) -> *const u8 {
        match self {
            Panels::F32(v) => v.as_ptr().cast(),
            Panels::Bf16(v) => v.as_ptr().cast(),
        }
    }

    fn dtype(&self) -> WeightDType {
        match self {
            Panels::F32(_) => WeightDType::F32,
            Panels::Bf16(_) => WeightDType::Bf16,
        }
    }

    /// Writes panels `p0..` (as many as fit) of `expert`'s weights, widened to f32,
    /// into `block` as a row-major `[K, cols]` matrix in slot order.
    fn unpack(
        &self,
        shape: &MatmulShape,
        expert: usize,
        p0: usize,
        cols: usize,
        block: &mut [f32],
    ) {
        let k = shape.k;
        let base = expert * shape.packed_len() + p0 * k * PANEL;
        for (i, col) in (0..cols).step_by(PANEL).enumerate() {
            let panel = base + i * k * PANEL;
            for kk in 0..k {
                let dst = &mut block[kk * cols + col..kk * cols + col + PANEL];
                let at = panel + kk * PANEL;
                match self {
                    Panels::F32(w) => dst.copy_from_slice(&w[at..at + PANEL]),
                    Panels::Bf16(w) => {
                        for (j, d) in dst.iter_mut().enumerate() {
                            let bits = w[at + position(WeightDType::Bf16, j)];
                            *d = f32::from_bits(u32::from(bits) << 16);
                        }
                    }
                }
            }
        }
    }
}

/// Weights packed for the kernel, and their biases.
pub struct Packed {
    pub shape: MatmulShape,
    pub experts: usize,
    pub weights: Panels,
    pub bias: Option<Vec<f32>>,
}

/// The threads matmuls run on: the caller's and a pool of parked ones; and the
/// gemm path's threshold.
pub struct Workers {
    /// The threads besides the caller's (`None`: the caller's alone).
    pool: Option<rayon::ThreadPool>,
    /// Threads in all, the caller's included.
    threads: usize,
    /// Segments of at least this many rows take the gemm path.
    pub gemm_rows: usize,
}

impl Workers {
    /// `threads` threads in all (at least one; the caller's alone when one, or
    /// when the system refuses to start more).
    pub fn new(threads: usize, gemm_rows: usize) -> Workers {
        let pool = (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads - 1)
                    .build()
            })
            .and_then(Result::ok);
        let threads = if pool.is_some() { threads } else { 1 };
        Workers {
            pool,
            threads,
            gemm_rows,
        }
    }

    /// Splits `out` into one run of whole `item`-long items per thread and calls
    /// `f(first item, its run)` for each, the caller's thread taking one.
    pub fn split_mut<T: Send>(
        &self,
        out: &mut [T],
        item: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let items = out.len() / item.max(1);
        let per = items.div_ceil(self.threads).max(1);
        match &self.pool {
            Some(pool) if items > 1 => pool.in_place_scope(|scope| {
                let mut runs = out.chunks_mut(per * item.max(1)).enumerate();
                let first = runs.next();
                for (i, run) in runs {
                    let f = &f;
                    scope.spawn(move |_| f(i * per, run));
                }
                if let Some((_, run)) = first {
                    f(0, run);
                }
            }),
            _ => f(0, out),
        }
    }
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

/// One kernel call (or gemm and epilogue): a segment's rows `r0..r1`, panels `p0..p1`.
#[derive(Clone, Copy, Debug)]
struct Item {
    seg: Segment,
    r0: usize,
    r1: usize,
    p0: usize,
    p1: usize,
    gemm: bool,
}

/// The operands of one matmul op.
pub struct Call<'a> {
    pub kernel: KernelFn,
    /// The shape's epilogue kernel, which the gemm path needs.
    pub epilogue: Option<KernelFn>,
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
    w: *const u8,
    bias: *const f32,
    rw: *const f32,
    out: *mut f32,
}

// SAFETY: the pointers are only dereferenced by kernel calls whose extents were
// checked against the buffers (which outlive the thread scope), and items write
// disjoint output elements.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

thread_local! {
    /// A worker's gemm blocks: widened weights `[K, cols]` and accumulators `[rows, cols]`.
    static BLOCKS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `call` into `out` (`rows × shape.width()` floats, zeroed by the caller) on
/// `workers`. Every item is checked before any kernel runs.
pub fn run(call: &Call, out: &mut [f32], workers: &Workers) -> Result<(), String> {
    let shape = &call.packed.shape;
    let gemm_rows = call.epilogue.map_or(usize::MAX, |_| workers.gemm_rows);
    let items = split(shape, &call.segments, workers.threads, gemm_rows);
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
    // Calls `kernel` for `it` with `x` rows `ldx` floats apart.
    let call_kernel = |kernel: KernelFn, it: &Item, x: *const f32, ldx: usize| {
        let s = &it.seg;
        let width = shape.width();
        // SAFETY: `check` proved every address this call touches lies inside its
        // buffer: x rows `x0+r0..x0+r1` (K floats each) or the item's accumulator
        // block (`gemm_block`: `ldx` floats per row, panels `p0..p1`), the
        // expert's packed panels and biases, row weights `rw0 + r·ldrw`, and output
        // rows `out0+r0..out0+r1` at columns below the output width.
        unsafe {
            let p = ptrs;
            kernel(
                x,
                ldx as isize,
                p.w.add(s.expert * shape.packed_len() * shape.weights.bytes())
                    .cast(),
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
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(it) = items.get(i) else { break };
        match call.epilogue.filter(|_| it.gemm) {
            Some(epilogue) => gemm_block(call, it, |acc, ldx| {
                call_kernel(epilogue, it, acc.as_ptr(), ldx);
            }),
            None => {
                // (Through `&ptrs`: a closure capturing the raw field would not be Sync.)
                let p = &ptrs;
                let x = p.x.wrapping_add((it.seg.x0 + it.r0) * shape.k);
                call_kernel(call.kernel, it, x, shape.k);
            }
        }
    };
    match &workers.pool {
        Some(pool) if items.len() > 1 => pool.in_place_scope(|scope| {
            for _ in 1..workers.threads.min(items.len()) {
                scope.spawn(|_| work());
            }
            work();
        }),
        _ => work(),
    }
    Ok(())
}

/// The gemm path's product for `it`: `x` rows `r0..r1` times panels `p0..p1`
/// widened to f32, as `[rows, cols]` accumulators in panel column order (in the
/// worker's accumulator block), handed to `then` with their row stride.
fn gemm_block(call: &Call, it: &Item, then: impl FnOnce(&[f32], usize)) {
    let shape = &call.packed.shape;
    let (k, rows, cols) = (shape.k, it.r1 - it.r0, (it.p1 - it.p0) * PANEL);
    let x = &call.x[(it.seg.x0 + it.r0) * k..(it.seg.x0 + it.r1) * k];
    BLOCKS.with_borrow_mut(|(block, acc)| {
        block.resize(k * cols, 0.0);
        call.packed
            .weights
            .unpack(shape, it.seg.expert, it.p0, cols, block);
        acc.resize(rows * cols, 0.0);
        // SAFETY: `x` is `rows × k` (row stride k), `block` is `k × cols` and `acc`
        // is `rows × cols` (row stride cols), all row-major and in bounds; `acc`
        // is not read (`read_dst` false), only written.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                k,
                acc.as_mut_ptr(),
                1,
                cols as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                block.as_ptr(),
                1,
                cols as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        then(&acc[..rows * cols], cols);
    })
}

/// Work items: segments of at least `gemm_rows` rows in gemm items of up to
/// `GEMM_ROWS` rows × `GEMM_PANELS` panels; the others in kernel items, row
/// chunks of `ROW_CHUNK` cut into panel chunks so there are enough items.
fn split(shape: &MatmulShape, segments: &[Segment], threads: usize, gemm_rows: usize) -> Vec<Item> {
    let (gemm, kernel): (Vec<&Segment>, Vec<&Segment>) =
        segments.iter().partition(|s| s.rows >= gemm_rows);
    let chunks: usize = kernel.iter().map(|s| s.rows.div_ceil(ROW_CHUNK)).sum();
    let panels = shape.panels();
    let cuts = (threads * ITEMS_PER_THREAD)
        .div_ceil(chunks.max(1))
        .min(panels);
    let per = panels.div_ceil(cuts.max(1)).max(1);
    let mut items = Vec::new();
    let mut push = |segs: &[&Segment], rows: usize, per: usize, gemm: bool| {
        for seg in segs {
            for r0 in (0..seg.rows).step_by(rows) {
                for p0 in (0..panels).step_by(per) {
                    items.push(Item {
                        seg: **seg,
                        r0,
                        r1: (r0 + rows).min(seg.rows),
                        p0,
                        p1: (p0 + per).min(panels),
                        gemm,
                    });
                }
            }
        }
    };
    push(&gemm, GEMM_ROWS, GEMM_PANELS, true);
    push(&kernel, ROW_CHUNK, per, false);
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
        || call.packed.weights.dtype() != shape.weights
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
