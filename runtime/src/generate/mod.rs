//! Text generation around any causal language model that implements [`Decoder`]: the loop
//! (`run`: prefill, then one token at a time, stopping on an end-of-sequence id, a token budget or
//! the model's position limit), how each token is chosen (`sample`), the checkpoint directory's
//! end-of-sequence ids (`eos`), and text in and out through its `tokenizer.json` (`tokenizer`, and
//! `stream` for text that grows one token at a time).
//!
//! Nothing here knows how a model computes its logits or keeps its cache; that is the
//! implementor's business. Nothing here knows about the command line either.

pub mod command;
mod eos;
mod run;
mod sample;
mod stream;
mod tokenizer;

pub use eos::{eos_ids, EosError};
pub use run::{generate, GenerateError, GenerateOptions, Generated, StopReason};
pub use sample::{Sampler, Sampling, SamplingError};
pub use stream::TextStream;
pub use tokenizer::{Tokenizer, TokenizerError};

/// The errors a [`Decoder`] or an `on_token` callback hands back: whatever the implementor's are.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A causal language model that keeps its own KV cache between calls.
pub trait Decoder {
    /// Vocabulary size: the width of a logits row.
    fn vocab_size(&self) -> usize;
    /// The most positions (prompt + generated) the cache holds.
    fn max_positions(&self) -> usize;
    /// Positions already in the cache.
    fn position(&self) -> usize;
    /// Empties the cache.
    fn reset(&mut self);
    /// Runs `ids` as the next positions of the sequence (appending them to the cache) and returns
    /// the last one's logits (`vocab_size` values): what the next id is chosen from.
    fn forward(
        &mut self,
        ids: &[i32],
    ) -> Result<Vec<f32>, Box<dyn std::error::Error + Send + Sync>>;
}
