//! The AVX-512 matmul path: weights packed 16 columns wide, and the sums
//! `Σ_k x[r, k]·w[c, k]` of a block of rows and columns computed by `std::arch`
//! register tiles (`tiles.rs`). The epilogue (bias, activation, GLU, row weights)
//! is not here: the caller runs the shape's Cranelift epilogue kernel over the
//! sums, which come out in the same panel column order as the JIT kernel's.
//!
//! Layout: a wide panel `q` is the JIT layout's panels `2q` and `2q + 1`
//! (`clif/pack.rs`: 8 columns each, or 4 gate + 4 up columns with a GLU) side
//! by side, so lane `l` of a k-step holds column `column(2q + l/8, l % 8)`, and
//! a tile's 16 sums per row are exactly those two panels' accumulators. A last,
//! odd JIT panel is paired with zeros.
//! - f32: `K` k-steps of 16 floats (one 512-bit load per k-step);
//! - bf16: `⌈K/2⌉` steps of 16 lanes of 32 bits, lane `l` holding column `l`'s
//!   weights at `k = 2s` (low half) and `2s + 1` (high half, zero past `K`): one
//!   load gives two k-steps, widened exactly with a shift and a mask. (This is
//!   also the pair layout `vdpbf16ps` and AMX-BF16 tiles read.)

pub mod amx;
mod pack;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod tiles;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use pack::{panels, Wide};

use moec_compiler::backend::clif::pack::PANEL;
use moec_compiler::backend::clif::MatmulShape;
use moec_compiler::quant::{quantize_activations, WeightFormat, BLOCK};

/// Columns (f32 lanes) of a wide panel: two JIT panels.
pub const LANES: usize = 2 * PANEL;
/// Rows of a full register tile; blocks of rows start at multiples of it.
pub const ROWS: usize = 12;

/// Copies `rows` rows of `x` (`k` floats each) into `out` in tile order: the
/// rows in tiles of `ROWS` from the first (the last tile may be shorter), each
/// tile of `m` rows taking the same `m·k` floats as in `x`, k-major (value
/// `(kk, i)` at `kk·m + i`).
pub fn tile_order(x: &[f32], k: usize, out: &mut [f32]) {
    let rows = x.len().checked_div(k).unwrap_or(0);
    for r in (0..rows).step_by(ROWS) {
        let m = (rows - r).min(ROWS);
        let src = &x[r * k..(r + m) * k];
        for (kk, dst) in out[r * k..(r + m) * k].chunks_exact_mut(m).enumerate() {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[i * k + kk];
            }
        }
    }
}

/// One block of an activation row in 8-bit integers
/// (`quant::quantize_activations`): the integers (zeros past K), the scale and
/// the integers' sum.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct ActBlock {
    pub q: [i8; BLOCK],
    pub d: f32,
    pub s: i32,
}

/// Quantizes one row of activations into `out` (`⌈row/32⌉` blocks): with
/// AVX-512 vectors where the host has them, bit for bit what
/// `quant::quantize_activations` gives (which the interpreter uses).
pub fn quantize_row(row: &[f32], out: &mut [ActBlock]) {
    for (chunk, block) in row.chunks(BLOCK).zip(out) {
        #[cfg(target_arch = "x86_64")]
        if super::isa::vnni_supported() {
            let mut x = [0.0f32; BLOCK];
            x[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: the host has AVX-512F/BW (checked just above).
            *block = unsafe { vnni::quantize_block(&x) };
            continue;
        }
        let (d, q, s) = quantize_activations(chunk);
        *block = ActBlock { q, d, s };
    }
}

/// One call's operands: panels `q0..q1` of `expert`, `rows` rows of x (f32 in
/// tile order for [`sums`], bf16 row-major for [`amx_sums`]), and where the sums
/// go: row `r`, panel `q` at `acc[r·ld + (q - q0)·LANES ..][..LANES]`.
pub struct Block<'a, X> {
    pub expert: usize,
    pub panels: (usize, usize),
    pub x: X,
    pub rows: usize,
    pub acc: &'a mut [f32],
    pub ld: usize,
}

impl<T> Block<'_, &[T]> {
    /// Whether the block's panels, rows and sums lie inside `w`, `x` and `acc`.
    fn in_bounds(&self, shape: &MatmulShape, w: &Wide) -> bool {
        let (q0, q1) = self.panels;
        let first = w.panel_start(self.expert, q0);
        q0 <= q1
            && q1 <= panels(shape)
            && w.fits(shape)
            && w.bytes().len() >= first + (q1 - q0) * w.panel_bytes()
            && self.x.len() >= self.rows * shape.k
            && self.ld >= (q1 - q0) * LANES
            && (self.rows == 0 || self.acc.len() >= (self.rows - 1) * self.ld + (q1 - q0) * LANES)
    }
}

/// Writes the sums `Σ_k x·w` of `b` (x in tile order, [`tile_order`], tiles
/// counted from its first row; f32 or bf16 panels).
///
/// Panics (an internal error: the caller checks every item first) when a
/// buffer is too short or the host lacks AVX-512.
pub fn sums(shape: &MatmulShape, w: &Wide, b: Block<&[f32]>) {
    assert!(
        b.in_bounds(shape, w) && !w.format().is_quantized() && super::isa::avx512_supported(),
        "internal error: AVX-512 sums out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let (q0, q1) = b.panels;
        let tile = tiles::Tile {
            x: b.x.as_ptr(),
            k: shape.k,
            stride: w.panel_bytes(),
            acc: b.acc.as_mut_ptr(),
            ldacc: b.ld,
        };
        // SAFETY: checked above: the host has AVX-512F; the tiles read `rows` x
        // rows of `k` floats, panels `q0..q1` of this expert (`panel_bytes`
        // each, in `w`'s format), and write `rows` rows of `(q1 - q0)·LANES`
        // sums `ld` apart.
        unsafe {
            let w0 = w.bytes().as_ptr().add(w.panel_start(b.expert, q0));
            let (rows, n) = (b.rows, q1 - q0);
            match w.format() {
                // f16 weights are packed as f32 (`Wide::pack`).
                WeightFormat::F32 | WeightFormat::F16 => {
                    tiles::sums::<tiles::F32>(&tile, w0, rows, n)
                }
                WeightFormat::Bf16 => tiles::sums::<tiles::Bf16>(&tile, w0, rows, n),
                WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                    unreachable!("quantized panels take `qsums`")
                }
            }
        }
    }
}

/// Like [`sums`] on the AMX tiles: `b.x` holds `rows` rows (a multiple of
/// `amx::TILE_ROWS`) rounded to bf16, row-major; `w` has bf16 pairs and `K` is a
/// multiple of `amx::TILE_K`.
///
/// Panics (an internal error) when a buffer is too short or the process cannot
/// run AMX tiles.
pub fn amx_sums(shape: &MatmulShape, w: &Wide, b: Block<&[u16]>) {
    assert!(
        b.in_bounds(shape, w)
            && w.format() == WeightFormat::Bf16
            && shape.k.is_multiple_of(amx::TILE_K)
            && b.rows.is_multiple_of(amx::TILE_ROWS)
            && b.acc.len() >= b.rows * b.ld
            && amx::supported(),
        "internal error: AMX sums out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let (q0, q1) = b.panels;
        let block = amx::Block {
            x: b.x.as_ptr(),
            rows: b.rows,
            k: shape.k,
            // SAFETY: the panel start is inside the panels (checked above).
            w: unsafe { w.bytes().as_ptr().add(w.panel_start(b.expert, q0)) }.cast(),
            stride: w.panel_bytes() / 4,
            panels: q1 - q0,
            acc: b.acc.as_mut_ptr(),
            ldacc: b.ld,
        };
        // SAFETY: checked above: AMX is granted; the block's activations, panels
        // and sums lie inside `x`, `w` and `acc`.
        unsafe { amx::sums(&block) }
    }
}

/// Writes the sums of `b` over q8_0 / q4_0 panels: `b.x` holds the block's
/// rows in 8-bit blocks, `⌈K/32⌉` per row ([`quantize_row`]).
///
/// Panics (an internal error: the caller checks every item first) when a
/// buffer is too short or the host lacks AVX512-VNNI.
pub fn qsums(shape: &MatmulShape, w: &Wide, b: Block<&[ActBlock]>) {
    let (q0, q1) = b.panels;
    let rows = b.x;
    let blocks = shape.k.div_ceil(BLOCK);
    let in_bounds = q0 <= q1
        && q1 <= panels(shape)
        && w.fits(shape)
        && w.format().is_quantized()
        && w.bytes().len() >= w.panel_start(b.expert, q0) + (q1 - q0) * w.panel_bytes()
        && rows.len() >= b.rows * blocks
        && b.ld >= (q1 - q0) * LANES
        && (b.rows == 0 || b.acc.len() >= (b.rows - 1) * b.ld + (q1 - q0) * LANES);
    assert!(
        in_bounds && super::isa::vnni_supported(),
        "internal error: VNNI sums out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let tile = vnni::QTile {
            x: rows.as_ptr(),
            blocks,
            stride: w.panel_bytes(),
            acc: b.acc.as_mut_ptr(),
            ldacc: b.ld,
        };
        // SAFETY: checked above: the host has AVX512-VNNI (and so F and BW); the
        // tiles read `rows` activation rows of `blocks` blocks, panels `q0..q1`
        // of this expert (`panel_bytes` each, `blocks` blocks of its format), and
        // write `rows` rows of `(q1 - q0)·LANES` sums `ld` apart.
        unsafe {
            let w0 = w.bytes().as_ptr().add(w.panel_start(b.expert, q0));
            let (n, r) = (q1 - q0, b.rows);
            match w.format() {
                WeightFormat::Q8_0 => vnni::sums::<vnni::Q8_0>(&tile, w0, r, n),
                _ => vnni::sums::<vnni::Q4_0>(&tile, w0, r, n),
            }
        }
    }
}
