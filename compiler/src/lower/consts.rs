//! Compile-time constants: params with their `--set` overrides, and the
//! arithmetic on them (`4 * hidden_size`, `ceil(x / 2)`).

use crate::diagnostic::Diagnostic;
use moec_grammar::ast::{BinOp, Expr, ExprKind, Param};
use moec_grammar::Span;
use std::collections::HashMap;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Const {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Const {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Const::Int(v) => write!(f, "{v}"),
            Const::Float(v) => write!(f, "{v:?}"),
            Const::Bool(v) => write!(f, "{v}"),
        }
    }
}

impl Const {
    pub fn kind(&self) -> &'static str {
        match self {
            Const::Int(_) => "an integer",
            Const::Float(_) => "a number",
            Const::Bool(_) => "a bool",
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Const::Int(v) => Some(v as f64),
            Const::Float(v) => Some(v),
            Const::Bool(_) => None,
        }
    }
}

/// Parses a `--set` value: `64`, `2.5`, `true`.
pub fn parse_override(text: &str) -> Option<Const> {
    let t = text.trim();
    match t {
        "true" => Some(Const::Bool(true)),
        "false" => Some(Const::Bool(false)),
        _ => t.parse::<i64>().map(Const::Int).ok().or_else(|| {
            t.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Const::Float)
        }),
    }
}

/// Evaluates params, applying overrides in place of defaults. A param may read params
/// declared after it (item order does not matter); each is evaluated once the params
/// it reads are, and a cycle is an error.
pub fn eval_params(
    params: &[&Param],
    overrides: &[(String, String)],
) -> Result<HashMap<String, Const>, Diagnostic> {
    for (name, _) in overrides {
        if !params.iter().any(|p| p.name.name == *name) {
            let mut d = Diagnostic::error(format!("--set {name}: the spec has no param `{name}`"));
            let known: Vec<&str> = params.iter().map(|p| p.name.name.as_str()).collect();
            if let Some(close) = closest(name, &known) {
                d = d.with_help(format!("did you mean `{close}`?"));
            } else if !known.is_empty() {
                d = d.with_help(format!("params: {}", known.join(", ")));
            }
            return Err(d);
        }
    }
    let mut env = HashMap::new();
    let mut pending: Vec<&Param> = params.to_vec();
    while !pending.is_empty() {
        let waiting = |p: &Param, env: &HashMap<String, Const>| {
            let mut names = Vec::new();
            free_names(&p.value, &mut names);
            names
                .iter()
                .any(|n| !env.contains_key(*n) && params.iter().any(|q| q.name.name == **n))
        };
        let (ready, blocked): (Vec<&Param>, Vec<&Param>) =
            pending.iter().partition(|p| !waiting(p, &env));
        let Some(first) = ready.first() else {
            return Err(param_cycle(&blocked));
        };
        // One at a time, in declaration order, so errors come out in a stable order.
        let p = *first;
        pending.retain(|q| !std::ptr::eq(*q, p));
        let default = eval_const(&p.value, &env)?;
        let value = match overrides.iter().rev().find(|(n, _)| *n == p.name.name) {
            None => default,
            Some((_, text)) => {
                let v = parse_override(text).ok_or_else(|| {
                    Diagnostic::at(
                        p.value.span,
                        format!("--set {}={text}: `{text}` is not a number or bool", p.name),
                        format!("`{}` is declared as {} here", p.name, default.kind()),
                    )
                })?;
                match (default, v) {
                    (Const::Int(_), Const::Int(_)) | (Const::Bool(_), Const::Bool(_)) => v,
                    (Const::Float(_), Const::Int(i)) => Const::Float(i as f64),
                    (Const::Float(_), Const::Float(_)) => v,
                    _ => {
                        return Err(Diagnostic::at(
                            p.value.span,
                            format!(
                                "--set {}={text}: `{}` is {}, not {}",
                                p.name,
                                p.name,
                                default.kind(),
                                v.kind()
                            ),
                            format!("declared as {} here", default.kind()),
                        ))
                    }
                }
            }
        };
        env.insert(p.name.name.clone(), value);
    }
    Ok(env)
}

/// The names an expression reads (`a` in `2 * a`; not call names or fields).
fn free_names<'e>(e: &'e Expr, out: &mut Vec<&'e str>) {
    match &e.kind {
        ExprKind::Path(parts) if parts.len() == 1 => out.push(&parts[0].name),
        ExprKind::Neg(inner) => free_names(inner, out),
        ExprKind::Binary { lhs, rhs, .. } => {
            free_names(lhs, out);
            free_names(rhs, out);
        }
        ExprKind::Call { args, .. } => args.iter().for_each(|a| free_names(&a.value, out)),
        ExprKind::List(items) => items.iter().for_each(|i| free_names(i, out)),
        _ => {}
    }
}

/// The error for params that wait on each other. Every param in `blocked` reads another
/// param in `blocked`, so following those reads from the first one finds a cycle.
fn param_cycle(blocked: &[&Param]) -> Diagnostic {
    let mut path: Vec<&Param> = vec![blocked[0]];
    let cycle = loop {
        let p = path[path.len() - 1];
        let mut names = Vec::new();
        free_names(&p.value, &mut names);
        let next = blocked
            .iter()
            .copied()
            .find(|q| names.contains(&q.name.name.as_str()))
            .expect("a blocked param reads a blocked param");
        if let Some(i) = path.iter().position(|q| std::ptr::eq(*q, next)) {
            break path.split_off(i);
        }
        path.push(next);
    };
    let p = cycle[0];
    if cycle.len() == 1 {
        return Diagnostic::at(
            p.name.span,
            format!("param `{}` is defined in terms of itself", p.name),
            "reads itself",
        )
        .with_related(p.value.span, "here");
    }
    let all: Vec<String> = cycle.iter().map(|q| format!("`{}`", q.name)).collect();
    let mut d = Diagnostic::at(
        p.name.span,
        format!("params {} read each other in a cycle", all.join(", ")),
        "part of the cycle",
    );
    for q in &cycle[1..] {
        d = d.with_related(q.name.span, "part of the cycle");
    }
    d.with_help("give one of them a value that does not read the others")
}

/// The closest of `candidates` to `name`, if any is reasonably close.
pub fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(1))
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Evaluates an expression that must be a compile-time constant.
pub fn eval_const(expr: &Expr, env: &HashMap<String, Const>) -> Result<Const, Diagnostic> {
    match &expr.kind {
        ExprKind::Int(v) => Ok(Const::Int(*v)),
        ExprKind::Float(v) => Ok(Const::Float(*v)),
        ExprKind::Bool(v) => Ok(Const::Bool(*v)),
        ExprKind::Path(parts) if parts.len() == 1 => {
            env.get(&parts[0].name).copied().ok_or_else(|| {
                let known: Vec<&str> = env.keys().map(String::as_str).collect();
                let d = Diagnostic::at(
                    expr.span,
                    format!("unknown param `{}`", parts[0]),
                    "not a param",
                );
                match closest(&parts[0].name, &known) {
                    Some(c) => d.with_help(format!("did you mean `{c}`?")),
                    None => d,
                }
            })
        }
        ExprKind::Neg(inner) => match eval_const(inner, env)? {
            Const::Int(v) => Ok(Const::Int(-v)),
            Const::Float(v) => Ok(Const::Float(-v)),
            Const::Bool(_) => Err(Diagnostic::at(expr.span, "cannot negate a bool", "a bool")),
        },
        ExprKind::Binary { op, lhs, rhs } => {
            let (a, b) = (eval_const(lhs, env)?, eval_const(rhs, env)?);
            arith(*op, a, b, expr.span)
        }
        ExprKind::Call { func, args }
            if matches!(func.name.as_str(), "ceil" | "floor" | "min" | "max") =>
        {
            let vals = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => Err(Diagnostic::at(
                        n.span,
                        format!("`{func}` takes no named arguments"),
                        "unexpected",
                    )),
                    None => eval_const(&a.value, env),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let want = if matches!(func.name.as_str(), "ceil" | "floor") {
                1
            } else {
                2
            };
            if vals.len() != want {
                return Err(Diagnostic::at(
                    expr.span,
                    format!("`{func}` takes {want} argument(s), found {}", vals.len()),
                    "wrong number of arguments",
                ));
            }
            let nums = vals
                .iter()
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        Diagnostic::at(expr.span, format!("`{func}` of a bool"), "a bool")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let all_int = vals.iter().all(|v| matches!(v, Const::Int(_)));
            Ok(match func.name.as_str() {
                "ceil" => Const::Int(nums[0].ceil() as i64),
                "floor" => Const::Int(nums[0].floor() as i64),
                "min" if all_int => Const::Int(nums[0].min(nums[1]) as i64),
                "max" if all_int => Const::Int(nums[0].max(nums[1]) as i64),
                "min" => Const::Float(nums[0].min(nums[1])),
                _ => Const::Float(nums[0].max(nums[1])),
            })
        }
        _ => Err(Diagnostic::at(
            expr.span,
            format!("`{expr}` is not a constant"),
            "expected a number or param here",
        )),
    }
}

fn arith(op: BinOp, a: Const, b: Const, span: Span) -> Result<Const, Diagnostic> {
    let err = |msg: String| Diagnostic::at(span, msg, "in this expression");
    match (a, b) {
        (Const::Int(x), Const::Int(y)) => {
            let r = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                BinOp::Div | BinOp::Rem if y == 0 => return Err(err("division by zero".into())),
                BinOp::Div if x % y != 0 => {
                    return Err(err(format!("{x} / {y} is not a whole number")).with_help(
                        "integer params divide exactly; write floor(...) or ceil(...) to round",
                    ))
                }
                BinOp::Div => Some(x / y),
                BinOp::Rem => Some(x % y),
            };
            r.map(Const::Int)
                .ok_or_else(|| err(format!("{x} {op} {y} overflows")))
        }
        (Const::Bool(_), _) | (_, Const::Bool(_)) => {
            Err(err(format!("cannot apply `{op}` to a bool")))
        }
        _ => {
            let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            Ok(Const::Float(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
                BinOp::Rem => x % y,
            }))
        }
    }
}
