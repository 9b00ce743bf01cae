//! WGSL compute kernels for the GPU backend, and the plan that runs them.
//!
//! `lower` walks the (scheduled) graph in topological order and emits one
//! kernel per op — a scatter-add takes three — written by `writer::Module`
//! through `fmt::Write`: per-element ops (`elementwise.rs`), per-row ops
//! (`rows.rs`), routing (`routing.rs`) and the tiled matmul with fused
//! epilogues (`matmul.rs`). Equal sources are emitted once. Every module is
//! parsed and validated by naga (`validate.rs`); a failure is a compiler bug
//! reported with the kernel's name.
//!
//! Weight-only values (weights, constants, and `Stack`/`ConcatRows` of them —
//! the stacked expert weights) are not computed by kernels: the plan says which
//! ranges of which bound weights fill their buffers at load time, and splits a
//! matmul's weights across bindings of at most `Options::max_binding_bytes`.
//!
//! Not handled: `ConcatRows` of computed values, and values whose element count
//! is not affine in the token count; both are reported as errors.

mod elementwise;
mod matmul;
pub mod plan;
mod routing;
mod rows;
mod validate;
mod writer;

pub use plan::*;

use crate::ir::{DType, Dim, Graph, NodeIndex, Op, TensorType, Value};
use matmul::{Matmul, Rows};
use std::collections::HashMap;
use writer::Module;

/// Code generation choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The largest storage binding (bytes); larger matmul weights are split.
    pub max_binding_bytes: u64,
    /// Store matmul weights as f16 (the adapter needs `shader-f16`); math stays f32.
    pub f16_weights: bool,
}

impl Default for Options {
    /// 128 MiB bindings (the software Vulkan driver's limit), f32 weights.
    fn default() -> Options {
        Options {
            max_binding_bytes: 128 << 20,
            f16_weights: false,
        }
    }
}

/// The kernels' sources (`sources[i]` is `plan.kernels[i]`) and the plan.
#[derive(Clone, Debug)]
pub struct Program {
    pub plan: Plan,
    pub sources: Vec<String>,
}

/// Lowers `g` to WGSL kernels and a plan.
pub fn lower(g: &Graph, options: &Options) -> Result<Program, String> {
    let mut b = Builder {
        g,
        options: *options,
        plan: Plan {
            name: g.name.clone(),
            kernels: Vec::new(),
            buffers: Vec::new(),
            steps: Vec::new(),
            outputs: Vec::new(),
            max_binding_bytes: options.max_binding_bytes,
        },
        sources: Vec::new(),
        by_source: HashMap::new(),
        names: HashMap::new(),
        buffers: HashMap::new(),
        recipes: HashMap::new(),
        materialized: HashMap::new(),
    };
    for (pos, n) in g.topo_order().into_iter().enumerate() {
        b.names.insert(n, pos);
        b.node(n)?;
    }
    for (name, v) in &g.outputs {
        let ty = g.value_type(*v);
        let buffer = b.whole(*v)?;
        b.plan.outputs.push(Output {
            name: name.clone(),
            buffer,
            shape: ty.shape.clone(),
            elem: elem(ty.dtype),
        });
    }
    for (info, source) in b.plan.kernels.iter().zip(&b.sources) {
        validate::check(&info.name, source, info.f16)?;
    }
    Ok(Program {
        plan: b.plan,
        sources: b.sources,
    })
}

struct Builder<'g> {
    g: &'g Graph,
    options: Options,
    plan: Plan,
    sources: Vec<String>,
    by_source: HashMap<String, usize>,
    /// Topological position of each node: its printed name `%pos`.
    names: HashMap<NodeIndex, usize>,
    /// Buffers of computed values and inputs.
    buffers: HashMap<Value, usize>,
    /// How weight-only values are made from the bound weights.
    recipes: HashMap<Value, Vec<Segment>>,
    /// Buffers (chunks) made from recipes, per value and element type.
    materialized: HashMap<(Value, Elem), Vec<usize>>,
}

/// One kernel dispatch of an op: bindings as operand, output or scratch slots.
struct Launch {
    module: Module,
    slots: Vec<Slot>,
    workgroups: Workgroups,
    capacity: Option<CapacityRule>,
}

#[derive(Clone, Copy)]
enum Slot {
    Operand(usize),
    /// A matmul's weight operand, in chunks of whole rows, maybe as f16.
    Weights(usize),
    Output(usize),
    Scratch(usize),
}

fn elem(d: DType) -> Elem {
    match d {
        DType::F32 => Elem::F32,
        DType::I32 => Elem::I32,
    }
}

/// Elements of `dims` as an affine function of the token count.
fn count(dims: &[Dim]) -> Result<Dim, String> {
    let mut per_token = 0u64;
    let mut fixed = 1u64;
    for d in dims {
        match (per_token, d.per_token) {
            (0, 0) => fixed *= d.fixed,
            (0, p) => {
                per_token = p * fixed;
                fixed *= d.fixed;
            }
            (_, 0) => {
                per_token *= d.fixed;
                fixed *= d.fixed;
            }
            _ => {
                return Err(
                    "a value with two token-dependent dims is not supported by the GPU backend"
                        .into(),
                )
            }
        }
    }
    Ok(Dim { per_token, fixed })
}

fn width(ty: &TensorType) -> u64 {
    ty.width().unwrap_or(1)
}

fn fixed_dim(ty: &TensorType, axis: usize) -> u64 {
    ty.shape[axis].as_fixed().unwrap_or(0)
}

/// Elements `start..start + len` of a recipe.
fn slice(segments: &[Segment], start: u64, len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let (mut at, end) = (0u64, start + len);
    for s in segments {
        let (lo, hi) = (at.max(start), (at + s.elements()).min(end));
        if lo < hi {
            out.push(match s {
                Segment::Weight {
                    weight,
                    tensor,
                    start: ws,
                    ..
                } => Segment::Weight {
                    weight: *weight,
                    tensor: tensor.clone(),
                    start: ws + (lo - at),
                    len: hi - lo,
                },
                Segment::Fill { value, .. } => Segment::Fill {
                    value: *value,
                    len: hi - lo,
                },
            });
        }
        at += s.elements();
    }
    out
}

impl Builder<'_> {
    fn value_name(&self, v: Value) -> String {
        let pos = self.names[&v.node];
        if self.g.node(v.node).outputs.len() > 1 {
            format!("%{pos}.{}", v.port)
        } else {
            format!("%{pos}")
        }
    }

    fn add_buffer(&mut self, name: String, elem: Elem, elements: Dim, contents: Contents) -> usize {
        self.plan.buffers.push(Buffer {
            name,
            elem,
            elements,
            contents,
        });
        self.plan.buffers.len() - 1
    }

    /// The single buffer holding `v` (f32 or i32).
    fn whole(&mut self, v: Value) -> Result<usize, String> {
        if let Some(&b) = self.buffers.get(&v) {
            return Ok(b);
        }
        let chunks = self.materialize(v, elem(self.g.value_type(v).dtype), None)?;
        Ok(chunks[0])
    }

    /// Buffers made from `v`'s recipe; `row` (elements per row) allows splitting.
    fn materialize(
        &mut self,
        v: Value,
        elem: Elem,
        row: Option<u64>,
    ) -> Result<Vec<usize>, String> {
        if let Some(b) = self.materialized.get(&(v, elem)) {
            return Ok(b.clone());
        }
        let segments = self
            .recipes
            .get(&v)
            .cloned()
            .ok_or_else(|| format!("internal error: {} has no buffer", self.value_name(v)))?;
        let total: u64 = segments.iter().map(Segment::elements).sum();
        let max = self.options.max_binding_bytes;
        let name = self.value_name(v);
        let chunk_elems = if total * elem.bytes() <= max {
            total.max(1)
        } else {
            let row = row.ok_or_else(|| {
                format!(
                    "{name} holds {} bytes, more than one storage binding may hold ({max} bytes); only matmul weights are split across bindings",
                    total * elem.bytes()
                )
            })?;
            let rows = max / (row * elem.bytes());
            if rows == 0 {
                return Err(format!(
                    "{name}: one row of {row} elements is larger than one storage binding ({max} bytes)"
                ));
            }
            rows * row
        };
        let chunks: Vec<usize> = (0..total.div_ceil(chunk_elems).max(1))
            .map(|c| {
                let start = c * chunk_elems;
                let len = chunk_elems.min(total - start);
                let suffix = if total > chunk_elems {
                    format!("#{c}")
                } else {
                    String::new()
                };
                self.add_buffer(
                    format!("{name}{suffix}"),
                    elem,
                    Dim::fixed(len),
                    Contents::Weights {
                        segments: slice(&segments, start, len),
                    },
                )
            })
            .collect();
        self.materialized.insert((v, elem), chunks.clone());
        Ok(chunks)
    }

    fn node(&mut self, n: NodeIndex) -> Result<(), String> {
        let g = self.g;
        let node = g.node(n);
        let ops = g.operands(n);
        let out = Value { node: n, port: 0 };
        let recipe = |b: &Self, i: usize| b.recipes.get(&ops[i]).cloned();
        match &node.op {
            Op::Input { name, ty } => {
                let elements = count(&ty.shape)?;
                let b = self.add_buffer(
                    self.value_name(out),
                    Elem::F32,
                    elements,
                    Contents::Input { name: name.clone() },
                );
                self.buffers.insert(out, b);
                return Ok(());
            }
            Op::Weight { id, .. } => {
                let decl = &g.weights[*id];
                let len = decl.shape.iter().product::<usize>() as u64;
                self.recipes.insert(
                    out,
                    vec![Segment::Weight {
                        weight: *id,
                        tensor: decl.tensor.clone(),
                        start: 0,
                        len,
                    }],
                );
                return Ok(());
            }
            Op::Constant(v) => {
                self.recipes.insert(
                    out,
                    vec![Segment::Fill {
                        value: v.get(),
                        len: 1,
                    }],
                );
                return Ok(());
            }
            Op::Stack if (0..ops.len()).all(|i| recipe(self, i).is_some()) => {
                let all = (0..ops.len())
                    .flat_map(|i| recipe(self, i).unwrap_or_default())
                    .collect();
                self.recipes.insert(out, all);
                return Ok(());
            }
            Op::ConcatRows if (0..ops.len()).all(|i| recipe(self, i).is_some()) => {
                let ty0 = g.value_type(ops[0]);
                let axis = ty0.rank().saturating_sub(2);
                let outer: u64 = (0..axis).map(|a| fixed_dim(ty0, a)).product();
                let mut all = Vec::new();
                for o in 0..outer {
                    for (i, v) in ops.iter().enumerate() {
                        let ty = g.value_type(*v);
                        let block: u64 = (axis..ty.rank()).map(|a| fixed_dim(ty, a)).product();
                        let r = recipe(self, i).unwrap_or_default();
                        all.extend(slice(&r, o * block, block));
                    }
                }
                self.recipes.insert(out, all);
                return Ok(());
            }
            _ => {}
        }
        // A computed op: its output buffers, then its launches.
        let mut outs = Vec::new();
        for (port, ty) in node.outputs.iter().enumerate() {
            let v = Value {
                node: n,
                port: port as u8,
            };
            let b = self.add_buffer(
                self.value_name(v),
                elem(ty.dtype),
                count(&ty.shape)?,
                Contents::Computed,
            );
            self.buffers.insert(v, b);
            outs.push(b);
        }
        if let Op::Stack = node.op {
            // Stacked computed values (per-layer outputs of a repeat): copies.
            for (i, v) in ops.iter().enumerate() {
                let src = self.whole(*v)?;
                let elements = count(&g.value_type(*v).shape)?;
                self.plan.steps.push(Step::Copy {
                    src,
                    dst: outs[0],
                    dst_offset: elementwise::mul(elements, i as u64),
                    elements,
                });
            }
            return Ok(());
        }
        let mut scratch = Vec::new();
        let launches = self.launches(n, &mut scratch)?;
        let scratch: Vec<usize> = scratch
            .into_iter()
            .enumerate()
            .map(|(i, (e, d))| {
                self.add_buffer(
                    format!("%{}.scratch{i}", self.names[&n]),
                    e,
                    d,
                    Contents::Computed,
                )
            })
            .collect();
        for launch in launches {
            let mut buffers = Vec::new();
            for slot in &launch.slots {
                match *slot {
                    Slot::Operand(i) => buffers.push(self.whole(ops[i])?),
                    Slot::Weights(i) if !self.recipes.contains_key(&ops[i]) => {
                        buffers.push(self.whole(ops[i])?)
                    }
                    Slot::Weights(i) => {
                        let row = width(g.value_type(ops[i]));
                        let e = if self.options.f16_weights {
                            Elem::F16
                        } else {
                            Elem::F32
                        };
                        buffers.extend(self.materialize(ops[i], e, Some(row))?);
                    }
                    Slot::Output(p) => buffers.push(outs[p]),
                    Slot::Scratch(s) => buffers.push(scratch[s]),
                }
            }
            let kernel = self.kernel(node.op.name(), launch.module);
            self.plan.steps.push(Step::Kernel {
                kernel,
                node: format!("%{} {}", self.names[&n], node.op.name()),
                buffers,
                workgroups: launch.workgroups,
                capacity: launch.capacity,
            });
        }
        Ok(())
    }

    /// The kernel index of `module`'s source, adding it when new.
    fn kernel(&mut self, op: &str, module: Module) -> usize {
        if let Some(&k) = self.by_source.get(&module.text) {
            return k;
        }
        let same_op = self
            .plan
            .kernels
            .iter()
            .filter(|k| k.name.rsplit_once('_').is_some_and(|(base, _)| base == op))
            .count();
        self.plan.kernels.push(KernelInfo {
            name: format!("{op}_{same_op}"),
            f16: module.uses_f16(),
            bindings: module.access.clone(),
        });
        self.by_source
            .insert(module.text.clone(), self.sources.len());
        self.sources.push(module.text);
        self.sources.len() - 1
    }

    /// The dispatches computing node `n`; scratch buffers it needs go to `scratch`.
    fn launches(
        &self,
        n: NodeIndex,
        scratch: &mut Vec<(Elem, Dim)>,
    ) -> Result<Vec<Launch>, String> {
        use Slot::{Operand as In, Output as Out};
        let g = self.g;
        let node = g.node(n);
        let ops = g.operands(n);
        let ty = |i: usize| g.value_type(ops[i]);
        let out_ty = &node.outputs[0];
        let name = format!("%{} {}", self.names[&n], node.op.name());
        let fmt_err = |_| format!("internal error: formatting the kernel of {name}");
        let stride = |items: Dim| Workgroups::Stride { items, size: 64 };
        let launch = |module: Result<Module, std::fmt::Error>,
                      slots: Vec<Slot>,
                      workgroups|
         -> Result<Launch, String> {
            Ok(Launch {
                module: module.map_err(fmt_err)?,
                slots,
                workgroups,
                capacity: None,
            })
        };
        let leading = |t: &TensorType| count(&t.shape[..t.rank().saturating_sub(1)]);
        let by_tokens = |t: &TensorType| -> Result<(), String> {
            if t.shape.first() == Some(&Dim::TOKENS) {
                Ok(())
            } else {
                Err(format!(
                    "{name}: the GPU backend needs routing values shaped [tokens, ..], got {t}"
                ))
            }
        };
        let total = count(&out_ty.shape)?;
        let one = |l: Result<Launch, String>| l.map(|l| vec![l]);
        match &node.op {
            Op::Unary(u) => one(launch(
                elementwise::unary(*u, total),
                vec![In(0), Out(0)],
                stride(total),
            )),
            Op::Binary(b) => one(launch(
                elementwise::binary(*b, &ty(0).shape, &ty(1).shape, total),
                vec![In(0), In(1), Out(0)],
                stride(total),
            )),
            Op::Softmax | Op::NormalizeSum | Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
                let row_op = match &node.op {
                    Op::Softmax => rows::RowOp::Softmax,
                    Op::NormalizeSum => rows::RowOp::NormalizeSum,
                    Op::RmsNorm { eps } => rows::RowOp::RmsNorm(eps.get()),
                    Op::LayerNorm { eps } => rows::RowOp::LayerNorm(eps.get()),
                    _ => unreachable!("matched above"),
                };
                let r = leading(ty(0))?;
                let mut slots: Vec<Slot> = (0..ops.len()).map(In).collect();
                slots.push(Out(0));
                one(launch(
                    rows::row_op(row_op, r, width(ty(0))),
                    slots,
                    stride(r),
                ))
            }
            Op::GroupMask {
                groups,
                keep,
                score,
            } => {
                let r = leading(ty(0))?;
                one(launch(
                    rows::group_mask(r, width(ty(0)), *groups, *keep, *score),
                    vec![In(0), Out(0)],
                    stride(r),
                ))
            }
            Op::TopK { k } => {
                let r = leading(ty(0))?;
                one(launch(
                    rows::topk(r, width(ty(0)), *k),
                    vec![In(0), Out(0), Out(1)],
                    stride(r),
                ))
            }
            Op::Gather => one(launch(
                rows::gather(total, width(ty(0)), width(ty(1))),
                vec![In(0), In(1), Out(0)],
                stride(total),
            )),
            Op::Capacity {
                experts,
                limit,
                policy,
            } => {
                by_tokens(ty(0))?;
                let k = width(ty(0));
                let mut l = launch(
                    routing::capacity(k, *policy),
                    vec![In(0), In(1), Out(0)],
                    stride(total),
                )?;
                l.capacity = Some(CapacityRule::Slots {
                    limit: *limit,
                    k,
                    experts: *experts,
                });
                Ok(vec![l])
            }
            Op::ScatterGates { experts } => one(launch(
                elementwise::scatter_gates(total, *experts, width(ty(0))),
                vec![In(0), In(1), Out(0)],
                stride(total),
            )),
            Op::ExpertChoice { factor } => {
                by_tokens(ty(0))?;
                let experts = width(ty(0));
                let mut l = launch(
                    routing::expert_choice(experts),
                    vec![In(0), Out(0), Out(1)],
                    stride(total),
                )?;
                l.capacity = Some(CapacityRule::ExpertChoice {
                    factor: factor.get(),
                    experts,
                });
                Ok(vec![l])
            }
            Op::DenseCombine => {
                let experts = ops.len() as u64 - 1;
                (0..experts)
                    .step_by(elementwise::COMBINE_GROUP as usize)
                    .map(|first| {
                        let count = elementwise::COMBINE_GROUP.min(experts - first);
                        let mut slots = vec![In(0)];
                        slots.extend((first..first + count).map(|e| In(1 + e as usize)));
                        slots.push(Out(0));
                        let module = elementwise::dense_combine(
                            total,
                            width(out_ty),
                            experts,
                            first,
                            count,
                            first > 0,
                        );
                        launch(module, slots, stride(total))
                    })
                    .collect()
            }
            Op::PassThrough => one(launch(
                elementwise::pass_through(total, width(ty(0))),
                vec![In(0), In(1), In(2), Out(0)],
                stride(total),
            )),
            Op::ExpertCounts { experts } => {
                by_tokens(ty(0))?;
                one(launch(
                    routing::expert_counts(*experts, width(ty(0))),
                    vec![In(0), Out(0)],
                    stride(Dim::fixed(*experts)),
                ))
            }
            Op::AuxLoss => {
                by_tokens(ty(0))?;
                one(launch(
                    routing::aux_loss(width(ty(0)), width(ty(1))),
                    vec![In(0), In(1), Out(0)],
                    Workgroups::One,
                ))
            }
            Op::ZLoss => {
                by_tokens(ty(0))?;
                one(launch(
                    routing::z_loss(width(ty(0))),
                    vec![In(0), Out(0)],
                    Workgroups::One,
                ))
            }
            Op::Router(r) => {
                by_tokens(ty(0))?;
                let mut slots: Vec<Slot> = (0..ops.len()).map(In).collect();
                slots.extend([Out(0), Out(1)]);
                one(launch(
                    routing::router(r, width(ty(0))),
                    slots,
                    stride(Dim::TOKENS),
                ))
            }
            Op::SliceCols { start, len } => {
                let r = leading(ty(0))?;
                one(launch(
                    elementwise::slice_cols(r, width(ty(0)), *start, *len),
                    vec![In(0), Out(0)],
                    stride(total),
                ))
            }
            Op::ExpertSum => {
                let experts = fixed_dim(ty(0), 0);
                one(launch(
                    elementwise::expert_sum(experts, total),
                    vec![In(0), Out(0)],
                    stride(total),
                ))
            }
            Op::Dispatch { experts } => {
                by_tokens(ty(0))?;
                one(launch(
                    routing::dispatch(*experts, width(ty(0))),
                    vec![In(0), Out(0), Out(1)],
                    Workgroups::One,
                ))
            }
            Op::GatherRows { k } => {
                let slots = count(&ty(1).shape)?;
                one(launch(
                    elementwise::gather_rows(slots, width(ty(0)), *k),
                    vec![In(0), In(1), Out(0)],
                    stride(total),
                ))
            }
            Op::GatherSlots => one(launch(
                elementwise::gather_slots(total),
                vec![In(0), In(1), Out(0)],
                stride(total),
            )),
            Op::ScatterAdd { k } => {
                let slots = count(&ty(1).shape)?;
                scratch.push((Elem::I32, slots));
                Ok(vec![
                    launch(
                        elementwise::scatter_clear(slots),
                        vec![Slot::Scratch(0)],
                        stride(slots),
                    )?,
                    launch(
                        elementwise::scatter_invert(slots),
                        vec![In(1), Slot::Scratch(0)],
                        stride(slots),
                    )?,
                    launch(
                        elementwise::scatter_sum(total, width(ty(0)), *k),
                        vec![In(0), Slot::Scratch(0), Out(0)],
                        stride(total),
                    )?,
                ])
            }
            Op::Linear { bias } => {
                let w = ty(1);
                let rows = leading(ty(0))?;
                let mm = self.matmul(Rows::Plain { rows }, w, fixed_dim(w, 0), node, ops[1])?;
                let mut slots = vec![In(0), Slot::Weights(1)];
                if *bias {
                    slots.push(In(2));
                }
                slots.push(Out(0));
                one(launch(matmul::matmul(&mm), slots, mm.workgroups()))
            }
            Op::ExpertLinear { bias, weighted, .. } | Op::GroupedLinear { bias, weighted, .. } => {
                let (x, w) = (ty(0), ty(1));
                let experts = fixed_dim(w, 0);
                let grouped = matches!(node.op, Op::GroupedLinear { .. });
                let rows = if grouped {
                    Rows::Grouped {
                        experts,
                        rows: leading(x)?,
                    }
                } else {
                    let per_expert_input = x.rank() == 3;
                    if x.shape[x.rank() - 2] != Dim::TOKENS {
                        return Err(format!("{name}: expected [tokens, K] rows, got {x}"));
                    }
                    Rows::Stacked {
                        experts,
                        per_expert_input,
                    }
                };
                let mm = self.matmul(rows, w, fixed_dim(w, 1), node, ops[1])?;
                let mut slots = vec![In(0), Slot::Weights(1)];
                let mut next = 2;
                if grouped {
                    slots.push(In(2));
                    next = 3;
                }
                if *bias {
                    slots.push(In(next));
                    next += 1;
                }
                if *weighted {
                    slots.push(In(next));
                }
                slots.push(Out(0));
                one(launch(matmul::matmul(&mm), slots, mm.workgroups()))
            }
            Op::ConcatRows => Err(format!(
                "{name}: concatenating computed values is not supported by the GPU backend"
            )),
            Op::Input { .. } | Op::Weight { .. } | Op::Constant(_) | Op::Stack => {
                unreachable!("handled by the caller")
            }
        }
    }

    /// The matmul shape of `node` with weights `w` (`n` rows per expert) read from `wv`.
    fn matmul(
        &self,
        rows: Rows,
        w: &TensorType,
        n: u64,
        node: &crate::ir::Node,
        wv: Value,
    ) -> Result<Matmul, String> {
        let (epilogue, bias, weighted) = node
            .op
            .matmul_attrs()
            .ok_or_else(|| format!("internal error: {} is not a matmul", node.op.name()))?;
        let k = width(w);
        let from_weights = self.recipes.contains_key(&wv);
        let weight_elem = if self.options.f16_weights && from_weights {
            Elem::F16
        } else {
            Elem::F32
        };
        let total_rows: u64 = w.shape[..w.rank() - 1]
            .iter()
            .filter_map(|d| d.as_fixed())
            .product();
        let bytes = total_rows * k * weight_elem.bytes();
        let max = self.options.max_binding_bytes;
        let (rows_per_chunk, chunks) = if bytes <= max || !from_weights {
            (total_rows.max(1), 1)
        } else {
            let per = (max / (k * weight_elem.bytes())).max(1);
            (per, total_rows.div_ceil(per))
        };
        Ok(Matmul {
            rows,
            k,
            n,
            epilogue,
            bias,
            weighted,
            weight_elem,
            rows_per_chunk,
            chunks,
        })
    }
}
