//! Typing rules (`Op::infer`) of the per-head column ops, on good and bad operands.

use moec_compiler::ir::{Dim, Op, TensorType};

/// f32 `[tokens, width]`.
fn rows(width: u64) -> TensorType {
    TensorType::f32(vec![Dim::TOKENS, Dim::fixed(width)])
}

#[test]
fn slice_cols_keeps_a_range_of_every_head() {
    let op = Op::SliceCols {
        heads: 4,
        start: 8,
        len: 4,
    };
    assert_eq!(op.infer(&[&rows(48)]), Ok(vec![rows(16)]));
    let whole_row = Op::SliceCols {
        heads: 1,
        start: 16,
        len: 4,
    };
    assert_eq!(whole_row.infer(&[&rows(20)]), Ok(vec![rows(4)]));
}

#[test]
fn slice_cols_rejects_ranges_past_a_head_and_partial_heads() {
    let slice = |heads, start, len| Op::SliceCols { heads, start, len };
    let err = |op: Op, x: &TensorType| op.infer(&[x]).unwrap_err();
    assert_eq!(
        err(slice(4, 10, 4), &rows(48)),
        "columns 10..14 of 4 head(s) of 12"
    );
    assert_eq!(
        err(slice(4, 0, 0), &rows(48)),
        "columns 0..0 of 4 head(s) of 12"
    );
    assert_eq!(
        err(slice(5, 0, 1), &rows(48)),
        "expected f32 [rows, 5 heads · width], found f32[tokens, 48]"
    );
    let ids = TensorType::i32(vec![Dim::TOKENS, Dim::fixed(4)]);
    assert!(err(slice(1, 0, 1), &ids).starts_with("expected f32"));
    let vector = TensorType::f32(vec![Dim::fixed(4)]);
    assert!(err(slice(1, 0, 1), &vector).starts_with("expected f32"));
}

#[test]
fn concat_cols_joins_heads_and_broadcasts_one_head() {
    let per_head = Op::ConcatCols {
        heads: 4,
        broadcast: false,
    };
    assert_eq!(per_head.infer(&[&rows(32), &rows(16)]), Ok(vec![rows(48)]));
    let shared = Op::ConcatCols {
        heads: 4,
        broadcast: true,
    };
    assert_eq!(shared.infer(&[&rows(32), &rows(4)]), Ok(vec![rows(48)]));
    // Broadcasting 16 columns to each of 4 heads, not 4 columns per head.
    assert_eq!(shared.infer(&[&rows(32), &rows(16)]), Ok(vec![rows(96)]));
}

#[test]
fn concat_cols_rejects_partial_heads_other_rows_and_one_operand() {
    let per_head = Op::ConcatCols {
        heads: 4,
        broadcast: false,
    };
    assert_eq!(
        per_head.infer(&[&rows(32), &rows(6)]).unwrap_err(),
        "expected f32 [rows, 4 heads · width], found f32[tokens, 6]"
    );
    let cached = TensorType::f32(vec![Dim::POSITIONS, Dim::fixed(16)]);
    assert!(per_head
        .infer(&[&rows(32), &cached])
        .unwrap_err()
        .starts_with("cannot concatenate the columns"));
    assert_eq!(
        per_head.infer(&[&rows(32)]).unwrap_err(),
        "concat_cols takes 2 operands, found 1"
    );
}
