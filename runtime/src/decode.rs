//! Decoding little-endian tensor bytes: F32, F16 and BF16 widen to f32 exactly (every f16 and
//! bf16 value is an f32 value), I32 and I64 narrow to i32 when they fit.

use half::{bf16, f16};
use safetensors::tensor::Dtype;

/// The values of a floating-point tensor as f32, or `None` for any other dtype.
pub(crate) fn widen_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let values = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => u16s(bytes).map(|b| f16::from_bits(b).to_f32()).collect(),
        Dtype::BF16 => u16s(bytes).map(|b| bf16::from_bits(b).to_f32()).collect(),
        _ => return None,
    };
    Some(values)
}

/// Whether `widen_f32` reads this dtype.
pub(crate) fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// Why an integer tensor could not be read as i32.
pub(crate) enum NarrowError {
    NotInteger,
    /// An I64 value outside the i32 range.
    OutOfRange(i64),
}

/// The values of an I32 or I64 tensor as i32.
pub(crate) fn narrow_i32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<i32>, NarrowError> {
    match dtype {
        Dtype::I32 => Ok(bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|b| {
                let v = i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                i32::try_from(v).map_err(|_| NarrowError::OutOfRange(v))
            })
            .collect(),
        _ => Err(NarrowError::NotInteger),
    }
}

fn u16s(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}
