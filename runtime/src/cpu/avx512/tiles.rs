//! AVX-512 register tiles: `R` rows × `C` wide panels of sums (`R·C` zmm
//! accumulators), each k-step loading `C` panel vectors once and broadcasting
//! one x value per row into `R·C` FMAs. A block of rows and panels is covered by
//! full `ROWS × PANELS` tiles and remainder tiles specialised to their size.
//!
//! Loop order (the BLIS one): k in slices of `KC`, then panel groups, then row
//! tiles. A panel group's slice (`PANELS · KC · 64` bytes) stays in L1 while
//! every row tile passes over it, and the block's x slice stays in L2 while
//! every panel group passes, so each weight is read from memory once per block
//! however many rows it has; tiles after the first slice resume from the sums
//! they stored. The first row tile of a group prefetches the next group's
//! slice, so the weights' stream from memory overlaps the arithmetic. The x rows come in tile order (`mod.rs::tile_order`: k-major per
//! row tile, `R` values per k-step, copied once per matmul call), so a tile's
//! broadcasts all read one stream at fixed offsets.
//!
//! The tiles are generic over how a panel stores its weights ([`Format`]): f32;
//! bf16 pairs (one load, then a shift (even k) and a mask (odd k) give exact f32
//! weights for two k-steps). Whatever the format, a tile computes `Σ x·w` in f32
//! with f32 `x`. (Quantized weights have integer tiles of their own, `vnni.rs`.)
//!
//! Everything here trusts its pointers; `mod.rs::sums` checks them.

use super::ROWS;
use std::arch::x86_64::*;

/// Wide panels of a full tile.
const PANELS: usize = 2;
/// Wide panels of a tile of at most `FEW_ROWS` rows (decoding): more
/// independent accumulator chains and weight streams per row.
const FEW_PANELS: usize = 4;
const FEW_ROWS: usize = 4;
/// k-steps per slice (even, so bf16 pairs never straddle two).
const KC: usize = 256;

/// Where a block's operands are.
pub struct Tile {
    /// The block's x rows in tile order (`tile_order`).
    pub x: *const f32,
    /// k-steps in all.
    pub k: usize,
    /// Bytes between consecutive wide panels.
    pub stride: usize,
    /// The block's first sum.
    pub acc: *mut f32,
    /// Floats between rows of sums.
    pub ldacc: usize,
}

/// How a wide panel stores its weights (`pack.rs`): loads come in groups of
/// `STEPS` k-steps, group `g` at byte `offset(g)` of the panel.
pub trait Format {
    const STEPS: usize;
    fn offset(g: usize) -> usize;
    /// The f32 weights of group `g` (16 columns per k-step; the second vector is
    /// unused when `STEPS` is 1).
    ///
    /// # Safety
    /// AVX-512F; `panel` is a panel of this format holding group `g`.
    unsafe fn load(panel: *const u8, g: usize) -> [__m512; 2];
}

pub struct F32;
pub struct Bf16;

impl Format for F32 {
    const STEPS: usize = 1;
    fn offset(g: usize) -> usize {
        g * 64
    }
    #[inline(always)]
    unsafe fn load(panel: *const u8, g: usize) -> [__m512; 2] {
        let v = _mm512_loadu_ps(panel.add(Self::offset(g)).cast());
        [v, v]
    }
}

impl Format for Bf16 {
    const STEPS: usize = 2;
    fn offset(g: usize) -> usize {
        g * 64
    }
    #[inline(always)]
    unsafe fn load(panel: *const u8, g: usize) -> [__m512; 2] {
        let v = _mm512_loadu_si512(panel.add(Self::offset(g)).cast());
        let high = _mm512_set1_epi32(0xFFFF_0000_u32 as i32);
        [
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)),
            _mm512_castsi512_ps(_mm512_and_si512(v, high)),
        ]
    }
}

/// One tile: its x slice (k-major, `R` floats per k-step), its first panel, the
/// next group's (fetched into cache while this tile streams its own: the first
/// row tile of a group only; null for none), its first sum, and the k-steps
/// `k0..k1` it adds.
#[derive(Clone, Copy)]
struct At {
    x: *const f32,
    w: *const u8,
    next: *const u8,
    acc: *mut f32,
    k0: usize,
    k1: usize,
}

/// Runs `tile::<F, R, C>` for a run-time `rows` in `1..=ROWS` (`C` = `PANELS`
/// or 1), or in `1..=FEW_ROWS` (`C` = `FEW_PANELS`).
macro_rules! by_rows {
    ($F:ty, $c:expr, $rows:expr, $($arg:expr),*) => {
        match ($c, $rows) {
            (FEW_PANELS, 1) => tile::<$F, 1, FEW_PANELS>($($arg),*),
            (FEW_PANELS, 2) => tile::<$F, 2, FEW_PANELS>($($arg),*),
            (FEW_PANELS, 3) => tile::<$F, 3, FEW_PANELS>($($arg),*),
            (FEW_PANELS, _) => tile::<$F, FEW_ROWS, FEW_PANELS>($($arg),*),
            (PANELS, 1) => tile::<$F, 1, PANELS>($($arg),*),
            (PANELS, 2) => tile::<$F, 2, PANELS>($($arg),*),
            (PANELS, 3) => tile::<$F, 3, PANELS>($($arg),*),
            (PANELS, 4) => tile::<$F, 4, PANELS>($($arg),*),
            (PANELS, 5) => tile::<$F, 5, PANELS>($($arg),*),
            (PANELS, 6) => tile::<$F, 6, PANELS>($($arg),*),
            (PANELS, 7) => tile::<$F, 7, PANELS>($($arg),*),
            (PANELS, 8) => tile::<$F, 8, PANELS>($($arg),*),
            (PANELS, 9) => tile::<$F, 9, PANELS>($($arg),*),
            (PANELS, 10) => tile::<$F, 10, PANELS>($($arg),*),
            (PANELS, 11) => tile::<$F, 11, PANELS>($($arg),*),
            (PANELS, _) => tile::<$F, ROWS, PANELS>($($arg),*),
            (_, 1) => tile::<$F, 1, 1>($($arg),*),
            (_, 2) => tile::<$F, 2, 1>($($arg),*),
            (_, 3) => tile::<$F, 3, 1>($($arg),*),
            (_, 4) => tile::<$F, 4, 1>($($arg),*),
            (_, 5) => tile::<$F, 5, 1>($($arg),*),
            (_, 6) => tile::<$F, 6, 1>($($arg),*),
            (_, 7) => tile::<$F, 7, 1>($($arg),*),
            (_, 8) => tile::<$F, 8, 1>($($arg),*),
            (_, 9) => tile::<$F, 9, 1>($($arg),*),
            (_, 10) => tile::<$F, 10, 1>($($arg),*),
            (_, 11) => tile::<$F, 11, 1>($($arg),*),
            (_, _) => tile::<$F, ROWS, 1>($($arg),*),
        }
    };
}

/// The sums of a block of panels of format `F` starting at `w`: k in slices of
/// `KC`, panels in groups of `PANELS` (`FEW_PANELS` when the block has at most
/// `FEW_ROWS` rows; then one at a time), rows in tiles of `ROWS` (then the rest).
///
/// # Safety
/// The host has AVX-512F; `t` and `w` describe `rows` readable x rows in tile
/// order, `panels` readable wide panels of format `F` and `rows` writable rows
/// of `panels·16` sums.
pub unsafe fn sums<F: Format>(t: &Tile, w: *const u8, rows: usize, panels: usize) {
    let group = if rows <= FEW_ROWS { FEW_PANELS } else { PANELS };
    for k0 in (0..t.k).step_by(KC) {
        let k1 = (k0 + KC).min(t.k);
        let mut q = 0;
        while q < panels {
            let c = if panels - q >= group { group } else { 1 };
            for r in (0..rows).step_by(ROWS) {
                let m = (rows - r).min(ROWS);
                let more = r == 0 && q + c < panels;
                let at = At {
                    x: t.x.add(r * t.k + k0 * m),
                    w: w.add(q * t.stride),
                    next: if more {
                        w.add((q + c) * t.stride)
                    } else {
                        std::ptr::null()
                    },
                    acc: t.acc.add(r * t.ldacc + q * 16),
                    k0,
                    k1,
                };
                by_rows!(F, c, m, t, at);
            }
            q += c;
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile<F: Format, const R: usize, const C: usize>(t: &Tile, at: At) {
    let mut a = resume::<R, C>(&at, t.ldacc);
    // `k0` is a multiple of `STEPS` (`KC` is); only the last slice can end in
    // part of a group.
    let kc = at.k1 - at.k0;
    let (g0, groups) = (at.k0 / F::STEPS, kc / F::STEPS);
    for g in 0..groups {
        let mut wv = [[_mm512_setzero_ps(); 2]; C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = F::load(at.w.add(c * t.stride), g0 + g);
            if !at.next.is_null() {
                let ahead = at.next.add(c * t.stride + F::offset(g0 + g));
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
        }
        let x = at.x.add(g * F::STEPS * R);
        for (r, ar) in a.iter_mut().enumerate() {
            for s in 0..F::STEPS {
                let xv = _mm512_set1_ps(*x.add(s * R + r));
                for (ac, wc) in ar.iter_mut().zip(&wv) {
                    *ac = _mm512_fmadd_ps(xv, wc[s], *ac);
                }
            }
        }
    }
    if !kc.is_multiple_of(F::STEPS) {
        // A last group past K: its first step only (the rest are zero weights,
        // and x has no element past K).
        let x = at.x.add(groups * F::STEPS * R);
        for (r, ar) in a.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x.add(r));
            for (c, ac) in ar.iter_mut().enumerate() {
                let [first, _] = F::load(at.w.add(c * t.stride), g0 + groups);
                *ac = _mm512_fmadd_ps(xv, first, *ac);
            }
        }
    }
    store(a, at.acc, t.ldacc);
}

/// A tile's sums so far: zero at the first slice, else what it stored.
#[target_feature(enable = "avx512f")]
unsafe fn resume<const R: usize, const C: usize>(at: &At, ld: usize) -> [[__m512; C]; R] {
    let mut a = [[_mm512_setzero_ps(); C]; R];
    if at.k0 > 0 {
        for (r, ar) in a.iter_mut().enumerate() {
            for (c, v) in ar.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(at.acc.add(r * ld + c * 16));
            }
        }
    }
    a
}

#[target_feature(enable = "avx512f")]
unsafe fn store<const R: usize, const C: usize>(a: [[__m512; C]; R], acc: *mut f32, ld: usize) {
    for (r, ar) in a.iter().enumerate() {
        for (c, v) in ar.iter().enumerate() {
            _mm512_storeu_ps(acc.add(r * ld + c * 16), *v);
        }
    }
}
