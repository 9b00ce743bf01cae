//! The packed weight layout the matmul kernel reads.
//!
//! An expert's weights `[N, K]` (Hugging Face `[out, in]`) become `panels()`
//! panels of `K × PANEL` floats: panel `p`, step `k` holds `PANEL` consecutive
//! floats, one per column the panel computes, so the kernel loads two f32x4 per
//! k-step. Without a GLU a panel holds columns `8p..8p+8`; with a GLU (columns
//! `[gate; up]`, `H = N/2`) it holds gate columns `4p..4p+4` then the matching up
//! columns `H+4p..H+4p+4`, so one panel yields 4 finished outputs. Columns past
//! the end are zero. Biases are packed the same way, `PANEL` floats per panel.

use super::MatmulShape;
use crate::ir::Epilogue;

/// Floats per panel k-step: two f32x4 vectors.
pub const PANEL: usize = 8;

/// The weight column (row of `[N, K]`) in slot `j` of panel `p`, if any.
fn column(shape: &MatmulShape, p: usize, j: usize) -> Option<usize> {
    match shape.epilogue {
        Epilogue::Glu(_) => {
            let h = shape.n / 2;
            let half = PANEL / 2;
            let c = p * half + j % half;
            (c < h).then_some(if j < half { c } else { h + c })
        }
        _ => {
            let c = p * PANEL + j;
            (c < shape.n).then_some(c)
        }
    }
}

/// Packs stacked weights `[E, N, K]` (row-major) into `E · packed_len()` floats.
pub fn pack_weights(shape: &MatmulShape, w: &[f32]) -> Vec<f32> {
    let (n, k) = (shape.n, shape.k);
    let experts = w.len().checked_div(n * k).unwrap_or(0);
    let mut out = vec![0.0f32; experts * shape.packed_len()];
    for e in 0..experts {
        let src = &w[e * n * k..(e + 1) * n * k];
        let dst = &mut out[e * shape.packed_len()..(e + 1) * shape.packed_len()];
        for p in 0..shape.panels() {
            for j in 0..PANEL {
                let Some(c) = column(shape, p, j) else {
                    continue;
                };
                for kk in 0..k {
                    dst[(p * k + kk) * PANEL + j] = src[c * k + kk];
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
