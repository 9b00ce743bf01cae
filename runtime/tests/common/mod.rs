//! Helpers shared by the runtime's integration tests: weight decls and small safetensors files.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;

use moec_compiler::ir::weight::WeightDecl;
use moec_compiler::ir::WeightFormat;
use moec_grammar::Span;
use safetensors::tensor::{Dtype, TensorView};

/// A tensor to write: name, dtype, shape, little-endian bytes.
pub struct Raw {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn f32s(name: &str, shape: &[usize], values: &[f32]) -> Raw {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Raw {
        name: name.into(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes,
    }
}

/// `n` f32 values 0, 1, 2, ….
pub fn iota(name: &str, shape: &[usize]) -> Raw {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
    f32s(name, shape, &values)
}

/// A 16-bit dtype (F16 or BF16) from raw bit patterns.
pub fn bits16(name: &str, dtype: Dtype, shape: &[usize], bits: &[u16]) -> Raw {
    let bytes = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    Raw {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes,
    }
}

pub fn serialize(tensors: &[Raw]) -> Vec<u8> {
    let views = tensors.iter().map(|t| {
        (
            t.name.as_str(),
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

pub fn write(path: &Path, tensors: &[Raw]) {
    std::fs::write(path, serialize(tensors)).unwrap();
}

pub fn decl(key: &str, tensor: &str, shape: &[usize]) -> WeightDecl {
    WeightDecl {
        key: key.into(),
        pattern: key.into(),
        tensor: tensor.into(),
        expert_slice: None,
        transposed: false,
        rows: None,
        columns: None,
        shape: shape.to_vec(),
        storage: None,
        span: Span::new(0, 0),
    }
}

pub fn expert(mut decl: WeightDecl, e: usize) -> WeightDecl {
    decl.expert_slice = Some(e);
    decl
}

pub fn transposed(mut decl: WeightDecl) -> WeightDecl {
    decl.transposed = true;
    decl
}

pub fn stored_as(mut decl: WeightDecl, dtype: WeightFormat) -> WeightDecl {
    decl.storage = Some(dtype);
    decl
}

pub fn rows(mut decl: WeightDecl, start: usize, step: usize) -> WeightDecl {
    decl.rows = Some(moec_compiler::ir::weight::AxisSlice { start, step });
    decl
}

pub fn columns(mut decl: WeightDecl, start: usize, step: usize) -> WeightDecl {
    decl.columns = Some(moec_compiler::ir::weight::AxisSlice { start, step });
    decl
}
