//! Block quantization: GGUF's q8_0 and q4_0 for weights (and bf16/f16 rounding),
//! and the 8-bit blocks a q8_0 / q4_0 matmul quantizes its activations into.
//!
//! A weight row `[K]` (one output column of `[N, K]`) is cut into blocks of
//! [`BLOCK`] consecutive values (the last one padded with zeros), each stored as
//! small integers and one f16 scale `d`, exactly as ggml's reference quantizers
//! compute them:
//! - q8_0: `d = max|x| / 127`, `q = round(x / d)` (half away from zero), the
//!   value is `q·d`;
//! - q4_0: `d = m / -8` where `m` is the value of largest magnitude, `q =
//!   min(15, trunc(x/d + 8.5))`, the value is `(q - 8)·d`.
//!
//! (`1/d` is computed from the f32 `d`, the value from the f16 one, as in ggml.)
//! Every dequantized value `q·d` is exact in f32 (an 8-bit integer times an
//! 11-bit significand), so a kernel that multiplies `q` by `d` in f32 computes
//! with exactly the weights [`dequantize`] gives the interpreter.
//!
//! A matmul over q8_0 / q4_0 weights also quantizes its activations, as
//! llama.cpp does: each block of 32 values of an x row to 8-bit integers with
//! an f32 scale ([`quantize_activations`]), so that its sums are integer dot
//! products (AVX512-VNNI); the interpreter computes with the same rounded
//! activations ([`round_activations`]).

pub use crate::ir::WeightFormat;
use crate::tensor::{Tensor, TensorData};
use half::{bf16, f16};

/// Values per quantization block.
pub const BLOCK: usize = WeightFormat::BLOCK;

/// One quantized block: its scale and its integers (q8_0: `-127..=127`; q4_0:
/// `0..=15`, offset by 8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    pub d: f16,
    pub q: [i8; BLOCK],
}

/// Quantizes up to [`BLOCK`] values (missing ones are zeros).
pub fn quantize_block(format: WeightFormat, x: &[f32]) -> Block {
    let mut v = [0.0f32; BLOCK];
    v[..x.len().min(BLOCK)].copy_from_slice(&x[..x.len().min(BLOCK)]);
    let mut q = [0i8; BLOCK];
    let d = match format {
        WeightFormat::Q8_0 => {
            let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let d = amax / 127.0;
            let id = inverse_scale(d);
            for (q, x) in q.iter_mut().zip(&v) {
                *q = (x * id).round() as i8;
            }
            d
        }
        WeightFormat::Q4_0 => {
            let max = v
                .iter()
                .fold(0.0f32, |m, x| if x.abs() > m.abs() { *x } else { m });
            let d = max / -8.0;
            let id = inverse_scale(d);
            for (q, x) in q.iter_mut().zip(&v) {
                *q = ((x * id + 8.5) as i8).min(15);
            }
            d
        }
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => 0.0,
    };
    Block {
        d: f16::from_f32(d),
        q,
    }
}

impl Block {
    /// Value `i` as the kernels compute it.
    pub fn value(&self, format: WeightFormat, i: usize) -> f32 {
        let q = match format {
            WeightFormat::Q4_0 => i32::from(self.q[i]) - 8,
            _ => i32::from(self.q[i]),
        };
        q as f32 * self.d.to_f32()
    }
}

/// `t` (rank ≥ 1, f32) with each last-axis row replaced by what `format` stores:
/// rounded to f16 or bf16, or quantized in blocks and dequantized; unchanged for f32.
pub fn dequantize(format: WeightFormat, mut t: Tensor) -> Tensor {
    match format {
        WeightFormat::F32 => t,
        WeightFormat::Bf16 => {
            if let TensorData::F32(v) = &mut t.data {
                for x in v.iter_mut() {
                    *x = bf16::from_f32(*x).to_f32();
                }
            }
            t
        }
        WeightFormat::F16 => {
            if let TensorData::F32(v) = &mut t.data {
                for x in v.iter_mut() {
                    *x = f16::from_f32(*x).to_f32();
                }
            }
            t
        }
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
            let k = t.shape.last().copied().unwrap_or(1).max(1);
            if let TensorData::F32(v) = &mut t.data {
                for row in v.chunks_mut(k) {
                    for chunk in row.chunks_mut(BLOCK) {
                        let b = quantize_block(format, chunk);
                        for (i, x) in chunk.iter_mut().enumerate() {
                            *x = b.value(format, i);
                        }
                    }
                }
            }
            t
        }
    }
}

/// A block of activations as a q8_0 / q4_0 matmul reads it: up to [`BLOCK`]
/// values (missing ones are zeros) as 8-bit integers `q = round(x / d)` (half
/// away from zero) with `d = max|x| / 127` (a block too small to scale: zeros,
/// [`inverse_scale`]), as ggml's `quantize_row_q8_0` does, except that `d`
/// stays f32 (ggml rounds it to f16). Returns `d`, the integers
/// and their sum (which a kernel that reads the weights' integers unsigned
/// needs to take their offset back out).
pub fn quantize_activations(x: &[f32]) -> (f32, [i8; BLOCK], i32) {
    let n = x.len().min(BLOCK);
    let amax = x[..n].iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse_scale(d);
    let mut q = [0i8; BLOCK];
    for (q, v) in q.iter_mut().zip(&x[..n]) {
        *q = round_half_away(v * id) as i8;
    }
    (d, q, q.iter().map(|&v| i32::from(v)).sum())
}

/// `1/d`, the factor that scales a block's values to integers: 0 for a block of
/// zeros, and also for a block so small (`|d|` subnormal, its values under about
/// 1.5e-36) that `1/d` would overflow: such a block quantizes to zeros.
pub fn inverse_scale(d: f32) -> f32 {
    if d.abs() >= f32::MIN_POSITIVE {
        1.0 / d
    } else {
        0.0
    }
}

/// `t` (|t| ≤ 127) rounded to the nearest integer, halves away from zero (as
/// `f32::round`, without a libm call on CPUs before SSE4.1, so it vectorizes):
/// `t - trunc(t)` is exact at these magnitudes.
fn round_half_away(t: f32) -> i32 {
    let whole = t as i32;
    let frac = t - whole as f32;
    whole + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

/// `x`'s last-axis rows of `k` values each replaced by the activations a q8_0 /
/// q4_0 matmul computes with: each block of [`BLOCK`] values quantized by
/// [`quantize_activations`] and multiplied back (`q·d`, rounded to f32; a
/// kernel sums the integers exactly and scales the block's sum instead, so
/// the two differ by f32 roundings only).
pub fn round_activations(x: &mut [f32], k: usize) {
    for row in x.chunks_mut(k.max(1)) {
        for chunk in row.chunks_mut(BLOCK) {
            let (d, q, _) = quantize_activations(chunk);
            for (x, q) in chunk.iter_mut().zip(q) {
                *x = f32::from(q) * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's reference quantizers on hand-worked blocks.
    #[test]
    fn blocks_quantize_as_ggml_does() {
        let mut x = [0.0f32; BLOCK];
        x[0] = 1.27;
        x[1] = -0.635;
        x[2] = 0.005; // 0.5 / 100 of the max: rounds half away from zero
        let b = quantize_block(WeightFormat::Q8_0, &x);
        assert_eq!(b.d, f16::from_f32(0.01));
        assert_eq!(&b.q[..4], &[127, -64, 1, 0]);

        let mut x = [0.0f32; BLOCK];
        x[0] = -0.8; // the largest magnitude: d = -0.8 / -8 = 0.1
        x[1] = 0.7;
        x[2] = 0.74; // 7.4 + 8.5 = 15.9 → 15
        x[3] = 0.04;
        let b = quantize_block(WeightFormat::Q4_0, &x);
        assert_eq!(b.d, f16::from_f32(0.1));
        assert_eq!(&b.q[..5], &[0, 15, 15, 8, 8]);
        assert_eq!(
            b.value(WeightFormat::Q4_0, 0),
            -8.0 * f16::from_f32(0.1).to_f32()
        );
    }

    #[test]
    fn activations_round_half_away_from_zero() {
        for t in [
            0.0f32,
            0.49999997,
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -0.49999997,
            126.5,
            -127.0,
        ] {
            assert_eq!(round_half_away(t), t.round() as i32, "{t}");
        }
        let (d, q, s) = quantize_activations(&[0.5, -1.0, 0.25]);
        assert_eq!(d, 1.0 / 127.0);
        assert_eq!(&q[..4], &[64, -127, 32, 0]);
        assert_eq!(s, 64 - 127 + 32);
    }

    #[test]
    fn a_zero_block_stays_zero_and_a_short_row_is_padded() {
        for f in [WeightFormat::Q8_0, WeightFormat::Q4_0] {
            let t = Tensor::f32(vec![1, 3], vec![0.0, 0.0, 0.0]);
            assert_eq!(dequantize(f, t).as_f32(), &[0.0, 0.0, 0.0]);
            let t = Tensor::f32(vec![2, 33], (0..66).map(|i| i as f32 - 30.0).collect());
            let d = dequantize(f, t);
            assert_eq!(d.shape, vec![2, 33]);
            // Row 0's last value is a block of its own, its maximum: within the f16 scale's rounding.
            assert!(
                (d.as_f32()[32] - 2.0).abs() < 2e-3,
                "{f:?}: {}",
                d.as_f32()[32]
            );
            // Row 1 (3..=35) starts a block of its own, max 34: within half a step of 3.
            let step = if f == WeightFormat::Q8_0 {
                34.0 / 127.0
            } else {
                34.0 / 8.0
            };
            assert!(
                (d.as_f32()[33] - 3.0).abs() <= step / 2.0 + 1e-3,
                "{f:?}: {}",
                d.as_f32()[33]
            );
        }
    }

    /// Activations too small to scale (`1/d` would overflow) quantize to zeros, of
    /// either sign; a fuzzer's spec drove them there, and the integer rounding
    /// overflowed.
    #[test]
    fn activations_too_small_to_scale_quantize_to_zeros() {
        for v in [1e-38f32, -1e-38, 1e-40, -1e-45] {
            let (d, q, s) = quantize_activations(&[v, v / 2.0, 0.0]);
            assert_eq!((q, s), ([0; BLOCK], 0), "{v:e}: d {d:e}");
        }
        // The smallest block that scales keeps its values.
        let small = 127.0 * f32::MIN_POSITIVE;
        let (d, q, _) = quantize_activations(&[small, -small]);
        assert_eq!((d, q[0], q[1]), (f32::MIN_POSITIVE, 127, -127));
    }
}
