//! How weight values are stored: one vocabulary for the whole toolchain. A spec's
//! `weights ... as bf16` requires a storage format of the file, the CPU backend
//! packs its panels in one (f32, bf16, or GGUF's q8_0/q4_0 blocks), the GPU binds
//! f32 or f16 weights, and the command line names them the same way (`f32`,
//! `f16`, `bf16`, `q8_0`, `q4_0`). Values are computed in f32 whatever the
//! format: a format says only how many bytes a weight takes and how it is read.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A storage format of weight values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WeightFormat {
    #[default]
    F32,
    F16,
    #[serde(alias = "BF16")]
    Bf16,
    /// Blocks of [`WeightFormat::BLOCK`] values: 8-bit integers and one f16 scale (GGUF's q8_0).
    Q8_0,
    /// Blocks of [`WeightFormat::BLOCK`] values: 4-bit integers and one f16 scale (GGUF's q4_0).
    Q4_0,
}

impl WeightFormat {
    /// Values per block of a quantized format.
    pub const BLOCK: usize = 32;

    /// Every format, in the order the command line lists them.
    pub const ALL: [WeightFormat; 5] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
    ];

    /// The name the spec, the command line and messages use.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_0 => "q4_0",
        }
    }

    /// Whether values are stored in blocks of integers with a scale.
    pub fn is_quantized(self) -> bool {
        matches!(self, WeightFormat::Q8_0 | WeightFormat::Q4_0)
    }

    /// Bytes one block of [`WeightFormat::BLOCK`] values takes, scale included.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4 * Self::BLOCK,
            WeightFormat::F16 | WeightFormat::Bf16 => 2 * Self::BLOCK,
            WeightFormat::Q8_0 => 2 + Self::BLOCK,
            WeightFormat::Q4_0 => 2 + Self::BLOCK / 2,
        }
    }

    /// Bytes `values` weights take, stored as rows of `row` values each (a
    /// quantized row is padded to whole blocks).
    pub fn bytes(self, values: u64, row: u64) -> u64 {
        match self {
            WeightFormat::F32 => values.saturating_mul(4),
            WeightFormat::F16 | WeightFormat::Bf16 => values.saturating_mul(2),
            WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                let rows = values.checked_div(row).unwrap_or(0);
                let blocks = row.div_ceil(Self::BLOCK as u64);
                rows.saturating_mul(blocks)
                    .saturating_mul(self.block_bytes() as u64)
            }
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<WeightFormat, String> {
        WeightFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = WeightFormat::ALL.iter().map(|f| f.name()).collect();
                format!("unknown weight format `{s}`: one of {}", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::WeightFormat;

    #[test]
    fn names_round_trip_and_sizes_count_blocks() {
        for f in WeightFormat::ALL {
            assert_eq!(f.name().parse::<WeightFormat>(), Ok(f));
        }
        assert!("q5_k".parse::<WeightFormat>().is_err());
        // A [2, 40] matrix: each row of 40 values is two blocks when quantized.
        assert_eq!(WeightFormat::F32.bytes(80, 40), 320);
        assert_eq!(WeightFormat::Bf16.bytes(80, 40), 160);
        assert_eq!(WeightFormat::Q8_0.bytes(80, 40), 2 * 2 * 34);
        assert_eq!(WeightFormat::Q4_0.bytes(80, 40), 2 * 2 * 18);
    }
}
