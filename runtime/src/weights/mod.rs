//! Weights: opening a checkpoint (one `.safetensors` file or a sharded one) and binding its
//! tensors to a graph's `WeightDecl`s as f32 `Tensor`s.
//!
//! - `source`: `WeightSource`, which file holds which tensor; shards are mapped lazily.
//! - `bind`: checks every decl (presence, dtype, shape), then reads, widens, slices and
//!   transposes (all at once, or one tensor at a time from `Checked`). All problems are
//!   reported together.
//! - `set`: `WeightSet`, weights as backends take them: in memory, or read when asked for.
//! - `unused`: tensors next to the used ones that no decl reads (a note for `check`).
//! - `suggest`: close tensor names for a missing one.
//! - `error`: the error types.

mod bind;
mod error;
mod set;
mod source;
mod suggest;
mod unused;

pub use bind::{bind, check, Checked};
pub use error::{WeightError, WeightErrorKind, WeightErrors};
pub use set::{keep_checkpoint_bf16, Subset, WeightSet};
pub use source::WeightSource;
pub use unused::unused;
