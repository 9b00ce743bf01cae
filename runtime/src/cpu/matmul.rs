//! Running one matmul over a graph op: splitting it into work items (segment,
//! row chunk, panel chunk), checking every item's extents against the buffers,
//! then running them on a persistent pool of threads ([`Workers`]).
//!
//! A segment is a run of rows that share one expert's weights: a whole
//! `Linear`, one expert of an `ExpertLinear`, or one expert's rows
//! `offsets[e]..offsets[e+1]` of a `GroupedLinear`. Items write disjoint parts
//! of the output (distinct rows or distinct panels), so threads never race.
//!
//! Weights packed for the AVX-512 path ([`Panels::Wide`], `MatmulIsa::Avx512`):
//! every item's sums come from the `avx512` register tiles into a block (in
//! cache) — for q8_0 / q4_0 weights the VNNI integer tiles, over the call's x
//! rows quantized once into 8-bit blocks — and the JIT epilogue kernel applies
//! bias, activation / GLU and row weights on the way to the output.
//!
//! Weights packed for the JIT kernel ([`Panels::Jit`], `MatmulIsa::Portable`):
//! two paths, chosen per segment by its row count:
//! - few rows (decoding, small experts): the JIT matmul kernel, which streams
//!   the packed panels once for all its rows — memory-bound, so it reads bf16
//!   panels as they are and widens them in registers;
//! - at least [`Workers::gemm_rows`] rows: the micro-kernel pattern. An item
//!   widens `GEMM_PANELS` panels into an f32 `[K, cols]` block (in cache), the
//!   `gemm` crate multiplies the item's rows by it into an accumulator block,
//!   and the JIT epilogue kernel applies the epilogue on the way to the output.
//!   Needs the shape's epilogue kernel; without one every segment takes the
//!   first path.

use super::avx512::{self, Wide};
use super::jit::KernelFn;
use super::workers::{Work, Workers};
use moec_compiler::backend::clif::matmul::MR;
use moec_compiler::backend::clif::pack::{position, PANEL};
use moec_compiler::backend::clif::{MatmulShape, WeightDType};
use moec_compiler::quant::{WeightFormat, BLOCK};
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

/// At most this many rows per item on the AVX-512 path: an expert's rows at
/// prefill in one item, so its weights are read once (the tiles slice k so the
/// rows' x stays in L2).
const WIDE_ROWS: usize = 256;
/// Bytes of sums an AVX-512 item may hold (its rows × its panels' 64 bytes),
/// so they stay in L2 beside the item's x slice.
const WIDE_SUM_BYTES: usize = 256 << 10;

/// Packed weights, in the layout of the path that reads them.
pub enum Panels {
    /// The JIT kernel's panels (`clif/pack.rs`).
    Jit(JitPanels),
    /// The AVX-512 tiles' wide panels (`avx512`).
    Wide(Wide),
}

/// The JIT kernel's panels, one element type per matmul.
pub enum JitPanels {
    F32(Vec<f32>),
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
}

impl Panels {
    fn len(&self) -> usize {
        match self {
            Panels::Jit(JitPanels::F32(v)) => v.len(),
            Panels::Jit(JitPanels::Bf16(v)) => v.len(),
            Panels::Wide(w) => w.bytes().len(),
        }
    }

    /// Whether these are panels of `shape`'s weights.
    fn fits(&self, shape: &MatmulShape) -> bool {
        match self {
            Panels::Jit(JitPanels::F32(_)) => shape.weights == WeightDType::F32,
            Panels::Jit(JitPanels::Bf16(_)) => shape.weights == WeightDType::Bf16,
            Panels::Wide(w) => w.fits(shape),
        }
    }

    /// Elements (JIT panels) or bytes (wide panels) of one expert's weights, as `len`.
    fn expert_len(&self, shape: &MatmulShape) -> usize {
        match self {
            Panels::Jit(_) => shape.packed_len(),
            Panels::Wide(w) => w.expert_bytes(),
        }
    }
}

impl JitPanels {
    fn as_ptr(&self) -> *const u8 {
        match self {
            JitPanels::F32(v) => v.as_ptr().cast(),
            JitPanels::Bf16(v) => v.as_ptr().cast(),
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
                    JitPanels::F32(w) => dst.copy_from_slice(&w[at..at + PANEL]),
                    JitPanels::Bf16(w) => {
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

/// One kernel call (or sums and epilogue): a segment's rows `r0..r1`, panels `p0..p1`.
#[derive(Clone, Copy, Debug)]
struct Item {
    seg: Segment,
    r0: usize,
    r1: usize,
    p0: usize,
    p1: usize,
    how: How,
    /// AVX-512 and AMX items: their first row in the call's prepared x (tile
    /// order, or bf16 rows with each segment padded to whole tiles).
    xt: usize,
}

impl Item {
    /// The AVX-512 / AMX operands of this item: wide panels `panels` of its
    /// expert, `rows` rows of prepared `x`, sums into `acc` (`ld` apart).
    fn block<'a, X>(
        &self,
        panels: (usize, usize),
        x: X,
        rows: usize,
        acc: &'a mut [f32],
        ld: usize,
    ) -> avx512::Block<'a, X> {
        avx512::Block {
            expert: self.seg.expert,
            panels,
            x,
            rows,
            acc,
            ld,
        }
    }
}

/// How an item computes its sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    /// The JIT matmul kernel, epilogue fused.
    Kernel,
    /// The gemm crate over widened JIT panels.
    Gemm,
    /// The AVX-512 tiles over wide panels (`p0` even).
    Wide,
    /// AMX-BF16 tiles over wide bf16 panels (`p0` even), activations rounded to bf16.
    Amx,
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
    /// The calling thread's prepared rows of an AVX-512 or AMX matmul.
    static TILED: RefCell<Prepared> = RefCell::new(Prepared::default());
    /// A worker's gemm blocks: widened weights `[K, cols]` and accumulators `[rows, cols]`.
    static BLOCKS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `call` into `out` (`rows × shape.width()` floats, zeroed by the caller) on
/// `workers`. Every item is checked before any kernel runs.
pub fn run(call: &Call, out: &mut [f32], workers: &Workers) -> Result<(), String> {
    let shape = &call.packed.shape;
    match &call.packed.weights {
        Panels::Wide(_) if call.epilogue.is_some() => {
            let items = split_wide(call, workers);
            TILED.with_borrow_mut(|prepared| {
                prepare_rows(call, &items, prepared, workers)?;
                run_items(call, &items, prepared, out, workers)
            })
        }
        Panels::Wide(_) => Err(format!(
            "internal error: {} has no epilogue kernel",
            shape.name()
        )),
        Panels::Jit(_) => {
            let gemm_rows = call.epilogue.map_or(usize::MAX, |_| workers.gemm_rows);
            let items = split(shape, &call.segments, workers.threads, gemm_rows);
            run_items(call, &items, &Prepared::default(), out, workers)
        }
    }
}

/// Runs `items` of `call` into `out`; `prepared` holds the AVX-512 and AMX
/// items' rows (`prepare_rows`; empty for the others).
fn run_items(
    call: &Call,
    items: &[Item],
    prepared: &Prepared,
    out: &mut [f32],
    workers: &Workers,
) -> Result<(), String> {
    let shape = &call.packed.shape;
    for it in items {
        check(call, out.len(), it)?;
    }
    let ptrs = Ptrs {
        x: call.x.as_ptr(),
        w: match &call.packed.weights {
            Panels::Jit(p) => p.as_ptr(),
            // Wide panels are read by `avx512::sums`, never by a JIT kernel.
            Panels::Wide(_) => std::ptr::null(),
        },
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
        let p = ptrs;
        // The expert's panels (JIT layout; null for wide ones, which only the
        // epilogue kernel sees, and it does not read them).
        let w =
            p.w.wrapping_add(s.expert * shape.packed_len() * shape.weights.bytes());
        // SAFETY: `check` proved every address this call touches lies inside its
        // buffer: x rows `x0+r0..x0+r1` (K floats each) or the item's sums block
        // (`ldx` floats per row, panels `p0..p1`), the expert's packed panels
        // (read by the matmul kernel only) and biases, row weights `rw0 + r·ldrw`,
        // and output rows `out0+r0..out0+r1` at columns below the output width.
        unsafe {
            kernel(
                x,
                ldx as isize,
                w.cast(),
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
        match (it.how, call.epilogue, &call.packed.weights) {
            (How::Wide | How::Amx, Some(epilogue), Panels::Wide(w)) => {
                wide_block(call, w, prepared, it, |acc, ldx| {
                    call_kernel(epilogue, it, acc.as_ptr(), ldx);
                })
            }
            (How::Gemm, Some(epilogue), Panels::Jit(panels)) => {
                gemm_block(call, panels, it, |acc, ldx| {
                    call_kernel(epilogue, it, acc.as_ptr(), ldx);
                })
            }
            _ => {
                // (Through `&ptrs`: a closure capturing the raw field would not be Sync.)
                let p = &ptrs;
                let x = p.x.wrapping_add((it.seg.x0 + it.r0) * shape.k);
                call_kernel(call.kernel, it, x, shape.k);
            }
        }
    };
    let threads = workers.threads_for(cost(call, items)).min(items.len());
    match &workers.pool {
        Some(pool) if threads > 1 => pool.in_place_scope(|scope| {
            for _ in 1..threads {
                scope.spawn(|_| work());
            }
            work();
        }),
        _ => work(),
    }
    Ok(())
}

/// What `items` of `call` cost on one thread, roughly: the weights each item
/// streams and its multiply-adds.
fn cost(call: &Call, items: &[Item]) -> Work {
    let k = call.packed.shape.k;
    let format = match &call.packed.weights {
        Panels::Wide(w) => w.format(),
        Panels::Jit(_) => call.packed.shape.weights.into(),
    };
    items.iter().fold(Work::default(), |sum, it| {
        let cols = (it.p1 - it.p0) * PANEL;
        let bytes = format.bytes((k * cols) as u64, k as u64);
        sum + Work {
            bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
            macs: (it.r1 - it.r0).saturating_mul(k * cols),
        }
    })
}

/// The AVX-512 and AMX items' rows, prepared once per call.
#[derive(Default)]
struct Prepared {
    /// AVX-512 items' rows in tile order, at their rows of `x`.
    tiled: Vec<f32>,
    /// AMX items' rows rounded to bf16, each segment's padded with zero rows to whole tiles.
    bf16: Vec<u16>,
    /// Every row of x in 8-bit blocks (`⌈K/32⌉` per row), for q8_0 / q4_0 panels.
    quant: Vec<avx512::ActBlock>,
}

/// Prepares the rows of every segment that `items` start (an item at row 0
/// and panel 0), for their path.
fn prepare_rows(
    call: &Call,
    items: &[Item],
    prepared: &mut Prepared,
    workers: &Workers,
) -> Result<(), String> {
    let k = call.packed.shape.k;
    let fail = || format!("internal error: {} input rows", call.packed.shape.name());
    if matches!(&call.packed.weights, Panels::Wide(w) if w.format().is_quantized()) {
        // Every row, split over the threads.
        let per_row = k.div_ceil(BLOCK);
        let rows = call.x.len() / k.max(1);
        prepared
            .quant
            .resize(rows * per_row, avx512::ActBlock::default());
        let work = Work {
            bytes: call.x.len() * 4,
            macs: 0,
        };
        workers.split_mut(&mut prepared.quant, per_row, work, |row, run| {
            for (r, out) in run.chunks_exact_mut(per_row).enumerate() {
                let x = &call.x[(row + r) * k..(row + r + 1) * k];
                avx512::quantize_row(x, out);
            }
        });
        return Ok(());
    }
    prepared.tiled.resize(call.x.len(), 0.0);
    let bf16_rows = items
        .iter()
        .filter(|it| it.how == How::Amx)
        .map(|it| it.xt - it.r0 + it.seg.rows.next_multiple_of(avx512::amx::TILE_ROWS))
        .max()
        .unwrap_or(0);
    prepared.bf16.resize(bf16_rows * k, 0);
    // The row of x each bf16 row rounds (None: a padding row, zeros), rounded over the threads.
    let mut bf16_source = vec![None; bf16_rows];
    // (Segments that share their input rows are consecutive: copy those once.)
    let mut last = None;
    for it in items.iter().filter(|it| it.r0 == 0 && it.p0 == 0) {
        let s = &it.seg;
        let x = call.x.get(s.x0 * k..(s.x0 + s.rows) * k).ok_or_else(fail)?;
        match it.how {
            How::Amx => {
                let dst = bf16_source
                    .get_mut(it.xt..it.xt + s.rows)
                    .ok_or_else(fail)?;
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = Some(s.x0 + i);
                }
            }
            _ if last.replace((s.x0, s.rows)) == Some((s.x0, s.rows)) => {}
            _ => {
                let dst = prepared.tiled.get_mut(s.x0 * k..(s.x0 + s.rows) * k);
                avx512::tile_order(x, k, dst.ok_or_else(fail)?);
            }
        }
    }
    if bf16_rows > 0 {
        // Every source row lies in x: the segments were taken from it above.
        let work = Work {
            bytes: bf16_rows * k * 4,
            macs: 0,
        };
        workers.split_mut(&mut prepared.bf16, k, work, |row, run| {
            for (r, out) in run.chunks_exact_mut(k).enumerate() {
                match bf16_source[row + r] {
                    Some(x) => avx512::amx::round_row(&call.x[x * k..(x + 1) * k], out),
                    None => out.fill(0),
                }
            }
        });
    }
    Ok(())
}

/// The AVX-512 or AMX sums for `it` (rows `r0..r1`, wide panels
/// `p0/2..⌈p1/2⌉`) as `[rows, cols]` in panel column order (in the worker's
/// accumulator block), handed to `then` with their row stride.
fn wide_block(
    call: &Call,
    w: &Wide,
    prepared: &Prepared,
    it: &Item,
    then: impl FnOnce(&[f32], usize),
) {
    let shape = &call.packed.shape;
    let k = shape.k;
    let (q0, q1) = (it.p0 / 2, it.p1.div_ceil(2));
    let (rows, ld) = (it.r1 - it.r0, (q1 - q0) * avx512::LANES);
    BLOCKS.with_borrow_mut(|(_, acc)| {
        // AMX takes whole tiles of rows: the segment's padding rows are zeros.
        let amx = it.how == How::Amx;
        let padded = if amx {
            rows.next_multiple_of(avx512::amx::TILE_ROWS)
        } else {
            rows
        };
        acc.resize(padded * ld, 0.0);
        let panels = (q0, q1);
        if amx {
            let x = &prepared.bf16[it.xt * k..(it.xt + padded) * k];
            avx512::amx_sums(shape, w, it.block(panels, x, padded, acc, ld));
        } else if w.format().is_quantized() {
            let per_row = k.div_ceil(BLOCK);
            let x = &prepared.quant[it.xt * per_row..(it.xt + rows) * per_row];
            avx512::qsums(shape, w, it.block(panels, x, rows, acc, ld));
        } else {
            // `r0` is a multiple of `ROWS`, so the item's rows are whole tiles of its segment's.
            let x = &prepared.tiled[it.xt * k..(it.xt + rows) * k];
            avx512::sums(shape, w, it.block(panels, x, rows, acc, ld));
        }
        then(&acc[..rows * ld], ld);
    })
}

/// The gemm path's product for `it`: `x` rows `r0..r1` times panels `p0..p1`
/// widened to f32, as `[rows, cols]` accumulators in panel column order (in the
/// worker's accumulator block), handed to `then` with their row stride.
fn gemm_block(call: &Call, panels: &JitPanels, it: &Item, then: impl FnOnce(&[f32], usize)) {
    let shape = &call.packed.shape;
    let (k, rows, cols) = (shape.k, it.r1 - it.r0, (it.p1 - it.p0) * PANEL);
    let x = &call.x[(it.seg.x0 + it.r0) * k..(it.seg.x0 + it.r1) * k];
    BLOCKS.with_borrow_mut(|(block, acc)| {
        block.resize(k * cols, 0.0);
        panels.unpack(shape, it.seg.expert, it.p0, cols, block);
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
    let mut push = |segs: &[&Segment], rows: usize, per: usize, how: How| {
        for seg in segs {
            for r0 in (0..seg.rows).step_by(rows) {
                for p0 in (0..panels).step_by(per) {
                    items.push(Item {
                        seg: **seg,
                        r0,
                        r1: (r0 + rows).min(seg.rows),
                        p0,
                        p1: (p0 + per).min(panels),
                        how,
                        xt: 0,
                    });
                }
            }
        }
    };
    push(&gemm, GEMM_ROWS, GEMM_PANELS, How::Gemm);
    push(&kernel, ROW_CHUNK, per, How::Kernel);
    items
}

/// Work items of the AVX-512 path (and of the AMX path, for segments of at
/// least `workers.amx_rows` rows with bf16 weights and K a multiple of 32): row
/// chunks of up to `WIDE_ROWS` rows (whole tiles) cut into runs of whole wide
/// panels (an even number of JIT panels), so there are enough items for every
/// thread and each item's sums stay in L2.
fn split_wide(call: &Call, workers: &Workers) -> Vec<Item> {
    let (shape, segments) = (&call.packed.shape, &call.segments);
    let chunks: usize = segments.iter().map(|s| s.rows.div_ceil(WIDE_ROWS)).sum();
    let wide = avx512::panels(shape);
    let cuts = (workers.threads * ITEMS_PER_THREAD)
        .div_ceil(chunks.max(1))
        .min(wide);
    let amx_fits = matches!(&call.packed.weights, Panels::Wide(w) if w.format() == WeightFormat::Bf16)
        && shape.k.is_multiple_of(avx512::amx::TILE_K);
    let mut bf16_rows = 0;
    let mut items = Vec::new();
    for seg in segments.iter().filter(|s| s.rows > 0) {
        let amx = amx_fits && seg.rows >= workers.amx_rows;
        let (how, unit, base) = if amx {
            let base = bf16_rows;
            bf16_rows += seg.rows.next_multiple_of(avx512::amx::TILE_ROWS);
            (How::Amx, 2 * avx512::amx::TILE_ROWS, base)
        } else {
            (How::Wide, avx512::ROWS, seg.x0)
        };
        // Rows in equal chunks, so no item is left with a sliver.
        let n = seg.rows.div_ceil(WIDE_ROWS);
        let rows = seg.rows.div_ceil(n.max(1)).next_multiple_of(unit);
        let fit = WIDE_SUM_BYTES / (rows * avx512::LANES * 4);
        let per = wide.div_ceil(cuts.max(1)).clamp(1, fit.max(1));
        for r0 in (0..seg.rows).step_by(rows) {
            for q0 in (0..wide).step_by(per) {
                items.push(Item {
                    seg: *seg,
                    r0,
                    r1: (r0 + rows).min(seg.rows),
                    p0: 2 * q0,
                    p1: (2 * (q0 + per)).min(shape.panels()),
                    how,
                    xt: base + r0,
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
    let weights = &call.packed.weights;
    let layout_fits = match (it.how, weights) {
        (How::Wide, Panels::Wide(_)) => {
            it.p0.is_multiple_of(2) && it.r0.is_multiple_of(avx512::ROWS)
        }
        (How::Amx, Panels::Wide(_)) => {
            it.p0.is_multiple_of(2) && it.r0.is_multiple_of(avx512::amx::TILE_ROWS)
        }
        (How::Kernel | How::Gemm, Panels::Jit(_)) => true,
        _ => false,
    };
    if !layout_fits
        || s.expert >= call.packed.experts
        || weights.len() < (s.expert + 1) * weights.expert_len(shape)
        || !weights.fits(shape)
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
