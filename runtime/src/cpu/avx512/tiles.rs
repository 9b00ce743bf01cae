//! AVX-512 register tiles: `R` rows × `C` wide panels of sums (`R·C` zmm
//! accumulators), each k-step loading `C` panel vectors once and broadcasting
//! one x value per row into `R·C` FMAs. A block of rows and panels is covered by
//! full `ROWS × PANELS` tiles and remainder tiles specialised to their size.
//!
//! bf16 panels hold two k-steps per 32-bit lane (`mod.rs`): one load, then a
//! shift (even k) and a mask (odd k) give exact f32 weights for two FMAs.
//!
//! Everything here trusts its pointers; `mod.rs::sums` checks them.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of a full tile.
const ROWS: usize = 12;
/// Wide panels of a full tile.
const PANELS: usize = 2;

/// Where a block's operands are.
pub struct Tile {
    /// The block's first x row.
    pub x: *const f32,
    /// Floats between x rows.
    pub ldx: usize,
    pub k: usize,
    /// Elements between consecutive wide panels.
    pub stride: usize,
    /// The block's first sum.
    pub acc: *mut f32,
    /// Floats between rows of sums.
    pub ldacc: usize,
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

/// Visits the block in tiles: panels in groups of `PANELS` (then one at a time),
/// rows in tiles of `ROWS` (then the rest), calling `tile(rows, panels, row, panel)`.
fn cover(rows: usize, panels: usize, mut tile: impl FnMut(usize, usize, usize, usize)) {
    let mut q = 0;
    while q < panels {
        let c = if panels - q >= PANELS { PANELS } else { 1 };
        let mut r = 0;
        while r < rows {
            let m = (rows - r).min(ROWS);
            tile(m, c, r, q);
            r += m;
        }
        q += c;
    }
}

/// The sums of a block of f32 panels starting at `w`.
///
/// # Safety
/// The host has AVX-512F; `t` and `w` describe `rows` readable x rows, `panels`
/// readable wide panels and `rows` writable rows of `panels·16` sums.
pub unsafe fn f32_sums(t: &Tile, w: *const f32, rows: usize, panels: usize) {
    cover(rows, panels, |m, c, r, q| {
        let (x, acc) = (t.x.add(r * t.ldx), t.acc.add(r * t.ldacc + q * 16));
        let w = w.add(q * t.stride);
        if c == PANELS {
            by_rows!(f32_tile, 2, m, t, x, w, acc)
        } else {
            by_rows!(f32_tile, 1, m, t, x, w, acc)
        }
    });
}

/// The sums of a block of bf16-pair panels starting at `w`.
///
/// # Safety
/// As [`f32_sums`].
pub unsafe fn bf16_sums(t: &Tile, w: *const u32, rows: usize, panels: usize) {
    cover(rows, panels, |m, c, r, q| {
        let (x, acc) = (t.x.add(r * t.ldx), t.acc.add(r * t.ldacc + q * 16));
        let w = w.add(q * t.stride);
        if c == PANELS {
            by_rows!(bf16_tile, 2, m, t, x, w, acc)
        } else {
            by_rows!(bf16_tile, 1, m, t, x, w, acc)
        }
    });
}

#[target_feature(enable = "avx512f")]
unsafe fn f32_tile<const R: usize, const C: usize>(
    t: &Tile,
    x: *const f32,
    w: *const f32,
    acc: *mut f32,
) {
    let mut a = [[_mm512_setzero_ps(); C]; R];
    for kk in 0..t.k {
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(w.add(c * t.stride + kk * 16));
        }
        for (r, ar) in a.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x.add(r * t.ldx + kk));
            for (ac, wc) in ar.iter_mut().zip(&wv) {
                *ac = _mm512_fmadd_ps(xv, *wc, *ac);
            }
        }
    }
    store(a, acc, t.ldacc);
}

#[target_feature(enable = "avx512f")]
unsafe fn bf16_tile<const R: usize, const C: usize>(
    t: &Tile,
    x: *const f32,
    w: *const u32,
    acc: *mut f32,
) {
    let high = _mm512_set1_epi32(0xFFFF_0000_u32 as i32);
    let widen = |at: *const u32| {
        let v = _mm512_loadu_si512(at.cast());
        (
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)),
            _mm512_castsi512_ps(_mm512_and_si512(v, high)),
        )
    };
    let mut a = [[_mm512_setzero_ps(); C]; R];
    let pairs = t.k / 2;
    for s in 0..pairs {
        let mut wv = [(_mm512_setzero_ps(), _mm512_setzero_ps()); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = widen(w.add(c * t.stride + s * 16));
        }
        for (r, ar) in a.iter_mut().enumerate() {
            let x0 = _mm512_set1_ps(*x.add(r * t.ldx + 2 * s));
            let x1 = _mm512_set1_ps(*x.add(r * t.ldx + 2 * s + 1));
            for (ac, (even, odd)) in ar.iter_mut().zip(&wv) {
                *ac = _mm512_fmadd_ps(x0, *even, *ac);
                *ac = _mm512_fmadd_ps(x1, *odd, *ac);
            }
        }
    }
    if t.k % 2 == 1 {
        // The last step's high halves are zero and x has no element past K.
        for (r, ar) in a.iter_mut().enumerate() {
            let x0 = _mm512_set1_ps(*x.add(r * t.ldx + 2 * pairs));
            for (c, ac) in ar.iter_mut().enumerate() {
                let (even, _) = widen(w.add(c * t.stride + pairs * 16));
                *ac = _mm512_fmadd_ps(x0, even, *ac);
            }
        }
    }
    store(a, acc, t.ldacc);
}

#[target_feature(enable = "avx512f")]
unsafe fn store<const R: usize, const C: usize>(a: [[__m512; C]; R], acc: *mut f32, ld: usize) {
    for (r, ar) in a.iter().enumerate() {
        for (c, v) in ar.iter().enumerate() {
            _mm512_storeu_ps(acc.add(r * ld + c * 16), *v);
        }
    }
}
