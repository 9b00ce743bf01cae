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

/// Evaluates params in declaration order, applying overrides in place of defaults.
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
    for p in params {
        let default = eval_const(&p.value, &env)?;
        let value = match overrides.iter().rev().find(|(n, _)| *n == p.name.name) {
            None => default,
            Some((_, text)) => {
                let v = parse_override(text).ok_or_else(|| {
                    Diagnostic::error(format!(
                        "--set {}={text}: `{text}` is not a number or bool",
                        p.name
                    ))
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
