//! Expert parallelism: rewrites a scheduled graph into one rank's program, in which the
//! rank holds only its own experts of every scheduled MoE layer and exchanges token rows
//! with the other ranks. Not a pipeline step: a multi-rank run (`mpirun … moec`) applies
//! it to the optimized graph, for its rank count and its rank, before opening a model.
//!
//! Every rank runs the same rewritten graph for its own `rank` (SPMD). Everything outside
//! the experts (attention, norms, the router, shared experts) stays replicated; a
//! scheduled layer (`dispatch` → `gather_rows` → `grouped_linear`… → `scatter_add`, see
//! `schedule.rs`) becomes:
//!
//! ```text
//! order, offsets = dispatch{E}(idx)                  // replicated, as before
//! send, counts, local = ep_route{ranks rank placement}(idx)   // this rank's source tokens
//! recv_counts = all_to_all(counts)
//! rows  = all_to_all_v(gather_rows{k}(x, send), counts, recv_counts)
//! ids   = all_to_all_v(local, …)  slots = all_to_all_v(send, …)
//! lorder, loffsets = dispatch{L}(ids)                // received rows by local expert
//! rows  = grouped_linear(gather_rows{1}(rows, lorder), w_local, loffsets …) …
//!         (the last weighted by gather_rows{1}(gather_slots(w, slots), lorder))
//! back  = all_to_all_v(scatter_add{1}(rows, lorder), recv_counts, counts)
//! y     = scatter_add{k}(gather_rows{1}(scatter_add{1}(back, send), order), order)
//! y     = all_gather_rows(y)                          // replicated again
//! ```
//!
//! Why the result is bit-identical to one process for any rank count and placement: each
//! routed slot's row is computed by exactly one rank from the same input row, weights and
//! routing weight, in an expert segment holding the same rows in the same (token) order
//! as unpartitioned (source blocks are ascending token ranges, received in rank order);
//! the combine then puts every slot's row back at its slot (`scatter_add{1}` by slot id),
//! reads them in the unpartitioned dispatch order and adds them with the same
//! `scatter_add{k}`, so each token sums the same values in the same order.
//!
//! What it does not handle: a layer that `schedule` left dense stays replicated (every
//! rank holds all its experts), as do shared experts; every rank must hold at least one
//! expert of every partitioned layer; weights must be stacked from per-expert weights
//! (`stack`, or `concat_rows` of stacks for GLU), as `fuse_experts` builds them.

use super::rewrite::{remove_dead, replace_uses};
use crate::ir::{Graph, NodeIndex, Op, ProbeKind, Value};

/// Where each expert of a layer lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Contiguous blocks, the first `E mod ranks` ranks one expert larger (8 experts on 3
    /// ranks: 3, 3, 2).
    Contiguous,
    /// The rank of every expert, in expert order (`--expert-ranks 0,0,0,1,1,1,1,2`).
    Explicit(Vec<u32>),
}

impl Placement {
    /// Parses a comma-separated list of ranks, one per expert.
    pub fn parse(s: &str) -> Result<Placement, String> {
        s.split(',')
            .map(|r| {
                r.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("`{r}` in the expert placement is not a rank"))
            })
            .collect::<Result<Vec<u32>, String>>()
            .map(Placement::Explicit)
    }

    /// The rank of each of `experts` experts over `ranks` ranks; an error when an explicit
    /// map is for another expert count, names a rank past the last, or leaves a rank empty.
    pub fn ranks_of(&self, experts: usize, ranks: usize) -> Result<Vec<u32>, String> {
        let map = match self {
            Placement::Contiguous => {
                let (q, r) = (experts / ranks, experts % ranks);
                (0..experts)
                    .map(|e| {
                        let big = r * (q + 1);
                        if e < big {
                            e / (q + 1)
                        } else {
                            r + (e - big) / q.max(1)
                        }
                    })
                    .map(|rank| rank as u32)
                    .collect()
            }
            Placement::Explicit(map) if map.len() != experts => {
                return Err(format!(
                    "the expert placement names {} experts, the layer has {experts}",
                    map.len()
                ))
            }
            Placement::Explicit(map) => map.clone(),
        };
        if let Some(r) = map.iter().find(|r| **r as usize >= ranks) {
            return Err(format!("the expert placement names rank {r} of {ranks}"));
        }
        if let Some(empty) = (0..ranks as u32).find(|r| !map.contains(r)) {
            return Err(format!(
                "rank {empty} would hold none of the layer's {experts} experts (at most {experts} ranks, each holding one or more)"
            ));
        }
        Ok(map)
    }
}

/// Rewrites every scheduled MoE layer for rank `rank` of `ranks`; true when one changed.
pub fn run(
    g: &mut Graph,
    ranks: usize,
    rank: usize,
    placement: &Placement,
) -> Result<bool, String> {
    if rank >= ranks {
        return Err(format!("rank {rank} of {ranks}"));
    }
    let combines: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|n| matches!(g.g[*n].op, Op::ScatterAdd { .. }))
            .collect();
    let mut changed = false;
    for sa in combines {
        if let Some(layer) = scheduled_layer(g, sa) {
            partition_layer(g, &layer, ranks, rank, placement)?;
            changed = true;
        }
    }
    if changed {
        remove_dead(g);
    }
    Ok(changed)
}

/// A scheduled layer as `schedule` builds it.
struct Layer {
    combine: NodeIndex,
    k: u64,
    experts: u64,
    /// The routed expert indices `[T, k]` and the routing weights `[T, k]`.
    idx: Value,
    weights: Option<Value>,
    /// The dispatch order (port 0 of the dispatch).
    order: Value,
    x: Value,
    /// The grouped matmuls, first to last.
    chain: Vec<NodeIndex>,
}

fn scheduled_layer(g: &Graph, combine: NodeIndex) -> Option<Layer> {
    let Op::ScatterAdd { k } = g.node(combine).op else {
        return None;
    };
    let [mut rows, order] = g.operands(combine)[..] else {
        return None;
    };
    let Op::Dispatch { experts } = g.node(order.node).op else {
        return None;
    };
    if order.port != 0 {
        return None;
    }
    let offsets = Value {
        node: order.node,
        port: 1,
    };
    let mut chain = Vec::new();
    let mut weights = None;
    loop {
        match g.node(rows.node).op {
            Op::GroupedLinear { weighted, .. } => {
                let ops = g.operands(rows.node);
                if ops[2] != offsets {
                    return None;
                }
                if weighted {
                    let rw = *ops.last().expect("weighted matmuls read row weights");
                    let gs = g.operands(rw.node);
                    if g.node(rw.node).op != Op::GatherSlots || gs[1] != order {
                        return None;
                    }
                    weights = Some(gs[0]);
                }
                chain.push(rows.node);
                rows = ops[0];
            }
            Op::GatherRows { k: gk } if gk == k && g.operands(rows.node)[1] == order => {
                chain.reverse();
                return (!chain.is_empty()).then(|| Layer {
                    combine,
                    k,
                    experts,
                    idx: g.operands(order.node)[0],
                    weights,
                    order,
                    x: g.operands(rows.node)[0],
                    chain,
                });
            }
            _ => return None,
        }
    }
}

fn partition_layer(
    g: &mut Graph,
    layer: &Layer,
    ranks: usize,
    rank: usize,
    placement: &Placement,
) -> Result<(), String> {
    let map = placement.ranks_of(layer.experts as usize, ranks)?;
    let local: Vec<usize> = (0..map.len())
        .filter(|e| map[*e] as usize == rank)
        .collect();
    let ranks64 = ranks as u64;
    let port = |node: NodeIndex, port: u8| Value { node, port };

    let route = g.add(
        Op::EpRoute {
            ranks: ranks64,
            rank: rank as u64,
            placement: map,
        },
        &[layer.idx],
        None,
    )?;
    let (send, counts, send_local) = (port(route, 0), port(route, 1), port(route, 2));
    let recv_counts: Value = g
        .add(Op::AllToAll { ranks: ranks64 }, &[counts], None)?
        .into();
    let exchange = |g: &mut Graph, v: Value, there: Value, back: Value| -> Result<Value, String> {
        Ok(
            g.add(Op::AllToAllV { ranks: ranks64 }, &[v, there, back], None)?
                .into(),
        )
    };
    let send_rows = g.add(Op::GatherRows { k: layer.k }, &[layer.x, send], None)?;
    let recv_rows = exchange(g, send_rows.into(), counts, recv_counts)?;
    let recv_local = exchange(g, send_local, counts, recv_counts)?;
    let recv_slots = exchange(g, send, counts, recv_counts)?;
    let dispatch = g.add(
        Op::Dispatch {
            experts: local.len() as u64,
        },
        &[recv_local],
        None,
    )?;
    let (lorder, loffsets) = (port(dispatch, 0), port(dispatch, 1));
    let permute = |g: &mut Graph, v: Value| -> Result<Value, String> {
        Ok(g.add(Op::GatherRows { k: 1 }, &[v, lorder], None)?.into())
    };
    let mut rows = permute(g, recv_rows)?;
    for &n in &layer.chain {
        let op = g.node(n).op.clone();
        let Op::GroupedLinear { bias, weighted, .. } = op else {
            unreachable!("the chain holds grouped matmuls")
        };
        let ops = g.operands(n);
        let mut operands = vec![rows, local_experts(g, ops[1], &local)?, loffsets];
        if bias {
            operands.push(local_experts(g, ops[3], &local)?);
        }
        if weighted {
            let w = layer.weights.expect("a weighted chain has routing weights");
            let slot_weights = g.add(Op::GatherSlots, &[w, recv_slots], None)?;
            operands.push(permute(g, slot_weights.into())?);
        }
        let label = g.node(n).label.clone();
        rows = g.add(op, &operands, label)?.into();
    }
    let unpermuted = g.add(Op::ScatterAdd { k: 1 }, &[rows, lorder], None)?;
    let back = exchange(g, unpermuted.into(), recv_counts, counts)?;
    let by_slot = g.add(Op::ScatterAdd { k: 1 }, &[back, send], None)?;
    let in_order = g.add(
        Op::GatherRows { k: 1 },
        &[by_slot.into(), layer.order],
        None,
    )?;
    let own = g.add(
        Op::ScatterAdd { k: layer.k },
        &[in_order.into(), layer.order],
        None,
    )?;
    let label = g.node(layer.combine).label.clone();
    let y = g.add(Op::AllGatherRows { ranks: ranks64 }, &[own.into()], label)?;
    // The per-slot probes name rows no rank holds whole any more.
    g.probes.retain(|p| {
        !(matches!(p.kind, ProbeKind::SlotRows | ProbeKind::SlotOrder)
            && (p.value == layer.order || layer.chain.contains(&p.value.node)))
    });
    replace_uses(g, layer.combine.into(), y.into());
    Ok(())
}

/// The experts `local` of a stacked `[E, ..]` weight: a `stack` of their slices, or a
/// `concat_rows` of such stacks (GLU halves).
fn local_experts(g: &mut Graph, v: Value, local: &[usize]) -> Result<Value, String> {
    let ops = g.operands(v.node);
    match g.node(v.node).op {
        Op::Stack => {
            let picked: Vec<Value> = local.iter().map(|e| ops[*e]).collect();
            Ok(g.add(Op::Stack, &picked, None)?.into())
        }
        Op::ConcatRows if g.value_type(v).rank() == 3 => {
            let halves = ops
                .iter()
                .map(|h| local_experts(g, *h, local))
                .collect::<Result<Vec<Value>, String>>()?;
            Ok(g.add(Op::ConcatRows, &halves, None)?.into())
        }
        ref op => Err(format!(
            "cannot take a rank's experts of a weight made by `{}`",
            op.name()
        )),
    }
}
