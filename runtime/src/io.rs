//! Tensor files: run inputs and outputs as safetensors. Reading widens F32/F16/BF16 to f32
//! tensors and narrows I32/I64 to i32 tensors (an I64 value out of i32 range is an error);
//! writing stores f32 tensors as F32 and i32 tensors as I32. Errors name the file.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use moec_compiler::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensorError;

use crate::decode::{narrow_i32, FloatDType};
use crate::file::{MappedFile, OpenError};

/// A problem reading or writing the tensor file `path`.
#[derive(Debug)]
pub struct IoError {
    pub path: PathBuf,
    pub kind: IoErrorKind,
}

#[derive(Debug)]
pub enum IoErrorKind {
    Io(io::Error),
    /// Not a valid safetensors file.
    Corrupt(String),
    /// A dtype tensor files cannot hold (only F32, F16, BF16, I32 and I64 are read).
    UnsupportedDType {
        tensor: String,
        dtype: String,
    },
    /// An I64 tensor holds a value that does not fit in i32.
    OutOfRange {
        tensor: String,
        value: i64,
    },
    /// safetensors refused to serialize the tensors.
    Serialize(String),
}

/// Every tensor in a safetensors file, by name.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, IoError> {
    let error = |kind| IoError {
        path: path.to_path_buf(),
        kind,
    };
    let file = MappedFile::open(path).map_err(|e| {
        error(match e {
            OpenError::Io(e) => IoErrorKind::Io(e),
            OpenError::Corrupt(why) => IoErrorKind::Corrupt(why),
        })
    })?;
    let mut tensors = BTreeMap::new();
    for name in file.names() {
        let Some(raw) = file.tensor(&name) else {
            continue;
        };
        let shape = raw.shape.to_vec();
        let tensor = if let Some(float) = FloatDType::of(raw.dtype) {
            Tensor::f32(shape, float.widen(raw.bytes))
        } else {
            match narrow_i32(raw.dtype, raw.bytes) {
                Some(Ok(values)) => Tensor::i32(shape, values),
                Some(Err(value)) => {
                    return Err(error(IoErrorKind::OutOfRange {
                        tensor: name,
                        value,
                    }))
                }
                None => {
                    let dtype = format!("{:?}", raw.dtype);
                    return Err(error(IoErrorKind::UnsupportedDType {
                        tensor: name,
                        dtype,
                    }));
                }
            }
        };
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// Writes the tensors to a safetensors file: f32 as F32, i32 as I32. The file is written
/// beside `path` and renamed over it, so a reader mapping the old file is undisturbed.
pub fn write_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<(), IoError> {
    let bytes: Vec<(&str, Dtype, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(name, tensor)| {
            let (dtype, bytes) = match &tensor.data {
                TensorData::F32(v) => {
                    (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                TensorData::I32(v) => {
                    (Dtype::I32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
            };
            (name.as_str(), dtype, tensor.shape.as_slice(), bytes)
        })
        .collect();
    let error = |e: SafeTensorError| {
        let kind = match e {
            SafeTensorError::IoError(e) => IoErrorKind::Io(e),
            e => IoErrorKind::Serialize(e.to_string()),
        };
        IoError {
            path: path.to_path_buf(),
            kind,
        }
    };
    let views = bytes
        .iter()
        .map(|(name, dtype, shape, data)| {
            Ok((*name, TensorView::new(*dtype, shape.to_vec(), data)?))
        })
        .collect::<Result<Vec<_>, SafeTensorError>>()
        .map_err(error)?;
    safetensors::serialize_to_file(views, None, path).map_err(error)
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        match &self.kind {
            IoErrorKind::Io(e) => write!(f, "{e}"),
            IoErrorKind::Corrupt(why) => write!(f, "not a valid safetensors file: {why}"),
            IoErrorKind::UnsupportedDType { tensor, dtype } => {
                write!(f, "tensor \"{tensor}\" has dtype {dtype}; tensor files hold F32, F16, BF16, I32 or I64")
            }
            IoErrorKind::OutOfRange { tensor, value } => {
                write!(
                    f,
                    "tensor \"{tensor}\" holds {value}, which does not fit in i32"
                )
            }
            IoErrorKind::Serialize(why) => write!(f, "cannot write: {why}"),
        }
    }
}

impl Error for IoError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            IoErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}
