//! Text to token ids and back with a checkpoint directory's `tokenizer.json`, through Hugging
//! Face's `tokenizers` crate (the library transformers' fast tokenizers wrap, so ids match
//! Python's).
//!
//! `encode` adds special tokens as Python's `tokenizer(text)` does (the file's post-processor: a
//! BOS id, say); `decode` skips special tokens as the `tokenizers` library's `decode` does by
//! default, and ids the tokenizer does not know (a model's vocabulary padded past the tokenizer's)
//! decode to nothing, as there. Chat templates (`tokenizer_config.json`) are not applied.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::BoxError;

/// A loaded `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

/// Why a tokenizer could not be loaded or used.
#[derive(Debug)]
pub enum TokenizerError {
    /// The directory has no `tokenizer.json`.
    Missing {
        dir: PathBuf,
    },
    Read {
        path: PathBuf,
        source: io::Error,
    },
    /// The file is not a tokenizer the `tokenizers` library can load.
    Malformed {
        path: PathBuf,
        source: BoxError,
    },
    Encode(BoxError),
    Decode(BoxError),
    /// A negative id given to `decode`.
    NegativeId(i32),
    /// `encode` produced an id beyond i32 (the models' id type).
    IdTooLarge(u32),
}

impl Tokenizer {
    /// `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => TokenizerError::Missing {
                dir: dir.to_path_buf(),
            },
            _ => TokenizerError::Read {
                path: path.clone(),
                source,
            },
        })?;
        // The library panics on some malformed files (a decoder it cannot read, in 0.23): that
        // is a malformed file too, not a crash.
        let loaded = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the tokenizers library panicked".into());
                Err(why.into())
            });
        let inner = loaded.map_err(|source| TokenizerError::Malformed { path, source })?;
        Ok(Tokenizer { inner })
    }

    /// The ids of `text`, special tokens added as Python's `tokenizer(text)` adds them.
    pub fn encode(&self, text: &str) -> Result<Vec<i32>, TokenizerError> {
        self.encode_with(text, true)
    }

    /// The ids of `text` alone, without special tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<i32>, TokenizerError> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<i32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, special)
            .map_err(TokenizerError::Encode)?;
        encoding
            .get_ids()
            .iter()
            .map(|&id| i32::try_from(id).map_err(|_| TokenizerError::IdTooLarge(id)))
            .collect()
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[i32]) -> Result<String, TokenizerError> {
        let ids = ids
            .iter()
            .map(|&id| u32::try_from(id).map_err(|_| TokenizerError::NegativeId(id)))
            .collect::<Result<Vec<u32>, _>>()?;
        self.inner
            .decode(&ids, true)
            .map_err(TokenizerError::Decode)
    }
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::Missing { dir } => {
                write!(f, "{} has no tokenizer.json", dir.display())
            }
            TokenizerError::Read { path, source } => {
                write!(f, "{}: cannot read: {source}", path.display())
            }
            TokenizerError::Malformed { path, source } => {
                write!(f, "{}: not a tokenizer.json: {source}", path.display())
            }
            TokenizerError::Encode(e) => write!(f, "cannot encode the text: {e}"),
            TokenizerError::Decode(e) => write!(f, "cannot decode the ids: {e}"),
            TokenizerError::NegativeId(id) => write!(f, "cannot decode token id {id}"),
            TokenizerError::IdTooLarge(id) => {
                write!(f, "the tokenizer produced id {id}, beyond 2^31")
            }
        }
    }
}

impl Error for TokenizerError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            TokenizerError::Read { source, .. } => Some(source),
            TokenizerError::Malformed { source, .. }
            | TokenizerError::Encode(source)
            | TokenizerError::Decode(source) => Some(source.as_ref()),
            _ => None,
        }
    }
}
