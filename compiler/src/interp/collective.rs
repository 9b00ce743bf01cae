//! The meaning of the collective ops (`all_to_all`, `all_to_all_v`, `all_gather_rows`) and
//! of `ep_route`, which packs a rank's routed slots for them (see `Op::EpRoute`).
//!
//! A collective reads what other ranks hold, so it is evaluated through a [`Comm`]: one
//! point-to-point exchange among all ranks, which the interpreter's single process
//! ([`SingleRank`]), the in-process simulation of several ranks (`interp::simulate`) and
//! the runtime's MPI communicator each implement. Every check a collective makes of what
//! arrived (row counts against the counts exchanged before) is an error, never a panic:
//! a peer running a different graph must end the run, not corrupt it.
//!
//! What it does not do: overlap an exchange with computation, or pick an MPI algorithm;
//! a collective is one blocking exchange.

use crate::ir::Op;
use crate::tensor::{Tensor, TensorData};
use std::ops::Range;

/// The ranks' point-to-point exchange, the one primitive the collectives need. Every rank
/// calls [`Comm::exchange`] at the same points, in the same order.
pub trait Comm: Send + Sync {
    /// How many ranks take part.
    fn ranks(&self) -> usize;
    /// This rank, `0..ranks()`.
    fn rank(&self) -> usize;
    /// Sends `send[d]` to rank d for every d (all of one dtype); returns what each rank sent
    /// this one, by source rank.
    fn exchange(&self, send: Vec<TensorData>) -> Result<Vec<TensorData>, String>;
}

/// The communicator of a single process: one rank, which receives what it sends.
pub struct SingleRank;

impl Comm for SingleRank {
    fn ranks(&self) -> usize {
        1
    }
    fn rank(&self) -> usize {
        0
    }
    fn exchange(&self, send: Vec<TensorData>) -> Result<Vec<TensorData>, String> {
        Ok(send)
    }
}

/// The tokens rank `rank` is the source of in the exchanges: the block
/// `⌊rank·tokens/ranks⌋ .. ⌊(rank+1)·tokens/ranks⌋` (empty on some ranks when there are
/// fewer tokens than ranks).
pub fn source_block(tokens: usize, ranks: usize, rank: usize) -> Range<usize> {
    rank * tokens / ranks..(rank + 1) * tokens / ranks
}

/// Evaluates `ep_route` (a local op: it exchanges nothing).
pub fn ep_route(ranks: usize, rank: usize, placement: &[u32], idx: &Tensor) -> Vec<Tensor> {
    let (t, k) = (idx.shape[0], idx.shape[1]);
    // Each expert's index among its rank's experts, in ascending order.
    let local: Vec<i32> = (0..placement.len())
        .map(|e| {
            placement[..e]
                .iter()
                .filter(|r| **r == placement[e])
                .count() as i32
        })
        .collect();
    let block = source_block(t, ranks, rank);
    let ids = idx.as_i32();
    let mut slots: Vec<usize> = (block.start * k..block.end * k)
        .filter(|s| ids[*s] >= 0)
        .collect();
    // Stable: slots keep token order within an expert.
    slots.sort_by_key(|s| (placement[ids[*s] as usize], ids[*s]));
    let mut counts = vec![0i32; ranks];
    for s in &slots {
        counts[placement[ids[*s] as usize] as usize] += 1;
    }
    let mut order: Vec<i32> = slots.iter().map(|s| *s as i32).collect();
    let mut experts: Vec<i32> = slots.iter().map(|s| local[ids[*s] as usize]).collect();
    order.resize(t * k, -1);
    experts.resize(t * k, -1);
    vec![
        Tensor::i32(vec![t * k], order),
        Tensor::i32(vec![ranks], counts),
        Tensor::i32(vec![t * k, 1], experts),
    ]
}

/// Evaluates a collective op through `comm`.
pub fn eval_collective(op: &Op, a: &[&Tensor], comm: &dyn Comm) -> Result<Vec<Tensor>, String> {
    let ranks = match op {
        Op::AllToAll { ranks } | Op::AllToAllV { ranks } | Op::AllGatherRows { ranks } => {
            *ranks as usize
        }
        _ => unreachable!("{} is not a collective", op.name()),
    };
    if comm.ranks() != ranks {
        return Err(format!(
            "{}: the graph is partitioned for {ranks} ranks, the run has {}",
            op.name(),
            comm.ranks()
        ));
    }
    let name = op.name();
    match op {
        Op::AllToAll { .. } => {
            let send = a[0].as_i32().iter().map(|c| TensorData::I32(vec![*c]));
            let recv = comm.exchange(send.collect())?;
            let mut counts = Vec::with_capacity(ranks);
            for (source, got) in recv.iter().enumerate() {
                match got {
                    TensorData::I32(v) if v.len() == 1 => counts.push(v[0]),
                    _ => return Err(format!("{name}: rank {source} sent no count")),
                }
            }
            Ok(vec![Tensor::i32(vec![ranks], counts)])
        }
        Op::AllToAllV { .. } => {
            let rows = a[0].shape[0];
            let width: usize = a[0].shape[1..].iter().product();
            let send = rows_of(a[1], rows, "send")?;
            let recv_counts = rows_of(a[2], rows, "receive")?;
            let mut start = 0;
            let parts = send
                .iter()
                .map(|n| {
                    let part = slice(&a[0].data, start * width..(start + n) * width);
                    start += n;
                    part
                })
                .collect();
            let recv = comm.exchange(parts)?;
            let mut out = empty_like(&a[0].data);
            for (source, (got, n)) in recv.iter().zip(&recv_counts).enumerate() {
                if len(got) != n * width || !same_dtype(got, &a[0].data) {
                    return Err(format!(
                        "{name}: rank {source} sent {} values, {n} rows of {width} expected",
                        len(got)
                    ));
                }
                append(&mut out, got);
            }
            pad(&mut out, rows * width);
            Ok(vec![Tensor {
                shape: a[0].shape.clone(),
                data: out,
            }])
        }
        Op::AllGatherRows { .. } => {
            let (t, d) = (a[0].shape[0], a[0].shape[1]);
            let own = source_block(t, ranks, comm.rank());
            let block = slice(&a[0].data, own.start * d..own.end * d);
            let recv = comm.exchange(vec![block; ranks])?;
            let mut out = empty_like(&a[0].data);
            for (source, got) in recv.iter().enumerate() {
                let want = source_block(t, ranks, source).len() * d;
                if len(got) != want || !same_dtype(got, &a[0].data) {
                    return Err(format!(
                        "{name}: rank {source} sent {} values, {want} expected",
                        len(got)
                    ));
                }
                append(&mut out, got);
            }
            Ok(vec![Tensor {
                shape: a[0].shape.clone(),
                data: out,
            }])
        }
        _ => unreachable!("matched above"),
    }
}

/// Per-rank row counts, checked: none negative, together at most `rows`.
fn rows_of(counts: &Tensor, rows: usize, what: &str) -> Result<Vec<usize>, String> {
    let c = counts.as_i32();
    let total: i64 = c.iter().map(|n| i64::from(*n)).sum();
    if c.iter().any(|n| *n < 0) || total > rows as i64 {
        return Err(format!(
            "all_to_all_v: {what} counts {c:?} are not rows of 0..={rows}"
        ));
    }
    Ok(c.iter().map(|n| *n as usize).collect())
}

fn slice(data: &TensorData, r: Range<usize>) -> TensorData {
    match data {
        TensorData::F32(v) => TensorData::F32(v[r].to_vec()),
        TensorData::I32(v) => TensorData::I32(v[r].to_vec()),
    }
}

fn empty_like(data: &TensorData) -> TensorData {
    match data {
        TensorData::F32(_) => TensorData::F32(Vec::new()),
        TensorData::I32(_) => TensorData::I32(Vec::new()),
    }
}

fn len(data: &TensorData) -> usize {
    match data {
        TensorData::F32(v) => v.len(),
        TensorData::I32(v) => v.len(),
    }
}

fn same_dtype(a: &TensorData, b: &TensorData) -> bool {
    matches!(
        (a, b),
        (TensorData::F32(_), TensorData::F32(_)) | (TensorData::I32(_), TensorData::I32(_))
    )
}

/// Appends `b` to `a` (of the same dtype, checked by the caller).
fn append(a: &mut TensorData, b: &TensorData) {
    match (a, b) {
        (TensorData::F32(a), TensorData::F32(b)) => a.extend_from_slice(b),
        (TensorData::I32(a), TensorData::I32(b)) => a.extend_from_slice(b),
        _ => unreachable!("dtypes checked"),
    }
}

/// Fills up to `n` values: zeros, or -1 (no slot) for indices.
fn pad(data: &mut TensorData, n: usize) {
    match data {
        TensorData::F32(v) => v.resize(n, 0.0),
        TensorData::I32(v) => v.resize(n, -1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_blocks_cover_the_tokens_once() {
        for (t, n) in [(0, 3), (1, 2), (2, 3), (7, 3), (8, 8)] {
            let blocks: Vec<Range<usize>> = (0..n).map(|r| source_block(t, n, r)).collect();
            assert_eq!(blocks[0].start, 0);
            assert_eq!(blocks[n - 1].end, t);
            assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn ep_route_groups_slots_by_destination_then_expert() {
        // Two tokens, k = 2; token 1's second slot is dropped. On one rank, every slot
        // stays home, ordered by expert.
        let idx = Tensor::i32(vec![2, 2], vec![2, 1, 0, -1]);
        let out = ep_route(1, 0, &[0, 0, 0, 0], &idx);
        assert_eq!(out[0].as_i32(), [2, 1, 0, -1]);
        assert_eq!(out[1].as_i32(), [3]);
        assert_eq!(out[2].as_i32(), [0, 1, 2, -1]);
        let out = ep_route(2, 1, &[1, 0, 1, 0], &idx);
        // Rank 1 sources token 1 (slot 2, expert 0 on rank 1; slot 3 dropped).
        assert_eq!(out[0].as_i32(), [2, -1, -1, -1]);
        assert_eq!(out[1].as_i32(), [0, 1]);
        assert_eq!(out[2].as_i32(), [0, -1, -1, -1]);
        let out = ep_route(2, 0, &[1, 0, 1, 0], &idx);
        // Rank 0 sources token 0: expert 1 (rank 0, local 0), expert 2 (rank 1, local 1).
        assert_eq!(out[0].as_i32(), [1, 0, -1, -1]);
        assert_eq!(out[1].as_i32(), [1, 1]);
        assert_eq!(out[2].as_i32(), [0, 1, -1, -1]);
    }
}
