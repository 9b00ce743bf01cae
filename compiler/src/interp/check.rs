//! Index operands checked before an op reads them. Types fix shapes, not values:
//! an i32 operand may come from a graph input (or, in a damaged artifact, from an
//! op of another width), so every op that indexes with values checks they are in
//! range first and fails with an error naming the op, instead of reading out of
//! bounds. Values the op skips (the dropped slot -1) are allowed where it skips them.

use crate::ir::Op;
use crate::tensor::Tensor;

/// An error when an index operand of `op` holds a value outside what the op reads.
pub fn check_operands(op: &Op, a: &[&Tensor]) -> Result<(), String> {
    let in_range = |idx: &Tensor, dropped: bool, len: usize, what: &str| {
        let low = if dropped { -1 } else { 0 };
        match idx
            .as_i32()
            .iter()
            .find(|&&i| i < low || i as i64 >= len as i64)
        {
            Some(i) => Err(format!(
                "{}: {what} {i} is outside 0..{len}{}",
                op.name(),
                if dropped { " (or -1, dropped)" } else { "" }
            )),
            None => Ok(()),
        }
    };
    match op {
        Op::Embedding => in_range(a[0], false, a[1].shape[0], "token id"),
        Op::Gather => in_range(a[1], false, a[0].shape[1], "index"),
        Op::AuxLoss => in_range(a[1], true, a[0].shape[1], "expert"),
        Op::Capacity { experts, .. }
        | Op::ScatterGates { experts, .. }
        | Op::ExpertCounts { experts }
        | Op::Dispatch { experts } => in_range(a[0], true, *experts as usize, "expert"),
        Op::EpRoute { placement, .. } => in_range(a[0], true, placement.len(), "expert"),
        Op::GatherRows { k } => in_range(a[1], true, a[0].shape[0] * *k as usize, "slot"),
        Op::GatherSlots => in_range(a[1], true, a[0].len(), "slot"),
        Op::ScatterAdd { .. } => in_range(a[1], true, a[1].len(), "slot"),
        Op::GroupedLinear { .. } => {
            let (offsets, rows) = (a[2].as_i32(), a[0].shape[0] as i64);
            let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
            match (offsets.first(), offsets.last()) {
                (Some(&first), Some(&last)) if ordered && first >= 0 && last as i64 <= rows => {
                    Ok(())
                }
                _ => Err(format!(
                    "grouped_linear: offsets {offsets:?} are not ordered rows of 0..={rows}"
                )),
            }
        }
        _ => Ok(()),
    }
}
