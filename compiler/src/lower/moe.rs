//! Lowering a `moe(...)` call to the naive dense graph: the router as a chain of
//! small ops (linear, score, bias, group mask, top-k, gather, normalize, scale,
//! capacity), every expert instantiated on all tokens, and a dense gated sum.
//! This is the form whose meaning is obvious; the passes make it fast.

use super::bind::{Seg, WeightPath};
use super::{Args, Lowerer, Scope, Val};
use crate::diagnostic::Diagnostic;
use crate::ir::{
    BinaryOp, CapacityLimit, Dim, DropPolicy, F32Bits, GroupScore, Op, UnaryOp, Value,
};
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

enum Selection {
    TopK {
        k: u64,
        groups: Option<(u64, u64, GroupScore)>,
        selection_bias: bool,
    },
    ExpertChoice {
        factor: f64,
    },
}

/// The router's fields, checked.
struct RouterSpec<'a> {
    router: &'a ast::Router,
    logits_bias: bool,
    /// The `bias = ...` and `selection_bias = ...` flags as written, if given.
    logits_bias_flag: Option<&'a Expr>,
    selection_bias_flag: Option<&'a Expr>,
    logits_span: Span,
    sigmoid: bool,
    after_topk: bool,
    select: Selection,
    select_span: Span,
    normalize: bool,
    scale: f64,
}

struct CapacitySpec {
    limit: CapacityLimit,
    policy: DropPolicy,
    passthrough: bool,
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
            &["experts", "router", "capacity", "shared", "shared_gate"],
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
        let groups = self.expert_set(required("experts")?)?;
        let total: u64 = groups.iter().map(|g| g.count).sum();
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
            .with_help("moec compiles inference graphs; the router runs without noise");
            if !self.notes.contains(&note) {
                self.notes.push(note);
            }
        }
        let capacity = a
            .named("capacity")
            .map(|c| self.capacity(c))
            .transpose()?
            .flatten();
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
        let scores = if router.after_topk {
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
            Selection::TopK {
                k,
                groups,
                selection_bias,
            } => {
                let mut choose = scores;
                if selection_bias {
                    let b = self.weight(&rpath.child(Seg::name("selection_bias")), vec![e], sp)?;
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
                    w = if router.sigmoid {
                        self.node(Op::Unary(UnaryOp::Sigmoid), &[w], None, sp)?
                    } else {
                        self.node(Op::Softmax, &[w], None, sp)?
                    };
                }
                if router.normalize {
                    w = self.node(Op::NormalizeSum, &[w], None, sp)?;
                }
                if router.scale != 1.0 {
                    let c = self.graph.add_constant(router.scale as f32);
                    w = self.node(Op::Binary(BinaryOp::Mul), &[w, c], None, sp)?;
                }
                let kept = match &capacity {
                    Some(cap) => {
                        let op = Op::Capacity {
                            experts: total,
                            limit: cap.limit,
                            policy: cap.policy,
                        };
                        self.node(op, &[idx, w], None, cap.span)?
                    }
                    None => idx,
                };
                (idx, kept, w)
            }
        };
        let gates = self.node(Op::ScatterGates { experts: total }, &[kept, w], None, sp)?;

        // Experts, each on every token, combined by the dense gates.
        let mut outs = vec![gates];
        let mut index = 0;
        for group in &groups {
            for _ in 0..group.count {
                let epath = path.child(Seg::indexed("experts", index));
                outs.push(self.instantiate(group.template, x, &epath, group.span)?);
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
        Ok(MoeOutputs {
            y,
            router_logits: logits,
            selected_experts: idx,
            expert_counts: counts,
            aux_loss: aux,
            z_loss: z,
        })
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
            let v = self.let_value(&l.name, &l.value, &scope, path)?;
            if let Val::Moe(_) = v {
                return Err(Diagnostic::at(
                    l.value.span,
                    "an expert cannot contain a moe layer",
                    "nested moe",
                ));
            }
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

    fn router_spec(&self, e: &Expr, experts: u64) -> Result<RouterSpec<'a>, Diagnostic> {
        let router = match &e.kind {
            ExprKind::Path(p) if p.len() == 1 => self.routers.get(&p[0].name).copied(),
            _ => None,
        }
        .ok_or_else(|| {
            Diagnostic::at(
                e.span,
                format!("`{e}` is not a router"),
                "expected a router name",
            )
        })?;
        let mut seen: Vec<&Ident> = Vec::new();
        for f in &router.fields {
            if let Some(prev) = seen.iter().find(|p| p.name == f.name.name) {
                return Err(Diagnostic::at(
                    f.name.span,
                    format!("router field `{}` is set twice", f.name),
                    "again",
                )
                .with_related(prev.span, "first here"));
            }
            const FIELDS: &[&str] = &["logits", "scores", "select", "normalize", "scale", "jitter"];
            if !FIELDS.contains(&f.name.name.as_str()) {
                return Err(Diagnostic::at(
                    f.name.span,
                    format!("unknown router field `{}`", f.name),
                    "unknown field",
                )
                .with_help(format!("router fields: {}", FIELDS.join(", "))));
            }
            seen.push(&f.name);
        }
        let field = |n: &str| {
            router
                .fields
                .iter()
                .find(|f| f.name.name == n)
                .map(|f| &f.value)
        };
        let arg = &router.signature.arg;

        let logits = field("logits").ok_or_else(|| {
            Diagnostic::at(
                router.name.span,
                format!("router `{}` has no `logits`", router.name),
                "missing `logits = linear(...)`",
            )
        })?;
        let (lfunc, largs) = call_parts(logits, "logits = linear(h, experts)")?;
        if lfunc.name != "linear" {
            return Err(Diagnostic::at(
                lfunc.span,
                "router logits must be `linear(h, experts)`",
                "expected linear",
            ));
        }
        let la = Args::new(logits, "linear", largs, &["bias"])?;
        let [lin, lout] = la.positional::<2>("linear(h, experts)")?;
        expect_name(lin, &arg.name, "the router's input")?;
        let width = self.dim(lout)?;
        if width != experts {
            return Err(Diagnostic::at(
                lout.span,
                format!(
                    "router `{}` scores {width} experts, but the moe has {experts}",
                    router.name
                ),
                format!("{width} logits"),
            )
            .with_related(e.span, format!("used by a moe of {experts} experts")));
        }
        let logits_bias = la
            .named("bias")
            .map(|b| self.bool(b, "bias"))
            .transpose()?
            .unwrap_or(false);

        let (mut sigmoid, mut after_topk) = (false, false);
        if let Some(s) = field("scores") {
            let (sf, sargs) = call_parts(s, "scores = softmax(logits) or sigmoid(logits)")?;
            let sa = Args::new(s, &sf.name, sargs, &["after_topk"])?;
            let [src] = sa.positional::<1>("softmax(logits)")?;
            expect_name(src, "logits", "the scores' input")?;
            sigmoid = match sf.name.as_str() {
                "softmax" => false,
                "sigmoid" => true,
                _ => {
                    return Err(Diagnostic::at(
                        sf.span,
                        "scores must be `softmax(logits)` or `sigmoid(logits)`",
                        "unknown score function",
                    ))
                }
            };
            after_topk = sa
                .named("after_topk")
                .map(|b| self.bool(b, "after_topk"))
                .transpose()?
                .unwrap_or(false);
        }

        let mut selection_bias_flag = None;
        let select_expr = field("select").ok_or_else(|| {
            Diagnostic::at(
                router.name.span,
                format!("router `{}` has no `select`", router.name),
                "missing `select = topk(scores, k)`",
            )
        })?;
        let (sfunc, sargs) = call_parts(select_expr, "select = topk(scores, k)")?;
        let select = match sfunc.name.as_str() {
            "topk" => {
                let a = Args::new(
                    select_expr,
                    "topk",
                    sargs,
                    &["groups", "topk_groups", "group_score", "selection_bias"],
                )?;
                let [src, k_expr] = a.positional::<2>("topk(scores, k)")?;
                expect_name(
                    src,
                    if after_topk { "logits" } else { "scores" },
                    "top-k's input",
                )?;
                let k = self.int(k_expr, "k")?;
                if k > experts {
                    return Err(Diagnostic::at(
                        k_expr.span,
                        format!("top-{k} selection from only {experts} experts"),
                        format!("k = {k}"),
                    )
                    .with_help("k must be at most the number of experts"));
                }
                let groups = match (a.named("groups"), a.named("topk_groups")) {
                    (None, None) => None,
                    (Some(g), Some(t)) => {
                        let (ng, keep) = (self.int(g, "groups")?, self.int(t, "topk_groups")?);
                        if !experts.is_multiple_of(ng) {
                            return Err(Diagnostic::at(
                                g.span,
                                format!("{ng} groups do not divide {experts} experts evenly"),
                                format!("n_group = {ng}"),
                            ));
                        }
                        if keep > ng {
                            return Err(Diagnostic::at(
                                t.span,
                                format!("cannot keep {keep} of {ng} groups"),
                                format!("topk_group = {keep}"),
                            ));
                        }
                        if k > keep * (experts / ng) {
                            return Err(Diagnostic::at(
                                k_expr.span,
                                format!(
                                    "top-{k} selection from {keep} groups of {} experts",
                                    experts / ng
                                ),
                                "too few experts in the kept groups",
                            ));
                        }
                        let score = match a.named("group_score") {
                            None => GroupScore::Top2Sum,
                            Some(s) => match &s.kind {
                                ExprKind::Path(p) if p.len() == 1 && p[0].name == "top2_sum" => {
                                    GroupScore::Top2Sum
                                }
                                ExprKind::Path(p) if p.len() == 1 && p[0].name == "max" => {
                                    GroupScore::Max
                                }
                                _ => {
                                    return Err(Diagnostic::at(
                                        s.span,
                                        "group_score must be `top2_sum` or `max`",
                                        "unknown",
                                    ))
                                }
                            },
                        };
                        if score == GroupScore::Top2Sum && experts / ng < 2 {
                            return Err(Diagnostic::at(
                                g.span,
                                "top2_sum group scores need at least 2 experts per group",
                                "too many groups",
                            ));
                        }
                        Some((ng, keep, score))
                    }
                    _ => {
                        return Err(Diagnostic::at(
                            select_expr.span,
                            "group-limited top-k needs both `groups` and `topk_groups`",
                            "incomplete",
                        ))
                    }
                };
                selection_bias_flag = a.named("selection_bias");
                let selection_bias = selection_bias_flag
                    .map(|b| self.bool(b, "selection_bias"))
                    .transpose()?
                    .unwrap_or(false);
                Selection::TopK {
                    k,
                    groups,
                    selection_bias,
                }
            }
            "expert_choice" => {
                let a = Args::new(select_expr, "expert_choice", sargs, &[])?;
                let [src, f] = a.positional::<2>("expert_choice(scores, capacity_factor)")?;
                expect_name(src, "scores", "expert choice's input")?;
                let factor = self.float(f, "the capacity factor")?;
                if factor <= 0.0 {
                    return Err(Diagnostic::at(
                        f.span,
                        format!("capacity factor must be positive, found {factor}"),
                        "here",
                    ));
                }
                if after_topk {
                    return Err(Diagnostic::at(
                        select_expr.span,
                        "expert choice cannot score after top-k",
                        "here",
                    ));
                }
                Selection::ExpertChoice { factor }
            }
            _ => {
                return Err(Diagnostic::at(
                    sfunc.span,
                    "select must be `topk(...)` or `expert_choice(...)`",
                    "unknown selection",
                ))
            }
        };
        let normalize = field("normalize")
            .map(|b| self.bool(b, "normalize"))
            .transpose()?
            .unwrap_or(false);
        let scale = field("scale")
            .map(|s| self.float(s, "scale"))
            .transpose()?
            .unwrap_or(1.0);
        Ok(RouterSpec {
            router,
            logits_bias,
            logits_bias_flag: la.named("bias"),
            selection_bias_flag,
            logits_span: logits.span,
            sigmoid,
            after_topk,
            select,
            select_span: select_expr.span,
            normalize,
            scale,
        })
    }

    /// `dropless`, `factor(f, ...)` or `fixed(n, ...)`; `None` for dropless.
    fn capacity(&self, e: &Expr) -> Result<Option<CapacitySpec>, Diagnostic> {
        if let ExprKind::Path(p) = &e.kind {
            if p.len() == 1 && p[0].name == "dropless" {
                return Ok(None);
            }
        }
        let usage = "capacity = dropless, factor(f) or fixed(n)";
        let (func, args) = call_parts(e, usage)?;
        let a = Args::new(e, &func.name, args, &["drop", "dropped"])?;
        let [v] = a.positional::<1>(usage)?;
        let limit = match func.name.as_str() {
            "factor" => {
                let f = self.float(v, "the capacity factor")?;
                if f <= 0.0 {
                    return Err(Diagnostic::at(
                        v.span,
                        format!("capacity factor must be positive, found {f}"),
                        "here",
                    ));
                }
                CapacityLimit::Factor(F32Bits::new(f as f32))
            }
            "fixed" => CapacityLimit::Fixed(self.int(v, "the expert capacity")?),
            _ => {
                return Err(Diagnostic::at(
                    func.span,
                    format!("unknown capacity `{func}`"),
                    "expected factor or fixed",
                )
                .with_help(usage))
            }
        };
        let word = |name: &str, options: &[&str]| -> Result<Option<String>, Diagnostic> {
            match a.named(name) {
                None => Ok(None),
                Some(x) => match &x.kind {
                    ExprKind::Path(p) if p.len() == 1 && options.contains(&p[0].name.as_str()) => {
                        Ok(Some(p[0].name.clone()))
                    }
                    _ => Err(Diagnostic::at(
                        x.span,
                        format!("`{name}` must be {}", options.join(" or ")),
                        "unknown value",
                    )),
                },
            }
        };
        let policy = match word("drop", &["arrival", "score"])?.as_deref() {
            Some("score") => DropPolicy::Score,
            _ => DropPolicy::Arrival,
        };
        let passthrough =
            word("dropped", &["zero", "passthrough"])?.as_deref() == Some("passthrough");
        Ok(Some(CapacitySpec {
            limit,
            policy,
            passthrough,
            span: e.span,
        }))
    }
}

fn call_parts<'e>(e: &'e Expr, usage: &str) -> Result<(&'e Ident, &'e [Arg]), Diagnostic> {
    match &e.kind {
        ExprKind::Call { func, args } => Ok((func, args)),
        _ => Err(Diagnostic::at(
            e.span,
            format!("expected a call: {usage}"),
            "not a call",
        )),
    }
}

fn expect_name(e: &Expr, name: &str, what: &str) -> Result<(), Diagnostic> {
    match &e.kind {
        ExprKind::Path(p) if p.len() == 1 && p[0].name == name => Ok(()),
        _ => Err(Diagnostic::at(
            e.span,
            format!("{what} must be `{name}`, found `{e}`"),
            format!("expected `{name}`"),
        )),
    }
}
