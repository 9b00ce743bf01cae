//! `fuse_experts`: turns the per-expert subgraphs under a `DenseCombine` into
//! stacked-weight `ExpertLinear` chains, one chain per group of consecutive
//! experts with the same structure.
//!
//! Each expert is read back from its output to the moe input `x` as a chain of
//! layers, each one of
//! - `linear(h, w[, b])` → `ExpertLinear` with no epilogue;
//! - `act(linear(h, w[, b]))` → `Epilogue::Act(act)`;
//! - `act(linear(h, wg[, bg])) * linear(h, wu[, bu])` (either operand order) →
//!   one `ExpertLinear` over `concat_rows(stack(wg), stack(wu))` with `Epilogue::Glu(act)`;
//! - GPT-OSS's clamped GLU, `(clamp(up, -L, L) + 1) * (g * sigmoid(α * g))` with
//!   `g = min(gate, L)`, `gate`/`up` linears of h (products in either operand order,
//!   `clamp` as lowering spells it: `min(max(up, -L), L)`) → the same with
//!   `Epilogue::ClampedGlu { alpha: α, limit: L }`.
//!
//! Weights (and biases) are stacked across the group with `Stack`; GLU biases are
//! concatenated per expert first. The first layer reads `x` ([T, K], shared); later
//! ones read the previous `[E_g, T, K]` value. The last layer is `weighted` by the
//! combine's gates (`slice_cols` of them when the layer has several groups). Each
//! group ends in `ExpertSum`, groups are added, and the sum replaces the combine.
//! Shared experts (the `shared` operand the moe adds to the combine, possibly
//! gated, possibly after a pass-through add) are fused the same way as
//! one-expert groups without gates.
//!
//! What it does not handle: an expert whose intermediate values are used
//! elsewhere, which is anything but the layer kinds above (norms, residuals,
//! other elementwise ops between linears, an `identity` expert), whose weights
//! are not `Weight` nodes, or whose layers read different inputs, makes the pass
//! leave that whole `DenseCombine` as it is (correct, just dense and slow). A
//! shared expert it cannot read stays as its plain linears.

use super::rewrite::{constant, remove_dead, replace_uses, used_only_by, value_users};
use crate::ir::{BinaryOp, Epilogue, F32Bits, Graph, NodeIndex, Op, TensorType, Value};

/// Fuses the experts of every `DenseCombine` it can read; true when it fused any.
pub fn run(g: &mut Graph) -> Result<bool, String> {
    let combines: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|n| g.g[*n].op == Op::DenseCombine)
            .collect();
    let mut changed = false;
    for c in combines {
        changed |= fuse_combine(g, c)?;
    }
    if changed {
        remove_dead(g);
    }
    Ok(changed)
}

/// One layer of an expert: a linear and the epilogue fused into it.
struct Layer {
    epilogue: Epilogue,
    /// The weight, or `[gate, up]` for a GLU.
    weights: Vec<Value>,
    /// Parallel to `weights` when the layer has biases.
    biases: Vec<Value>,
    /// The linear nodes reading the layer's input.
    readers: Vec<NodeIndex>,
    input: Value,
    /// Label of the layer's output, for the fused node.
    label: Option<String>,
}

impl Layer {
    /// What must agree for two experts' layers to be stacked.
    fn shape<'g>(&self, g: &'g Graph) -> (Epilogue, bool, &'g TensorType) {
        (
            self.epilogue,
            !self.biases.is_empty(),
            g.value_type(self.weights[0]),
        )
    }
}

/// `linear(h, w[, b])` at `v` with its operands, when `w` (and `b`) are weights.
fn linear_at(g: &Graph, v: Value) -> Option<(Value, Value, Option<Value>)> {
    let Op::Linear { bias } = g.node(v.node).op else {
        return None;
    };
    let ops = g.operands(v.node);
    let is_weight = |w: &Value| matches!(g.node(w.node).op, Op::Weight { .. });
    if !is_weight(&ops[1]) || (bias && !is_weight(&ops[2])) {
        return None;
    }
    Some((ops[0], ops[1], bias.then(|| ops[2])))
}

/// `act(...)` at `v`: the activation and its operand.
fn unary_at(g: &Graph, v: Value) -> Option<(crate::ir::UnaryOp, Value)> {
    match g.node(v.node).op {
        Op::Unary(u) => Some((u, g.operands(v.node)[0])),
        _ => None,
    }
}

/// The layer whose output is `out`, when every value inside it is private to it.
fn layer_at(g: &Graph, out: Value) -> Option<Layer> {
    let label = g.node(out.node).label.clone();
    let private = |v: Value, user: NodeIndex| used_only_by(g, v, &[user]);
    if let Some((x, w, b)) = linear_at(g, out) {
        let layer = Layer {
            epilogue: Epilogue::None,
            weights: vec![w],
            biases: b.into_iter().collect(),
            readers: vec![out.node],
            input: x,
            label,
        };
        return Some(layer);
    }
    if let Some((u, h)) = unary_at(g, out) {
        let (x, w, b) = linear_at(g, h)?;
        if !private(h, out.node) {
            return None;
        }
        return Some(Layer {
            epilogue: Epilogue::Act(u),
            weights: vec![w],
            biases: b.into_iter().collect(),
            readers: vec![h.node],
            input: x,
            label,
        });
    }
    if g.node(out.node).op != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    if let Some(layer) = clamped_glu_at(g, out) {
        return Some(layer);
    }
    let ops = g.operands(out.node);
    for (a, up) in [(ops[0], ops[1]), (ops[1], ops[0])] {
        let Some((u, gate)) = unary_at(g, a) else {
            continue;
        };
        let (Some((xg, wg, bg)), Some((xu, wu, bu))) = (linear_at(g, gate), linear_at(g, up))
        else {
            continue;
        };
        let fits = xg == xu
            && gate.node != up.node
            && g.value_type(wg) == g.value_type(wu)
            && bg.is_some() == bu.is_some()
            && private(a, out.node)
            && private(gate, a.node)
            && private(up, out.node);
        if fits {
            let biases = bg.into_iter().chain(bu).collect();
            return Some(Layer {
                epilogue: Epilogue::Glu(u),
                weights: vec![wg, wu],
                biases,
                readers: vec![gate.node, up.node],
                input: xg,
                label,
            });
        }
    }
    None
}

/// The operands of `v` when it is `Binary(op)`.
fn binary_at(g: &Graph, v: Value, op: BinaryOp) -> Option<(Value, Value)> {
    (g.node(v.node).op == Op::Binary(op)).then(|| {
        let ops = g.operands(v.node);
        (ops[0], ops[1])
    })
}

/// `a · b` at `v` where `first` accepts one operand: what it returned, that operand and the
/// other (both orders tried).
fn product_at<T>(
    g: &Graph,
    v: Value,
    first: impl Fn(Value) -> Option<T>,
) -> Option<(T, Value, Value)> {
    let (a, b) = binary_at(g, v, BinaryOp::Mul)?;
    first(a)
        .map(|t| (t, a, b))
        .or_else(|| first(b).map(|t| (t, b, a)))
}

/// GPT-OSS's clamped GLU at `out`: `(clamp(up, -L, L) + 1) · (g · sigmoid(α · g))` with
/// `g = min(gate, L)`, when every value inside is private to the pattern.
fn clamped_glu_at(g: &Graph, out: Value) -> Option<Layer> {
    let private = |v: Value, users: &[NodeIndex]| used_only_by(g, v, users);
    // The up side: `min(max(up, -L), L) + 1`.
    let up_side = |v: Value| {
        let (u, one) = binary_at(g, v, BinaryOp::Add)?;
        let (lower, hi) = binary_at(g, u, BinaryOp::Min)?;
        let (up, lo) = binary_at(g, lower, BinaryOp::Max)?;
        let limit = constant(g, hi)?;
        let fits = constant(g, one) == Some(1.0)
            && constant(g, lo) == Some(-limit)
            && private(v, &[out.node])
            && private(u, &[v.node])
            && private(lower, &[u.node])
            && private(up, &[lower.node]);
        fits.then_some((up, limit))
    };
    let ((up, limit), _, gate_side) = product_at(g, out, up_side)?;
    // The gate side: `g · sigmoid(α · g)` with `g = min(gate, L)`.
    let sigmoid = |v: Value| match unary_at(g, v)? {
        (crate::ir::UnaryOp::Sigmoid, a) => Some(a),
        _ => None,
    };
    let (scaled, sig, clamped) = product_at(g, gate_side, sigmoid)?;
    let ((), _, alpha) = product_at(g, scaled, |v| (v == clamped).then_some(()))?;
    let alpha = constant(g, alpha)?;
    let (gate, hi) = binary_at(g, clamped, BinaryOp::Min)?;
    let (xg, wg, bg) = linear_at(g, gate)?;
    let (xu, wu, bu) = linear_at(g, up)?;
    let fits = constant(g, hi) == Some(limit)
        && private(gate_side, &[out.node])
        && private(sig, &[gate_side.node])
        && private(scaled, &[sig.node])
        && private(clamped, &[scaled.node, gate_side.node])
        && private(gate, &[clamped.node])
        && xg == xu
        && gate.node != up.node
        && g.value_type(wg) == g.value_type(wu)
        && bg.is_some() == bu.is_some();
    fits.then(|| Layer {
        epilogue: Epilogue::ClampedGlu {
            alpha: F32Bits::new(alpha),
            limit: F32Bits::new(limit),
        },
        weights: vec![wg, wu],
        biases: bg.into_iter().chain(bu).collect(),
        readers: vec![gate.node, up.node],
        input: xg,
        label: g.node(out.node).label.clone(),
    })
}

/// Reads an expert back from `out` (read only by `user`): its layers in order and its input.
fn expert_at(g: &Graph, out: Value, user: NodeIndex) -> Option<(Vec<Layer>, Value)> {
    if out.port != 0 || !used_only_by(g, out, &[user]) {
        return None;
    }
    let mut layers = vec![layer_at(g, out)?];
    loop {
        let last = layers.last().expect("one layer read");
        let input = last.input;
        if input.port == 0 && used_only_by(g, input, &last.readers) {
            if let Some(l) = layer_at(g, input) {
                layers.push(l);
                continue;
            }
        }
        layers.reverse();
        return Some((layers, input));
    }
}

/// Builds one group's `ExpertLinear` chain and its `ExpertSum`.
fn fuse_group(
    g: &mut Graph,
    x: Value,
    experts: &[&Vec<Layer>],
    gates: Option<Value>,
) -> Result<Value, String> {
    let mut h = x;
    let depth = experts[0].len();
    for i in 0..depth {
        let layer = |e: usize| &experts[e][i];
        let stack =
            |g: &mut Graph, j: usize, of: fn(&Layer) -> &Vec<Value>| -> Result<Value, String> {
                let vals: Vec<Value> = (0..experts.len()).map(|e| of(layer(e))[j]).collect();
                Ok(g.add(Op::Stack, &vals, None)?.into())
            };
        let first = layer(0);
        let glu = first.epilogue.is_glu();
        let w = if glu {
            let (wg, wu) = (stack(g, 0, |l| &l.weights)?, stack(g, 1, |l| &l.weights)?);
            g.add(Op::ConcatRows, &[wg, wu], None)?.into()
        } else {
            stack(g, 0, |l| &l.weights)?
        };
        let mut operands = vec![h, w];
        let bias = !first.biases.is_empty();
        if bias {
            let b = if glu {
                let mut per_expert = Vec::new();
                for e in 0..experts.len() {
                    per_expert.push(g.add(Op::ConcatRows, &layer(e).biases, None)?.into());
                }
                g.add(Op::Stack, &per_expert, None)?.into()
            } else {
                stack(g, 0, |l| &l.biases)?
            };
            operands.push(b);
        }
        let weighted = i + 1 == depth && gates.is_some();
        if weighted {
            operands.extend(gates);
        }
        let op = Op::ExpertLinear {
            epilogue: first.epilogue,
            bias,
            weighted,
        };
        h = g.add(op, &operands, first.label.clone())?.into();
    }
    Ok(g.add(Op::ExpertSum, &[h], None)?.into())
}

/// Fuses the experts of one combine; false (and no change) when any expert is unreadable.
fn fuse_combine(g: &mut Graph, combine: NodeIndex) -> Result<bool, String> {
    let ops = g.operands(combine);
    let gates = ops[0];
    let mut experts = Vec::new();
    for out in &ops[1..] {
        match expert_at(g, *out, combine) {
            Some(e) => experts.push(e),
            None => return Ok(false),
        }
    }
    let x = experts[0].1;
    if experts.iter().any(|(_, input)| *input != x) {
        return Ok(false);
    }
    // Consecutive experts of one structure form a group.
    let mut groups: Vec<(usize, Vec<&Vec<Layer>>)> = Vec::new();
    for (e, (layers, _)) in experts.iter().enumerate() {
        let same = |a: &Vec<Layer>| {
            a.len() == layers.len() && a.iter().zip(layers).all(|(p, q)| p.shape(g) == q.shape(g))
        };
        match groups.last_mut() {
            Some((_, members)) if same(members[0]) => members.push(layers),
            _ => groups.push((e, vec![layers])),
        }
    }
    let total = experts.len();
    let mut sum: Option<Value> = None;
    for (start, members) in &groups {
        let group_gates = if members.len() == total {
            gates
        } else {
            g.add(
                Op::SliceCols {
                    heads: 1,
                    start: *start as u64,
                    len: members.len() as u64,
                },
                &[gates],
                None,
            )?
            .into()
        };
        let part = fuse_group(g, x, members, Some(group_gates))?;
        sum = Some(match sum {
            None => part,
            Some(s) => g.add(Op::Binary(BinaryOp::Add), &[s, part], None)?.into(),
        });
    }
    let fused = sum.expect("a combine has at least one expert");
    g.g[fused.node].label = g.node(combine).label.clone();
    replace_uses(g, combine.into(), fused);
    fuse_shared(g, fused, x)?;
    Ok(true)
}

/// Fuses the shared experts added to the fused routed output `y` (`y [+ pass-through] + shared`).
fn fuse_shared(g: &mut Graph, y: Value, x: Value) -> Result<(), String> {
    let mut y = y;
    loop {
        let users = value_users(g, y);
        let [add] = users.as_slice() else {
            return Ok(());
        };
        if g.node(*add).op != Op::Binary(BinaryOp::Add) || g.operands(*add)[0] != y {
            return Ok(());
        }
        let other = g.operands(*add)[1];
        if g.node(other.node).op == Op::PassThrough {
            y = (*add).into();
            continue;
        }
        // The shared sum: `s_0 + s_1 + ...`, optionally times a gate.
        let mut outs = Vec::new();
        let mut stack = vec![(other, *add)];
        while let Some((v, user)) = stack.pop() {
            let op = &g.node(v.node).op;
            let inner = matches!(op, Op::Binary(BinaryOp::Add))
                || (v == other && matches!(op, Op::Binary(BinaryOp::Mul)));
            if inner && used_only_by(g, v, &[user]) && layer_at(g, v).is_none() {
                let ops = g.operands(v.node);
                stack.push((ops[0], v.node));
                if *op == Op::Binary(BinaryOp::Add) {
                    stack.push((ops[1], v.node));
                }
            } else {
                outs.push((v, user));
            }
        }
        for (out, user) in outs {
            if let Some((layers, input)) = expert_at(g, out, user) {
                if input == x {
                    let fused = fuse_group(g, x, &[&layers], None)?;
                    replace_uses(g, out, fused);
                }
            }
        }
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::lower_source;
    use crate::verify::verify;

    fn lowered(spec: &str) -> Graph {
        lower_source(spec, &[])
            .unwrap_or_else(|d| panic!("{}", d.render("t.moe", spec)))
            .graph
    }

    fn count(g: &Graph, f: impl Fn(&Op) -> bool) -> usize {
        g.g.node_weights().filter(|n| f(&n.op)).count()
    }

    const ROUTER: &str = "router r(h: [n, 4]) { logits = linear(h, 4) select = topk(scores, 2) }";

    #[test]
    fn swiglu_experts_become_one_glu_and_one_weighted_linear() {
        let mut g = lowered(&format!(
            "model m {{ input x: f32[tokens, 4]
              expert e(h: [n, 4]) -> [n, 4] {{ let a = linear(h, 6) let b = linear(h, 6) let c = linear(b * silu(a), 4) return c }}
              {ROUTER}
              let y = moe(x, experts = 4 * e, router = r) output y }}"
        ));
        assert!(run(&mut g).unwrap());
        verify(&g).unwrap();
        assert_eq!(count(&g, |o| *o == Op::DenseCombine), 0);
        assert_eq!(
            count(&g, |o| matches!(
                o,
                Op::ExpertLinear {
                    epilogue: Epilogue::Glu(_),
                    weighted: false,
                    ..
                }
            )),
            1
        );
        assert_eq!(
            count(&g, |o| matches!(
                o,
                Op::ExpertLinear {
                    epilogue: Epilogue::None,
                    weighted: true,
                    ..
                }
            )),
            1
        );
        assert_eq!(count(&g, |o| *o == Op::ExpertSum), 1);
        assert_eq!(
            count(&g, |o| matches!(o, Op::Linear { .. })),
            1,
            "only the router's linear is left"
        );
    }

    #[test]
    fn heterogeneous_experts_make_one_group_each() {
        let mut g = lowered(&format!(
            "model m {{ input x: f32[tokens, 4]
              expert a(h: [n, 4]) -> [n, 4] {{ let u = linear(h, 6, bias = true) let v = linear(relu(u), 4) return v }}
              expert b(h: [n, 4]) -> [n, 4] {{ let u = linear(h, 4) return u }}
              {ROUTER}
              let y = moe(x, experts = [2 * a, 2 * b], router = r) output y }}"
        ));
        assert!(run(&mut g).unwrap());
        verify(&g).unwrap();
        assert_eq!(count(&g, |o| *o == Op::ExpertSum), 2);
        assert_eq!(count(&g, |o| matches!(o, Op::SliceCols { .. })), 2);
        assert_eq!(
            count(&g, |o| matches!(
                o,
                Op::ExpertLinear {
                    epilogue: Epilogue::Act(_),
                    bias: true,
                    ..
                }
            )),
            1
        );
    }

    #[test]
    fn an_expert_it_cannot_read_leaves_the_combine() {
        let mut g = lowered(&format!(
            "model m {{ input x: f32[tokens, 4]
              expert a(h: [n, 4]) -> [n, 4] {{ let u = linear(h, 4) let v = linear(u + h, 4) return v }}
              {ROUTER}
              let y = moe(x, experts = 4 * a, router = r) output y }}"
        ));
        assert!(!run(&mut g).unwrap());
        assert_eq!(count(&g, |o| *o == Op::DenseCombine), 1);
    }
}
