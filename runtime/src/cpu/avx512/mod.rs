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

pub use pack::{panels, Wide};

use crate::quant::WeightFormat;
use moec_compiler::backend::clif::pack::PANEL;
use moec_compiler::backend::clif::MatmulShape;

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

/// Writes the sums of `rows` rows of x and wide panels `q0..q1` of `expert`
/// into `acc`: row `r`, panel `q` at `acc[r·ldacc + (q - q0)·LANES ..][..LANES]`.
/// `x` holds the rows in tile order ([`tile_order`], tiles counted from `x`'s
/// first row).
///
/// Panics (an internal error: the caller checks every item first) when a
/// buffer is too short or the host lacks AVX-512.
#[allow(clippy::too_many_arguments)]
pub fn sums(
    shape: &MatmulShape,
    w: &Wide,
    expert: usize,
    (q0, q1): (usize, usize),
    x: &[f32],
    rows: usize,
    acc: &mut [f32],
    ldacc: usize,
) {
    let k = shape.k;
    let (panel, first) = (w.panel_bytes(), w.panel_start(expert, q0));
    assert!(
        q0 <= q1
            && q1 <= panels(shape)
            && w.fits(shape)
            && w.bytes().len() >= first + (q1 - q0) * panel
            && x.len() >= rows * k
            && ldacc >= (q1 - q0) * LANES
            && (rows == 0 || acc.len() >= (rows - 1) * ldacc + (q1 - q0) * LANES)
            && super::isa::avx512_supported(),
        "internal error: AVX-512 sums out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let tile = tiles::Tile {
            x: x.as_ptr(),
            k,
            stride: panel,
            acc: acc.as_mut_ptr(),
            ldacc,
        };
        // SAFETY: checked above: the host has AVX-512F; the tiles read `rows` x
        // rows of `k` floats, panels `q0..q1` of this expert (`panel` bytes
        // each, in `w`'s format), and write `rows` rows of `(q1 - q0)·LANES`
        // sums `ldacc` apart.
        unsafe {
            let (w0, n) = (w.bytes().as_ptr().add(first), q1 - q0);
            match w.format() {
                WeightFormat::F32 => tiles::sums::<tiles::F32>(&tile, w0, rows, n),
                WeightFormat::Bf16 => tiles::sums::<tiles::Bf16>(&tile, w0, rows, n),
                WeightFormat::Q8_0 => tiles::sums::<tiles::Q8_0>(&tile, w0, rows, n),
                WeightFormat::Q4_0 => tiles::sums::<tiles::Q4_0>(&tile, w0, rows, n),
            }
        }
    }
}

/// Like [`sums`] on the AMX tiles: `x` holds `rows` rows (a multiple of
/// `amx::TILE_ROWS`) rounded to bf16, row-major; `w` has bf16 pairs and `K` is a
/// multiple of `amx::TILE_K`.
///
/// Panics (an internal error) when a buffer is too short or the process cannot
/// run AMX tiles.
#[allow(clippy::too_many_arguments)]
pub fn amx_sums(
    shape: &MatmulShape,
    w: &Wide,
    expert: usize,
    (q0, q1): (usize, usize),
    x: &[u16],
    rows: usize,
    acc: &mut [f32],
    ldacc: usize,
) {
    let k = shape.k;
    let (panel, first) = (w.panel_bytes(), w.panel_start(expert, q0));
    assert!(
        w.format() == WeightFormat::Bf16
            && q0 <= q1
            && q1 <= panels(shape)
            && w.fits(shape)
            && w.bytes().len() >= first + (q1 - q0) * panel
            && k.is_multiple_of(amx::TILE_K)
            && rows.is_multiple_of(amx::TILE_ROWS)
            && x.len() >= rows * k
            && ldacc >= (q1 - q0) * LANES
            && acc.len() >= rows * ldacc
            && amx::supported(),
        "internal error: AMX sums out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let block = amx::Block {
            x: x.as_ptr(),
            rows,
            k,
            // SAFETY: `first` is inside the panels (checked above).
            w: unsafe { w.bytes().as_ptr().add(first) }.cast(),
            stride: panel / 4,
            panels: q1 - q0,
            acc: acc.as_mut_ptr(),
            ldacc,
        };
        // SAFETY: checked above: AMX is granted; the block's activations, panels
        // and sums lie inside `x`, `w` and `acc`.
        unsafe { amx::sums(&block) }
    }
}
