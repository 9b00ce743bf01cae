//! Text that grows one token at a time: fed each new id, [`TextStream`] returns the text that id
//! completed, so that the pieces joined are the text of all the ids (`Tokenizer::decode`).
//!
//! Text is held back while it ends in U+FFFD — an incomplete UTF-8 sequence, as byte-fallback
//! tokens spell a multi-byte character over several ids — until a later id completes it, or
//! `finish` flushes it. Decoding re-reads only a window of recent ids: the ids whose text was last
//! emitted, decoded alone, are the prefix cut off the decoding of the window, which keeps a
//! tokenizer's context-dependent text right (SentencePiece's leading space belongs to a word that
//! is not the first). Text already returned is never taken back: should a later decoding change
//! it, the stream carries on from where the two agree.

use super::tokenizer::{Tokenizer, TokenizerError};

/// A streaming detokenizer over a [`Tokenizer`].
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    /// The context ids (whose text was returned last) and, after them, ids not returned yet.
    window: Vec<i32>,
    /// How many of `window` are context.
    context: usize,
    /// `window[..context]` decoded alone: the prefix to cut off the window's text.
    prefix: String,
}

impl<'t> TextStream<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> TextStream<'t> {
        TextStream {
            tokenizer,
            window: Vec::new(),
            context: 0,
            prefix: String::new(),
        }
    }

    /// The text `id` completes (empty while it is held back).
    pub fn push(&mut self, id: i32) -> Result<String, TokenizerError> {
        self.window.push(id);
        let text = self.tokenizer.decode(&self.window)?;
        if text.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(String::new());
        }
        let new = after_common_prefix(&text, &self.prefix);
        if new.is_empty() {
            return Ok(String::new());
        }
        let new = new.to_string();
        self.window.drain(..self.context);
        self.context = self.window.len();
        self.prefix = self.tokenizer.decode(&self.window)?;
        Ok(new)
    }

    /// The text still held back, if any.
    pub fn finish(self) -> Result<String, TokenizerError> {
        let text = self.tokenizer.decode(&self.window)?;
        Ok(after_common_prefix(&text, &self.prefix).to_string())
    }
}

/// `text` after the longest prefix it shares with `prefix` (on a character boundary).
fn after_common_prefix<'a>(text: &'a str, prefix: &str) -> &'a str {
    let shared = text
        .char_indices()
        .zip(prefix.chars())
        .find(|((_, a), b)| a != b)
        .map_or_else(|| text.len().min(prefix.len()), |((i, _), _)| i);
    &text[shared..]
}
