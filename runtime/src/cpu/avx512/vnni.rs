//! AVX512-VNNI tiles for weights in q8_0 / q4_0 blocks and activations in 8-bit
//! blocks (`quant::quantize_activations`, [`quantize_block`]): integer dot products,
//! as llama.cpp computes its quantized matmuls.
//!
//! Per 32-value block, `vpdpbusd` sums the products of the weights' unsigned
//! integers (q8_0: `q + 128`; q4_0: the stored nibble, `q + 8`) and the
//! activations' signed ones, four k-steps per 32-bit lane, exactly in i32; the
//! offset times the activations' block sum is taken back out, and the block's
//! integer sum, scaled by the weight column's f16 scale times the activation
//! block's f32 scale, is added to f32 sums. So a tile computes `Σ_blocks d_w·d_x·Σ
//! q_w·q_x`: the interpreter's value (`quant::round_activations` times
//! `quant::dequantize`) up to the order and rounding of f32 additions.
//!
//! Loop order as in `tiles.rs`: k in slices of `KB` blocks, then panel groups
//! (each slice of a group stays in L1 while every row tile passes), then row
//! tiles of up to 4 rows (two rows at most with 4 panels: decoding), the first
//! row tile of a group prefetching the next group's slice.
//!
//! Everything here trusts its pointers; `mod.rs::qsums` checks them.

use super::pack::{Q4_0_BLOCK, Q8_0_BLOCK};
use super::ActBlock;
use moec_compiler::quant::{inverse_scale, BLOCK};
use std::arch::x86_64::*;

/// Blocks per k slice.
const KB: usize = 8;
/// Rows of a full tile.
const QROWS: usize = 4;
/// Wide panels of a tile of at most `FEW_ROWS` rows.
const FEW_PANELS: usize = 4;
const FEW_ROWS: usize = 2;
/// Wide panels of a full tile.
const PANELS: usize = 2;

/// Where a block's operands are: its first activation row's blocks (rows
/// `blocks` blocks apart), the panels' bytes apart, the first sum and the
/// floats between rows of sums.
pub struct QTile {
    pub x: *const ActBlock,
    pub blocks: usize,
    pub stride: usize,
    pub acc: *mut f32,
    pub ldacc: usize,
}

/// How a wide panel stores a quantized block (`pack.rs`): 16 f16 scales, then
/// the integers, read as 8 vectors of 16 lanes × 4 unsigned bytes (k-steps
/// `4j..4j+4` of the lane's column).
pub trait QFormat {
    /// Bytes of a block.
    const BYTES: usize;
    /// What the stored integers add to the weights' integers.
    const OFFSET: i32;
    /// Vector `j` of the block at `block`.
    ///
    /// # Safety
    /// AVX-512F/BW; `block` is a block of this format.
    unsafe fn quads(block: *const u8, j: usize) -> __m512i;
}

pub struct Q8_0;
pub struct Q4_0;

impl QFormat for Q8_0 {
    const BYTES: usize = Q8_0_BLOCK;
    const OFFSET: i32 = 128;
    #[inline(always)]
    unsafe fn quads(block: *const u8, j: usize) -> __m512i {
        _mm512_loadu_si512(block.add(32 + 64 * j).cast())
    }
}

impl QFormat for Q4_0 {
    const BYTES: usize = Q4_0_BLOCK;
    const OFFSET: i32 = 8;
    #[inline(always)]
    unsafe fn quads(block: *const u8, j: usize) -> __m512i {
        // Low nibbles hold k-steps 0..16, high ones 16..32.
        let v = _mm512_loadu_si512(block.add(32 + 64 * (j % 4)).cast());
        let v = if j < 4 { v } else { _mm512_srli_epi16::<4>(v) };
        _mm512_and_si512(v, _mm512_set1_epi8(0x0F))
    }
}

/// One tile: its first activation row's block `b0`, its first panel, the next
/// group's (prefetched; null for none), its first sum, and its blocks `b0..b1`.
#[derive(Clone, Copy)]
struct At {
    row: usize,
    w: *const u8,
    next: *const u8,
    acc: *mut f32,
    b0: usize,
    b1: usize,
}

macro_rules! by_rows {
    ($F:ty, $c:expr, $rows:expr, $($arg:expr),*) => {
        match ($c, $rows) {
            (FEW_PANELS, 1) => tile::<$F, 1, FEW_PANELS>($($arg),*),
            (FEW_PANELS, _) => tile::<$F, FEW_ROWS, FEW_PANELS>($($arg),*),
            (PANELS, 1) => tile::<$F, 1, PANELS>($($arg),*),
            (PANELS, 2) => tile::<$F, 2, PANELS>($($arg),*),
            (PANELS, 3) => tile::<$F, 3, PANELS>($($arg),*),
            (PANELS, _) => tile::<$F, QROWS, PANELS>($($arg),*),
            (_, 1) => tile::<$F, 1, 1>($($arg),*),
            (_, 2) => tile::<$F, 2, 1>($($arg),*),
            (_, 3) => tile::<$F, 3, 1>($($arg),*),
            (_, _) => tile::<$F, QROWS, 1>($($arg),*),
        }
    };
}

/// The sums of `rows` activation rows and `panels` wide panels of format `F`
/// starting at `w`.
///
/// # Safety
/// The host has AVX-512F/BW and AVX512-VNNI; `t` and `w` describe `rows` rows
/// of `t.blocks` readable activation blocks, `panels` readable wide panels of
/// `t.blocks` blocks of format `F`, and `rows` writable rows of `panels·16` sums.
pub unsafe fn sums<F: QFormat>(t: &QTile, w: *const u8, rows: usize, panels: usize) {
    let group = if rows <= FEW_ROWS { FEW_PANELS } else { PANELS };
    for b0 in (0..t.blocks).step_by(KB) {
        let b1 = (b0 + KB).min(t.blocks);
        let mut q = 0;
        while q < panels {
            let c = if panels - q >= group { group } else { 1 };
            for r in (0..rows).step_by(group_rows(c)) {
                let m = (rows - r).min(group_rows(c));
                let at = At {
                    row: r,
                    w: w.add(q * t.stride),
                    next: if r == 0 && q + c < panels {
                        w.add((q + c) * t.stride)
                    } else {
                        std::ptr::null()
                    },
                    acc: t.acc.add(r * t.ldacc + q * 16),
                    b0,
                    b1,
                };
                by_rows!(F, c, m, t, at);
            }
            q += c;
        }
    }
}

/// Rows of a tile of `c` panels.
fn group_rows(c: usize) -> usize {
    if c == FEW_PANELS {
        FEW_ROWS
    } else {
        QROWS
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<F: QFormat, const R: usize, const C: usize>(t: &QTile, at: At) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    if at.b0 > 0 {
        for (r, ar) in acc.iter_mut().enumerate() {
            for (c, v) in ar.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(at.acc.add(r * t.ldacc + c * 16));
            }
        }
    }
    for b in at.b0..at.b1 {
        let blocks: [*const u8; C] = std::array::from_fn(|c| at.w.add(c * t.stride + b * F::BYTES));
        if !at.next.is_null() {
            for c in 0..C {
                let ahead = at.next.add(c * t.stride + b * F::BYTES);
                for line in (0..F::BYTES).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(line).cast());
                }
            }
        }
        let xs: [&ActBlock; R] = std::array::from_fn(|r| &*t.x.add((at.row + r) * t.blocks + b));
        let mut isum = [[_mm512_setzero_si512(); C]; R];
        for j in 0..BLOCK / 4 {
            let wv: [__m512i; C] = std::array::from_fn(|c| F::quads(blocks[c], j));
            for (r, ir) in isum.iter_mut().enumerate() {
                let x4 = xs[r].q.as_ptr().add(4 * j).cast::<i32>().read_unaligned();
                let xv = _mm512_set1_epi32(x4);
                for (s, wc) in ir.iter_mut().zip(&wv) {
                    *s = _mm512_dpbusd_epi32(*s, *wc, xv);
                }
            }
        }
        let dw: [__m512; C] =
            std::array::from_fn(|c| _mm512_cvtph_ps(_mm256_loadu_si256(blocks[c].cast())));
        for r in 0..R {
            let offset = _mm512_set1_epi32(F::OFFSET * xs[r].s);
            let dx = _mm512_set1_ps(xs[r].d);
            for c in 0..C {
                let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(isum[r][c], offset));
                acc[r][c] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw[c], dx), acc[r][c]);
            }
        }
    }
    for (r, ar) in acc.iter().enumerate() {
        for (c, v) in ar.iter().enumerate() {
            _mm512_storeu_ps(at.acc.add(r * t.ldacc + c * 16), *v);
        }
    }
}

/// `quant::quantize_activations` of a whole block, in vectors: the same f32
/// operations on each value (the maximum, `d = max/127`, `1/d`, `x·(1/d)`,
/// rounding halves away from zero as `t - trunc(t)` decides), so bit for bit
/// the same block.
///
/// # Safety
/// The host has AVX-512F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_block(x: &[f32; BLOCK]) -> ActBlock {
    let (a, b) = (
        _mm512_loadu_ps(x.as_ptr()),
        _mm512_loadu_ps(x.as_ptr().add(16)),
    );
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    let d = amax / 127.0;
    let id = _mm512_set1_ps(inverse_scale(d));
    let round = |v: __m512| {
        let t = _mm512_mul_ps(v, id);
        let whole = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
        let frac = _mm512_sub_ps(t, whole);
        let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
        let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(frac, _mm512_set1_ps(-0.5));
        let q = _mm512_cvttps_epi32(whole);
        let q = _mm512_mask_add_epi32(q, up, q, _mm512_set1_epi32(1));
        _mm512_cvtepi32_epi8(_mm512_mask_sub_epi32(q, down, q, _mm512_set1_epi32(1)))
    };
    let mut block = ActBlock {
        d,
        ..ActBlock::default()
    };
    let (qa, qb) = (round(a), round(b));
    _mm_storeu_si128(block.q.as_mut_ptr().cast(), qa);
    _mm_storeu_si128(block.q.as_mut_ptr().add(16).cast(), qb);
    block.s = _mm512_reduce_add_epi32(_mm512_add_epi32(
        _mm512_cvtepi8_epi32(qa),
        _mm512_cvtepi8_epi32(qb),
    ));
    block
}
