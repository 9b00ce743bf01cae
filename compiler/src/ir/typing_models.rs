//! The typing rules of the whole-model ops (embeddings, positions, rope, the KV
//! cache, attention), split from `typing.rs`, which dispatches to them.

use super::op::Op;
use super::types::{DType, Dim, TensorType};
use super::typing::{arity, expect_f32};

/// The output types of whole-model op `op` for these operand types, or what is wrong.
pub(super) fn infer(op: &Op, operands: &[&TensorType]) -> Result<Vec<TensorType>, String> {
    use Op::*;
    let arity = |n: usize| arity(op, operands, n);
    match op {
        Embedding => {
            arity(2)?;
            let (ids, table) = (operands[0], operands[1]);
            if ids.dtype != DType::I32 || ids.rank() != 1 {
                return Err(format!("embedding ids must be i32 [tokens], found {ids}"));
            }
            if table.rank() != 2 || table.dtype != DType::F32 {
                return Err(format!(
                    "embedding table must be f32 [vocab, width], found {table}"
                ));
            }
            Ok(vec![TensorType::f32(vec![ids.shape[0], table.shape[1]])])
        }
        LastRow => {
            arity(1)?;
            let x = operands[0];
            if x.rank() != 2 || x.dtype != DType::F32 {
                return Err(format!("last_row takes f32 [rows, width], found {x}"));
            }
            Ok(vec![TensorType::f32(vec![Dim::fixed(1), x.shape[1]])])
        }
        Positions => {
            arity(0)?;
            Ok(vec![TensorType::i32(vec![Dim::TOKENS])])
        }
        RowPositions => {
            arity(1)?;
            match operands[0].shape.first() {
                Some(&rows) => Ok(vec![TensorType::i32(vec![rows])]),
                None => Err(format!("row positions need rows, found {}", operands[0])),
            }
        }
        Sinusoidal { width, .. } => {
            arity(1)?;
            let pos = operands[0];
            if pos.dtype != DType::I32 || pos.rank() != 1 {
                return Err(format!(
                    "sinusoidal positions must be i32 [rows], found {pos}"
                ));
            }
            if *width < 4 {
                return Err(format!(
                    "sinusoidal position embeddings need a width of at least 4, found {width}"
                ));
            }
            Ok(vec![TensorType::f32(vec![
                pos.shape[0],
                Dim::fixed(*width),
            ])])
        }
        Rope(r) => {
            arity(2)?;
            let (x, pos) = (operands[0], operands[1]);
            expect_f32(x, "rope input")?;
            let width = x.width().filter(|_| x.rank() == 2);
            if r.head_dim == 0 || width.is_none_or(|w| w % r.head_dim != 0) {
                return Err(format!(
                    "rope input must be [tokens, heads·{}], found {x}",
                    r.head_dim
                ));
            }
            if r.rotary_dim == 0 || r.rotary_dim % 2 != 0 || r.rotary_dim > r.head_dim {
                return Err(format!(
                    "rotary dims must be even and at most the head dim {}, found {}",
                    r.head_dim, r.rotary_dim
                ));
            }
            if pos.dtype != DType::I32 || pos.shape != [x.shape[0]] {
                return Err(format!(
                    "rope positions must be i32 [{}], found {pos}",
                    x.shape[0]
                ));
            }
            Ok(vec![x.clone()])
        }
        CacheAppend { .. } => {
            arity(1)?;
            let x = operands[0];
            expect_f32(x, "cached rows")?;
            if x.rank() != 2 || x.shape[0] != Dim::TOKENS || x.width().is_none() {
                return Err(format!("a cache appends [tokens, width] rows, found {x}"));
            }
            Ok(vec![TensorType::f32(vec![Dim::POSITIONS, x.shape[1]])])
        }
        Attention(a) => {
            arity(3 + usize::from(a.sinks) + usize::from(a.bias.is_some()))?;
            let (q, k, v) = (operands[0], operands[1], operands[2]);
            for (t, what) in [(q, "queries"), (k, "keys"), (v, "values")] {
                expect_f32(t, what)?;
                if t.rank() != 2 || t.width().is_none() {
                    return Err(format!("attention {what} must be [rows, width], found {t}"));
                }
            }
            if a.kv_heads == 0 || a.heads % a.kv_heads != 0 {
                return Err(format!(
                    "{} query heads cannot share {} kv heads",
                    a.heads, a.kv_heads
                ));
            }
            let want = [
                (q, a.heads * a.head_dim, "queries"),
                (k, a.kv_heads * a.head_dim, "keys"),
                (v, a.kv_heads * a.v_head_dim, "values"),
            ];
            if let Some((t, w, what)) = want.iter().find(|(t, w, _)| t.width() != Some(*w)) {
                return Err(format!("attention {what} must be {w} wide, found {t}"));
            }
            let (rows, keys) = (q.shape[0], k.shape[0]);
            let positional = a.causal || a.window.is_some() || a.bias.is_some();
            let after_cached = keys.per_token == rows.per_token
                && keys.per_source == rows.per_source
                && keys.fixed == rows.fixed;
            if keys != v.shape[0] || rows.per_past != 0 || (positional && !after_cached) {
                return Err(format!(
                    "attention keys {k} and values {v} must hold the queries' {rows} rows after the cached ones"
                ));
            }
            if a.sinks && operands[3].shape != [Dim::fixed(a.heads)] {
                return Err(format!(
                    "attention sinks must be [{}], found {}",
                    a.heads, operands[3]
                ));
            }
            if let Some(b) = a.bias {
                let table = operands[operands.len() - 1];
                b.check()?;
                if table.dtype != DType::F32
                    || table.shape != [Dim::fixed(b.buckets), Dim::fixed(a.heads)]
                {
                    return Err(format!(
                        "the relative bias table must be f32 [{}, {}], found {table}",
                        b.buckets, a.heads
                    ));
                }
            }
            Ok(vec![TensorType::f32(vec![
                rows,
                Dim::fixed(a.heads * a.v_head_dim),
            ])])
        }
        _ => Err(format!(
            "internal error: {} is not a whole-model op",
            op.name()
        )),
    }
}
