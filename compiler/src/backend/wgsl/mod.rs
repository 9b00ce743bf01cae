//! WGSL compute kernels for the GPU backend, and the plan that runs them.
//!
//! `lower` walks the (scheduled) graph in topological order and emits one
//! kernel per op — a scatter-add takes three; `launch.rs` says which, with
//! what bindings and workgroup counts — written by `writer::Module`
//! through `fmt::Write`: per-element ops (`elementwise.rs`), per-row ops
//! (`rows.rs`), routing (`routing.rs`), the tiled matmul with fused
//! epilogues (`matmul.rs`) and the whole-model ops — embedding, rope, KV-cache
//! append and attention (`attention.rs`). Equal sources are emitted once. Every module is
//! parsed and validated by naga (`validate.rs`); a failure is a compiler bug
//! reported with the kernel's name.
//!
//! Weight-only values (weights, constants, and `Stack`/`ConcatRows` of them —
//! the stacked expert weights) are not computed by kernels: the plan says which
//! ranges of which bound weights fill their buffers at load time, and splits a
//! matmul's weights across bindings of at most `Options::max_binding_bytes`.
//!
//! KV caches (`CacheAppend` outputs) are state buffers of `max_positions` rows
//! that the host keeps on the device across calls; they are the only values
//! whose size may depend on `past`.
//!
//! Encoder-decoder models run as the two graphs of `passes::stages::split`: the
//! encoder is an ordinary graph over its tokens; the decoder's encoder inputs
//! (`encoder.N`, `[source, W]`) are the only values with `source` rows, sized by
//! the params' `source`, and only attention reads them as keys and values. A
//! graph computing values over `source` (an unsplit one) is refused.
//!
//! Not handled: `ConcatRows` of computed values, and other values whose element
//! count is not affine in the token count; both are reported as errors.

mod attention;
mod elementwise;
mod launch;
mod matmul;
pub mod plan;
mod routing;
mod rows;
mod validate;
mod writer;

pub use plan::*;

use crate::ir::{DType, Dim, Graph, NodeIndex, Op, TensorType, Value};
use launch::Slot;
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
            max_positions: g.max_positions,
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
        if ty.shape.iter().any(|d| d.uses_past()) {
            return Err(format!(
                "output `{name}` holds the KV cache; the GPU backend reads back only values of this call's tokens"
            ));
        }
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

fn elem(d: DType) -> Elem {
    match d {
        DType::F32 => Elem::F32,
        DType::I32 => Elem::I32,
    }
}

/// Elements of `dims` as an affine function of the token count (and of the
/// source length: a decoder's encoder inputs are `[source, W]`).
fn count(dims: &[Dim]) -> Result<Dim, String> {
    let mut total = Dim::fixed(1);
    for d in dims {
        if d.uses_past() {
            return Err("a value whose size depends on the KV cache is not supported by the GPU backend yet".into());
        }
        total = match (total.as_fixed(), d.as_fixed()) {
            (_, Some(n)) => total.scale(n),
            (Some(n), None) => d.scale(n),
            (None, None) => {
                return Err(
                    "a value with two token-dependent dims is not supported by the GPU backend"
                        .into(),
                )
            }
        };
    }
    Ok(total)
}

fn width(ty: &TensorType) -> u64 {
    ty.width().unwrap_or(1)
}

fn fixed_dim(ty: &TensorType, axis: usize) -> u64 {
    ty.shape[axis].as_fixed().unwrap_or(0)
}

/// Whole rows of `row` elements one binding of `max` bytes holds: all `rows`
/// when they fit, else as many as fit (0 when not even one does). Weight
/// buffers are cut, and matmul kernels read them, by this one rule.
fn rows_per_binding(rows: u64, row: u64, elem: Elem, max: u64) -> u64 {
    if rows * row * elem.bytes() <= max {
        rows.max(1)
    } else {
        max / (row * elem.bytes())
    }
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
                Segment::Values { values } => Segment::Values {
                    values: values[(lo - at) as usize..(hi - at) as usize].to_vec(),
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
        // A value that may not be split is one row.
        let row_len = row.unwrap_or(total).max(1);
        let per = rows_per_binding(total / row_len, row_len, elem, max);
        if per == 0 {
            return Err(match row {
                None => format!(
                    "{name} holds {} bytes, more than one storage binding may hold ({max} bytes); only matmul weights are split across bindings",
                    total * elem.bytes()
                ),
                Some(_) => format!(
                    "{name}: one row of {row_len} elements is larger than one storage binding ({max} bytes)"
                ),
            });
        }
        let chunk_elems = per * row_len;
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
                    elem(ty.dtype),
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
        if let Some(ty) = node
            .outputs
            .iter()
            .find(|t| t.shape.iter().any(|d| d.uses_source()))
        {
            return Err(format!(
                "{} {} computes {ty} over the source sequence: the GPU backend runs an encoder-decoder model as its two stages (passes::stages::split), where only the decoder's encoder inputs have source rows",
                self.value_name(out),
                node.op.name()
            ));
        }
        let mut outs = Vec::new();
        for (port, ty) in node.outputs.iter().enumerate() {
            let v = Value {
                node: n,
                port: port as u8,
            };
            let b = match node.op {
                Op::CacheAppend { state } => self.state_buffer(v, state)?,
                _ => self.add_buffer(
                    self.value_name(v),
                    elem(ty.dtype),
                    count(&ty.shape)?,
                    Contents::Computed,
                ),
            };
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
            for slot in launch.slots {
                match slot {
                    Slot::Operand(i) => buffers.push(self.whole(ops[i])?),
                    Slot::Table(i) if !self.recipes.contains_key(&ops[i]) => {
                        buffers.push(self.whole(ops[i])?)
                    }
                    Slot::Table(i) => {
                        let row = width(g.value_type(ops[i]));
                        buffers.extend(self.materialize(ops[i], Elem::F32, Some(row))?);
                    }
                    Slot::Values(name, values) => {
                        let b = self.add_buffer(
                            format!("%{}.{name}", self.names[&n]),
                            Elem::F32,
                            Dim::fixed(values.len() as u64),
                            Contents::Weights {
                                segments: vec![Segment::Values { values }],
                            },
                        );
                        buffers.push(b);
                    }
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

    /// The buffer of KV cache `state`, which `v` (a `CacheAppend`) appends to:
    /// `max_positions` rows of the state's width.
    fn state_buffer(&mut self, v: Value, state: usize) -> Result<usize, String> {
        let name = self.value_name(v);
        let decl = self.g.states.get(state).ok_or_else(|| {
            format!("internal error: {name} appends to state {state}, which the graph lacks")
        })?;
        let positions = self.g.max_positions.ok_or_else(|| {
            format!("{name}: a KV cache on the GPU needs the graph's max_positions")
        })?;
        let width = decl.width;
        Ok(self.add_buffer(
            format!("{name} {}", decl.name),
            Elem::F32,
            Dim::fixed(positions.saturating_mul(width)),
            Contents::State { state, width },
        ))
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
}
