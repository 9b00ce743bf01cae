//! Loading a graph's weights into the CPU backend, one matmul at a time.
//!
//! The weight-only values (the weights, and the stacked or concatenated expert weights
//! computed from them) are computed on demand, matmul by matmul in topological order (each
//! matmul's operands depth first, then the values runs read); each matmul whose weights (and
//! bias) are weight-only is packed as soon as they are ready, and every value is dropped as
//! soon as nothing left needs it: no weight-only node still to compute, no matmul still to
//! pack, no run (a value a run reads, such as a norm's weight or an embedding table, is
//! kept). Weights come from a [`WeightSet`]; from a checked checkpoint each tensor is read
//! (widened to f32) only when its turn comes, so the peak is the packed weights plus the f32
//! values of the matmuls in flight, never the whole model in f32.
//!
//! Each packed matmul's panel format is decided here: the graph's stored format
//! (`Graph::stored`) when it has one; otherwise, for the JIT, bf16 panels when every weight
//! is a bf16 value (a bf16 checkpoint, or weights rounded to bf16: lossless, the results are
//! those of f32 panels), f32 panels else; linked kernels keep the shape they were built for.
//! It does not compile kernels (that needs the decided shapes) or run anything.

use super::matmul::Packed;
use super::{extra_operands, pack, MatmulIsa};
use crate::weights::WeightSet;
use moec_compiler::backend::clif::{MatmulShape, WeightDType};
use moec_compiler::interp;
use moec_compiler::ir::{Graph, NodeIndex, Op, Value, WeightFormat};
use moec_compiler::passes::memory::weight_only;
use moec_compiler::tensor::Tensor;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// How the panel format of a matmul without a stored format is chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Panels {
    /// bf16 when every weight is a bf16 value, f32 else (JIT kernels, compiled afterwards).
    Bf16WhenExact,
    /// As the given shape says (kernels linked ahead of time).
    AsShaped,
}

/// The weights as a run reads them.
pub(super) struct Loaded {
    /// The weight-only nodes.
    pub fixed: HashSet<NodeIndex>,
    /// The matmuls with packed weights, each with its shape (panel format decided).
    pub packed: HashMap<NodeIndex, Packed>,
    /// The (matmul, operand position) pairs that read packed weights or biases.
    pub packed_operands: HashSet<(NodeIndex, usize)>,
    /// Every matmul's shape: `shapes` as given, with the decided panel formats.
    pub shapes: HashMap<NodeIndex, MatmulShape>,
    /// The weight-only values a run still reads.
    pub values: HashMap<Value, Tensor>,
}

/// Computes `g`'s weight-only values from `weights` and packs every matmul of `shapes` whose
/// weight and bias operands are weight-only, for `isa`.
pub(super) fn load(
    g: &Graph,
    weights: &dyn WeightSet,
    mut shapes: HashMap<NodeIndex, MatmulShape>,
    isa: MatmulIsa,
    panels: Panels,
) -> Result<Loaded, String> {
    if weights.count() != g.weights.len() {
        return Err(format!(
            "{} weights bound, the graph needs {}",
            weights.count(),
            g.weights.len()
        ));
    }
    for (n, shape) in shapes.iter_mut() {
        if let Some(&f) = g.stored.get(n) {
            shape.weights = panel_dtype(f);
        }
    }
    let fixed = weight_only(g);
    // The packed operands of each matmul that packs: its weights and bias.
    let mut packs: HashMap<NodeIndex, Vec<(usize, Value)>> = HashMap::new();
    for (&n, shape) in &shapes {
        let ops = g.operands(n);
        let (bias_at, _) = extra_operands(&g.node(n).op, shape);
        let at: Vec<usize> = [Some(1), bias_at].into_iter().flatten().collect();
        if at.iter().all(|&i| fixed.contains(&ops[i].node)) {
            packs.insert(n, at.into_iter().map(|i| (i, ops[i])).collect());
        }
    }
    let packed_operands: HashSet<(NodeIndex, usize)> = packs
        .iter()
        .flat_map(|(&n, ops)| ops.iter().map(move |&(i, _)| (n, i)))
        .collect();
    let mut uses = Uses::of(g, &fixed, &packed_operands);
    // The matmuls waiting for each weight-only node.
    let mut waiting: HashMap<NodeIndex, Vec<NodeIndex>> = HashMap::new();
    for (&n, ops) in &packs {
        for &(_, v) in ops {
            waiting.entry(v.node).or_default().push(n);
        }
    }
    let mut values: HashMap<Value, Cow<Tensor>> = HashMap::new();
    let mut packed = HashMap::new();
    for n in demand_order(g, &fixed, &packs) {
        let operands = g.operands(n);
        let outs = match &g.node(n).op {
            Op::Weight { id, .. } => vec![checked(g, *id, weights.tensor(*id))?],
            op => {
                let args: Vec<&Tensor> = operands.iter().map(|v| &*values[v]).collect();
                interp::eval_op(op, &args)
                    .into_iter()
                    .map(Cow::Owned)
                    .collect()
            }
        };
        for v in operands {
            uses.release(v, &mut values);
        }
        for (v, t) in Value::ports(n, outs) {
            if uses.needed(v) {
                values.insert(v, t);
            }
        }
        for m in waiting.remove(&n).unwrap_or_default() {
            let ops = &packs[&m];
            if packed.contains_key(&m) || !ops.iter().all(|(_, v)| values.contains_key(v)) {
                continue;
            }
            let w = &values[&ops[0].1];
            let bias = ops.get(1).map(|(_, b)| &*values[b]);
            let shape = shapes.get_mut(&m).expect("a packed matmul has a shape");
            let format = g.stored.get(&m).copied();
            if format.is_none() && panels == Panels::Bf16WhenExact && bf16_values(w) {
                shape.weights = WeightDType::Bf16;
            }
            packed.insert(m, pack(*shape, w, bias, isa, format));
            for &(_, v) in ops {
                uses.release(v, &mut values);
            }
        }
    }
    let values = values
        .into_iter()
        .filter(|(v, _)| uses.kept.contains(v))
        .map(|(v, t)| (v, t.into_owned()))
        .collect();
    Ok(Loaded {
        fixed,
        packed,
        packed_operands,
        shapes,
        values,
    })
}

/// The weight-only nodes in the order loading computes them: for each packing matmul in
/// topological order, the nodes its packed operands need, depth first (operands before
/// users), then the rest in topological order. So a weight is read just before the matmul
/// that needs it, not all at the start.
fn demand_order(
    g: &Graph,
    fixed: &HashSet<NodeIndex>,
    packs: &HashMap<NodeIndex, Vec<(usize, Value)>>,
) -> Vec<NodeIndex> {
    let topo = g.topo_order();
    let roots = topo
        .iter()
        .filter_map(|m| packs.get(m))
        .flat_map(|ops| ops.iter().map(|(_, v)| v.node))
        .chain(topo.iter().copied().filter(|n| fixed.contains(n)));
    let mut placed = HashSet::new();
    let mut order = Vec::with_capacity(fixed.len());
    for root in roots {
        // Post-order without recursion: (node, whether its operands are placed).
        let mut stack = vec![(root, false)];
        while let Some((n, ready)) = stack.pop() {
            if placed.contains(&n) {
                continue;
            }
            if ready {
                placed.insert(n);
                order.push(n);
                continue;
            }
            stack.push((n, true));
            for v in g.operands(n).into_iter().rev() {
                if !placed.contains(&v.node) {
                    stack.push((v.node, false));
                }
            }
        }
    }
    order
}

/// How many more times each weight-only value is read while loading, and which values
/// runs read (kept however often loading reads them).
struct Uses {
    left: HashMap<Value, usize>,
    kept: HashSet<Value>,
}

impl Uses {
    fn of(g: &Graph, fixed: &HashSet<NodeIndex>, packed: &HashSet<(NodeIndex, usize)>) -> Uses {
        let mut left: HashMap<Value, usize> = HashMap::new();
        let mut kept: HashSet<Value> = g
            .outputs
            .iter()
            .map(|(_, v)| *v)
            .filter(|v| fixed.contains(&v.node))
            .collect();
        for n in g.g.node_indices() {
            for (i, v) in g.operands(n).into_iter().enumerate() {
                if !fixed.contains(&v.node) {
                    continue;
                }
                if fixed.contains(&n) || packed.contains(&(n, i)) {
                    *left.entry(v).or_default() += 1;
                } else {
                    kept.insert(v);
                }
            }
        }
        Uses { left, kept }
    }

    /// Whether `v` is read at all (by loading or by runs).
    fn needed(&self, v: Value) -> bool {
        self.kept.contains(&v) || self.left.get(&v).is_some_and(|&l| l > 0)
    }

    /// One read of `v` done: drops it from `values` when it was the last and runs don't read it.
    fn release(&mut self, v: Value, values: &mut HashMap<Value, Cow<Tensor>>) {
        if let Some(left) = self.left.get_mut(&v) {
            *left = left.saturating_sub(1);
            if *left == 0 && !self.kept.contains(&v) {
                values.remove(&v);
            }
        }
    }
}

/// Weight `id` of `g` as bound, when it is f32 in its decl's shape.
fn checked<'w>(g: &Graph, id: usize, t: Cow<'w, Tensor>) -> Result<Cow<'w, Tensor>, String> {
    interp::check_weight(&g.weights[id], &t)?;
    Ok(t)
}

/// Whether every value of `w` is a bf16 value (its low 16 bits zero).
pub(super) fn bf16_values(w: &Tensor) -> bool {
    w.as_f32().iter().all(|v| v.to_bits() & 0xFFFF == 0)
}

/// The JIT panels of a stored format: bf16 for bf16, f32 for the rest (quantized formats
/// have panels of their own, on the AVX-512 path only).
fn panel_dtype(format: WeightFormat) -> WeightDType {
    match format {
        WeightFormat::Bf16 => WeightDType::Bf16,
        _ => WeightDType::F32,
    }
}
