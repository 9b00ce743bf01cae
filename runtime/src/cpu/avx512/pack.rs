//! The wide layout: every expert's wide panels one after another, in one byte
//! buffer, each panel `panel_bytes()` long. A wide panel `q` holds the JIT
//! layout's panels `2q` and `2q + 1` side by side (lane `l` = column
//! `column(2q + l/8, l % 8)`; columns past the end are zeros). Per format,
//! a panel is:
//! - f32: `K` k-steps of 16 floats (64 bytes);
//! - bf16: `⌈K/2⌉` steps of 16 lanes of 32 bits, lane `l` holding column
//!   `l`'s weights at `k = 2s` (low half) and `2s + 1` (high half, zero past
//!   `K`) — also the pair layout `vdpbf16ps` and AMX-BF16 B tiles read;
//! - q8_0: `⌈K/32⌉` blocks of 16 f16 scales (one per column) then 8 k-quads
//!   of 16 lanes × 4 bytes, lane `l` of quad `j` holding column `l`'s `q + 128`
//!   (unsigned) at k-steps `4j..4j+4` ([`Q8_0_BLOCK`] bytes): the operand
//!   layout of `vpdpbusd` (`vnni.rs`);
//! - q4_0: `⌈K/32⌉` blocks of 16 f16 scales then 4 k-quads of 16 lanes × 4
//!   bytes, byte `i` of lane `l` of quad `j` holding column `l`'s stored `q + 8`
//!   at k-step `4j + i` in its low nibble and at `16 + 4j + i` in its high one
//!   ([`Q4_0_BLOCK`]).
//!
//! The quantized blocks are `quant::quantize_block`'s, so the tiles compute
//! with exactly the weights `quant::dequantize` gives the interpreter.

use super::LANES;
use moec_compiler::backend::clif::pack::{column, PANEL};
use moec_compiler::backend::clif::{MatmulShape, WeightDType};
use moec_compiler::quant::{quantize_block, WeightFormat, BLOCK};
use rayon::prelude::*;

/// Bytes of a q8_0 block of a wide panel.
pub const Q8_0_BLOCK: usize = 32 + BLOCK * LANES;
/// Bytes of a q4_0 block of a wide panel.
pub const Q4_0_BLOCK: usize = 32 + BLOCK / 2 * LANES;

/// Weights in the wide layout.
pub struct Wide {
    format: WeightFormat,
    bytes: Vec<u8>,
    panel_bytes: usize,
    panels: usize,
}

/// Wide panels per expert.
pub fn panels(shape: &MatmulShape) -> usize {
    shape.panels().div_ceil(2)
}

impl Wide {
    /// Packs stacked weights `[E, N, K]` (row-major f32 values) as `format`:
    /// f32 and bf16 must be `shape.weights` (bf16 values have zero low 16 bits,
    /// which are dropped); q8_0 and q4_0 quantize f32 panels' weights. There are
    /// no f16 tiles: f16 weights are packed as the f32 values they widen to.
    pub fn pack(shape: &MatmulShape, w: &[f32], format: WeightFormat) -> Wide {
        let format = match format {
            WeightFormat::F16 => WeightFormat::F32,
            f => f,
        };
        let (n, k) = (shape.n, shape.k);
        let experts = w.len().checked_div(n * k).unwrap_or(0);
        let blocks = k.div_ceil(BLOCK);
        let panel_bytes = match format {
            WeightFormat::F32 | WeightFormat::F16 => k * LANES * 4,
            WeightFormat::Bf16 => k.div_ceil(2) * LANES * 4,
            WeightFormat::Q8_0 => blocks * Q8_0_BLOCK,
            WeightFormat::Q4_0 => blocks * Q4_0_BLOCK,
        };
        let per_expert = panels(shape);
        let mut bytes = vec![0u8; experts * per_expert * panel_bytes];
        // Panels in parallel (quantizing a large model's weights takes a while).
        bytes
            .par_chunks_exact_mut(panel_bytes.max(1))
            .enumerate()
            .for_each(|(i, panel)| {
                let (e, q) = (i / per_expert, i % per_expert);
                let src = &w[e * n * k..(e + 1) * n * k];
                for l in 0..LANES {
                    if let Some(c) = column(shape, 2 * q + l / PANEL, l % PANEL) {
                        write_lane(format, &src[c * k..(c + 1) * k], l, panel);
                    }
                }
            });
        Wide {
            format,
            bytes,
            panel_bytes,
            panels: panels(shape),
        }
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn panel_bytes(&self) -> usize {
        self.panel_bytes
    }

    /// Where wide panel `q` of `expert` starts.
    pub fn panel_start(&self, expert: usize, q: usize) -> usize {
        (expert * self.panels + q) * self.panel_bytes
    }

    /// Whether these are weights of `shape`'s panels: bf16 ones for bf16
    /// weights, f32 or quantized ones for f32 weights.
    pub fn fits(&self, shape: &MatmulShape) -> bool {
        self.panels == panels(shape)
            && match self.format {
                WeightFormat::Bf16 => shape.weights == WeightDType::Bf16,
                _ => shape.weights == WeightDType::F32,
            }
    }

    /// Bytes of one expert's panels.
    pub fn expert_bytes(&self) -> usize {
        self.panels * self.panel_bytes
    }
}

/// Writes column `row`'s `K` weights into lane `l` of a wide panel.
fn write_lane(format: WeightFormat, row: &[f32], l: usize, panel: &mut [u8]) {
    match format {
        WeightFormat::F32 | WeightFormat::F16 => {
            for (kk, v) in row.iter().enumerate() {
                let at = (kk * LANES + l) * 4;
                panel[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        WeightFormat::Bf16 => {
            for (s, pair) in row.chunks(2).enumerate() {
                let half = |v: f32| v.to_bits() >> 16;
                let bits = half(pair[0]) | pair.get(1).map_or(0, |v| half(*v)) << 16;
                let at = (s * LANES + l) * 4;
                panel[at..at + 4].copy_from_slice(&bits.to_le_bytes());
            }
        }
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
            let size = if format == WeightFormat::Q8_0 {
                Q8_0_BLOCK
            } else {
                Q4_0_BLOCK
            };
            for (b, chunk) in row.chunks(BLOCK).enumerate() {
                let block = quantize_block(format, chunk);
                let dst = &mut panel[b * size..(b + 1) * size];
                dst[2 * l..2 * l + 2].copy_from_slice(&block.d.to_le_bytes());
                let q = &mut dst[32..];
                // Byte `i` of lane `l` of quad `j`.
                let at = |j: usize, i: usize| (j * LANES + l) * 4 + i;
                if format == WeightFormat::Q8_0 {
                    for (kk, v) in block.q.iter().enumerate() {
                        q[at(kk / 4, kk % 4)] = (i16::from(*v) + 128) as u8;
                    }
                } else {
                    for kk in 0..BLOCK / 2 {
                        let (low, high) = (block.q[kk] as u8, block.q[BLOCK / 2 + kk] as u8);
                        q[at(kk / 4, kk % 4)] = low | high << 4;
                    }
                }
            }
        }
    }
}
