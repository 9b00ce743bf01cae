//! The packed weight layout the matmul kernel reads.
//!
//! An expert's weights `[N, K]` (Hugging Face `[out, in]`) become `panels()`
//! panels of `K × PANEL` floats: panel `p`, step `k` holds `PANEL` consecutive
//! floats, one per column the panel computes, so the kernel loads two f32x4 per
//! k-step. Without a GLU a panel holds columns `8p..8p+8`; with a GLU (columns
//! `[gate; up]`, `H = N/2`) it holds gate columns `4p..4p+4` then the matching up
//! columns `H+4p..H+4p+4`, so one panel yields 4 finished outputs. Columns past
//! the end are zero. Biases are packed the same way, `PANEL` floats per panel.
//!
//! bf16 panels (`pack_weights_bf16`) hold the same slots as 16-bit values, but in
//! the order the kernel widens them in: read as four 32-bit lanes, the low halves
//! are slots 0..4 and the high halves slots 4..8 (`bf16_position`).

use super::{MatmulShape, WeightDType};

/// Floats per panel k-step: two f32x4 vectors.
pub const PANEL: usize = 8;

/// The weight column (row of `[N, K]`) in slot `j` of panel `p`, if any.
pub fn column(shape: &MatmulShape, p: usize, j: usize) -> Option<usize> {
    if shape.epilogue.is_glu() {
        let h = shape.n / 2;
        let half = PANEL / 2;
        let c = p * half + j % half;
        (c < h).then_some(if j < half { c } else { h + c })
    } else {
        let c = p * PANEL + j;
        (c < shape.n).then_some(c)
    }
}

/// Where slot `j` of a k-step lies in a panel of `dtype`.
pub fn position(dtype: WeightDType, j: usize) -> usize {
    match dtype {
        WeightDType::F32 => j,
        WeightDType::Bf16 => bf16_position(j),
    }
}

/// Where slot `j` of a bf16 k-step lies: slots 0..4 in the even (low) halves of
/// the four 32-bit lanes, slots 4..8 in the odd (high) ones.
pub fn bf16_position(j: usize) -> usize {
    let half = PANEL / 2;
    2 * (j % half) + j / half
}

/// Packs stacked weights `[E, N, K]` (row-major) into `E · packed_len()` floats.
pub fn pack_weights(shape: &MatmulShape, w: &[f32]) -> Vec<f32> {
    pack_as(shape, w, |v| v)
}

/// Packs stacked weights `[E, N, K]` into `E · packed_len()` bf16 values (bit
/// patterns), keeping the high half of each f32: exact for values that are bf16
/// values, which is what the runtime packs this way.
pub fn pack_weights_bf16(shape: &MatmulShape, w: &[f32]) -> Vec<u16> {
    pack_as(shape, w, |v| (v.to_bits() >> 16) as u16)
}

fn pack_as<T: Copy + Default>(shape: &MatmulShape, w: &[f32], conv: impl Fn(f32) -> T) -> Vec<T> {
    let (n, k) = (shape.n, shape.k);
    let experts = w.len().checked_div(n * k).unwrap_or(0);
    let mut out = vec![T::default(); experts * shape.packed_len()];
    for e in 0..experts {
        let src = &w[e * n * k..(e + 1) * n * k];
        let dst = &mut out[e * shape.packed_len()..(e + 1) * shape.packed_len()];
        for p in 0..shape.panels() {
            for j in 0..PANEL {
                let Some(c) = column(shape, p, j) else {
                    continue;
                };
                let at = position(shape.weights, j);
                for kk in 0..k {
                    dst[(p * k + kk) * PANEL + at] = conv(src[c * k + kk]);
                }
            }
        }
    }
    out
}

/// Packs stacked biases `[E, N]` into `E · panels() · PANEL` floats.
pub fn pack_bias(shape: &MatmulShape, b: &[f32]) -> Vec<f32> {
    let experts = b.len().checked_div(shape.n).unwrap_or(0);
    let per = shape.panels() * PANEL;
    let mut out = vec![0.0f32; experts * per];
    for e in 0..experts {
        for p in 0..shape.panels() {
            for j in 0..PANEL {
                if let Some(c) = column(shape, p, j) {
                    out[e * per + p * PANEL + j] = b[e * shape.n + c];
                }
            }
        }
    }
    out
}
