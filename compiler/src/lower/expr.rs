//! Expressions inside dataflow statements: names, arithmetic (tensor with
//! tensor, or with a constant), activations and calls, constant expressions
//! among them (comparisons, `and`/`or`/`not`, indexing, `len`, `if` choices),
//! and the checked argument lists that every call site shares.

use super::bind::WeightPath;
use super::consts::{self, closest, eval_bool, eval_const, Const};
use super::params::free_names;
use super::{Lowerer, Scope, Val};
use crate::diagnostic::Diagnostic;
use crate::ir::{BinaryOp, Op, UnaryOp, Value};
use moec_grammar::ast::{Arg, BinOp, Expr, ExprKind, Ident};

impl Lowerer<'_> {
    /// An expression that must be a tensor.
    pub(super) fn tensor(
        &mut self,
        e: &Expr,
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<Value, Diagnostic> {
        match self.expr(e, scope, path)? {
            Operand::Tensor(v) => Ok(v),
            Operand::Const(c) => Err(Diagnostic::at(
                e.span,
                format!("expected a tensor, `{e}` is the constant {c}"),
                "a constant",
            )),
        }
    }

    pub(super) fn expr(
        &mut self,
        e: &Expr,
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<Operand, Diagnostic> {
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Str(_) => {
                Ok(Operand::Const(eval_const(e, &self.params)?))
            }
            ExprKind::Not(_) | ExprKind::Index { .. } => {
                self.constant(e, scope).map(Operand::Const)
            }
            ExprKind::Binary { op, .. } if op.is_comparison() || op.is_logical() => {
                self.constant(e, scope).map(Operand::Const)
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                let taken = if self.condition(cond, scope)? {
                    then
                } else {
                    otherwise
                };
                self.expr(taken, scope, path)
            }
            ExprKind::Path(parts) => self.path(e, parts, scope),
            ExprKind::Neg(inner) => match self.expr(inner, scope, path)? {
                Operand::Const(_) => Ok(Operand::Const(eval_const(e, &self.params)?)),
                Operand::Tensor(v) => {
                    let c = self.graph.add_constant(-1.0);
                    self.node(Op::Binary(BinaryOp::Mul), &[v, c], None, e.span)
                        .map(Operand::Tensor)
                }
            },
            ExprKind::Binary { op, lhs, rhs } => {
                let (l, r) = (self.expr(lhs, scope, path)?, self.expr(rhs, scope, path)?);
                self.binary(e, *op, l, r, lhs, rhs)
            }
            ExprKind::Call { func, args } => self.call(e, func, args, scope, path),
            ExprKind::List(_) => Err(Diagnostic::at(
                e.span,
                "a list is only allowed as `experts = [...]` of a moe",
                "unexpected list",
            )),
        }
    }

    pub(super) fn path(
        &mut self,
        e: &Expr,
        parts: &[Ident],
        scope: &Scope,
    ) -> Result<Operand, Diagnostic> {
        let head = &parts[0];
        if let Some((val, _)) = scope.vars.get(&head.name) {
            return match (val, parts) {
                (Val::Tensor(v), [_]) => Ok(Operand::Tensor(*v)),
                (Val::Moe(m), [_]) => Ok(Operand::Tensor(m.y)),
                (Val::Moe(m), [_, field]) => m.field(&field.name).map(Operand::Tensor).ok_or_else(|| {
                    Diagnostic::at(field.span, format!("a moe has no output `{field}`"), "unknown field")
                        .with_help("moe outputs: router_logits, selected_experts, expert_counts, aux_loss, z_loss")
                }),
                _ => Err(Diagnostic::at(e.span, format!("`{head}` has no fields"), "not a moe")),
            };
        }
        if parts.len() == 1 && self.params.contains_key(&head.name) {
            return Ok(Operand::Const(self.params[&head.name].clone()));
        }
        let what = if self.experts.contains_key(&head.name) {
            " (an expert template: use it in `experts = N * name`)"
        } else if self.routers.contains_key(&head.name) {
            " (a router: use it as `router = name`)"
        } else {
            ""
        };
        let mut known: Vec<&str> = scope.vars.keys().map(String::as_str).collect();
        known.extend(self.params.keys().map(String::as_str));
        let d = Diagnostic::at(
            head.span,
            format!("unknown value `{head}`{what}"),
            "not defined here",
        );
        Err(match closest(&head.name, &known) {
            Some(c) if what.is_empty() => d.with_help(format!("did you mean `{c}`?")),
            _ => d,
        })
    }

    /// A constant expression among dataflow: an error if it reads a tensor.
    pub(super) fn constant(&self, e: &Expr, scope: &Scope) -> Result<Const, Diagnostic> {
        self.reads_no_tensor(e, scope)?;
        eval_const(e, &self.params)
    }

    /// The condition of an `if`: a constant bool.
    pub(super) fn condition(&self, cond: &Expr, scope: &Scope) -> Result<bool, Diagnostic> {
        self.reads_no_tensor(cond, scope)?;
        eval_bool(cond, &self.params, "an `if` condition")
    }

    fn reads_no_tensor(&self, e: &Expr, scope: &Scope) -> Result<(), Diagnostic> {
        let mut names = Vec::new();
        free_names(e, &mut names);
        match names.into_iter().find(|n| scope.vars.contains_key(&n.name)) {
            Some(name) => Err(Diagnostic::at(
                name.span,
                format!("`{e}` is decided at compile time, but `{name}` is a tensor"),
                "a tensor",
            )
            .with_help(
                "comparisons, `and`, `or`, `not`, indexing, `len` and `if` conditions \
                 take params and constants",
            )),
            None => Ok(()),
        }
    }

    pub(super) fn binary(
        &mut self,
        e: &Expr,
        op: BinOp,
        l: Operand,
        r: Operand,
        le: &Expr,
        re: &Expr,
    ) -> Result<Operand, Diagnostic> {
        if let (Operand::Const(_), Operand::Const(_)) = (&l, &r) {
            return Ok(Operand::Const(eval_const(e, &self.params)?));
        }
        let bop = match op {
            BinOp::Add => BinaryOp::Add,
            BinOp::Sub => BinaryOp::Sub,
            BinOp::Mul => BinaryOp::Mul,
            BinOp::Div => BinaryOp::Div,
            _ => {
                return Err(Diagnostic::at(
                    e.span,
                    format!("`{op}` only applies to constants"),
                    "on a tensor",
                ))
            }
        };
        self.tensor_binary(e, bop, (l, le), (r, re))
            .map(Operand::Tensor)
    }

    /// `l op r` where at least one side is a tensor: two tensors of one type, or a
    /// tensor and a number (broadcast as a scalar constant).
    fn tensor_binary(
        &mut self,
        e: &Expr,
        bop: BinaryOp,
        (l, le): (Operand, &Expr),
        (r, re): (Operand, &Expr),
    ) -> Result<Value, Diagnostic> {
        let scalar = |this: &Self, c: Const, ce: &Expr| -> Result<f32, Diagnostic> {
            Ok(this.float(ce, "a scalar operand").map_err(|_| {
                Diagnostic::at(
                    ce.span,
                    format!("cannot combine a tensor with {}", c.kind()),
                    "here",
                )
            })? as f32)
        };
        match (l, r) {
            (Operand::Const(_), Operand::Const(_)) => {
                unreachable!("constant operands are evaluated by the caller")
            }
            (Operand::Tensor(a), Operand::Tensor(b)) => {
                let (ta, tb) = (
                    self.graph.value_type(a).clone(),
                    self.graph.value_type(b).clone(),
                );
                if ta != tb {
                    return Err(Diagnostic::at(
                        e.span,
                        format!("shape mismatch in `{}`: {ta} and {tb}", symbol(bop)),
                        "these differ",
                    )
                    .with_related(le.span, format!("this is {ta}"))
                    .with_related(re.span, format!("this is {tb}")));
                }
                self.node(Op::Binary(bop), &[a, b], None, e.span)
            }
            (Operand::Tensor(a), Operand::Const(c)) => {
                let c = self.graph.add_constant(scalar(self, c, re)?);
                self.node(Op::Binary(bop), &[a, c], None, e.span)
            }
            (Operand::Const(c), Operand::Tensor(b)) => {
                let v = scalar(self, c, le)?;
                match bop {
                    _ if bop.commutes() => {
                        let c = self.graph.add_constant(v);
                        self.node(Op::Binary(bop), &[b, c], None, e.span)
                    }
                    BinaryOp::Sub => {
                        let neg = self.graph.add_constant(-1.0);
                        let nb = self.node(Op::Binary(BinaryOp::Mul), &[b, neg], None, e.span)?;
                        let c = self.graph.add_constant(v);
                        self.node(Op::Binary(BinaryOp::Add), &[nb, c], None, e.span)
                    }
                    _ => Err(Diagnostic::at(
                        e.span,
                        "cannot divide a constant by a tensor",
                        "here",
                    )),
                }
            }
        }
    }

    /// `min(a, b)`, `max(a, b)`, `clamp(x, lo, hi)`: constants when every argument is
    /// one, else elementwise (`clamp` is `min(max(x, lo), hi)`, as `torch.clamp`).
    fn min_max(
        &mut self,
        e: &Expr,
        func: &Ident,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<Operand, Diagnostic> {
        let a = Args::new(e, &func.name, args, &[])?;
        let exprs: Vec<&Expr> = if func.name == "clamp" {
            a.positional::<3>("clamp(x, min, max)")?.to_vec()
        } else {
            a.positional::<2>(&format!("{func}(a, b)"))?.to_vec()
        };
        let mut vals = Vec::new();
        for x in &exprs {
            vals.push(self.expr(x, scope, path)?);
        }
        if vals.iter().all(|v| matches!(v, Operand::Const(_))) {
            return self.constant(e, scope).map(Operand::Const);
        }
        let mut vals = vals.into_iter().zip(exprs);
        let first = vals.next().expect("two or three arguments");
        let second = vals.next().expect("two or three arguments");
        let Some(hi) = vals.next() else {
            let bop = if func.name == "min" {
                BinaryOp::Min
            } else {
                BinaryOp::Max
            };
            return self
                .tensor_binary(e, bop, first, second)
                .map(Operand::Tensor);
        };
        if let (Some(l), Some(h)) = (self.const_f64(second.1), self.const_f64(hi.1)) {
            if l > h {
                return Err(Diagnostic::at(
                    second.1.span,
                    format!("clamp's lower bound {l} is above its upper bound {h}"),
                    "lower bound",
                )
                .with_related(hi.1.span, "upper bound")
                .with_help("write `clamp(x, min, max)` with min ≤ max"));
            }
        }
        if let Operand::Const(c) = &first.0 {
            return Err(Diagnostic::at(
                first.1.span,
                format!("clamp's first argument must be a tensor, `{}` is {}", first.1, c.kind()),
                "not a tensor",
            )
            .with_help("`clamp(x, min, max)` bounds a tensor x; `min(a, b)` and `max(a, b)` take either order"));
        }
        let x_expr = first.1;
        let lower = self.tensor_binary(e, BinaryOp::Max, first, second)?;
        self.tensor_binary(e, BinaryOp::Min, (Operand::Tensor(lower), x_expr), hi)
            .map(Operand::Tensor)
    }

    /// A constant argument's number, if it is one.
    fn const_f64(&self, e: &Expr) -> Option<f64> {
        eval_const(e, &self.params).ok().and_then(|c| c.as_f64())
    }

    pub(super) fn call(
        &mut self,
        e: &Expr,
        func: &Ident,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<Operand, Diagnostic> {
        let unary = match func.name.as_str() {
            "silu" => Some(Some(UnaryOp::Silu)),
            "gelu" => Some(Some(UnaryOp::Gelu)),
            "gelu_tanh" => Some(Some(UnaryOp::GeluTanh)),
            "relu" => Some(Some(UnaryOp::Relu)),
            "sigmoid" => Some(Some(UnaryOp::Sigmoid)),
            "identity" => Some(None),
            _ => None,
        };
        if let Some(unary) = unary {
            let a = Args::new(e, &func.name, args, &[])?;
            let [x] = a.positional::<1>(&format!("{func}(x)"))?;
            let x = self.tensor(x, scope, path)?;
            return match unary {
                Some(u) => self
                    .node(Op::Unary(u), &[x], None, e.span)
                    .map(Operand::Tensor),
                None => Ok(Operand::Tensor(x)),
            };
        }
        match func.name.as_str() {
            "softmax" => {
                let a = Args::new(e, "softmax", args, &[])?;
                let [x] = a.positional::<1>("softmax(x)")?;
                let x = self.tensor(x, scope, path)?;
                self.node(Op::Softmax, &[x], None, e.span)
                    .map(Operand::Tensor)
            }
            "rope" => self.rope(e, args, scope, path).map(Operand::Tensor),
            "sinusoidal_positions" => self
                .sinusoidal_positions(e, args, scope, path)
                .map(Operand::Tensor),
            "min" | "max" | "clamp" => self.min_max(e, func, args, scope, path),
            "slice" => self.slice(e, args, scope, path).map(Operand::Tensor),
            "concat" => self.concat(e, args, scope, path).map(Operand::Tensor),
            f if consts::FUNCTIONS.contains(&f) => self.constant(e, scope).map(Operand::Const),
            "linear"
            | "rmsnorm"
            | "layernorm"
            | "moe"
            | "embedding"
            | "attention"
            | "relative_position_bias" => Err(Diagnostic::at(
                e.span,
                format!("`{func}` must be the whole right-hand side of a `let`"),
                "inside an expression",
            )
            .with_help(format!(
                "the `let`'s name names its weights: `let name = {func}(...)`"
            ))),
            _ => {
                const KNOWN: &[&str] = &[
                    "linear",
                    "silu",
                    "gelu",
                    "gelu_tanh",
                    "relu",
                    "sigmoid",
                    "identity",
                    "softmax",
                    "rmsnorm",
                    "layernorm",
                    "moe",
                    "embedding",
                    "rope",
                    "sinusoidal_positions",
                    "attention",
                    "relative_position_bias",
                    "slice",
                    "concat",
                ];
                let d = Diagnostic::at(
                    func.span,
                    format!("unknown function `{func}`"),
                    "not a function",
                );
                let known: Vec<&str> = KNOWN.iter().chain(consts::FUNCTIONS).copied().collect();
                Err(match closest(&func.name, &known) {
                    Some(c) => d.with_help(format!("did you mean `{c}`?")),
                    None => d.with_help(format!("functions: {}", known.join(", "))),
                })
            }
        }
    }
}

/// How the spec spells a tensor op, for errors.
fn symbol(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "+",
        BinaryOp::Sub => "-",
        BinaryOp::Mul => "*",
        BinaryOp::Div => "/",
        BinaryOp::Min => "min",
        BinaryOp::Max => "max",
    }
}

/// An evaluated operand: a graph value or a compile-time constant.
pub(super) enum Operand {
    Tensor(Value),
    Const(Const),
}

/// A call's arguments, split into positional and checked named ones.
pub(super) struct Args<'e> {
    call: &'e Expr,
    func: String,
    positional: Vec<&'e Expr>,
    named: Vec<(&'e Ident, &'e Expr)>,
}

impl<'e> Args<'e> {
    pub(super) fn new(
        call: &'e Expr,
        func: &str,
        args: &'e [Arg],
        allowed: &[&str],
    ) -> Result<Args<'e>, Diagnostic> {
        let mut a = Args {
            call,
            func: func.to_string(),
            positional: Vec::new(),
            named: Vec::new(),
        };
        for arg in args {
            match &arg.name {
                None if !a.named.is_empty() => {
                    return Err(Diagnostic::at(
                        arg.value.span,
                        "positional argument after a named one",
                        "move it before",
                    ))
                }
                None => a.positional.push(&arg.value),
                Some(n) => {
                    if !allowed.contains(&n.name.as_str()) {
                        let d = Diagnostic::at(
                            n.span,
                            format!("`{func}` has no argument `{n}`"),
                            "unknown argument",
                        );
                        return Err(if allowed.is_empty() {
                            d.with_help(format!("`{func}` takes no named arguments"))
                        } else {
                            d.with_help(format!("`{func}` takes: {}", allowed.join(", ")))
                        });
                    }
                    if let Some((prev, _)) = a.named.iter().find(|(p, _)| p.name == n.name) {
                        return Err(Diagnostic::at(
                            n.span,
                            format!("argument `{n}` given twice"),
                            "again",
                        )
                        .with_related(prev.span, "first here"));
                    }
                    a.named.push((n, &arg.value));
                }
            }
        }
        Ok(a)
    }

    pub(super) fn positional<const N: usize>(
        &self,
        usage: &str,
    ) -> Result<[&'e Expr; N], Diagnostic> {
        <[&Expr; N]>::try_from(self.positional.as_slice()).map_err(|_| {
            Diagnostic::at(
                self.call.span,
                format!(
                    "`{}` takes {N} positional argument(s), found {}",
                    self.func,
                    self.positional.len()
                ),
                "wrong number of arguments",
            )
            .with_help(format!("usage: {usage}"))
        })
    }

    pub(super) fn named(&self, name: &str) -> Option<&'e Expr> {
        self.named
            .iter()
            .find(|(n, _)| n.name == name)
            .map(|(_, e)| *e)
    }
}
