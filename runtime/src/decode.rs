//! Decoding little-endian tensor bytes: F32, F16 and BF16 widen to f32 exactly (every f16 and
//! bf16 value is an f32 value), I32 and I64 narrow to i32 when they fit.

use half::{bf16, f16};
use safetensors::tensor::Dtype;

/// The floating-point dtypes moec reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FloatDType {
    F32,
    F16,
    BF16,
}

impl FloatDType {
    pub fn of(dtype: Dtype) -> Option<FloatDType> {
        match dtype {
            Dtype::F32 => Some(FloatDType::F32),
            Dtype::F16 => Some(FloatDType::F16),
            Dtype::BF16 => Some(FloatDType::BF16),
            _ => None,
        }
    }

    /// Value `i` of `bytes`, widened to f32 exactly.
    pub fn value(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            FloatDType::F32 => {
                let b = &bytes[4 * i..4 * i + 4];
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
            FloatDType::F16 => f16::from_bits(u16_at(bytes, i)).to_f32(),
            FloatDType::BF16 => bf16::from_bits(u16_at(bytes, i)).to_f32(),
        }
    }

    /// The values of `bytes`, widened to f32 exactly.
    pub fn widen(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            FloatDType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            FloatDType::F16 => u16s(bytes).map(|b| f16::from_bits(b).to_f32()).collect(),
            FloatDType::BF16 => u16s(bytes).map(|b| bf16::from_bits(b).to_f32()).collect(),
        }
    }
}

/// The values of an I32 or I64 tensor as i32: `None` for other dtypes, `Err(v)` for the first
/// I64 value outside the i32 range.
pub(crate) fn narrow_i32(dtype: Dtype, bytes: &[u8]) -> Option<Result<Vec<i32>, i64>> {
    match dtype {
        Dtype::I32 => Some(Ok(bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())),
        Dtype::I64 => Some(
            bytes
                .chunks_exact(8)
                .map(|b| {
                    let v = i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                    i32::try_from(v).map_err(|_| v)
                })
                .collect(),
        ),
        _ => None,
    }
}

fn u16_at(bytes: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])
}

fn u16s(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
}
