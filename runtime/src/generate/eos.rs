//! A checkpoint directory's end-of-sequence ids, found where transformers' `generate` finds them:
//! `generation_config.json`'s `eos_token_id`, else `config.json`'s, else none. Either may be one id
//! or a list of ids; a missing file, a missing field or `null` passes on to the next place. A file
//! that cannot be read, is not a JSON object, or holds anything else in the field is an error
//! naming it.
//! Other generation settings in those files (sampling defaults, lengths) are not read.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A `generation_config.json` or `config.json` that says nothing usable about its eos ids.
#[derive(Debug)]
pub enum EosError {
    Read {
        path: PathBuf,
        source: io::Error,
    },
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The file is JSON but not an object.
    NotAnObject {
        path: PathBuf,
    },
    /// `eos_token_id` holds something other than an id (0..2^31), a list of ids, or null.
    Field {
        path: PathBuf,
        found: String,
    },
}

/// The end-of-sequence ids of the checkpoint in `dir` (empty when it names none).
pub fn eos_ids(dir: &Path) -> Result<Vec<i32>, EosError> {
    for name in ["generation_config.json", "config.json"] {
        if let Some(ids) = read_field(&dir.join(name))? {
            return Ok(ids);
        }
    }
    Ok(Vec::new())
}

/// The ids in `path`'s `eos_token_id`; `None` when the file, the field or its value is absent.
fn read_field(path: &Path) -> Result<Option<Vec<i32>>, EosError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EosError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let json: Value = serde_json::from_str(&text).map_err(|source| EosError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |value: &Value| EosError::Field {
        path: path.to_path_buf(),
        found: value.to_string(),
    };
    let Some(fields) = json.as_object() else {
        return Err(EosError::NotAnObject {
            path: path.to_path_buf(),
        });
    };
    match fields.get("eos_token_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| token_id(item).ok_or_else(|| bad(item)))
            .collect::<Result<_, _>>()
            .map(Some),
        Some(value) => token_id(value)
            .map(|id| Some(vec![id]))
            .ok_or_else(|| bad(value)),
    }
}

fn token_id(value: &Value) -> Option<i32> {
    value.as_u64().and_then(|id| i32::try_from(id).ok())
}

impl fmt::Display for EosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EosError::Read { path, source } => {
                write!(f, "{}: cannot read: {source}", path.display())
            }
            EosError::Json { path, source } => {
                write!(f, "{}: not valid JSON: {source}", path.display())
            }
            EosError::NotAnObject { path } => {
                write!(f, "{}: expected a JSON object", path.display())
            }
            EosError::Field { path, found } => write!(
                f,
                "{}: `eos_token_id` must be a token id, a list of token ids, or null; found {found}",
                path.display()
            ),
        }
    }
}

impl Error for EosError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            EosError::Read { source, .. } => Some(source),
            EosError::Json { source, .. } => Some(source),
            EosError::NotAnObject { .. } | EosError::Field { .. } => None,
        }
    }
}
