//! `check` and `bind`: a graph's weight decls against a `WeightSource`, then read as f32
//! tensors.
//!
//! Two phases. First (`check`) every decl is checked against the file headers only (the
//! tensor exists, its dtype is F32/F16/BF16 and the one the spec requires, its shape fits the
//! decl) and every problem is collected, one per tensor part (the experts of one fused tensor
//! that all mismatch make one error); nothing is read if anything is wrong. Then
//! (`Checked::read`, one decl at a time, or `bind`: all of them) each tensor's bytes (one
//! expert's slice of a stacked tensor, for `expert_slice`) are widened to f32, with only the
//! `rows` and `columns` the decl reads, and transposed when the file stores `[in, out]`: one
//! pass that decodes each value into its place. Leading axes of size 1 beyond the rank the
//! decl needs are ignored (Ernie 4.5 stores an `[E]` bias as `[1, E]`): they change no value.
//! A checkpoint bias `NAME.bias` beside a read `NAME.weight` that no decl reads is an error:
//! the spec's linear lacks a bias the model has, and its numbers would silently differ.

use std::collections::BTreeSet;
use std::path::Path;

use moec_compiler::ir::weight::{AxisSlice, WeightDecl};
use moec_compiler::ir::WeightFormat;
use moec_compiler::tensor::Tensor;

use super::error::{WeightError, WeightErrorKind, WeightErrors};
use super::source::WeightSource;
use super::suggest::Suggester;
use crate::decode::FloatDType;
use crate::file::RawTensor;

/// One f32 tensor per decl, in order; or every problem found.
pub fn bind(decls: &[WeightDecl], source: &WeightSource) -> Result<Vec<Tensor>, WeightErrors> {
    let checked = check(decls, source)?;
    Ok((0..decls.len()).map(|id| checked.read(id)).collect())
}

/// A checkpoint's tensors for a graph's decls, every one checked and none read yet: each is
/// read (widened to f32) when asked for, so a backend that packs weights one matmul at a time
/// never holds the whole model in f32.
pub struct Checked<'s> {
    decls: &'s [WeightDecl],
    tensors: Vec<(RawTensor<'s>, FloatDType)>,
}

impl Checked<'_> {
    /// How many decls (weights) there are.
    pub fn len(&self) -> usize {
        self.decls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decls.is_empty()
    }

    /// Weight `id` (a decl index) read from the file as f32, shaped as its decl.
    pub fn read(&self, id: usize) -> Tensor {
        let (raw, dtype) = &self.tensors[id];
        read(&self.decls[id], raw, *dtype)
    }

    /// The format weight `id` is stored in in the file (f32, f16 or bf16).
    pub fn format(&self, id: usize) -> WeightFormat {
        storage(self.tensors[id].1)
    }
}

/// Checks every decl against the file headers (see the module docs); reads nothing.
pub fn check<'s>(
    decls: &'s [WeightDecl],
    source: &'s WeightSource,
) -> Result<Checked<'s>, WeightErrors> {
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
    checker.unread_biases(decls);
    if !checker.errors.is_empty() {
        return Err(WeightErrors(checker.errors));
    }
    // No errors: every decl passed its check, so `checked` lines up with `decls`.
    Ok(Checked {
        decls,
        tensors: checked,
    })
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
        let key = || described(decl);
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
                        found: storage(found).to_string(),
                        expected,
                    }));
                }
            }
        }
        let stored = stored_shape(decl);
        let shape_ok = match decl.expert_slice {
            None => fits(decl, file_shape(decl, raw.shape), &stored),
            Some(e) => file_shape(decl, raw.shape)
                .split_first()
                .is_some_and(|(&n, rest)| n > e && fits(decl, rest, &stored)),
        };
        if !shape_ok {
            let hint = flat_experts(decl, raw.shape, &stored);
            self.shape_error(
                path,
                decl,
                WeightErrorKind::Shape {
                    tensor: tensor(),
                    key: key(),
                    found: raw.shape.to_vec(),
                    expected: stored,
                    expert: decl.expert_slice,
                    transposed: decl.transposed,
                    rows: decl.rows,
                    columns: decl.columns,
                    hint,
                },
            );
        }
        dtype
            .filter(|_| self.errors.len() == reported)
            .map(|dtype| (raw, dtype))
    }

    /// Errors for checkpoint biases `NAME.bias` beside a read `NAME.weight` that no decl reads,
    /// once per bias.
    fn unread_biases(&mut self, decls: &[WeightDecl]) {
        let read: BTreeSet<&str> = decls.iter().map(|d| d.tensor.as_str()).collect();
        let mut reported = BTreeSet::new();
        for decl in decls {
            let Some(bias) = decl
                .tensor
                .strip_suffix(".weight")
                .map(|stem| format!("{stem}.bias"))
            else {
                continue;
            };
            if read.contains(bias.as_str()) || self.source.locate(&bias).is_none() {
                continue;
            }
            if reported.insert(bias.clone()) {
                let kind = WeightErrorKind::UnreadBias {
                    tensor: decl.tensor.clone(),
                    key: described(decl),
                    bias,
                };
                self.errors.push(WeightError::new(self.source.path(), kind));
            }
        }
    }

    /// Records a shape error, once per tensor part: the experts of one fused tensor that all
    /// mismatch the same way make one error naming the highest expert.
    fn shape_error(&mut self, file: &Path, decl: &WeightDecl, kind: WeightErrorKind) {
        let WeightErrorKind::Shape {
            tensor,
            expected,
            expert: Some(e),
            ..
        } = &kind
        else {
            self.errors.push(WeightError::new(file, kind));
            return;
        };
        for error in &mut self.errors {
            if let WeightErrorKind::Shape {
                tensor: t,
                expected: x,
                expert: Some(seen),
                rows,
                columns,
                ..
            } = &mut *error.kind
            {
                if t == tensor && x == expected && *rows == decl.rows && *columns == decl.columns {
                    *seen = (*seen).max(*e);
                    return;
                }
            }
        }
        self.errors.push(WeightError::new(file, kind));
    }

    fn missing(&mut self, file: &Path, decl: &WeightDecl, suggestions: Vec<String>) {
        let kind = WeightErrorKind::MissingTensor {
            tensor: decl.tensor.clone(),
            key: described(decl),
            suggestions,
        };
        self.errors.push(WeightError::new(file, kind));
    }
}

fn storage(dtype: FloatDType) -> WeightFormat {
    match dtype {
        FloatDType::F32 => WeightFormat::F32,
        FloatDType::F16 => WeightFormat::F16,
        FloatDType::BF16 => WeightFormat::Bf16,
    }
}

/// How errors name a decl: the key as a `weights` block writes it, then the weight it is.
fn described(decl: &WeightDecl) -> String {
    if decl.pattern == decl.key || decl.pattern.is_empty() {
        format!("`{}`", decl.key)
    } else {
        format!("`{}`: {}", decl.pattern, decl.key)
    }
}

/// The decl's shape as the file stores it (for a stacked tensor, one expert's part): the last
/// two dims swapped when `transposed`. Transposing a tensor of rank below 2 changes nothing.
/// With `rows`/`columns`, those axes count the entries read, not the file's.
fn stored_shape(decl: &WeightDecl) -> Vec<usize> {
    let mut shape = decl.shape.clone();
    if decl.transposed && shape.len() >= 2 {
        let n = shape.len();
        shape.swap(n - 2, n - 1);
    }
    shape
}

/// The file's shape without leading axes of size 1 beyond the rank the decl reads (its
/// shape, and the expert axis of a stacked tensor).
fn file_shape<'r>(decl: &WeightDecl, mut shape: &'r [usize]) -> &'r [usize] {
    let rank = decl.shape.len() + usize::from(decl.expert_slice.is_some());
    while shape.len() > rank && shape.first() == Some(&1) {
        shape = &shape[1..];
    }
    shape
}

/// For a stacked decl whose file has no expert axis but a first axis that holds whole experts
/// (DBRX's `w1` `[E·F, D]`): the binding that reads one expert's rows of it.
fn flat_experts(decl: &WeightDecl, file: &[usize], stored: &[usize]) -> Option<String> {
    let e = decl.expert_slice?;
    let (&n, rest) = file.split_first()?;
    let (&per, want) = stored.split_first()?;
    (decl.rows.is_none() && per > 0 && n % per == 0 && n / per > e && rest == want).then(|| {
        format!(
            "the file holds {} experts one after another along the first axis, without an axis of their own: bind each expert's rows, keying the binding `{}` and writing `rows(e * {per}, 1)` after the tensor name{}",
            n / per,
            decl.pattern,
            if decl.transposed { " and `transposed`" } else { "" },
        )
    })
}

/// Whether the file's shape (one expert's part) holds the decl's `stored` shape: equal, but
/// on a sliced axis at least the entries read.
fn fits(decl: &WeightDecl, file: &[usize], stored: &[usize]) -> bool {
    if file.len() != stored.len() {
        return false;
    }
    let rank = file.len();
    let holds = |axis: usize, slice: Option<AxisSlice>| match slice {
        None => file[axis] == stored[axis],
        Some(s) => stored[axis] == 0 || s.at(stored[axis] - 1) < file[axis],
    };
    match rank {
        0 => true,
        1 => holds(0, decl.columns),
        _ => {
            file[..rank - 2] == stored[..rank - 2]
                && holds(rank - 2, decl.rows)
                && holds(rank - 1, decl.columns)
        }
    }
}

/// Reads a checked tensor: slices out the expert, widens, picks the rows and columns and
/// transposes, decoding each value once straight into its place.
fn read(decl: &WeightDecl, raw: &RawTensor<'_>, dtype: FloatDType) -> Tensor {
    let mut file = file_shape(decl, raw.shape);
    let bytes = match decl.expert_slice {
        Some(e) => {
            let per_expert = raw.bytes.len() / file[0];
            file = &file[1..];
            &raw.bytes[e * per_expert..(e + 1) * per_expert]
        }
        None => raw.bytes,
    };
    if !decl.transposed && decl.rows.is_none() && decl.columns.is_none() {
        return Tensor::f32(decl.shape.clone(), dtype.widen(bytes));
    }
    let all = AxisSlice { start: 0, step: 1 };
    let shape = &decl.shape;
    let rank = shape.len();
    // The graph's matrices `[rows, cols]` (a vector is one row); the file's matrices are
    // `[file_rows, file_cols]`.
    let (rows, cols, file_rows, file_cols) = match rank {
        0 => (1, 1, 1, 1),
        1 => (1, shape[0], 1, file[0]),
        _ => (
            shape[rank - 2],
            shape[rank - 1],
            file[rank - 2],
            file[rank - 1],
        ),
    };
    let transposed = decl.transposed && rank >= 2;
    let (row_slice, col_slice) = (decl.rows.unwrap_or(all), decl.columns.unwrap_or(all));
    let matrices = shape.iter().product::<usize>() / (rows * cols).max(1);
    let mut out = Vec::with_capacity(matrices * rows * cols);
    for m in 0..matrices {
        let base = m * file_rows * file_cols;
        for r in 0..rows {
            for c in 0..cols {
                // The graph's (r, c) is the file's (c, r) when transposed; the file's indices
                // go through the slices.
                let (fr, fc) = if transposed { (c, r) } else { (r, c) };
                let at = base + row_slice.at(fr) * file_cols + col_slice.at(fc);
                out.push(dtype.value(bytes, at));
            }
        }
    }
    Tensor::f32(shape.clone(), out)
}
