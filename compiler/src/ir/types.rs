//! Value types on graph edges: a dtype and a shape whose dims may depend on the
//! run-time token count.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element type of a graph value. Weights stored as f16/bf16 are widened to f32
/// on load, so the IR only computes in f32; i32 holds expert indices and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F32,
    I32,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
        })
    }
}

/// One dimension: `per_token · tokens + fixed`. Most dims are fixed (`per_token == 0`);
/// the token axis is `tokens` (1, 0); a flattened `[tokens, k]` axis would be (k, 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dim {
    pub per_token: u64,
    pub fixed: u64,
}

impl Dim {
    pub const TOKENS: Dim = Dim {
        per_token: 1,
        fixed: 0,
    };
    pub const fn fixed(n: u64) -> Dim {
        Dim {
            per_token: 0,
            fixed: n,
        }
    }
    /// The fixed size, when the dim does not depend on the token count.
    pub fn as_fixed(self) -> Option<u64> {
        (self.per_token == 0).then_some(self.fixed)
    }
    /// The concrete size for a run with `tokens` tokens.
    pub fn eval(self, tokens: usize) -> usize {
        (self.per_token as usize) * tokens + self.fixed as usize
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.per_token, self.fixed) {
            (0, n) => write!(f, "{n}"),
            (1, 0) => f.write_str("tokens"),
            (k, 0) => write!(f, "{k}*tokens"),
            (1, n) => write!(f, "tokens+{n}"),
            (k, n) => write!(f, "{k}*tokens+{n}"),
        }
    }
}

/// A tensor-valued type: dtype and dims.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    pub fn f32(shape: Vec<Dim>) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape,
        }
    }
    pub fn i32(shape: Vec<Dim>) -> TensorType {
        TensorType {
            dtype: DType::I32,
            shape,
        }
    }
    pub fn scalar() -> TensorType {
        TensorType::f32(Vec::new())
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// The last dim's fixed size (feature widths are always fixed).
    pub fn width(&self) -> Option<u64> {
        self.shape.last().and_then(|d| d.as_fixed())
    }
    pub fn concrete_shape(&self, tokens: usize) -> Vec<usize> {
        self.shape.iter().map(|d| d.eval(tokens)).collect()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
