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
#[cfg(target_arch = "x86_64")]
mod tiles;

use moec_compiler::backend::clif::pack::{column, PANEL};
use moec_compiler::backend::clif::{MatmulShape, WeightDType};

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

/// Weights in the wide layout, every expert's panels one after another.
pub enum Wide {
    F32(Vec<f32>),
    /// Pairs of bf16 bit patterns, `k = 2s` low and `2s + 1` high.
    Bf16(Vec<u32>),
}

/// Wide panels per expert.
pub fn panels(shape: &MatmulShape) -> usize {
    shape.panels().div_ceil(2)
}

/// Loads (of `LANES` elements) per wide panel.
fn steps(shape: &MatmulShape) -> usize {
    match shape.weights {
        WeightDType::F32 => shape.k,
        WeightDType::Bf16 => shape.k.div_ceil(2),
    }
}

/// Elements (f32 or pairs) of one expert's wide panels.
pub fn expert_len(shape: &MatmulShape) -> usize {
    panels(shape) * steps(shape) * LANES
}

impl Wide {
    /// Packs stacked weights `[E, N, K]` (row-major f32 values; bf16 values when
    /// `shape.weights` is bf16, whose low 16 bits are then zero and dropped).
    pub fn pack(shape: &MatmulShape, w: &[f32]) -> Wide {
        let (n, k) = (shape.n, shape.k);
        let experts = w.len().checked_div(n * k).unwrap_or(0);
        let lanes = |q: usize| (0..LANES).map(move |l| column(shape, 2 * q + l / PANEL, l % PANEL));
        match shape.weights {
            WeightDType::F32 => {
                let mut out = vec![0.0f32; experts * expert_len(shape)];
                for (e, dst) in out.chunks_exact_mut(expert_len(shape).max(1)).enumerate() {
                    let src = &w[e * n * k..(e + 1) * n * k];
                    for (q, panel) in dst.chunks_exact_mut(k * LANES).enumerate() {
                        for (l, c) in lanes(q).enumerate() {
                            let Some(c) = c else { continue };
                            for (kk, v) in src[c * k..(c + 1) * k].iter().enumerate() {
                                panel[kk * LANES + l] = *v;
                            }
                        }
                    }
                }
                Wide::F32(out)
            }
            WeightDType::Bf16 => {
                let s = steps(shape);
                let mut out = vec![0u32; experts * expert_len(shape)];
                for (e, dst) in out.chunks_exact_mut(expert_len(shape).max(1)).enumerate() {
                    let src = &w[e * n * k..(e + 1) * n * k];
                    for (q, panel) in dst.chunks_exact_mut(s * LANES).enumerate() {
                        for (l, c) in lanes(q).enumerate() {
                            let Some(c) = c else { continue };
                            let row = &src[c * k..(c + 1) * k];
                            for (i, pair) in row.chunks(2).enumerate() {
                                let half = |v: f32| v.to_bits() >> 16;
                                let hi = pair.get(1).map_or(0, |v| half(*v));
                                panel[i * LANES + l] = half(pair[0]) | hi << 16;
                            }
                        }
                    }
                }
                Wide::Bf16(out)
            }
        }
    }

    /// Elements held (all experts).
    pub fn len(&self) -> usize {
        match self {
            Wide::F32(v) => v.len(),
            Wide::Bf16(v) => v.len(),
        }
    }

    pub fn dtype(&self) -> WeightDType {
        match self {
            Wide::F32(_) => WeightDType::F32,
            Wide::Bf16(_) => WeightDType::Bf16,
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
    let per = expert_len(shape);
    assert!(
        q0 <= q1
            && q1 <= panels(shape)
            && w.dtype() == shape.weights
            && w.len() >= (expert + 1) * per
            && x.len() >= rows * k
            && ldacc >= (q1 - q0) * LANES
            && (rows == 0 || acc.len() >= (rows - 1) * ldacc + (q1 - q0) * LANES)
            && super::isa::avx512_supported(),
        "internal error: AVX-512 sums out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let stride = steps(shape) * LANES;
        let tile = tiles::Tile {
            x: x.as_ptr(),
            k,
            stride,
            acc: acc.as_mut_ptr(),
            ldacc,
        };
        let first = expert * per + q0 * stride;
        // SAFETY: checked above: the host has AVX-512F; the tiles read `rows` x
        // rows of `k` floats, panels `q0..q1` of this expert (`stride` elements
        // each), and write `rows` rows of `(q1 - q0)·LANES` sums `ldacc` apart.
        unsafe {
            match w {
                Wide::F32(v) => tiles::f32_sums(&tile, v.as_ptr().add(first), rows, q1 - q0),
                Wide::Bf16(v) => tiles::bf16_sums(&tile, v.as_ptr().add(first), rows, q1 - q0),
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
    let (k, per) = (shape.k, expert_len(shape));
    let Wide::Bf16(v) = w else {
        panic!("internal error: AMX sums of f32 panels");
    };
    assert!(
        q0 <= q1
            && q1 <= panels(shape)
            && v.len() >= (expert + 1) * per
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
        let stride = steps(shape) * LANES;
        let block = amx::Block {
            x: x.as_ptr(),
            rows,
            k,
            // SAFETY: `expert·per + q0·stride` is inside `v` (checked above).
            w: unsafe { v.as_ptr().add(expert * per + q0 * stride) },
            stride,
            panels: q1 - q0,
            acc: acc.as_mut_ptr(),
            ldacc,
        };
        // SAFETY: checked above: AMX is granted; the block's activations, panels
        // and sums lie inside `x`, `v` and `acc`.
        unsafe { amx::sums(&block) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moec_compiler::ir::{Epilogue, UnaryOp};

    /// The sums of every JIT panel slot, straight from the definition: slot `j`
    /// of panel `p` is `Σ_k x[r, k]·w[e, column(p, j), k]` (0 for no column).
    fn plain(shape: &MatmulShape, w: &[f32], e: usize, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (shape.n, shape.k);
        let cols = panels(shape) * LANES;
        let mut out = vec![0.0f32; rows * cols];
        for r in 0..rows {
            for s in 0..cols {
                if let Some(c) = column(shape, s / PANEL, s % PANEL) {
                    let row = &w[(e * n + c) * k..(e * n + c + 1) * k];
                    let dot: f64 = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(row[i]))
                        .sum();
                    out[r * cols + s] = dot as f32;
                }
            }
        }
        out
    }

    /// Every remainder: K odd and even (bf16 pairs), K past one slice, an odd
    /// panel count (a last panel paired with zeros), GLU columns, rows that are
    /// not whole tiles, and blocks that start past the first panel.
    #[test]
    fn tiles_give_the_plain_sums() {
        if !crate::cpu::isa::avx512_supported() {
            eprintln!("skipped: this host has no AVX-512F");
            return;
        }
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // bf16 values (low 16 bits zero) in [-1, 1), so both dtypes see the same weights.
            f32::from_bits(
                ((seed >> 9) as f32 / (1u32 << 23) as f32 * 2.0 - 1.0).to_bits() & 0xFFFF_0000,
            )
        };
        for (k, n, epilogue) in [
            (7, 24, Epilogue::None),
            (16, 40, Epilogue::Glu(UnaryOp::Silu)),
            (33, 8, Epilogue::None),
            (1, 50, Epilogue::Glu(UnaryOp::Silu)),
            // Several k slices, the last one odd.
            (601, 40, Epilogue::None),
        ] {
            for dtype in [WeightDType::F32, WeightDType::Bf16] {
                let shape = MatmulShape {
                    k,
                    n,
                    epilogue,
                    bias: false,
                    weighted: false,
                    weights: dtype,
                };
                let experts = 2;
                let w: Vec<f32> = (0..experts * n * k).map(|_| next()).collect();
                let packed = Wide::pack(&shape, &w);
                let cols = panels(&shape) * LANES;
                for rows in [1, 5, 12, 13, 30] {
                    let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
                    let want = plain(&shape, &w, 1, &x, rows);
                    let mut tiled = vec![f32::NAN; x.len()];
                    tile_order(&x, k, &mut tiled);
                    for q0 in 0..panels(&shape) {
                        let q1 = panels(&shape);
                        let ld = (q1 - q0) * LANES + 3;
                        let mut acc = vec![f32::NAN; rows * ld];
                        sums(&shape, &packed, 1, (q0, q1), &tiled, rows, &mut acc, ld);
                        for r in 0..rows {
                            for s in 0..(q1 - q0) * LANES {
                                let (got, want) =
                                    (acc[r * ld + s], want[r * cols + q0 * LANES + s]);
                                assert!(
                                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                    "k {k} n {n} {dtype:?} rows {rows} panels {q0}..{q1}: \
                                     row {r} sum {s}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The AMX tiles give the plain sums of the activations rounded to bf16
    /// (products of bf16 values are exact in f32; only the order of additions
    /// differs): several k slices, an odd wide panel count, rows past one pair
    /// of tiles, blocks starting past the first panel.
    #[test]
    fn amx_tiles_give_the_plain_sums_of_bf16_activations() {
        if !amx::supported() {
            eprintln!("skipped: this host cannot run AMX tiles");
            return;
        }
        let mut seed = 11u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 9) as f32 / (1u32 << 23) as f32 * 2.0 - 1.0
        };
        for (k, n) in [(32, 40), (1088, 24)] {
            let shape = MatmulShape {
                k,
                n,
                epilogue: Epilogue::None,
                bias: false,
                weighted: false,
                weights: WeightDType::Bf16,
            };
            let w: Vec<f32> = (0..2 * n * k)
                .map(|_| f32::from_bits(next().to_bits() & 0xFFFF_0000))
                .collect();
            let packed = Wide::pack(&shape, &w);
            let cols = panels(&shape) * LANES;
            for rows in [16, 48] {
                let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
                let xb: Vec<u16> = x.iter().map(|v| amx::to_bf16(*v)).collect();
                let rounded: Vec<f32> = xb
                    .iter()
                    .map(|b| f32::from_bits(u32::from(*b) << 16))
                    .collect();
                let want = plain(&shape, &w, 1, &rounded, rows);
                for q0 in [0, 1] {
                    let q1 = panels(&shape);
                    let ld = (q1 - q0) * LANES;
                    let mut acc = vec![f32::NAN; rows * ld];
                    amx_sums(&shape, &packed, 1, (q0, q1), &xb, rows, &mut acc, ld);
                    for r in 0..rows {
                        for s in 0..ld {
                            let (got, want) = (acc[r * ld + s], want[r * cols + q0 * LANES + s]);
                            assert!(
                                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "k {k} n {n} rows {rows} panels {q0}..{q1}: row {r} sum {s}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        let bf = |v: f32| f32::from_bits(u32::from(amx::to_bf16(v)) << 16);
        assert_eq!(bf(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(bf(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(bf(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(bf(-1.0 - 1.5 / 256.0), -1.0 - 2.0 / 256.0);
        assert!(bf(f32::NAN).is_nan());
        assert_eq!(bf(f32::INFINITY), f32::INFINITY);
    }
}
