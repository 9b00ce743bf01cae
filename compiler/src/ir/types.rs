//! Value types on graph edges: a dtype and a shape whose dims may depend on the
//! run-time symbols (`tokens`, `past`, `source`).

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

/// The symbols a dim may depend on, bound at run time: the new tokens of this
/// call (`tokens`), the tokens already held by the model's state (`past`, the
/// KV cache), and an encoder-decoder model's source sequence (`source`, the
/// encoder's tokens, which the decoder's cross-attention reads). Without state
/// `past` is always 0; without an encoder `source` is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Syms {
    pub tokens: usize,
    pub past: usize,
    pub source: usize,
}

impl Syms {
    /// A call of `tokens` new tokens with nothing cached.
    pub const fn tokens(tokens: usize) -> Syms {
        Syms {
            tokens,
            past: 0,
            source: 0,
        }
    }
}

impl From<usize> for Syms {
    fn from(tokens: usize) -> Syms {
        Syms::tokens(tokens)
    }
}

/// One dimension, affine in the symbols:
/// `per_token·tokens + per_past·past + per_source·source + fixed`.
/// Most dims are fixed; the token axis is `tokens` (1, 0, 0, 0); a flattened
/// `[tokens, k]` axis is (k, 0, 0, 0); a KV-cache axis is `past + tokens`
/// (1, 1, 0, 0); an encoder's token axis is `source` (0, 0, 1, 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dim {
    pub per_token: u64,
    #[serde(default)]
    pub per_past: u64,
    #[serde(default)]
    pub per_source: u64,
    pub fixed: u64,
}

impl Dim {
    pub const TOKENS: Dim = Dim {
        per_token: 1,
        per_past: 0,
        per_source: 0,
        fixed: 0,
    };
    /// Every position held after a call: the cached ones and the new ones.
    pub const POSITIONS: Dim = Dim {
        per_token: 1,
        per_past: 1,
        per_source: 0,
        fixed: 0,
    };
    /// The source sequence of an encoder-decoder model (the encoder's tokens).
    pub const SOURCE: Dim = Dim {
        per_token: 0,
        per_past: 0,
        per_source: 1,
        fixed: 0,
    };
    pub const fn fixed(n: u64) -> Dim {
        Dim {
            per_token: 0,
            per_past: 0,
            per_source: 0,
            fixed: n,
        }
    }
    /// The fixed size, when the dim depends on no symbol.
    pub fn as_fixed(self) -> Option<u64> {
        (self.per_token == 0 && self.per_past == 0 && self.per_source == 0).then_some(self.fixed)
    }
    /// Whether the dim depends on the cached token count.
    pub fn uses_past(self) -> bool {
        self.per_past != 0
    }
    /// Whether the dim depends on the source sequence's length.
    pub fn uses_source(self) -> bool {
        self.per_source != 0
    }
    /// The dim with `source` read as `tokens`: an encoder run on its own, whose
    /// tokens are the source sequence (only for dims that use no `tokens`).
    pub fn source_as_tokens(self) -> Dim {
        Dim {
            per_token: self.per_token + self.per_source,
            per_source: 0,
            ..self
        }
    }
    /// `self · c`.
    /// `c` times this dim; saturating, so an absurd size stays absurd (and is
    /// refused by `TensorType::check_size`) instead of wrapping to a small one.
    pub fn scale(self, c: u64) -> Dim {
        Dim {
            per_token: self.per_token.saturating_mul(c),
            per_past: self.per_past.saturating_mul(c),
            per_source: self.per_source.saturating_mul(c),
            fixed: self.fixed.saturating_mul(c),
        }
    }
    /// The concrete size for a run with these symbols (a plain token count means nothing cached).
    pub fn eval(self, syms: impl Into<Syms>) -> usize {
        let s = syms.into();
        (self.per_token as usize) * s.tokens
            + (self.per_past as usize) * s.past
            + (self.per_source as usize) * s.source
            + self.fixed as usize
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms = Vec::new();
        for (c, sym) in [
            (self.per_source, "source"),
            (self.per_past, "past"),
            (self.per_token, "tokens"),
        ] {
            match c {
                0 => {}
                1 => terms.push(sym.to_string()),
                c => terms.push(format!("{c}*{sym}")),
            }
        }
        if self.fixed != 0 || terms.is_empty() {
            terms.push(self.fixed.to_string());
        }
        f.write_str(&terms.join("+"))
    }
}

/// A tensor-valued type: dtype and dims.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

/// The most bytes one tensor may take at one token, one past and one source position (1 TiB;
/// the largest tensors of released models are a few GiB). Every tensor of a graph
/// is under it, so sizes summed over a graph's nodes stay far inside 64 bits.
pub const MAX_TENSOR_BYTES: u64 = 1 << 40;

impl TensorType {
    /// An error when the tensor would take more than [`MAX_TENSOR_BYTES`] at one
    /// token, one past and one source position.
    pub fn check_size(&self) -> Result<(), String> {
        let bytes = self.shape.iter().try_fold(4u64, |b, d| {
            let extent = d
                .per_token
                .checked_add(d.per_past)?
                .checked_add(d.per_source)?
                .checked_add(d.fixed)?;
            b.checked_mul(extent)
        });
        match bytes {
            Some(b) if b <= MAX_TENSOR_BYTES => Ok(()),
            _ => Err(format!(
                "a tensor of {self} would take more than 1 TiB, the most one tensor may"
            )),
        }
    }

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
    pub fn concrete_shape(&self, syms: impl Into<Syms>) -> Vec<usize> {
        let syms = syms.into();
        self.shape.iter().map(|d| d.eval(syms)).collect()
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
