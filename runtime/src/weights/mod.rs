//! Weights: opening a checkpoint (one `.safetensors` file or a sharded one) and binding its
//! tensors to a graph's `WeightDecl`s as f32 `Tensor`s.
//!
//! - `source`: `WeightSource`, which file holds which tensor; shards are mapped lazily.
//! - `bind`: checks every decl (presence, dtype, shape), then reads, widens, slices and
//!   transposes. All problems are reported together.
//! - `unused`: tensors next to the used ones that no decl reads (a note for `check`).
//! - `suggest`: close tensor names for a missing one.
//! - `error`: the error types.

mod bind;
mod error;
mod source;
mod suggest;
mod unused;

pub use bind::bind;
pub use error::{WeightError, WeightErrorKind, WeightErrors};
pub use source::WeightSource;
pub use unused::unused;
