//! Lowering a `moe(...)` call to the naive dense graph: the router as a chain of
//! small ops (linear, score, bias, group mask, top-k, gather, normalize, scale,
//! capacity), every expert instantiated on all tokens, and a dense gated sum.
//! This is the form whose meaning is obvious; the passes make it fast.
//! With `scale_input = true` (Llama 4) each expert reads its input scaled by its routing
//! weight and the sum is masked to the chosen experts; `bias = true` (JetMoE) adds a
//! learned `[D]` bias to the block's output.

use super::bind::{Seg, WeightPath};
use super::expr::Args;
use super::limits::Limit;
use super::router::{RouterSpec, Selection};
use super::{Lowerer, Scope, Val};
use crate::diagnostic::{Diagnostic, Severity};
use crate::ir::{BinaryOp, Dim, DropPolicy, F32Bits, Op, Probe, ProbeKind, Renorm, UnaryOp, Value};
use moec_grammar::ast::{self, Arg, Expr, ExprKind, Ident};
use moec_grammar::Span;

/// The values a `moe` call makes available: `y`, and `y.router_logits` etc.
#[derive(Clone, Debug)]
pub struct MoeOutputs {
    pub y: Value,
    pub router_logits: Value,
    pub selected_experts: Value,
    pub expert_counts: Value,
    pub aux_loss: Value,
    pub z_loss: Value,
}

impl MoeOutputs {
    pub fn field(&self, name: &str) -> Option<Value> {
        match name {
            "router_logits" => Some(self.router_logits),
            "selected_experts" => Some(self.selected_experts),
            "expert_counts" => Some(self.expert_counts),
            "aux_loss" => Some(self.aux_loss),
            "z_loss" => Some(self.z_loss),
            _ => None,
        }
    }
}

/// `N * template`, resolved.
struct ExpertGroup<'a> {
    count: u64,
    template: &'a ast::Expert,
    span: Span,
}

impl<'a> Lowerer<'a> {
    pub(super) fn moe(
        &mut self,
        call: &Expr,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
        name: &str,
    ) -> Result<MoeOutputs, Diagnostic> {
        let a = Args::new(
            call,
            "moe",
            args,
            &[
                "experts",
                "router",
                "capacity",
                "shared",
                "shared_gate",
                "scale_input",
                "bias",
            ],
        )?;
        let [x] = a.positional::<1>("moe(x, experts = N * expert, router = name, ...)")?;
        let x_expr = x;
        let x = self.tensor(x, scope, path)?;
        let required = |n: &str| {
            a.named(n).ok_or_else(|| {
                Diagnostic::at(
                    call.span,
                    format!("`moe` needs `{n} = ...`"),
                    format!("missing `{n}`"),
                )
            })
        };
        let experts = required("experts")?;
        let groups = self.expert_set(experts)?;
        let total = groups.iter().fold(0, |t, g| g.count.saturating_add(t));
        self.limits.check(Limit::Experts, total, experts.span)?;
        let router_expr = required("router")?;
        let router = self.router_spec(router_expr, total)?;
        if let Some(j) = router
            .router
            .fields
            .iter()
            .find(|f| f.name.name == "jitter")
        {
            let note = Diagnostic::at(
                j.name.span,
                format!(
                    "router `{}`: jitter noise is training-only",
                    router.router.name
                ),
                "ignored at inference",
            )
            .with_help("moec compiles inference graphs; the router runs without noise")
            .with_severity(Severity::Note);
            if !self.notes.contains(&note) {
                self.notes.push(note);
            }
        }
        let capacity = a
            .named("capacity")
            .map(|c| self.capacity(c))
            .transpose()?
            .flatten();
        let scale_input = a
            .named("scale_input")
            .map(|s| self.bool(s, "scale_input"))
            .transpose()?
            .unwrap_or(false);
        if let (true, Some(cap)) = (scale_input, &capacity) {
            if cap.passthrough {
                return Err(Diagnostic::at(
                    cap.span,
                    "`dropped = passthrough` passes a dropped token's input through scaled by its weight, which `scale_input` already does",
                    "here",
                )
                .with_help("use `dropped = zero` with `scale_input = true`"));
            }
        }
        if let Some(cap) = &capacity {
            match router.select {
                Selection::ExpertChoice { .. } => {
                    return Err(Diagnostic::at(
                        cap.span,
                        "expert-choice routing sets its own capacity",
                        "remove this",
                    )
                    .with_related(router.select_span, "expert choice here"))
                }
                Selection::TopK { k, .. } if cap.passthrough && k != 1 => {
                    return Err(Diagnostic::at(
                        cap.span,
                        format!(
                            "`dropped = passthrough` needs top-1 routing, the router selects {k}"
                        ),
                        "here",
                    )
                    .with_related(router.select_span, "selection here"))
                }
                _ => {}
            }
        }

        // Router: logits, scores, selection.
        let rpath = path.child(Seg::name(&router.router.name.name));
        // A param may switch these weights off; their bindings then stay valid.
        self.weight_flag(
            router.logits_bias_flag,
            "bias",
            &rpath.child(Seg::name("logits")).child(Seg::name("bias")),
        )?;
        self.weight_flag(
            router.selection_bias_flag,
            "selection_bias",
            &rpath.child(Seg::name("selection_bias")),
        )?;
        let width = self.width(x, x_expr.span)? as usize;
        let e = total as usize;
        let mut logit_operands = vec![
            x,
            self.weight(
                &rpath.child(Seg::name("logits")),
                vec![e, width],
                router.logits_span,
            )?,
        ];
        if router.logits_bias {
            logit_operands.push(self.weight(
                &rpath.child(Seg::name("logits")).child(Seg::name("bias")),
                vec![e],
                router.logits_span,
            )?);
        }
        let rl = Some(format!("{name}.router_logits"));
        let logits = self.node(
            Op::Linear {
                bias: router.logits_bias,
            },
            &logit_operands,
            rl,
            router.logits_span,
        )?;
        let sp = router.select_span;
        let mixer = matches!(router.select, Selection::SparseMixer { .. });
        let scores = if router.after_topk || mixer {
            logits
        } else if router.sigmoid {
            self.node(Op::Unary(UnaryOp::Sigmoid), &[logits], None, sp)?
        } else {
            self.node(Op::Softmax, &[logits], None, sp)?
        };

        let (idx, kept, w) = match router.select {
            Selection::ExpertChoice { factor } => {
                let op = Op::ExpertChoice {
                    factor: F32Bits::new(factor as f32),
                };
                let choice = self.node(op, &[scores], None, sp)?;
                let idx = Value {
                    node: choice.node,
                    port: 1,
                };
                (idx, idx, choice)
            }
            Selection::TopK { .. } | Selection::SparseMixer { .. } => {
                let (idx, mut w) = match router.select {
                    Selection::SparseMixer { k, eps } => {
                        let op = Op::SparseMixer {
                            k,
                            eps: F32Bits::new(eps as f32),
                        };
                        let mixed = self.node(op, &[logits], None, sp)?;
                        let idx = Value {
                            node: mixed.node,
                            port: 1,
                        };
                        (idx, mixed)
                    }
                    _ => self.top_k(&router, &rpath, scores, e)?,
                };
                // Batch-prioritized capacity orders tokens by their raw first-choice score.
                let raw = w;
                if let Some(n) = router.normalize {
                    w = self.node(Op::Normalize(n), &[w], None, sp)?;
                }
                let renormalize = capacity.as_ref().is_some_and(|c| c.renormalize);
                let scale = |me: &mut Self, w: Value| -> Result<Value, Diagnostic> {
                    if router.scale == 1.0 {
                        return Ok(w);
                    }
                    let c = me.graph.add_constant(router.scale as f32);
                    me.node(Op::Binary(BinaryOp::Mul), &[w, c], None, sp)
                };
                if !renormalize {
                    w = scale(self, w)?;
                }
                let kept = match &capacity {
                    Some(cap) => {
                        let op = Op::Capacity {
                            experts: total,
                            limit: cap.limit,
                            policy: cap.policy,
                        };
                        let by = if cap.policy == DropPolicy::Priority {
                            raw
                        } else {
                            w
                        };
                        self.node(op, &[idx, by], None, cap.span)?
                    }
                    None => idx,
                };
                if let Some(cap) = capacity.as_ref().filter(|c| c.renormalize) {
                    // NLLB-MoE: the kept slots' weights over their sum (at least f32 eps),
                    // then the scale.
                    let k = self.node(Op::KeptWeights, &[kept, w], None, cap.span)?;
                    let n = Renorm {
                        min: F32Bits::new(f32::EPSILON),
                        ..Renorm::sum()
                    };
                    w = self.node(Op::Normalize(n), &[k], None, cap.span)?;
                    w = scale(self, w)?;
                }
                (idx, kept, w)
            }
        };
        let scatter = |mask| Op::ScatterGates {
            experts: total,
            mask,
        };
        let gates = self.node(scatter(false), &[kept, w], None, sp)?;

        // Experts, each on every token, combined by the dense gates; with `scale_input`,
        // each reads x scaled by its gate and the sum counts the chosen ones.
        let mut outs = vec![if scale_input {
            self.node(scatter(true), &[kept, w], None, sp)?
        } else {
            gates
        }];
        let mut index = 0;
        for group in &groups {
            for _ in 0..group.count {
                let epath = path.child(Seg::indexed("experts", index));
                let input = if scale_input {
                    let slice = Op::SliceCols {
                        heads: 1,
                        start: index as u64,
                        len: 1,
                    };
                    let g = self.node(slice, &[gates], None, sp)?;
                    self.node(Op::Binary(BinaryOp::Mul), &[x, g], None, sp)?
                } else {
                    x
                };
                outs.push(self.instantiate(group.template, input, &epath, group.span)?);
                index += 1;
            }
        }
        let mut y = self.node(Op::DenseCombine, &outs, Some(name.to_string()), call.span)?;
        if let Some(cap) = &capacity {
            if cap.passthrough {
                let p = self.node(Op::PassThrough, &[x, kept, w], None, cap.span)?;
                y = self.node(Op::Binary(BinaryOp::Add), &[y, p], None, cap.span)?;
            }
        }

        let mut probes = vec![
            (ProbeKind::RouterLogits, logits),
            (ProbeKind::RoutingWeights, w),
            (ProbeKind::SelectedExperts, idx),
            (ProbeKind::KeptExperts, kept),
            (ProbeKind::Routed, y),
        ];

        // Shared experts, optionally gated.
        if let Some(shared) = a.named("shared") {
            let sgroups = self.expert_set(shared)?;
            let count: u64 = sgroups.iter().map(|g| g.count).sum();
            let mut sum: Option<Value> = None;
            let mut index = 0;
            for group in &sgroups {
                for _ in 0..group.count {
                    let seg = if count == 1 {
                        Seg::name("shared")
                    } else {
                        Seg::indexed("shared", index)
                    };
                    let out = self.instantiate(group.template, x, &path.child(seg), group.span)?;
                    sum = Some(match sum {
                        None => out,
                        Some(s) => {
                            self.node(Op::Binary(BinaryOp::Add), &[s, out], None, group.span)?
                        }
                    });
                    index += 1;
                }
            }
            let mut s = sum.expect("expert sets are never empty");
            let gated = self.weight_flag(
                a.named("shared_gate"),
                "shared_gate",
                &path.child(Seg::name("shared_gate")),
            )?;
            if gated {
                let span = a.named("shared_gate").map_or(call.span, |g| g.span);
                let w = self.weight(&path.child(Seg::name("shared_gate")), vec![1, width], span)?;
                let g = self.node(Op::Linear { bias: false }, &[x, w], None, span)?;
                let g = self.node(Op::Unary(UnaryOp::Sigmoid), &[g], None, span)?;
                s = self.node(Op::Binary(BinaryOp::Mul), &[s, g], None, span)?;
            }
            probes.push((ProbeKind::Shared, s));
            y = self.node(
                Op::Binary(BinaryOp::Add),
                &[y, s],
                Some(name.to_string()),
                shared.span,
            )?;
        } else if let Some(g) = a.named("shared_gate") {
            return Err(Diagnostic::at(
                g.span,
                "`shared_gate` without `shared` experts",
                "nothing to gate",
            ));
        }

        // A learned bias on the block's output (JetMoE).
        let bias_path = path.child(Seg::name("bias"));
        if self.weight_flag(a.named("bias"), "bias", &bias_path)? {
            let span = a.named("bias").map_or(call.span, |b| b.span);
            let b = self.weight(&bias_path, vec![width], span)?;
            y = self.node(
                Op::Binary(BinaryOp::Add),
                &[y, b],
                Some(name.to_string()),
                span,
            )?;
        }

        // Inspection outputs.
        let counts = self.node(
            Op::ExpertCounts { experts: total },
            &[kept],
            Some(format!("{name}.expert_counts")),
            sp,
        )?;
        let aux = self.node(
            Op::AuxLoss,
            &[logits, idx],
            Some(format!("{name}.aux_loss")),
            sp,
        )?;
        let z = self.node(Op::ZLoss, &[logits], Some(format!("{name}.z_loss")), sp)?;
        self.graph.g[idx.node].label = Some(format!("{name}.selected_experts"));
        let block = path.key();
        self.graph
            .probes
            .extend(probes.into_iter().map(|(kind, value)| Probe {
                block: block.clone(),
                kind,
                value,
            }));
        Ok(MoeOutputs {
            y,
            router_logits: logits,
            selected_experts: idx,
            expert_counts: counts,
            aux_loss: aux,
            z_loss: z,
        })
    }

    /// Top-k selection on the scores (plus a selection bias, within the kept groups): the
    /// chosen experts and their weights, scored after the choice when `after_topk`.
    fn top_k(
        &mut self,
        router: &RouterSpec,
        rpath: &WeightPath,
        scores: Value,
        experts: usize,
    ) -> Result<(Value, Value), Diagnostic> {
        let Selection::TopK {
            k,
            groups,
            selection_bias,
        } = router.select
        else {
            unreachable!("called for top-k routers only");
        };
        let sp = router.select_span;
        let mut choose = scores;
        if selection_bias {
            let b = self.weight(&rpath.child(Seg::name("selection_bias")), vec![experts], sp)?;
            choose = self.node(Op::Binary(BinaryOp::Add), &[choose, b], None, sp)?;
        }
        if let Some((groups, keep, score)) = groups {
            choose = self.node(
                Op::GroupMask {
                    groups,
                    keep,
                    score,
                },
                &[choose],
                None,
                sp,
            )?;
        }
        let topk = self.node(Op::TopK { k }, &[choose], None, sp)?;
        let idx = Value {
            node: topk.node,
            port: 1,
        };
        let mut w = self.node(Op::Gather, &[scores, idx], None, sp)?;
        if router.after_topk {
            let score = if router.sigmoid {
                Op::Unary(UnaryOp::Sigmoid)
            } else {
                Op::Softmax
            };
            w = self.node(score, &[w], None, sp)?;
        }
        Ok((idx, w))
    }

    /// Instantiates an expert template on `x`.
    fn instantiate(
        &mut self,
        t: &ast::Expert,
        x: Value,
        path: &WeightPath,
        use_span: Span,
    ) -> Result<Value, Diagnostic> {
        let xt = self.graph.value_type(x).clone();
        self.check_signature(
            &t.signature.shape,
            &xt,
            &format!("expert `{}`", t.name),
            &t.signature.arg,
            use_span,
        )?;
        let mut scope = Scope::default();
        scope.vars.insert(
            t.signature.arg.name.clone(),
            (Val::Tensor(x), t.signature.arg.span),
        );
        for l in &t.body {
            if scope.vars.contains_key(&l.name.name) {
                return Err(Diagnostic::at(
                    l.name.span,
                    format!("`{}` is defined twice", l.name),
                    "redefined here",
                ));
            }
            // Checked before lowering: a moe of this very template would recurse forever.
            if matches!(&l.value.kind, ExprKind::Call { func, .. } if func.name == "moe") {
                return Err(Diagnostic::at(
                    l.value.span,
                    "an expert cannot contain a moe layer",
                    "nested moe",
                )
                .with_help("put moe layers in the model's dataflow, one after another"));
            }
            let v = self.let_value(&l.name, &l.value, &scope, path)?;
            scope.vars.insert(l.name.name.clone(), (v, l.name.span));
        }
        let out = self.tensor(&t.result_expr, &scope, path)?;
        let ot = self.graph.value_type(out).clone();
        let declared = self.shape_of(&t.result, &xt)?;
        if ot.shape != declared {
            let shown: Vec<String> = declared.iter().map(|d| d.to_string()).collect();
            return Err(Diagnostic::at(
                t.result_expr.span,
                format!(
                    "expert `{}` returns {ot}, but its signature says [{}]",
                    t.name,
                    shown.join(", ")
                ),
                format!("this is {ot}"),
            )
            .with_related(t.result.span, "declared here"));
        }
        Ok(out)
    }

    /// The concrete dims of a signature shape, where a non-param name is the row symbol.
    fn shape_of(
        &self,
        shape: &ast::Shape,
        input: &crate::ir::TensorType,
    ) -> Result<Vec<Dim>, Diagnostic> {
        shape
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.kind {
                ExprKind::Path(p)
                    if p.len() == 1 && !self.params.contains_key(&p[0].name) && i == 0 =>
                {
                    Ok(input.shape.first().copied().unwrap_or(Dim::TOKENS))
                }
                _ => self.dim(d).map(Dim::fixed),
            })
            .collect()
    }

    fn check_signature(
        &self,
        shape: &ast::Shape,
        input: &crate::ir::TensorType,
        what: &str,
        arg: &Ident,
        use_span: Span,
    ) -> Result<(), Diagnostic> {
        let want = self.shape_of(shape, input)?;
        if want != input.shape {
            let shown: Vec<String> = want.iter().map(|d| d.to_string()).collect();
            return Err(Diagnostic::at(
                use_span,
                format!(
                    "{what} expects {arg}: [{}], but the moe input is {input}",
                    shown.join(", ")
                ),
                format!("input is {input}"),
            )
            .with_related(shape.span, "expected shape declared here"));
        }
        Ok(())
    }

    /// `N * name`, `name`, or a list of those.
    fn expert_set(&self, e: &'a Expr) -> Result<Vec<ExpertGroup<'a>>, Diagnostic> {
        let items: Vec<&Expr> = match &e.kind {
            ExprKind::List(items) if !items.is_empty() => items.iter().collect(),
            ExprKind::List(_) => {
                return Err(Diagnostic::at(e.span, "empty expert list", "no experts"))
            }
            _ => vec![e],
        };
        items
            .into_iter()
            .map(|item| {
                let (count, name) = match &item.kind {
                    ExprKind::Binary {
                        op: ast::BinOp::Mul,
                        lhs,
                        rhs,
                    } => (self.int(lhs, "an expert count")?, &**rhs),
                    _ => (1, item),
                };
                let template = match &name.kind {
                    ExprKind::Path(p) if p.len() == 1 => self.experts.get(&p[0].name).copied(),
                    _ => None,
                };
                let template = template.ok_or_else(|| {
                    let mut known: Vec<&str> = self.experts.keys().map(String::as_str).collect();
                    known.sort();
                    Diagnostic::at(
                        name.span,
                        format!("`{name}` is not an expert"),
                        "expected an expert name",
                    )
                    .with_help(format!("write `N * expert`; experts: {}", known.join(", ")))
                })?;
                Ok(ExpertGroup {
                    count,
                    template,
                    span: item.span,
                })
            })
            .collect()
    }
}
