//! `bind`: turns a graph's weight decls into f32 tensors read from a `WeightSource`.
//!
//! Two phases. First every decl is checked against the file headers only (the tensor exists,
//! its dtype is F32/F16/BF16 and the one the spec requires, its shape fits the decl) and every
//! problem is collected; nothing is read if anything is wrong. Then each tensor's bytes (one
//! expert's slice of a stacked tensor, for `expert_slice`) are widened to f32, with only the
//! `columns` the decl reads, and transposed when the file stores `[in, out]`: one pass that
//! decodes each value into its place.

use std::collections::BTreeSet;
use std::path::Path;

use moec_compiler::ir::weight::{ColumnSlice, StorageDType, WeightDecl};
use moec_compiler::tensor::Tensor;

use super::error::{WeightError, WeightErrorKind, WeightErrors};
use super::source::WeightSource;
use super::suggest::Suggester;
use crate::decode::FloatDType;
use crate::file::RawTensor;

/// One f32 tensor per decl, in order; or every problem found.
pub fn bind(decls: &[WeightDecl], source: &WeightSource) -> Result<Vec<Tensor>, WeightErrors> {
    let mut checker = Checker {
        source,
        errors: Vec::new(),
        failed_files: BTreeSet::new(),
        suggester: None,
    };
    let checked: Vec<_> = decls
        .iter()
        .filter_map(|decl| checker.check(decl))
        .collect();
    if !checker.errors.is_empty() {
        return Err(WeightErrors(checker.errors));
    }
    // No errors: every decl passed its check, so `checked` lines up with `decls`.
    Ok(decls
        .iter()
        .zip(checked)
        .map(|(decl, (raw, dtype))| read(decl, &raw, dtype))
        .collect())
}

struct Checker<'s> {
    source: &'s WeightSource,
    errors: Vec<WeightError>,
    /// Files that failed to open: reported once, and their decls skipped after that.
    failed_files: BTreeSet<usize>,
    /// Built on the first missing tensor.
    suggester: Option<Suggester<'s>>,
}

impl<'s> Checker<'s> {
    /// The decl's tensor and dtype if all is well; otherwise records the problems.
    fn check(&mut self, decl: &WeightDecl) -> Option<(RawTensor<'s>, FloatDType)> {
        let source = self.source;
        let Some(id) = source.locate(&decl.tensor) else {
            let suggester = self.suggester.get_or_insert_with(|| Suggester::new(source));
            let suggestions = suggester.suggest(&decl.tensor);
            self.missing(source.path(), decl, suggestions);
            return None;
        };
        if self.failed_files.contains(&id) {
            return None;
        }
        let file = match source.file(id) {
            Ok(file) => file,
            Err(e) => {
                self.failed_files.insert(id);
                self.errors.push(e);
                return None;
            }
        };
        let path = source.file_path(id);
        let Some(raw) = file.tensor(&decl.tensor) else {
            // The index maps the tensor to this shard, but the shard does not hold it.
            self.missing(path, decl, Vec::new());
            return None;
        };
        let error = |kind| WeightError::new(path, kind);
        let tensor = || decl.tensor.clone();
        let key = || decl.key.clone();
        let reported = self.errors.len();
        let dtype = FloatDType::of(raw.dtype);
        match dtype {
            None => self.errors.push(error(WeightErrorKind::UnsupportedDType {
                tensor: tensor(),
                key: key(),
                found: format!("{:?}", raw.dtype),
            })),
            Some(found) => {
                if let Some(expected) = decl.storage.filter(|&s| s != storage(found)) {
                    self.errors.push(error(WeightErrorKind::DType {
                        tensor: tensor(),
                        key: key(),
                        found: format!("{:?}", raw.dtype),
                        expected,
                    }));
                }
            }
        }
        let stored = stored_shape(decl);
        let fits = |file: &[usize]| match decl.columns {
            None => file == stored,
            // The last axis holds at least the entries the slice reads.
            Some(c) => match (file.split_last(), stored.split_last()) {
                (Some((&have, rest)), Some((&n, want))) => {
                    rest == want && (n == 0 || c.at(n - 1) < have)
                }
                _ => false,
            },
        };
        let shape_ok = match decl.expert_slice {
            None => fits(raw.shape),
            Some(e) => raw
                .shape
                .split_first()
                .is_some_and(|(&n, rest)| n > e && fits(rest)),
        };
        if !shape_ok {
            self.errors.push(error(WeightErrorKind::Shape {
                tensor: tensor(),
                key: key(),
                found: raw.shape.to_vec(),
                expected: stored,
                expert: decl.expert_slice,
                transposed: decl.transposed,
                columns: decl.columns,
            }));
        }
        dtype
            .filter(|_| self.errors.len() == reported)
            .map(|dtype| (raw, dtype))
    }

    fn missing(&mut self, file: &Path, decl: &WeightDecl, suggestions: Vec<String>) {
        let kind = WeightErrorKind::MissingTensor {
            tensor: decl.tensor.clone(),
            key: decl.key.clone(),
            suggestions,
        };
        self.errors.push(WeightError::new(file, kind));
    }
}

fn storage(dtype: FloatDType) -> StorageDType {
    match dtype {
        FloatDType::F32 => StorageDType::F32,
        FloatDType::F16 => StorageDType::F16,
        FloatDType::BF16 => StorageDType::BF16,
    }
}

/// The decl's shape as the file stores it (for a stacked tensor, one expert's part): the last
/// two dims swapped when `transposed`. Transposing a tensor of rank below 2 changes nothing.
/// With `columns`, the last dim is the number of entries read, not the file's.
fn stored_shape(decl: &WeightDecl) -> Vec<usize> {
    let mut shape = decl.shape.clone();
    if decl.transposed && shape.len() >= 2 {
        let n = shape.len();
        shape.swap(n - 2, n - 1);
    }
    shape
}

/// Reads a checked tensor: slices out the expert, widens, picks the columns and transposes,
/// decoding each value once straight into its place.
fn read(decl: &WeightDecl, raw: &RawTensor<'_>, dtype: FloatDType) -> Tensor {
    let bytes = match decl.expert_slice {
        Some(e) => {
            let per_expert = raw.bytes.len() / raw.shape[0];
            &raw.bytes[e * per_expert..(e + 1) * per_expert]
        }
        None => raw.bytes,
    };
    if !decl.transposed && decl.columns.is_none() {
        return Tensor::f32(decl.shape.clone(), dtype.widen(bytes));
    }
    let file_cols = *raw.shape.last().expect("a sliced tensor has an axis");
    let columns = decl.columns.unwrap_or(ColumnSlice { start: 0, step: 1 });
    let shape = &decl.shape;
    let rank = shape.len();
    // The graph's matrices `[rows, cols]` (a vector is one row); the file's rows have
    // `file_cols` entries.
    let (rows, cols) = match rank {
        0 => (1, 1),
        1 => (1, shape[0]),
        _ => (shape[rank - 2], shape[rank - 1]),
    };
    let transposed = decl.transposed && rank >= 2;
    let file_rows = if transposed { cols } else { rows };
    let matrices = shape.iter().product::<usize>() / (rows * cols).max(1);
    let mut out = Vec::with_capacity(matrices * rows * cols);
    for m in 0..matrices {
        let base = m * file_rows * file_cols;
        for r in 0..rows {
            for c in 0..cols {
                // The graph's (r, c) is the file's (c, r) when transposed; the file's column
                // index goes through the slice.
                let (fr, fc) = if transposed { (c, r) } else { (r, c) };
                out.push(dtype.value(bytes, base + fr * file_cols + columns.at(fc)));
            }
        }
    }
    Tensor::f32(shape.clone(), out)
}
