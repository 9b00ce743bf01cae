//! Compile-time constants: the values params, the repeat variable and constant
//! expressions have (numbers, bools, strings, lists), and the evaluation of
//! constant expressions (`4 * hidden_size`, `ceil(x / 2)`, `layer < k`,
//! `layer_types[layer] == "full_attention"`, `if c then a else b`).

use crate::diagnostic::Diagnostic;
use moec_grammar::ast::{Arg, BinOp, Expr, ExprKind, Ident};
use moec_grammar::Span;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// Elements of one kind (see [`Const::list`]).
    List(Vec<Const>),
}

impl fmt::Display for Const {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Const::Int(v) => write!(f, "{v}"),
            Const::Float(v) => write!(f, "{v:?}"),
            Const::Bool(v) => write!(f, "{v}"),
            Const::Str(v) => write!(f, "\"{v}\""),
            Const::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl Const {
    pub fn kind(&self) -> &'static str {
        match self {
            Const::Int(_) => "an integer",
            Const::Float(_) => "a number",
            Const::Bool(_) => "a bool",
            Const::Str(_) => "a string",
            Const::List(_) => "a list",
        }
    }
    /// The kind, with a list's element kind: `a list of strings`.
    pub fn type_name(&self) -> String {
        let plural = |c: &Const| match c {
            Const::Int(_) => "integers",
            Const::Float(_) => "numbers",
            Const::Bool(_) => "bools",
            Const::Str(_) => "strings",
            Const::List(_) => "lists",
        };
        match self {
            Const::List(items) => match items.first() {
                Some(first) => format!("a list of {}", plural(first)),
                None => "an empty list".to_string(),
            },
            other => other.kind().to_string(),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Const::Int(v) => Some(v as f64),
            Const::Float(v) => Some(v),
            _ => None,
        }
    }
    /// A list of these elements: all of one kind, except that integers among numbers
    /// become numbers. `Err(i)`: element `i` differs from those before it.
    pub fn list(mut items: Vec<Const>) -> Result<Const, usize> {
        if items.iter().any(|c| matches!(c, Const::Float(_)))
            && items
                .iter()
                .all(|c| matches!(c, Const::Int(_) | Const::Float(_)))
        {
            for c in &mut items {
                if let Const::Int(v) = *c {
                    *c = Const::Float(v as f64);
                }
            }
        }
        match items
            .iter()
            .position(|c| std::mem::discriminant(c) != std::mem::discriminant(&items[0]))
        {
            Some(i) => Err(i),
            None => Ok(Const::List(items)),
        }
    }
    /// `value` as a value of this one's type (an integer is fine for a number, any list
    /// for an empty one), or `None` if it has another type.
    pub fn conform(&self, value: Const) -> Option<Const> {
        match (self, value) {
            (Const::Float(_), Const::Int(v)) => Some(Const::Float(v as f64)),
            (Const::List(want), Const::List(items)) => match want.first() {
                None => Some(Const::List(items)),
                Some(first) => items
                    .into_iter()
                    .map(|item| first.conform(item))
                    .collect::<Option<Vec<_>>>()
                    .map(Const::List),
            },
            (want, v) if std::mem::discriminant(want) == std::mem::discriminant(&v) => Some(v),
            _ => None,
        }
    }
}

/// The functions a constant expression may call.
pub const FUNCTIONS: &[&str] = &[
    "ceil", "floor", "min", "max", "clamp", "ln", "sqrt", "len", "contains",
];

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

/// Evaluates an expression that must be a compile-time constant. `and`, `or` and
/// `if ... then ... else` evaluate only the operands that decide the result, so
/// `i < len(l) and l[i] == "x"` is fine for any `i`.
pub fn eval_const(expr: &Expr, env: &HashMap<String, Const>) -> Result<Const, Diagnostic> {
    match &expr.kind {
        ExprKind::Int(v) => Ok(Const::Int(*v)),
        ExprKind::Float(v) => Ok(Const::Float(*v)),
        ExprKind::Bool(v) => Ok(Const::Bool(*v)),
        ExprKind::Str(v) => Ok(Const::Str(v.clone())),
        ExprKind::Path(parts) if parts.len() == 1 => {
            env.get(&parts[0].name).cloned().ok_or_else(|| {
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
        ExprKind::List(items) => {
            let values = items
                .iter()
                .map(|i| eval_const(i, env))
                .collect::<Result<Vec<_>, _>>()?;
            let kinds: Vec<&str> = values.iter().map(Const::kind).collect();
            Const::list(values).map_err(|i| {
                Diagnostic::at(
                    items[i].span,
                    format!(
                        "a list holds values of one type: this is {}, the first is {}",
                        kinds[i], kinds[0]
                    ),
                    kinds[i],
                )
                .with_related(items[0].span, kinds[0])
            })
        }
        ExprKind::Neg(inner) => match eval_const(inner, env)? {
            Const::Int(v) => v
                .checked_neg()
                .map(Const::Int)
                .ok_or_else(|| Diagnostic::at(expr.span, format!("-({v}) overflows"), "here")),
            Const::Float(v) => Ok(Const::Float(-v)),
            other => Err(Diagnostic::at(
                expr.span,
                format!("cannot negate {}", other.kind()),
                other.kind(),
            )),
        },
        ExprKind::Not(inner) => Ok(Const::Bool(!eval_bool(inner, env, "`not`")?)),
        ExprKind::Binary { op, lhs, rhs } if op.is_logical() => {
            let what = format!("`{op}`");
            let l = eval_bool(lhs, env, &what)?;
            // The right operand decides only when the left one does not.
            Ok(Const::Bool(match (op, l) {
                (BinOp::And, false) => false,
                (BinOp::Or, true) => true,
                _ => eval_bool(rhs, env, &what)?,
            }))
        }
        ExprKind::Binary { op, lhs, rhs } => {
            let (a, b) = (eval_const(lhs, env)?, eval_const(rhs, env)?);
            if op.is_comparison() {
                compare(*op, a, b, expr.span)
            } else {
                arith(*op, a, b, expr.span)
            }
        }
        ExprKind::Index { base, index } => {
            let list = match eval_const(base, env)? {
                Const::List(items) => items,
                other => {
                    return Err(Diagnostic::at(
                        base.span,
                        format!("only lists can be indexed; `{base}` is {}", other.kind()),
                        format!("{other}"),
                    ))
                }
            };
            let i = match eval_const(index, env)? {
                Const::Int(i) => i,
                other => {
                    return Err(Diagnostic::at(
                        index.span,
                        format!(
                            "a list index must be an integer, `{index}` is {}",
                            other.kind()
                        ),
                        format!("{other}"),
                    ))
                }
            };
            usize::try_from(i)
                .ok()
                .and_then(|u| list.get(u).cloned())
                .ok_or_else(|| {
                    Diagnostic::at(
                        index.span,
                        format!(
                            "index {i} is out of range: `{base}` has {} element(s)",
                            list.len()
                        ),
                        format!("index {i}"),
                    )
                    .with_related(base.span, format!("length {}", list.len()))
                })
        }
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => {
            if eval_bool(cond, env, "an `if` condition")? {
                eval_const(then, env)
            } else {
                eval_const(otherwise, env)
            }
        }
        ExprKind::Call { func, args } if FUNCTIONS.contains(&func.name.as_str()) => {
            call(expr, func, args, env)
        }
        _ => Err(Diagnostic::at(
            expr.span,
            format!("`{expr}` is not a constant"),
            "expected a number or param here",
        )),
    }
}

/// Evaluates a constant that must be a bool: `what` (an `if` condition, the operand
/// of `and`) says what it is in the error.
pub fn eval_bool(e: &Expr, env: &HashMap<String, Const>, what: &str) -> Result<bool, Diagnostic> {
    match eval_const(e, env)? {
        Const::Bool(b) => Ok(b),
        other => Err(Diagnostic::at(
            e.span,
            format!("{what} must be a bool, `{e}` is {}", other.kind()),
            format!("is {other}"),
        )
        .with_help("compare it to get a bool: `==`, `!=`, `<`, `<=`, `>`, `>=`")),
    }
}

/// `ceil(x)`, `floor(x)`, `min(a, b)`, `max(a, b)`, `clamp(x, lo, hi)`, `ln(x)` (x > 0),
/// `sqrt(x)` (x ≥ 0), `len(list)`, `contains(list, x)`.
fn call(
    expr: &Expr,
    func: &Ident,
    args: &[Arg],
    env: &HashMap<String, Const>,
) -> Result<Const, Diagnostic> {
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
    let want = match func.name.as_str() {
        "min" | "max" | "contains" => 2,
        "clamp" => 3,
        _ => 1,
    };
    if vals.len() != want {
        return Err(Diagnostic::at(
            expr.span,
            format!("`{func}` takes {want} argument(s), found {}", vals.len()),
            "wrong number of arguments",
        ));
    }
    if func.name == "contains" {
        // `contains(list, x)`: whether an element equals x (as `==` compares them).
        return match &vals[0] {
            Const::List(items) => {
                let mut found = false;
                for item in items {
                    found |= compare(BinOp::Eq, item.clone(), vals[1].clone(), expr.span)?
                        == Const::Bool(true);
                }
                Ok(Const::Bool(found))
            }
            other => Err(Diagnostic::at(
                args[0].value.span,
                format!(
                    "`contains` takes a list first, `{}` is {}",
                    args[0].value,
                    other.kind()
                ),
                format!("{other}"),
            )),
        };
    }
    if func.name == "len" {
        return match &vals[0] {
            Const::List(items) => Ok(Const::Int(items.len() as i64)),
            other => Err(Diagnostic::at(
                args[0].value.span,
                format!(
                    "`len` takes a list, `{}` is {}",
                    args[0].value,
                    other.kind()
                ),
                format!("{other}"),
            )),
        };
    }
    let nums = vals
        .iter()
        .map(|v| {
            v.as_f64().ok_or_else(|| {
                Diagnostic::at(expr.span, format!("`{func}` of {}", v.kind()), v.kind())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let all_int = vals.iter().all(|v| matches!(v, Const::Int(_)));
    let int = |i: usize| match vals[i] {
        Const::Int(v) => v,
        _ => 0,
    };
    let domain = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(Diagnostic::at(
                expr.span,
                format!("`{func}` of {} is not defined", vals[0]),
                format!("{func} takes {what}"),
            ))
        }
    };
    Ok(match func.name.as_str() {
        "ln" => {
            domain(nums[0] > 0.0, "a positive number")?;
            Const::Float(nums[0].ln())
        }
        "sqrt" => {
            domain(nums[0] >= 0.0, "a number ≥ 0")?;
            Const::Float(nums[0].sqrt())
        }
        "ceil" | "floor" if all_int => Const::Int(int(0)),
        "ceil" | "floor" => {
            let v = if func.name == "ceil" {
                nums[0].ceil()
            } else {
                nums[0].floor()
            };
            // i64::MAX as f64 rounds up to 2^63, which is out of range.
            if !(-(2f64.powi(63))..2f64.powi(63)).contains(&v) {
                return Err(Diagnostic::at(
                    expr.span,
                    format!("`{func}` of {} is not a 64-bit integer", vals[0]),
                    "out of range",
                ));
            }
            Const::Int(v as i64)
        }
        // Integers compare as integers: past 2^53 an f64 would round them.
        "min" if all_int => Const::Int(int(0).min(int(1))),
        "max" if all_int => Const::Int(int(0).max(int(1))),
        "min" => Const::Float(nums[0].min(nums[1])),
        "max" => Const::Float(nums[0].max(nums[1])),
        "clamp" if (all_int && int(1) > int(2)) || nums[1] > nums[2] => {
            return Err(Diagnostic::at(
                args[1].value.span,
                format!(
                    "clamp's lower bound {} is above its upper bound {}",
                    vals[1], vals[2]
                ),
                "lower bound",
            )
            .with_related(args[2].value.span, "upper bound")
            .with_help("write `clamp(x, min, max)` with min ≤ max"))
        }
        "clamp" if all_int => Const::Int(int(0).clamp(int(1), int(2))),
        _ => Const::Float(nums[0].max(nums[1]).min(nums[2])),
    })
}

/// `== != < <= > >=`: numbers with numbers (an integer equals the same number), and
/// `==`/`!=` between two strings or two bools.
fn compare(op: BinOp, a: Const, b: Const, span: Span) -> Result<Const, Diagnostic> {
    let ordering = match (&a, &b) {
        (Const::Int(x), Const::Int(y)) => Some(x.cmp(y)),
        (Const::Str(x), Const::Str(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => Some(x.cmp(y)),
        (Const::Bool(x), Const::Bool(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => Some(x.cmp(y)),
        (Const::Str(_), Const::Str(_)) | (Const::Bool(_), Const::Bool(_)) => {
            return Err(Diagnostic::at(
                span,
                format!(
                    "`{op}` compares numbers; {} only compare with `==` and `!=`",
                    plural(&a)
                ),
                "in this comparison",
            ))
        }
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => {
                return Err(Diagnostic::at(
                    span,
                    format!("cannot compare {} with {}", a.kind(), b.kind()),
                    "in this comparison",
                ))
            }
        },
    };
    // NaN compares unequal to everything.
    let holds = match ordering {
        None => op == BinOp::Ne,
        Some(o) => match op {
            BinOp::Eq => o == Ordering::Equal,
            BinOp::Ne => o != Ordering::Equal,
            BinOp::Lt => o == Ordering::Less,
            BinOp::Le => o != Ordering::Greater,
            BinOp::Gt => o == Ordering::Greater,
            _ => o != Ordering::Less,
        },
    };
    Ok(Const::Bool(holds))
}

fn plural(c: &Const) -> &'static str {
    match c {
        Const::Str(_) => "strings",
        _ => "bools",
    }
}

/// `+ - * / %` on numbers.
fn arith(op: BinOp, a: Const, b: Const, span: Span) -> Result<Const, Diagnostic> {
    let err = |msg: String| Diagnostic::at(span, msg, "in this expression");
    match (a, b) {
        (Const::Int(x), Const::Int(y)) => {
            let r = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                BinOp::Div | BinOp::Rem if y == 0 => return Err(err("division by zero".into())),
                BinOp::Div if x.wrapping_rem(y) != 0 => {
                    return Err(err(format!("{x} / {y} is not a whole number")).with_help(
                        "integer params divide exactly; write floor(...) or ceil(...) to round",
                    ))
                }
                BinOp::Div => x.checked_div(y),
                _ => x.checked_rem(y),
            };
            r.map(Const::Int)
                .ok_or_else(|| err(format!("{x} {op} {y} overflows")))
        }
        (a, b) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => finite(
                match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div => x / y,
                    _ => x % y,
                },
                span,
                || format!("{x:?} {op} {y:?} is not a finite number"),
            ),
            _ => {
                let odd = if a.as_f64().is_none() { &a } else { &b };
                Err(err(format!("cannot apply `{op}` to {}", odd.kind())))
            }
        },
    }
}

/// `v` as a constant, or an error at `span` when it is infinite or NaN: a number
/// too large for f64 is an input error, never `inf`.
fn finite(v: f64, span: Span, what: impl FnOnce() -> String) -> Result<Const, Diagnostic> {
    if v.is_finite() {
        Ok(Const::Float(v))
    } else {
        Err(Diagnostic::at(span, what(), "not a finite number")
            .with_help("numbers must be finite (an f64 reaches about 1.8e308)"))
    }
}
