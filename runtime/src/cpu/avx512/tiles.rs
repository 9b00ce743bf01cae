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
//! bf16 panels hold two k-steps per 32-bit lane (`mod.rs`): one load, then a
//! shift (even k) and a mask (odd k) give exact f32 weights for two FMAs.
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
    /// Elements between consecutive wide panels.
    pub stride: usize,
    /// The block's first sum.
    pub acc: *mut f32,
    /// Floats between rows of sums.
    pub ldacc: usize,
}

/// One tile: its x slice (k-major, `R` floats per k-step), its first panel, its
/// first sum, and the k-steps `k0..k1` it adds.
#[derive(Clone, Copy)]
struct At<W> {
    x: *const f32,
    w: *const W,
    /// The next panel group, fetched into cache while this tile streams its
    /// own (the first row tile of a group only; null for none).
    next: *const W,
    acc: *mut f32,
    k0: usize,
    k1: usize,
}

/// Runs `tile::<R, C>` (a const-generic tile function) for a run-time `rows`
/// in `1..=ROWS`.
macro_rules! by_rows {
    ($f:ident, $c:literal, $rows:expr, $($arg:expr),*) => {
        match $rows {
            1 => $f::<1, $c>($($arg),*),
            2 => $f::<2, $c>($($arg),*),
            3 => $f::<3, $c>($($arg),*),
            4 => $f::<4, $c>($($arg),*),
            5 => $f::<5, $c>($($arg),*),
            6 => $f::<6, $c>($($arg),*),
            7 => $f::<7, $c>($($arg),*),
            8 => $f::<8, $c>($($arg),*),
            9 => $f::<9, $c>($($arg),*),
            10 => $f::<10, $c>($($arg),*),
            11 => $f::<11, $c>($($arg),*),
            _ => $f::<ROWS, $c>($($arg),*),
        }
    };
}

/// Runs `tile::<R, FEW_PANELS>` for a run-time `rows` in `1..=FEW_ROWS`.
macro_rules! by_few_rows {
    ($f:ident, $rows:expr, $($arg:expr),*) => {
        match $rows {
            1 => $f::<1, FEW_PANELS>($($arg),*),
            2 => $f::<2, FEW_PANELS>($($arg),*),
            3 => $f::<3, FEW_PANELS>($($arg),*),
            _ => $f::<FEW_ROWS, FEW_PANELS>($($arg),*),
        }
    };
}

/// Visits the block in tiles: k in slices of `KC`, panels in groups of `PANELS`
/// (`FEW_PANELS` when the block has at most `FEW_ROWS` rows; then one at a
/// time), rows in tiles of `ROWS` (then the rest), calling `tile(rows, panels, at)`.
///
/// # Safety
/// As [`f32_sums`], with `w` the first panel.
unsafe fn cover<W>(
    t: &Tile,
    w: *const W,
    (rows, panels): (usize, usize),
    mut tile: impl FnMut(usize, usize, At<W>),
) {
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
                tile(m, c, at);
            }
            q += c;
        }
    }
}

/// The sums of a block of f32 panels starting at `w`.
///
/// # Safety
/// The host has AVX-512F; `t` and `w` describe `rows` readable x rows, `panels`
/// readable wide panels and `rows` writable rows of `panels·16` sums.
pub unsafe fn f32_sums(t: &Tile, w: *const f32, rows: usize, panels: usize) {
    cover(t, w, (rows, panels), |m, c, at| match c {
        FEW_PANELS => by_few_rows!(f32_tile, m, t, at),
        PANELS => by_rows!(f32_tile, 2, m, t, at),
        _ => by_rows!(f32_tile, 1, m, t, at),
    });
}

/// The sums of a block of bf16-pair panels starting at `w`.
///
/// # Safety
/// As [`f32_sums`].
pub unsafe fn bf16_sums(t: &Tile, w: *const u32, rows: usize, panels: usize) {
    cover(t, w, (rows, panels), |m, c, at| match c {
        FEW_PANELS => by_few_rows!(bf16_tile, m, t, at),
        PANELS => by_rows!(bf16_tile, 2, m, t, at),
        _ => by_rows!(bf16_tile, 1, m, t, at),
    });
}

#[target_feature(enable = "avx512f")]
unsafe fn f32_tile<const R: usize, const C: usize>(t: &Tile, at: At<f32>) {
    let mut a = resume::<R, C, _>(&at, t.ldacc);
    for kk in 0..at.k1 - at.k0 {
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(at.w.add(c * t.stride + (at.k0 + kk) * 16));
            if !at.next.is_null() {
                let ahead = at.next.add(c * t.stride + (at.k0 + kk) * 16);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
        }
        let x = at.x.add(kk * R);
        for (r, ar) in a.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x.add(r));
            for (ac, wc) in ar.iter_mut().zip(&wv) {
                *ac = _mm512_fmadd_ps(xv, *wc, *ac);
            }
        }
    }
    store(a, at.acc, t.ldacc);
}

#[target_feature(enable = "avx512f")]
unsafe fn bf16_tile<const R: usize, const C: usize>(t: &Tile, at: At<u32>) {
    let high = _mm512_set1_epi32(0xFFFF_0000_u32 as i32);
    let widen = |step: usize, c: usize| {
        let v = _mm512_loadu_si512(at.w.add(c * t.stride + step * 16).cast());
        (
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)),
            _mm512_castsi512_ps(_mm512_and_si512(v, high)),
        )
    };
    let mut a = resume::<R, C, _>(&at, t.ldacc);
    // `k0` is even (`KC` is); only the last slice can end in half a pair.
    let kc = at.k1 - at.k0;
    for s in 0..kc / 2 {
        let mut wv = [(_mm512_setzero_ps(), _mm512_setzero_ps()); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = widen(at.k0 / 2 + s, c);
            if !at.next.is_null() {
                let ahead = at.next.add(c * t.stride + (at.k0 / 2 + s) * 16);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
        }
        let x = at.x.add(2 * s * R);
        for (r, ar) in a.iter_mut().enumerate() {
            let x0 = _mm512_set1_ps(*x.add(r));
            let x1 = _mm512_set1_ps(*x.add(R + r));
            for (ac, (even, odd)) in ar.iter_mut().zip(&wv) {
                *ac = _mm512_fmadd_ps(x0, *even, *ac);
                *ac = _mm512_fmadd_ps(x1, *odd, *ac);
            }
        }
    }
    if kc % 2 == 1 {
        // The last step's high halves are zero and x has no element past K.
        let x = at.x.add((kc - 1) * R);
        for (r, ar) in a.iter_mut().enumerate() {
            let x0 = _mm512_set1_ps(*x.add(r));
            for (c, ac) in ar.iter_mut().enumerate() {
                let (even, _) = widen(at.k1 / 2, c);
                *ac = _mm512_fmadd_ps(x0, even, *ac);
            }
        }
    }
    store(a, at.acc, t.ldacc);
}

/// A tile's sums so far: zero at the first slice, else what it stored.
#[target_feature(enable = "avx512f")]
unsafe fn resume<const R: usize, const C: usize, W>(at: &At<W>, ld: usize) -> [[__m512; C]; R] {
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
