//! Routing traces (`moec trace`): which experts each token went to, in every
//! MoE block of a model, and how the router and the experts behaved.
//!
//! A trace reads the graph's probes (`ir::Probe`, marked by the lowering and
//! carried through the passes): [`probed`] turns them into extra outputs of the
//! already optimized graph, so the traced graph runs exactly the kernels an
//! untraced one does. [`Trace::from_outputs`] turns one run's probe values into
//! the tensors `docs/trace.md` describes (blocks in model order, slots in
//! descending routing weight), and [`Trace::write`] stores them as one
//! safetensors file with the spec, block names, ids and token strings in its
//! JSON metadata. It does not draw anything (`moec report` does).

use moec_compiler::ir::{Graph, ProbeKind};
use moec_compiler::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::path::Path;

/// The format string in every trace's metadata.
pub const FORMAT: &str = "moec-trace-1";

/// The probes of one MoE block, as output names of the probed graph.
#[derive(Clone, Debug)]
pub struct Block {
    pub name: String,
    outputs: BTreeMap<&'static str, String>,
}

/// `g` with one output per probe (`probe.<block>.<kind>`), and its blocks in the
/// order the lowering met them (the model's layer order).
pub fn probed(g: &Graph) -> Result<(Graph, Vec<Block>), String> {
    let mut traced = g.clone();
    let mut blocks: Vec<Block> = Vec::new();
    for p in &g.probes {
        let out = format!("probe.{}.{}", p.block, p.kind.name());
        traced.outputs.push((out.clone(), p.value));
        let i = match blocks.iter().position(|b| b.name == p.block) {
            Some(i) => i,
            None => {
                blocks.push(Block {
                    name: p.block.clone(),
                    outputs: BTreeMap::new(),
                });
                blocks.len() - 1
            }
        };
        blocks[i].outputs.insert(p.kind.name(), out);
    }
    let required = [
        ProbeKind::RouterLogits,
        ProbeKind::RoutingWeights,
        ProbeKind::SelectedExperts,
        ProbeKind::KeptExperts,
        ProbeKind::Routed,
    ];
    for b in &blocks {
        if let Some(k) = required.iter().find(|k| !b.outputs.contains_key(k.name())) {
            return Err(format!(
                "internal error: the MoE block `{}` lost its {} probe in the passes",
                b.name,
                k.name()
            ));
        }
    }
    if blocks.is_empty() {
        return Err(format!("`{}` has no MoE block to trace", g.name));
    }
    Ok((traced, blocks))
}

/// Probe values of successive calls (a prompt, then one generated token at a
/// time), joined as if one call had run all their tokens.
#[derive(Default)]
pub struct Recorder {
    joined: BTreeMap<String, Tensor>,
    tokens: usize,
}

impl Recorder {
    /// Adds one call's outputs over `tokens` tokens (the probes; others are ignored).
    pub fn add(&mut self, outputs: &BTreeMap<String, Tensor>, tokens: usize) -> Result<(), String> {
        for (name, t) in outputs.iter().filter(|(n, _)| n.starts_with("probe.")) {
            let mut t = t.clone();
            // A slot is `token·k + j` within its call: shift it past the earlier calls' slots.
            if name.ends_with(ProbeKind::SlotOrder.name()) && tokens > 0 {
                let shift = (self.tokens * (t.len() / tokens)) as i32;
                if let TensorData::I32(v) = &mut t.data {
                    v.iter_mut().filter(|s| **s >= 0).for_each(|s| *s += shift);
                }
            }
            match self.joined.get_mut(name) {
                None => {
                    self.joined.insert(name.clone(), t);
                }
                Some(j) => append_rows(j, t).map_err(|e| format!("probe `{name}`: {e}"))?,
            }
        }
        self.tokens += tokens;
        Ok(())
    }

    /// The tokens added so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The trace of every token added.
    pub fn finish(&self, blocks: &[Block]) -> Result<Trace, String> {
        Trace::from_outputs(blocks, &self.joined, self.tokens)
    }
}

/// `t`'s rows after `joined`'s.
fn append_rows(joined: &mut Tensor, t: Tensor) -> Result<(), String> {
    if joined.shape.is_empty() || joined.shape[1..] != t.shape[1..] {
        return Err(format!(
            "rows of {:?} after rows of {:?}",
            t.shape, joined.shape
        ));
    }
    joined.shape[0] += t.shape[0];
    match (&mut joined.data, t.data) {
        (TensorData::F32(a), TensorData::F32(b)) => a.extend(b),
        (TensorData::I32(a), TensorData::I32(b)) => a.extend(b),
        _ => return Err("f32 and i32 values".into()),
    }
    Ok(())
}

/// A routing trace: named tensors and metadata.
pub struct Trace {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

/// One block's probe values.
struct Probed<'a> {
    logits: &'a Tensor,
    weights: &'a Tensor,
    selected: &'a Tensor,
    kept: &'a Tensor,
    routed: &'a Tensor,
    shared: Option<&'a Tensor>,
    /// Per-slot rows and their slots, when the experts were scheduled sparsely.
    slots: Option<(&'a Tensor, &'a Tensor)>,
}

impl Trace {
    /// The trace of one run of the probed graph over `tokens` tokens.
    pub fn from_outputs(
        blocks: &[Block],
        outputs: &BTreeMap<String, Tensor>,
        tokens: usize,
    ) -> Result<Trace, String> {
        let get = |b: &Block, kind: ProbeKind| -> Result<Option<&Tensor>, String> {
            let Some(name) = b.outputs.get(kind.name()) else {
                return Ok(None);
            };
            let t = outputs
                .get(name)
                .ok_or_else(|| format!("internal error: the run gave no `{name}`"))?;
            let (rank, rows) = (t.shape.len(), t.shape.first().copied());
            let ok = match kind {
                // k·T rows (slots), in dispatch order.
                ProbeKind::SlotRows => {
                    rank == 2 && rows.is_some_and(|r| r.checked_rem(tokens).unwrap_or(r) == 0)
                }
                ProbeKind::SlotOrder => {
                    rank == 1 && rows.is_some_and(|r| r.checked_rem(tokens).unwrap_or(r) == 0)
                }
                _ => rank == 2 && rows == Some(tokens),
            };
            if !ok {
                return Err(format!(
                    "`{}`: {} has shape {:?}, expected {tokens} rows (or k·{tokens} slots)",
                    b.name,
                    kind.name(),
                    t.shape
                ));
            }
            Ok(Some(t))
        };
        let need = |b: &Block, kind| get(b, kind)?.ok_or_else(|| "internal error".to_string());
        let probed = blocks
            .iter()
            .map(|b| {
                Ok(Probed {
                    logits: need(b, ProbeKind::RouterLogits)?,
                    weights: need(b, ProbeKind::RoutingWeights)?,
                    selected: need(b, ProbeKind::SelectedExperts)?,
                    kept: need(b, ProbeKind::KeptExperts)?,
                    routed: need(b, ProbeKind::Routed)?,
                    shared: get(b, ProbeKind::Shared)?,
                    slots: get(b, ProbeKind::SlotRows)?.zip(get(b, ProbeKind::SlotOrder)?),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let layers = probed.len();
        let k = probed
            .iter()
            .map(|p| p.selected.shape[1])
            .max()
            .unwrap_or(0);
        let experts = probed.iter().map(|p| p.logits.shape[1]).max().unwrap_or(0);
        let mut t = Tables::new(tokens, layers, k, experts);
        for (l, p) in probed.iter().enumerate() {
            t.block(l, p)?;
        }
        let mut metadata = BTreeMap::new();
        metadata.insert("format".into(), FORMAT.into());
        let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
        metadata.insert(
            "blocks".into(),
            serde_json::to_string(&names).expect("strings"),
        );
        Ok(Trace {
            tensors: t.into_tensors(),
            metadata,
        })
    }

    /// Writes the trace to `path` as one safetensors file.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let views = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let (dtype, bytes): (Dtype, &[u8]) = match &t.data {
                    TensorData::F32(v) => (Dtype::F32, bytemuck::cast_slice(v)),
                    TensorData::I32(v) => (Dtype::I32, bytemuck::cast_slice(v)),
                };
                let view = TensorView::new(dtype, t.shape.clone(), bytes)
                    .map_err(|e| format!("internal error: tensor `{name}`: {e}"))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let metadata = Some(self.metadata.clone().into_iter().collect());
        safetensors::serialize_to_file(views, metadata, path)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The trace's tables while they are filled, block by block.
struct Tables {
    tokens: usize,
    layers: usize,
    k: usize,
    experts: usize,
    routed_experts: Vec<i32>,
    routing_weights: Vec<f32>,
    dropped: Vec<i32>,
    entropy: Vec<f32>,
    routed_norm: Vec<f32>,
    shared_norm: Vec<f32>,
    expert_norm: Vec<f32>,
    expert_counts: Vec<i32>,
    aux_loss: Vec<f32>,
    z_loss: Vec<f32>,
}

impl Tables {
    fn new(tokens: usize, layers: usize, k: usize, experts: usize) -> Tables {
        let slots = tokens * layers * k;
        Tables {
            tokens,
            layers,
            k,
            experts,
            routed_experts: vec![-1; slots],
            routing_weights: vec![0.0; slots],
            dropped: vec![0; slots],
            entropy: vec![0.0; tokens * layers],
            routed_norm: vec![0.0; tokens * layers],
            expert_norm: vec![0.0; slots],
            shared_norm: vec![0.0; tokens * layers],
            expert_counts: vec![0; layers * experts],
            aux_loss: vec![0.0; layers],
            z_loss: vec![0.0; layers],
        }
    }

    /// Fills layer `l` from its block's probe values.
    fn block(&mut self, l: usize, p: &Probed) -> Result<(), String> {
        let (logits, e) = (f32s(p.logits)?, p.logits.shape[1]);
        let (weights, selected, kept) = (f32s(p.weights)?, i32s(p.selected)?, i32s(p.kept)?);
        let k = p.selected.shape[1];
        if p.weights.shape[1] != k || p.kept.shape[1] != k {
            return Err("routing weights, selected and kept experts differ in width".into());
        }
        // Each slot's own contribution norm, from the scheduled rows.
        let mut slot_norm = vec![0.0f32; self.tokens * k];
        if let Some((rows, order)) = p.slots {
            let d = rows.shape[1];
            for (r, &s) in i32s(order)?.iter().enumerate() {
                if let Some(s) = usize::try_from(s).ok().filter(|s| *s < slot_norm.len()) {
                    let row = &f32s(rows)?[r * d..(r + 1) * d];
                    slot_norm[s] =
                        row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32;
                }
            }
        }
        let mut mean_prob = vec![0.0f64; e];
        let mut z = 0.0f64;
        for t in 0..self.tokens {
            let row = &logits[t * e..(t + 1) * e];
            let (probs, lse) = softmax(row);
            z += lse * lse;
            for (m, q) in mean_prob.iter_mut().zip(&probs) {
                *m += q / self.tokens as f64;
            }
            let h: f64 = probs
                .iter()
                .filter(|q| **q > 0.0)
                .map(|q| -q * q.ln())
                .sum();
            self.entropy[t * self.layers + l] = h as f32;
            // Slots in descending routing weight (ties: the router's order).
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|a, b| weights[t * k + b].total_cmp(&weights[t * k + a]));
            for (j, &s) in order.iter().enumerate() {
                let at = (t * self.layers + l) * self.k + j;
                self.routed_experts[at] = selected[t * k + s];
                self.routing_weights[at] = weights[t * k + s];
                self.expert_norm[at] = slot_norm[t * k + s];
                self.dropped[at] = i32::from(kept[t * k + s] < 0 && selected[t * k + s] >= 0);
            }
            for &x in &kept[t * k..(t + 1) * k] {
                if let Some(c) = usize::try_from(x).ok().filter(|x| *x < e) {
                    self.expert_counts[l * self.experts + c] += 1;
                }
            }
            self.routed_norm[t * self.layers + l] = row_norm(p.routed, t)?;
            if let Some(s) = p.shared {
                self.shared_norm[t * self.layers + l] = row_norm(s, t)?;
            }
        }
        // Switch's load-balancing loss over the selections: E · Σ_e f_e · P_e.
        let slots = (self.tokens * k).max(1) as f64;
        let balance: f64 = (0..e)
            .map(|x| {
                let f = selected.iter().filter(|s| **s == x as i32).count() as f64 / slots;
                f * mean_prob[x]
            })
            .sum();
        self.aux_loss[l] = (balance * e as f64) as f32;
        self.z_loss[l] = (z / self.tokens.max(1) as f64) as f32;
        Ok(())
    }

    fn into_tensors(self) -> BTreeMap<String, Tensor> {
        let (t, l, k, e) = (self.tokens, self.layers, self.k, self.experts);
        BTreeMap::from([
            (
                "routed_experts".into(),
                Tensor::i32(vec![t, l, k], self.routed_experts),
            ),
            (
                "routing_weights".into(),
                Tensor::f32(vec![t, l, k], self.routing_weights),
            ),
            ("dropped".into(), Tensor::i32(vec![t, l, k], self.dropped)),
            (
                "expert_norm".into(),
                Tensor::f32(vec![t, l, k], self.expert_norm),
            ),
            (
                "router_entropy".into(),
                Tensor::f32(vec![t, l], self.entropy),
            ),
            (
                "routed_norm".into(),
                Tensor::f32(vec![t, l], self.routed_norm),
            ),
            (
                "shared_norm".into(),
                Tensor::f32(vec![t, l], self.shared_norm),
            ),
            (
                "expert_counts".into(),
                Tensor::i32(vec![l, e], self.expert_counts),
            ),
            ("aux_loss".into(), Tensor::f32(vec![l], self.aux_loss)),
            ("z_loss".into(), Tensor::f32(vec![l], self.z_loss)),
        ])
    }
}

/// Softmax probabilities of `row` and its log-sum-exp, in f64.
fn softmax(row: &[f32]) -> (Vec<f64>, f64) {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
    let exps: Vec<f64> = row.iter().map(|v| (*v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    (exps.iter().map(|x| x / sum).collect(), max + sum.ln())
}

/// The L2 norm of row `t` of a `[T, D]` tensor.
fn row_norm(x: &Tensor, t: usize) -> Result<f32, String> {
    let d = x.shape[1];
    let row = &f32s(x)?[t * d..(t + 1) * d];
    Ok(row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32)
}

fn f32s(t: &Tensor) -> Result<&[f32], String> {
    match &t.data {
        TensorData::F32(v) => Ok(v),
        TensorData::I32(_) => Err("internal error: an i32 probe where f32 was expected".into()),
    }
}

fn i32s(t: &Tensor) -> Result<&[i32], String> {
    match &t.data {
        TensorData::I32(v) => Ok(v),
        TensorData::F32(_) => Err("internal error: an f32 probe where i32 was expected".into()),
    }
}
