//! `schedule`: sparsity-aware scheduling of fused expert groups. A group's dense
//! `ExpertLinear` chain runs every expert on every token and zeroes most of the
//! work with its gates; when those gates are `scatter_gates(idx, w)` (top-k
//! routing, possibly after `capacity`, or expert-choice slots), the chain is
//! rewritten to touch only the routed (token, expert) slots:
//!
//! ```text
//! order, offsets = dispatch{E}(idx)           // slots grouped by expert; dropped (-1) last
//! rows = gather_rows{k}(x, order)             // [k·T, K]
//! rows = grouped_linear(rows, w_i, offsets …) // per layer, same epilogue and bias
//! rows = grouped_linear(…, gather_slots(w, order))   // the last one weighted per row
//! y    = scatter_add{k}(rows, order)          // [T, D], replaces the group's expert_sum
//! ```
//!
//! The block's per-slot rows and order become probes (`ProbeKind::SlotRows`,
//! `SlotOrder`) for traces.
//!
//! Dropped slots (index -1) sort past `offsets[E]`, so no grouped matmul touches
//! them and they add nothing; an expert with no slots has an empty range. The
//! result equals the dense chain's up to summation order.
//!
//! What it does not handle: a layer whose experts form several groups (the gates
//! are `slice_cols` of the combine's; each group would need the indices restricted
//! and renumbered to its expert range, which no op does yet) stays dense, as do
//! groups whose gates come from anything but `scatter_gates`, and unweighted
//! chains (shared experts, which every token uses anyway).

use super::rewrite::{remove_dead, replace_uses, used_only_by};
use crate::ir::{Graph, NodeIndex, Op, Probe, ProbeKind, Value};

/// Schedules every fused group it recognizes; true when it scheduled one.
pub fn run(g: &mut Graph) -> Result<bool, String> {
    let sums: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|n| g.g[*n].op == Op::ExpertSum)
            .collect();
    let mut changed = false;
    for s in sums {
        changed |= schedule_group(g, s)?;
    }
    if changed {
        remove_dead(g);
    }
    Ok(changed)
}

/// The dense chain under `sum`: its `ExpertLinear` nodes in order and the shared input.
fn dense_chain(g: &Graph, sum: NodeIndex) -> Option<(Vec<NodeIndex>, Value)> {
    let mut v = g.operands(sum)[0];
    let mut user = sum;
    let mut chain = Vec::new();
    loop {
        let Op::ExpertLinear { weighted, .. } = g.node(v.node).op else {
            return None;
        };
        // Only the last layer is weighted; every link is private to the chain.
        if weighted != chain.is_empty() || !used_only_by(g, v, &[user]) {
            return None;
        }
        chain.push(v.node);
        let input = g.operands(v.node)[0];
        if g.value_type(input).rank() == 2 {
            chain.reverse();
            return Some((chain, input));
        }
        user = v.node;
        v = input;
    }
}

fn schedule_group(g: &mut Graph, sum: NodeIndex) -> Result<bool, String> {
    let Some((chain, x)) = dense_chain(g, sum) else {
        return Ok(false);
    };
    let last = *chain.last().expect("chains are never empty");
    let gates = *g.operands(last).last().expect("weighted layers read gates");
    let experts = g.value_type(g.operands(last)[1]).shape[0].as_fixed();
    let Op::ScatterGates {
        experts: routed,
        mask: false,
    } = g.node(gates.node).op
    else {
        return Ok(false);
    };
    if experts != Some(routed) {
        return Ok(false);
    }
    let [idx, w] = g.operands(gates.node)[..] else {
        return Ok(false);
    };
    let Some(k) = g.value_type(idx).shape[1].as_fixed() else {
        return Ok(false);
    };

    let dispatch = g.add(Op::Dispatch { experts: routed }, &[idx], None)?;
    let order = Value {
        node: dispatch,
        port: 0,
    };
    let offsets = Value {
        node: dispatch,
        port: 1,
    };
    let mut rows: Value = g.add(Op::GatherRows { k }, &[x, order], None)?.into();
    for &n in &chain {
        let Op::ExpertLinear {
            epilogue,
            bias,
            weighted,
        } = g.node(n).op
        else {
            unreachable!("chain holds expert linears")
        };
        let ops = g.operands(n);
        let mut operands = vec![rows, ops[1], offsets];
        if bias {
            operands.push(ops[2]);
        }
        if weighted {
            operands.push(g.add(Op::GatherSlots, &[w, order], None)?.into());
        }
        let label = g.node(n).label.clone();
        rows = g
            .add(
                Op::GroupedLinear {
                    epilogue,
                    bias,
                    weighted,
                },
                &operands,
                label,
            )?
            .into();
    }
    let label = g.node(sum).label.clone();
    let y = g.add(Op::ScatterAdd { k }, &[rows, order], label)?;
    probe_slots(g, sum.into(), rows, order);
    replace_uses(g, sum.into(), y.into());
    Ok(true)
}

/// The block whose routed output is `sum` gets its per-slot rows probed (each
/// selected expert's weighted contribution, for traces).
fn probe_slots(g: &mut Graph, sum: Value, rows: Value, order: Value) {
    let blocks: Vec<String> = g
        .probes
        .iter()
        .filter(|p| p.value == sum && p.kind == ProbeKind::Routed)
        .map(|p| p.block.clone())
        .collect();
    for block in blocks {
        for (kind, value) in [(ProbeKind::SlotRows, rows), (ProbeKind::SlotOrder, order)] {
            g.probes.push(Probe {
                block: block.clone(),
                kind,
                value,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::lower_source;
    use crate::passes::{fuse_experts, fuse_router};
    use crate::verify::verify;

    fn fused(experts: &str, router: &str) -> Graph {
        let spec = format!(
            "model m {{ input x: f32[tokens, 4]
              expert a(h: [n, 4]) -> [n, 4] {{ let u = linear(h, 6) let v = linear(relu(u), 4) return v }}
              expert b(h: [n, 4]) -> [n, 4] {{ let u = linear(h, 4) return u }}
              router r(h: [n, 4]) {{ logits = linear(h, 4) {router} }}
              let y = moe(x, experts = {experts}, router = r) output y }}"
        );
        let mut g = lower_source(&spec, &[])
            .unwrap_or_else(|d| panic!("{}", d.render("t.moe", &spec)))
            .graph;
        fuse_router::run(&mut g).unwrap();
        fuse_experts::run(&mut g).unwrap();
        g
    }

    fn count(g: &Graph, f: impl Fn(&Op) -> bool) -> usize {
        g.g.node_weights().filter(|n| f(&n.op)).count()
    }

    #[test]
    fn top_k_group_becomes_grouped_matmuls() {
        let mut g = fused("4 * a", "select = topk(scores, 2)");
        assert!(run(&mut g).unwrap());
        verify(&g).unwrap();
        assert_eq!(
            count(&g, |o| matches!(o, Op::ExpertLinear { .. } | Op::ExpertSum)),
            0
        );
        assert_eq!(count(&g, |o| matches!(o, Op::GroupedLinear { .. })), 2);
        assert_eq!(
            count(&g, |o| matches!(
                o,
                Op::GroupedLinear { weighted: true, .. }
            )),
            1
        );
        assert_eq!(count(&g, |o| *o == Op::Dispatch { experts: 4 }), 1);
        assert_eq!(count(&g, |o| *o == Op::ScatterAdd { k: 2 }), 1);
    }

    #[test]
    fn expert_choice_dispatches_all_slots() {
        let mut g = fused("4 * a", "select = expert_choice(scores, 1.0)");
        assert!(run(&mut g).unwrap());
        verify(&g).unwrap();
        assert_eq!(count(&g, |o| *o == Op::ScatterAdd { k: 4 }), 1);
    }

    #[test]
    fn several_groups_stay_dense() {
        let mut g = fused("[2 * a, 2 * b]", "select = topk(scores, 2)");
        assert!(!run(&mut g).unwrap());
        assert_eq!(count(&g, |o| *o == Op::ExpertSum), 2);
    }
}
