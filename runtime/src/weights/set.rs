//! `WeightSet`: a graph's weights as a backend takes them, one at a time: tensors already in
//! memory (borrowed), or a checked checkpoint whose tensors are read when asked for (owned,
//! and dropped by the caller once used). The CPU backend packs from a `WeightSet` matmul by
//! matmul, so loading a checkpoint never holds the whole model in f32.
//!
//! `Subset` is one stage's weights of an encoder-decoder model: its ids map to the whole
//! model's.

use std::borrow::Cow;

use moec_compiler::ir::{Graph, WeightFormat};
use moec_compiler::storage;
use moec_compiler::tensor::Tensor;

use super::bind::{check, Checked};
use super::error::WeightErrors;
use super::source::WeightSource;

/// Weights by decl index.
pub trait WeightSet {
    /// How many weights there are (one per decl of the graph they are for).
    fn count(&self) -> usize;

    /// Weight `id` as f32, shaped as its decl; `id < count()`.
    fn tensor(&self, id: usize) -> Cow<'_, Tensor>;

    /// Every weight, in order (borrowed when they are in memory already).
    fn tensors(&self) -> Cow<'_, [Tensor]> {
        Cow::Owned(
            (0..self.count())
                .map(|id| self.tensor(id).into_owned())
                .collect(),
        )
    }
}

/// Tensors in memory (a `Vec<Tensor>`, a `&[Tensor]`), lent as they are.
impl<T: AsRef<[Tensor]>> WeightSet for T {
    fn count(&self) -> usize {
        self.as_ref().len()
    }

    fn tensor(&self, id: usize) -> Cow<'_, Tensor> {
        Cow::Borrowed(&self.as_ref()[id])
    }

    fn tensors(&self) -> Cow<'_, [Tensor]> {
        Cow::Borrowed(self.as_ref())
    }
}

impl WeightSet for Checked<'_> {
    fn count(&self) -> usize {
        self.len()
    }

    fn tensor(&self, id: usize) -> Cow<'_, Tensor> {
        Cow::Owned(self.read(id))
    }
}

/// Records in `g` (`storage::keep_bf16`) that its matmuls over tensors `source` holds as
/// bf16 keep them as bf16: what the CPU backend's JIT packs then, and what memory plans
/// count. Reads file headers only; fails as `check` does.
pub fn keep_checkpoint_bf16(g: &mut Graph, source: &WeightSource) -> Result<(), WeightErrors> {
    let checked = check(&g.weights, source)?;
    let bf16: Vec<bool> = (0..checked.len())
        .map(|id| checked.format(id) == WeightFormat::Bf16)
        .collect();
    storage::keep_bf16(g, |id| bf16[id]);
    Ok(())
}

/// Some of another set's weights: this set's weight `i` is `all`'s weight `ids[i]`.
pub struct Subset<'a> {
    pub all: &'a dyn WeightSet,
    pub ids: &'a [usize],
}

impl WeightSet for Subset<'_> {
    fn count(&self) -> usize {
        self.ids.len()
    }

    fn tensor(&self, id: usize) -> Cow<'_, Tensor> {
        self.all.tensor(self.ids[id])
    }
}
