//! Weight errors: plain data naming the file, the tensor and the decl's key, with what was
//! expected and what was found. `bind` returns all of them at once as `WeightErrors`.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use moec_compiler::ir::weight::AxisSlice;
use moec_compiler::ir::WeightFormat;
use moec_compiler::tensor::ShapeDisplay;

use crate::file::OpenError;

/// One problem with a checkpoint, in `file`. The kind is boxed to keep `Result`s small.
#[derive(Debug)]
pub struct WeightError {
    pub file: PathBuf,
    pub kind: Box<WeightErrorKind>,
}

#[derive(Debug)]
pub enum WeightErrorKind {
    /// The file could not be opened or mapped.
    Io(io::Error),
    /// A directory holds neither `model.safetensors` nor `model.safetensors.index.json`.
    NoCheckpoint,
    /// `file` is a shard that `index` names, and it does not exist.
    MissingShard { index: PathBuf },
    /// The file is not valid safetensors (bad header length, bad JSON, offsets out of range).
    Corrupt(String),
    /// The index JSON is malformed.
    BadIndex(String),
    /// No tensor `tensor`; `suggestions` are the closest existing names, best first.
    MissingTensor {
        tensor: String,
        key: String,
        suggestions: Vec<String>,
    },
    /// The file's shape is not the one the decl implies. `expected` is in file layout
    /// (transposed back if the decl says so); for `expert: Some(e)` it is one expert's shape
    /// and the file should hold `[E, ..expected]` with `E > e` (`e`: the highest expert of
    /// the tensor that mismatched). `key` is how the decl is named (see `bind::described`).
    Shape {
        tensor: String,
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
        expert: Option<usize>,
        transposed: bool,
        /// The decl reads these entries of the second-to-last axis (`expected` counts them).
        rows: Option<AxisSlice>,
        /// The decl reads these entries of the last axis (`expected` counts them).
        columns: Option<AxisSlice>,
        /// The binding that would read the file's layout, when it is a known one.
        hint: Option<String>,
    },
    /// The spec requires a storage dtype (`as bf16`) and the file stores another.
    DType {
        tensor: String,
        key: String,
        found: String,
        expected: WeightFormat,
    },
    /// The checkpoint holds `bias` beside the read weight `tensor`, and no decl reads it: the
    /// spec's linear has no bias where the model has one.
    UnreadBias {
        bias: String,
        tensor: String,
        key: String,
    },
    /// A dtype weights cannot have (only F32, F16 and BF16 are read).
    UnsupportedDType {
        tensor: String,
        key: String,
        found: String,
    },
}

impl WeightError {
    pub(crate) fn new(file: &Path, kind: WeightErrorKind) -> WeightError {
        WeightError {
            file: file.to_path_buf(),
            kind: Box::new(kind),
        }
    }

    pub(crate) fn open(file: &Path, error: OpenError) -> WeightError {
        let kind = match error {
            OpenError::Io(e) => WeightErrorKind::Io(e),
            OpenError::Corrupt(why) => WeightErrorKind::Corrupt(why),
        };
        WeightError::new(file, kind)
    }
}

impl fmt::Display for WeightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        match &*self.kind {
            WeightErrorKind::Io(e) => write!(f, "cannot read: {e}"),
            WeightErrorKind::NoCheckpoint => {
                write!(
                    f,
                    "directory holds neither model.safetensors nor model.safetensors.index.json"
                )
            }
            WeightErrorKind::MissingShard { index } => {
                write!(
                    f,
                    "shard does not exist (it is named by {})",
                    index.display()
                )
            }
            WeightErrorKind::Corrupt(why) => write!(f, "not a valid safetensors file: {why}"),
            WeightErrorKind::BadIndex(why) => write!(f, "not a valid safetensors index: {why}"),
            WeightErrorKind::MissingTensor {
                tensor,
                key,
                suggestions,
            } => {
                write!(f, "no tensor \"{tensor}\" ({key})")?;
                for (i, name) in suggestions.iter().enumerate() {
                    let lead = if i == 0 { "; did you mean" } else { " or" };
                    write!(f, "{lead} \"{name}\"")?;
                }
                Ok(())
            }
            WeightErrorKind::Shape {
                tensor,
                key,
                found,
                expected,
                expert,
                transposed,
                rows,
                columns,
                hint,
            } => {
                write!(
                    f,
                    "tensor \"{tensor}\" has shape {}, expected ",
                    ShapeDisplay(found)
                )?;
                let mut dims: Vec<String> = expected.iter().map(usize::to_string).collect();
                // A sliced axis needs room for every entry read.
                let room = |dims: &mut Vec<String>, axis: Option<usize>, s: &Option<AxisSlice>| {
                    if let (Some(s), Some(axis)) = (s, axis) {
                        let n = expected[axis];
                        dims[axis] = format!("≥{}", if n == 0 { 0 } else { s.at(n - 1) + 1 });
                    }
                };
                let rank = expected.len();
                room(&mut dims, rank.checked_sub(2), rows);
                room(&mut dims, rank.checked_sub(1), columns);
                match expert {
                    Some(e) => write!(f, "[E, {}] with E > {e}", dims.join(", "))?,
                    None => write!(f, "[{}]", dims.join(", "))?,
                }
                write!(f, " ({key}")?;
                if let Some(r) = rows {
                    write!(f, ", rows {}::{}", r.start, r.step)?;
                }
                if let Some(c) = columns {
                    write!(f, ", columns {}::{}", c.start, c.step)?;
                }
                if *transposed {
                    f.write_str(", stored transposed")?;
                }
                f.write_str(")")?;
                match hint {
                    Some(hint) => write!(f, "; {hint}"),
                    None => Ok(()),
                }
            }
            WeightErrorKind::DType {
                tensor,
                key,
                found,
                expected,
            } => {
                write!(
                    f,
                    "tensor \"{tensor}\" is stored as {found}, expected {expected} ({key})"
                )
            }
            WeightErrorKind::UnreadBias { bias, tensor, key } => write!(
                f,
                "the checkpoint has a bias \"{bias}\" for \"{tensor}\" ({key}), which the spec reads without one; give its linear `bias = true` (and bind the bias if its name differs)"
            ),
            WeightErrorKind::UnsupportedDType { tensor, key, found } => write!(
                f,
                "tensor \"{tensor}\" has dtype {found}; weights must be F32, F16 or BF16 ({key})"
            ),
        }
    }
}

impl Error for WeightError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &*self.kind {
            WeightErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Every problem `bind` found, in decl order. Never empty.
#[derive(Debug)]
pub struct WeightErrors(pub Vec<WeightError>);

impl fmt::Display for WeightErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl Error for WeightErrors {}
