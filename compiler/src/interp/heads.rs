//! Column slices and concats of per-head rows (`Op::SliceCols`, `Op::ConcatCols`):
//! a `[T, H·D]` value is read as `T·H` rows of D columns, one per (token, head).

use crate::tensor::Tensor;

/// Columns `start..start+len` of each of the `heads` blocks of every row.
pub(super) fn slice_cols(x: &Tensor, heads: usize, start: usize, len: usize) -> Tensor {
    let (t, width) = (x.shape[0], x.shape[1]);
    let d = width / heads;
    let data = x
        .as_f32()
        .chunks(d)
        .flat_map(|head| head[start..start + len].iter().copied())
        .collect();
    Tensor::f32(vec![t, heads * len], data)
}

/// Every head of `a` followed by the same head of `b`, or by b's one head when
/// `broadcast`.
pub(super) fn concat_cols(a: &Tensor, b: &Tensor, heads: usize, broadcast: bool) -> Tensor {
    let t = a.shape[0];
    let da = a.shape[1] / heads;
    let b_heads = if broadcast { 1 } else { heads };
    let db = b.shape[1] / b_heads;
    let mut data = Vec::with_capacity(t * heads * (da + db));
    for (i, a_head) in a.as_f32().chunks(da).enumerate() {
        let (row, h) = (i / heads, i % heads);
        let bh = if broadcast { 0 } else { h };
        let from = (row * b_heads + bh) * db;
        data.extend_from_slice(a_head);
        data.extend_from_slice(&b.as_f32()[from..from + db]);
    }
    Tensor::f32(vec![t, heads * (da + db)], data)
}
