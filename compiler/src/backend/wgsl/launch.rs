//! Which kernels compute each op: `Builder::launches` maps an op to its
//! dispatches — the generator of each kernel, its bindings as operand, output
//! or scratch slots, and its workgroup count — and `Builder::matmul` the shape
//! of a matmul kernel, with its weights split the way the plan splits them.

use super::matmul::{self, Matmul, Rows};
use super::writer::Module;
use super::{
    attention, count, elementwise, fixed_dim, routing, rows, rows_per_binding, width, Builder,
    CapacityRule, Elem, Workgroups,
};
use crate::interp;
use crate::ir::{Dim, NodeIndex, Op, TensorType, Value};

/// One kernel dispatch of an op: bindings as operand, output or scratch slots.
pub(super) struct Launch {
    pub module: Module,
    pub slots: Vec<Slot>,
    pub workgroups: Workgroups,
    pub capacity: Option<CapacityRule>,
}

#[derive(Clone)]
pub(super) enum Slot {
    Operand(usize),
    /// A matmul's weight operand, in chunks of whole rows, maybe as f16.
    Weights(usize),
    /// A table read by rows (embeddings): f32 chunks of whole rows.
    Table(usize),
    /// A buffer of values the compiler computes, named for the plan.
    Values(&'static str, Vec<f32>),
    Output(usize),
    Scratch(usize),
}

impl Builder<'_> {
    /// The dispatches computing node `n`; scratch buffers it needs go to `scratch`.
    pub(super) fn launches(
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
        // The elements this call writes (a KV cache: the appended rows).
        let total = match node.op {
            Op::CacheAppend { .. } => count(&ty(0).shape)?,
            _ => count(&out_ty.shape)?,
        };
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
            Op::Softmax | Op::Normalize(_) | Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
                let row_op = match &node.op {
                    Op::Softmax => rows::RowOp::Softmax,
                    Op::Normalize(n) => rows::RowOp::Normalize(*n),
                    Op::RmsNorm { eps } => rows::RowOp::RmsNorm(eps.get()),
                    Op::LayerNorm { eps } => rows::RowOp::LayerNorm(eps.get()),
                    _ => unreachable!("matched above"),
                };
                // RMSNorm normalizes each group of its weight's width (per-head norms).
                let per_head = matches!(row_op, rows::RowOp::RmsNorm(_));
                let d = if per_head { width(ty(1)) } else { width(ty(0)) };
                if ops.len() > 1 && (width(ty(1)) != d || d == 0 || !width(ty(0)).is_multiple_of(d))
                {
                    return Err(format!(
                        "{name}: a norm over groups of a row (per-head) is not supported by the GPU backend yet"
                    ));
                }
                let r = leading(ty(0))?.scale(width(ty(0)) / d);
                let mut slots: Vec<Slot> = (0..ops.len()).map(In).collect();
                slots.push(Out(0));
                one(launch(rows::row_op(row_op, r, d), slots, stride(r)))
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
            Op::SparseMixer { k, eps } => {
                by_tokens(ty(0))?;
                one(launch(
                    routing::sparse_mixer(width(ty(0)), *k, eps.get()),
                    vec![In(0), Out(0), Out(1)],
                    stride(Dim::TOKENS),
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
            Op::KeptWeights => one(launch(
                routing::kept_weights(total),
                vec![In(0), In(1), Out(0)],
                stride(total),
            )),
            Op::ScatterGates { experts, mask } => one(launch(
                elementwise::scatter_gates(total, *experts, width(ty(0)), *mask),
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
            Op::SliceCols { heads, start, len } => {
                let r = leading(ty(0))?;
                one(launch(
                    elementwise::slice_cols(r.scale(*heads), width(ty(0)) / heads, *start, *len),
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
            Op::ConcatCols { heads, broadcast } => {
                let b_heads = if *broadcast { 1 } else { *heads };
                one(launch(
                    elementwise::concat_cols(
                        total,
                        *heads,
                        width(ty(0)) / heads,
                        width(ty(1)) / b_heads,
                        *broadcast,
                    ),
                    vec![In(0), In(1), Out(0)],
                    stride(total),
                ))
            }
            Op::LastRow => one(launch(
                elementwise::last_row(leading(ty(0))?, width(ty(0))),
                vec![In(0), Out(0)],
                stride(Dim::fixed(width(ty(0)))),
            )),
            Op::EpRoute { .. }
            | Op::AllToAll { .. }
            | Op::AllToAllV { .. }
            | Op::AllGatherRows { .. } => Err(format!(
                "{name}: a graph partitioned over ranks runs on the CPU backend only"
            )),
            Op::Embedding => {
                let (rows, d) = (fixed_dim(ty(1), 0), width(ty(1)));
                let rows_per_chunk = if self.recipes.contains_key(&ops[1]) {
                    rows_per_binding(rows, d, Elem::F32, self.options.max_binding_bytes).max(1)
                } else {
                    rows.max(1)
                };
                let chunks = rows.div_ceil(rows_per_chunk).max(1);
                one(launch(
                    attention::embedding(total, d, chunks, rows_per_chunk),
                    vec![In(0), Slot::Table(1), Out(0)],
                    stride(total),
                ))
            }
            Op::Positions => one(launch(
                attention::positions(),
                vec![Out(0)],
                stride(Dim::TOKENS),
            )),
            Op::RowPositions => one(launch(
                attention::row_positions(total),
                vec![Out(0)],
                stride(total),
            )),
            Op::Sinusoidal { width, offset } => one(launch(
                attention::sinusoidal(total, *width, *offset),
                vec![
                    In(0),
                    Slot::Values("freqs", interp::sinusoidal_freqs(*width as usize)),
                    Out(0),
                ],
                stride(total),
            )),
            Op::Rope(r) => {
                let (inv_freq, scale) = interp::inv_freq(r);
                one(launch(
                    attention::rope(total, r, width(ty(0)), scale),
                    vec![In(0), In(1), Slot::Values("inv_freq", inv_freq), Out(0)],
                    stride(total),
                ))
            }
            Op::CacheAppend { .. } => one(launch(
                attention::cache_append(total, width(ty(0))),
                vec![In(0), Out(0)],
                stride(total),
            )),
            Op::Attention(a) => {
                let keys = ty(1).shape[0];
                let mut slots: Vec<Slot> = (0..ops.len()).map(In).collect();
                if let Some(b) = a.bias {
                    slots.push(Slot::Values("buckets", attention::bucket_table(b)));
                }
                slots.push(Out(0));
                // One workgroup per (query token, kv head), grid-stride.
                let pairs = Dim::TOKENS.scale(a.kv_heads.max(1));
                let size = attention::ATTENTION_SIZE;
                one(launch(
                    attention::attention(a, keys),
                    slots,
                    Workgroups::Stride {
                        items: pairs.scale(size as u64),
                        size,
                    },
                ))
            }
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
        let rows_per_chunk = if from_weights {
            rows_per_binding(total_rows, k, weight_elem, self.options.max_binding_bytes).max(1)
        } else {
            total_rows.max(1)
        };
        let chunks = total_rows.div_ceil(rows_per_chunk).max(1);
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
