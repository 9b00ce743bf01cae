//! Router and capacity arguments of a `moe` call: each router field and each
//! capacity form checked against the layer (expert count, k, groups), with the
//! spec's spans in every error.

use super::consts::eval_bool;
use super::expr::Args;
use super::Lowerer;
use crate::diagnostic::Diagnostic;
use crate::ir::{CapacityLimit, DropPolicy, F32Bits, F64Bits, GroupScore, Renorm};
use moec_grammar::ast::{self, Arg, Expr, ExprKind, Ident};
use moec_grammar::Span;

pub(super) enum Selection {
    TopK {
        k: u64,
        groups: Option<(u64, u64, GroupScore)>,
        selection_bias: bool,
    },
    ExpertChoice {
        factor: f64,
    },
    /// PhiMoE's sparsemixer on the logits: `sparsemixer(logits, k, eps = jitter)`.
    SparseMixer {
        k: u64,
        eps: f64,
    },
}

/// The router's fields, checked.
pub(super) struct RouterSpec<'a> {
    pub(super) router: &'a ast::Router,
    pub(super) logits_bias: bool,
    /// The `bias = ...` and `selection_bias = ...` flags as written, if given.
    pub(super) logits_bias_flag: Option<&'a Expr>,
    pub(super) selection_bias_flag: Option<&'a Expr>,
    pub(super) logits_span: Span,
    pub(super) sigmoid: bool,
    pub(super) after_topk: bool,
    pub(super) select: Selection,
    pub(super) select_span: Span,
    pub(super) normalize: Option<Renorm>,
    pub(super) scale: f64,
}

pub(super) struct CapacitySpec {
    pub(super) limit: CapacityLimit,
    pub(super) policy: DropPolicy,
    pub(super) passthrough: bool,
    /// `renormalize = true`: the kept slots' weights renormalized after dropping.
    pub(super) renormalize: bool,
    pub(super) span: Span,
}

impl<'a> Lowerer<'a> {
    pub(super) fn router_spec(&self, e: &Expr, experts: u64) -> Result<RouterSpec<'a>, Diagnostic> {
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
            const FIELDS: &[&str] = &[
                "logits",
                "scores",
                "select",
                "normalize",
                "normalize_p",
                "normalize_min",
                "scale",
                "jitter",
            ];
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
                )
                .map_err(|err| {
                    let scores = field("scores").map_or(router.name.span, |s| s.span);
                    if after_topk {
                        err.with_related(scores, "the scores are made from the k chosen logits")
                            .with_help("with `after_topk = true` the choice is made on the raw logits and only the k chosen are scored: write `select = topk(logits, k)`")
                    } else {
                        err.with_help("to choose on the raw logits and score only the k chosen (softmax or sigmoid over them), write `scores = softmax(logits, after_topk = true)` (or `sigmoid(...)`)")
                    }
                })?;
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
            "sparsemixer" => {
                let a = Args::new(select_expr, "sparsemixer", sargs, &["eps"])?;
                let [src, k_expr] = a.positional::<2>("sparsemixer(logits, k, eps = jitter)")?;
                expect_name(src, "logits", "sparsemixer's input")?;
                if let Some(s) = field("scores") {
                    return Err(Diagnostic::at(
                        s.span,
                        "sparsemixer scores the logits itself",
                        "remove `scores`",
                    )
                    .with_related(select_expr.span, "sparsemixer here"));
                }
                let k = self.int(k_expr, "k")?;
                if k == 0 || k > experts {
                    return Err(Diagnostic::at(
                        k_expr.span,
                        format!("sparsemixer chooses {k} of {experts} experts"),
                        format!("k = {k}"),
                    )
                    .with_help("k must be between 1 and the number of experts"));
                }
                let eps = a
                    .named("eps")
                    .map(|e| self.float(e, "eps"))
                    .transpose()?
                    .ok_or_else(|| {
                        Diagnostic::at(
                            select_expr.span,
                            "sparsemixer needs `eps = ...`, the jitter threshold",
                            "missing `eps`",
                        )
                        .with_help("PhiMoE: `eps = router_jitter_noise`")
                    })?;
                if eps.is_nan() || eps < 0.0 {
                    return Err(Diagnostic::at(
                        a.named("eps").map_or(select_expr.span, |e| e.span),
                        format!("sparsemixer's eps must be at least 0, found {eps}"),
                        "here",
                    ));
                }
                Selection::SparseMixer { k, eps }
            }
            _ => {
                return Err(Diagnostic::at(
                    sfunc.span,
                    "select must be `topk(...)`, `expert_choice(...)` or `sparsemixer(...)`",
                    "unknown selection",
                ))
            }
        };
        let normalize = self.renorm(router, field("normalize"))?;
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

    /// `normalize = true` with `normalize_p = p` (the p-norm, default 1: the sum) and
    /// `normalize_min = m` (a lower bound on the denominator); the two need `normalize`.
    fn renorm(
        &self,
        router: &ast::Router,
        normalize: Option<&Expr>,
    ) -> Result<Option<Renorm>, Diagnostic> {
        let field = |n: &str| router.fields.iter().find(|f| f.name.name == n);
        let on = normalize
            .map(|b| self.bool(b, "normalize"))
            .transpose()?
            .unwrap_or(false);
        let mut n = Renorm::sum();
        for (name, least, strict) in [("normalize_p", 0.0, true), ("normalize_min", 0.0, false)] {
            let Some(f) = field(name) else { continue };
            if !on {
                let err = Diagnostic::at(
                    f.name.span,
                    format!("`{name}` without `normalize = true`"),
                    "the weights are not renormalized",
                )
                .with_help("add `normalize = true`, or drop this field");
                return Err(match normalize {
                    Some(b) => err.with_related(b.span, "normalize is off here"),
                    None => err,
                });
            }
            let v = self.float(&f.value, name)?;
            if v < least || (strict && v == least) || !v.is_finite() {
                return Err(Diagnostic::at(
                    f.value.span,
                    format!(
                        "`{name}` must be {} 0, found {v}",
                        if strict { "above" } else { "at least" }
                    ),
                    "here",
                ));
            }
            let v = F32Bits::new(v as f32);
            if name == "normalize_p" {
                n.p = v;
            } else {
                n.min = v;
            }
        }
        Ok(on.then_some(n))
    }

    /// The branch a compile-time `if C then A else B` takes (repeatedly); `e` itself otherwise.
    fn chosen<'e>(&self, mut e: &'e Expr) -> Result<&'e Expr, Diagnostic> {
        while let ExprKind::If {
            cond,
            then,
            otherwise,
        } = &e.kind
        {
            e = if eval_bool(cond, &self.params, "an `if` condition")? {
                then
            } else {
                otherwise
            };
        }
        Ok(e)
    }

    /// `dropless`, `factor(f, ...)`, `fixed(n, ...)` or `fraction(f, ...)`; `None` for dropless.
    /// The capacity and its `drop`/`dropped` words may be chosen by compile-time
    /// `if C then A else B` (NLLB-MoE: a fraction or a fixed count, priority or arrival).
    pub(super) fn capacity(&self, e: &Expr) -> Result<Option<CapacitySpec>, Diagnostic> {
        let e = self.chosen(e)?;
        if let ExprKind::Path(p) = &e.kind {
            if p.len() == 1 && p[0].name == "dropless" {
                return Ok(None);
            }
        }
        let usage = "capacity = dropless, factor(f), fixed(n) or fraction(f)";
        let (func, args) = call_parts(e, usage)?;
        let a = Args::new(e, &func.name, args, &["drop", "dropped", "renormalize"])?;
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
            "fraction" => {
                let f = self.float(v, "the capacity fraction")?;
                if f <= 0.0 || !f.is_finite() {
                    return Err(Diagnostic::at(
                        v.span,
                        format!("capacity fraction must be positive, found {f}"),
                        "here",
                    )
                    .with_help("NLLB-MoE uses `fixed(expert_capacity)` when moe_eval_capacity_token_fraction ≤ 0"));
                }
                CapacityLimit::Fraction(F64Bits::new(f))
            }
            _ => {
                return Err(Diagnostic::at(
                    func.span,
                    format!("unknown capacity `{func}`"),
                    "expected factor, fixed or fraction",
                )
                .with_help(usage))
            }
        };
        let word = |name: &str, options: &[&str]| -> Result<Option<String>, Diagnostic> {
            match a.named(name).map(|x| self.chosen(x)).transpose()? {
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
        let policy = match word("drop", &["arrival", "score", "priority"])?.as_deref() {
            Some("score") => DropPolicy::Score,
            Some("priority") => DropPolicy::Priority,
            _ => DropPolicy::Arrival,
        };
        let passthrough =
            word("dropped", &["zero", "passthrough"])?.as_deref() == Some("passthrough");
        let renormalize = a
            .named("renormalize")
            .map(|b| self.bool(b, "renormalize"))
            .transpose()?
            .unwrap_or(false);
        if renormalize && passthrough {
            return Err(Diagnostic::at(
                a.named("renormalize").map_or(e.span, |r| r.span),
                "`renormalize = true` with `dropped = passthrough`",
                "renormalizes the kept slots",
            )
            .with_related(
                a.named("dropped").map_or(e.span, |d| d.span),
                "a dropped token passes its input through here",
            )
            .with_help(
                "renormalizing over the kept slots is NLLB-MoE's rule, with `dropped = zero`",
            ));
        }
        Ok(Some(CapacitySpec {
            limit,
            policy,
            passthrough,
            renormalize,
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
