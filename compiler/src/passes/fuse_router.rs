//! `fuse_router`: folds the router chain that `lower/moe.rs` emits after the
//! logits into one `Op::Router` node.
//!
//! The matched chain, anchored at a `TopK` (each bracketed step optional):
//!
//! ```text
//! scores = softmax(l) | sigmoid(l)      (or scores = l when scoring after top-k)
//! choose = [group_mask]([scores + bias])
//! idx    = topk(choose).1
//! w      = [mul(normalize([score](gather(scores, idx))), const)]
//! ```
//!
//! becomes `router(l, [bias])` with the weights on port 0 and the indices on
//! port 1; every use of `idx` and of the last absorbed `w` moves to the router,
//! which keeps the top-k's label (`<moe>.selected_experts`).
//!
//! What it does not handle: a chain whose intermediate values have other users
//! (the scores read by something besides the chain, the top-k values used, an
//! intermediate weight that is a graph output) is left alone, as is expert-choice
//! selection (there is no top-k). Steps are absorbed only in the router's order;
//! anything after the last one (a second scale, a score after a pre-scored gather)
//! stays as it was, reading the router's weights.

use super::rewrite::{remove_dead, replace_uses, used_only_by, value_users};
use crate::ir::{BinaryOp, F32Bits, Graph, NodeIndex, Op, RouterAttrs, Score, UnaryOp, Value};

/// Fuses every router chain it recognizes; true when it fused one.
pub fn run(g: &mut Graph) -> Result<bool, String> {
    let topks: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|n| matches!(g.g[*n].op, Op::TopK { .. }))
            .collect();
    let mut changed = false;
    for t in topks {
        if let Some(chain) = match_chain(g, t) {
            let mut operands = vec![chain.logits];
            operands.extend(chain.bias);
            let label = g.node(t).label.clone();
            let router = g.add(Op::Router(chain.attrs), &operands, label)?;
            replace_uses(
                g,
                Value { node: t, port: 1 },
                Value {
                    node: router,
                    port: 1,
                },
            );
            replace_uses(
                g,
                chain.weights,
                Value {
                    node: router,
                    port: 0,
                },
            );
            changed = true;
        }
    }
    if changed {
        remove_dead(g);
    }
    Ok(changed)
}

/// A recognized chain: the router it computes and the values it replaces.
struct Chain {
    attrs: RouterAttrs,
    logits: Value,
    bias: Option<Value>,
    /// The last weights value the router absorbs.
    weights: Value,
}

fn score_of(op: &Op) -> Option<Score> {
    match op {
        Op::Softmax => Some(Score::Softmax),
        Op::Unary(UnaryOp::Sigmoid) => Some(Score::Sigmoid),
        _ => None,
    }
}

/// The single node reading `v`, when `v` feeds exactly one node and is no graph output.
fn sole_user(g: &Graph, v: Value) -> Option<NodeIndex> {
    match value_users(g, v).as_slice() {
        [u] if used_only_by(g, v, &[*u])
            && g.operands(*u).iter().filter(|o| **o == v).count() == 1 =>
        {
            Some(*u)
        }
        _ => None,
    }
}

fn match_chain(g: &Graph, topk: NodeIndex) -> Option<Chain> {
    let Op::TopK { k } = g.node(topk).op else {
        return None;
    };
    let idx = Value {
        node: topk,
        port: 1,
    };
    if !used_only_by(
        g,
        Value {
            node: topk,
            port: 0,
        },
        &[],
    ) {
        return None;
    }
    // Up the selection path: top-k ← [group mask] ← [+ bias] ← scores.
    let mut reader = topk;
    let mut choose = g.operands(topk)[0];
    let mut groups = None;
    if let Op::GroupMask {
        groups: n,
        keep,
        score,
    } = g.node(choose.node).op
    {
        if sole_user(g, choose) != Some(reader) {
            return None;
        }
        groups = Some((n, keep, score));
        reader = choose.node;
        choose = g.operands(choose.node)[0];
    }
    let mut bias = None;
    if g.node(choose.node).op == Op::Binary(BinaryOp::Add) {
        let ops = g.operands(choose.node);
        let experts = *g.value_type(ops[0]).shape.last()?;
        if g.value_type(ops[1]).shape == [experts]
            && experts.as_fixed().is_some()
            && ops[1] != ops[0]
        {
            if sole_user(g, choose) != Some(reader) {
                return None;
            }
            bias = Some(ops[1]);
            reader = choose.node;
            choose = ops[0];
        }
    }
    let scores = choose;
    // The gather of the unbiased scores at the selected indices.
    let gather = value_users(g, idx)
        .into_iter()
        .find(|u| g.node(*u).op == Op::Gather && g.operands(*u) == [scores, idx])?;
    let mut weights = Value::from(gather);
    let (score, after_topk, logits) = match score_of(&g.node(scores.node).op) {
        Some(s) => {
            // The scores may feed the selection path and the gather, nothing else.
            if !used_only_by(g, scores, &[reader, gather]) {
                return None;
            }
            (s, false, g.operands(scores.node)[0])
        }
        None => {
            // Scored after top-k: the gathered logits must go straight into the score.
            let u = sole_user(g, weights)?;
            let s = score_of(&g.node(u).op)?;
            weights = u.into();
            (s, true, scores)
        }
    };
    let mut normalize = None;
    if let Some(u) = sole_user(g, weights) {
        if let Op::Normalize(n) = g.node(u).op {
            normalize = Some(n);
            weights = u.into();
        }
    }
    let mut scale = F32Bits::new(1.0);
    if let Some(u) = sole_user(g, weights).filter(|u| g.node(*u).op == Op::Binary(BinaryOp::Mul)) {
        let ops = g.operands(u);
        if ops[0] == weights {
            if let Op::Constant(c) = g.node(ops[1].node).op {
                scale = c;
                weights = u.into();
            }
        }
    }
    let selection_bias = bias.is_some();
    let attrs = RouterAttrs {
        score,
        after_topk,
        selection_bias,
        groups,
        k,
        normalize,
        scale,
    };
    Some(Chain {
        attrs,
        logits,
        bias,
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Renorm;
    use crate::lower::lower_source;
    use crate::verify::verify;

    fn lowered(router: &str) -> Graph {
        let spec = format!(
            "model m {{ input x: f32[tokens, 4]
              expert lin(h: [n, 4]) -> [n, 4] {{ let w = linear(h, 4) return w }}
              router r(h: [n, 4]) {{ {router} }}
              let y = moe(x, experts = 8 * lin, router = r)
              output y  output sel = y.selected_experts }}"
        );
        lower_source(&spec, &[])
            .unwrap_or_else(|d| panic!("{}", d.render("t.moe", &spec)))
            .graph
    }

    fn routers(g: &Graph) -> Vec<RouterAttrs> {
        g.g.node_weights()
            .filter_map(|n| match n.op {
                Op::Router(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fuses_every_step_of_a_deepseek_router() {
        let mut g = lowered(
            "logits = linear(h, 8) scores = sigmoid(logits)
             select = topk(scores, 2, groups = 4, topk_groups = 2, selection_bias = true)
             normalize = true scale = 2.5",
        );
        assert!(run(&mut g).unwrap());
        verify(&g).unwrap();
        let r = routers(&g);
        assert_eq!(r.len(), 1);
        let r = r[0];
        assert_eq!(
            (r.score, r.after_topk, r.selection_bias, r.k, r.normalize),
            (Score::Sigmoid, false, true, 2, Some(Renorm::sum()))
        );
        assert_eq!(r.groups.map(|(g, keep, _)| (g, keep)), Some((4, 2)));
        assert_eq!(r.scale.get(), 2.5);
        for op in [Op::TopK { k: 2 }, Op::Gather, Op::Normalize(Renorm::sum())] {
            assert!(
                !g.g.node_weights().any(|n| n.op == op),
                "{op:?} left behind"
            );
        }
        let sel = g.outputs.iter().find(|(n, _)| n == "sel").unwrap().1;
        assert!(matches!(g.node(sel.node).op, Op::Router(_)) && sel.port == 1);
        assert_eq!(
            g.node(sel.node).label.as_deref(),
            Some("y.selected_experts")
        );
        assert!(!run(&mut g).unwrap(), "a second run finds nothing");
    }

    #[test]
    fn fuses_scoring_after_top_k() {
        let mut g = lowered("logits = linear(h, 8) scores = softmax(logits, after_topk = true) select = topk(logits, 2)");
        assert!(run(&mut g).unwrap());
        verify(&g).unwrap();
        let r = routers(&g);
        assert_eq!(r.len(), 1);
        assert!(r[0].after_topk && r[0].score == Score::Softmax && r[0].normalize.is_none());
    }

    #[test]
    fn leaves_expert_choice_alone() {
        let mut g = lowered(
            "logits = linear(h, 8) scores = softmax(logits) select = expert_choice(scores, 1.0)",
        );
        assert!(!run(&mut g).unwrap());
    }

    #[test]
    fn leaves_a_chain_whose_scores_are_used_elsewhere() {
        let mut g =
            lowered("logits = linear(h, 8) scores = softmax(logits) select = topk(scores, 2)");
        let softmax =
            g.g.node_indices()
                .find(|n| g.g[*n].op == Op::Softmax)
                .unwrap();
        g.outputs.push(("scores".into(), softmax.into()));
        assert!(!run(&mut g).unwrap());
    }
}
