//! Text to AST: runs the pest grammar and builds [`crate::ast`] nodes from its
//! pairs. Binary operators get their precedence from a Pratt parser. A syntax
//! error becomes a [`ParseError`] that says what was expected, in words.

mod syntax_error;

use crate::ast::*;
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use std::sync::OnceLock;
use syntax_error::syntax_error;

#[derive(pest_derive::Parser)]
#[grammar = "moe.pest"]
struct MoeParser;

/// A syntax error: where, and what the parser expected there.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub span: Span,
    pub message: String,
    pub label: String,
}

/// The most rule calls one parse may make (pest's call limit): every spec this
/// project ships takes a few hundred thousand; a grammar path that backtracks badly
/// on some malformed text stops with an error instead of running for minutes.
pub const STEP_LIMIT: usize = 20_000_000;

/// The parser's process-wide settings, before every parse.
fn configure_pest() {
    // Record the literal tokens tried at the failure point too (`}`, `)`, `=`), not only rules.
    pest::set_error_detail(true);
    pest::set_call_limit(std::num::NonZeroUsize::new(STEP_LIMIT));
}

/// Parses a whole `.moe` file.
pub fn parse(source: &str) -> Result<Spec, ParseError> {
    configure_pest();
    let mut pairs = MoeParser::parse(Rule::spec, source).map_err(|e| syntax_error(source, e))?;
    let spec = pairs.next().expect("the spec rule always yields one pair");
    let model = spec.into_inner().next().expect("a spec holds a model");
    build_model(model)
}

/// Parses one expression, such as a `--set` value written in spec syntax (`[1, 2]`).
pub fn parse_expr(source: &str) -> Result<Expr, ParseError> {
    configure_pest();
    let mut pairs =
        MoeParser::parse(Rule::expr_text, source).map_err(|e| syntax_error(source, e))?;
    let text = pairs
        .next()
        .expect("the expr_text rule always yields one pair");
    build_expr(text.into_inner().next().expect("an expression"))
}

fn span_of(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    Span::new(s.start(), s.end())
}

fn ident(pair: Pair<Rule>) -> Ident {
    debug_assert!(matches!(pair.as_rule(), Rule::ident | Rule::arg_name));
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(&pair),
    }
}

fn build_model(pair: Pair<Rule>) -> Result<Spec, ParseError> {
    let mut inner = pair.into_inner();
    let name = ident(inner.next().expect("model name"));
    let mut items = Vec::new();
    for p in inner {
        items.push(match p.as_rule() {
            Rule::param => Item::Param(build_param(p)?),
            Rule::input => Item::Input(build_input(p)?),
            Rule::expert => Item::Expert(build_expert(p)?),
            Rule::router => Item::Router(build_router(p)?),
            Rule::rotary => Item::Rotary(build_rotary(p)?),
            Rule::weights => Item::Weights(build_weights(p)?),
            Rule::repeat => Item::Repeat(build_repeat(p)?),
            _ => Item::Stmt(build_stmt(p, 0)?),
        });
    }
    Ok(Spec { name, items })
}

fn build_param(pair: Pair<Rule>) -> Result<Param, ParseError> {
    let mut inner = pair.into_inner();
    let name = ident(inner.next().expect("param name"));
    let value = build_expr(inner.next().expect("param value"))?;
    let from = inner
        .next()
        .map_or_else(Vec::new, |f| f.into_inner().map(string_lit).collect());
    Ok(Param { name, value, from })
}

fn dtype_name(pair: &Pair<Rule>) -> DTypeName {
    match pair.as_str() {
        "f32" => DTypeName::F32,
        "f16" => DTypeName::F16,
        "i32" => DTypeName::I32,
        _ => DTypeName::BF16,
    }
}

fn build_input(pair: Pair<Rule>) -> Result<Input, ParseError> {
    let mut inner = pair.into_inner();
    let name = ident(inner.next().expect("input name"));
    let d = inner.next().expect("input dtype");
    let (dtype, dtype_span) = (dtype_name(&d), span_of(&d));
    let shape = build_shape(inner.next().expect("input shape"))?;
    Ok(Input {
        name,
        dtype,
        dtype_span,
        shape,
    })
}

fn build_shape(pair: Pair<Rule>) -> Result<Shape, ParseError> {
    let span = span_of(&pair);
    let dims = pair
        .into_inner()
        .map(build_expr)
        .collect::<Result<_, _>>()?;
    Ok(Shape { dims, span })
}

fn build_signature(pair: Pair<Rule>) -> Result<Signature, ParseError> {
    let mut inner = pair.into_inner();
    let arg = ident(inner.next().expect("signature arg"));
    let shape = build_shape(inner.next().expect("signature shape"))?;
    Ok(Signature { arg, shape })
}

fn build_let(pair: Pair<Rule>) -> Result<Let, ParseError> {
    let mut inner = pair.into_inner();
    let name = ident(inner.next().expect("let name"));
    let value = build_expr(inner.next().expect("let value"))?;
    Ok(Let { name, value })
}

fn build_expert(pair: Pair<Rule>) -> Result<Expert, ParseError> {
    let mut inner = pair.into_inner();
    let name = ident(inner.next().expect("expert name"));
    let signature = build_signature(inner.next().expect("expert signature"))?;
    let result = build_shape(inner.next().expect("expert result shape"))?;
    let mut body = Vec::new();
    let mut result_expr = None;
    for p in inner {
        match p.as_rule() {
            Rule::let_stmt => body.push(build_let(p)?),
            _ => result_expr = Some(build_expr(p.into_inner().next().expect("return value"))?),
        }
    }
    let result_expr = result_expr.expect("the grammar requires a return");
    Ok(Expert {
        name,
        signature,
        result,
        body,
        result_expr,
    })
}

fn build_router(pair: Pair<Rule>) -> Result<Router, ParseError> {
    let mut inner = pair.into_inner();
    let name = ident(inner.next().expect("router name"));
    let signature = build_signature(inner.next().expect("router signature"))?;
    Ok(Router {
        name,
        signature,
        fields: build_fields(inner)?,
    })
}

fn build_rotary(pair: Pair<Rule>) -> Result<Rotary, ParseError> {
    let mut inner = pair.into_inner();
    let name = ident(inner.next().expect("rotary name"));
    Ok(Rotary {
        name,
        fields: build_fields(inner)?,
    })
}

/// `name = value` fields of a router or rotary block.
fn build_fields(pairs: Pairs<Rule>) -> Result<Vec<Field>, ParseError> {
    pairs
        .map(|f| {
            let mut fi = f.into_inner();
            let name = ident(fi.next().expect("field name"));
            Ok(Field {
                name,
                value: build_expr(fi.next().expect("field value"))?,
            })
        })
        .collect()
}

fn build_repeat(pair: Pair<Rule>) -> Result<Repeat, ParseError> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let var = ident(inner.next().expect("repeat variable"));
    let count = build_expr(inner.next().expect("repeat count"))?;
    let body = inner.map(|s| build_stmt(s, 0)).collect::<Result<_, _>>()?;
    Ok(Repeat {
        var,
        count,
        body,
        span,
    })
}

/// How deep `if` statements may nest (every later stage walks them recursively).
const MAX_BLOCK_DEPTH: usize = 64;

/// A statement inside `depth` enclosing `if` blocks.
fn build_stmt(pair: Pair<Rule>, depth: usize) -> Result<Stmt, ParseError> {
    Ok(match pair.as_rule() {
        Rule::let_stmt => Stmt::Let(build_let(pair)?),
        Rule::assign => Stmt::Assign(build_let(pair)?),
        Rule::if_stmt => Stmt::If(build_if(pair, depth)?),
        _ => {
            let mut inner = pair.into_inner();
            let name = ident(inner.next().expect("output name"));
            let value = inner.next().map(build_expr).transpose()?;
            Stmt::Output { name, value }
        }
    })
}

/// `if C { ... } else if C { ... } else { ... }`: conditions each followed by their
/// block, then maybe a lone `else` block.
fn build_if(pair: Pair<Rule>, depth: usize) -> Result<If, ParseError> {
    let mut branches = Vec::new();
    let mut otherwise = Vec::new();
    let mut inner = pair.into_inner();
    while let Some(p) = inner.next() {
        if p.as_rule() == Rule::expr {
            let cond = build_expr(p)?;
            let block = inner.next().expect("a block follows each condition");
            branches.push(Branch {
                cond,
                body: build_block(block, depth)?,
            });
        } else {
            otherwise = build_block(p, depth)?;
        }
    }
    Ok(If {
        branches,
        otherwise,
    })
}

fn build_block(pair: Pair<Rule>, depth: usize) -> Result<Vec<Stmt>, ParseError> {
    if depth >= MAX_BLOCK_DEPTH {
        let start = pair.as_span().start();
        return Err(ParseError {
            span: Span::new(start, start + 1),
            message: format!(
                "`if` statements nested too deeply (more than {MAX_BLOCK_DEPTH} levels)"
            ),
            label: "too deep".into(),
        });
    }
    pair.into_inner()
        .map(|s| build_stmt(s, depth + 1))
        .collect()
}

fn string_lit(pair: Pair<Rule>) -> StringLit {
    let span = span_of(&pair);
    let body = pair.into_inner().next().expect("string body");
    StringLit {
        value: body.as_str().to_string(),
        span,
    }
}

fn build_weights(pair: Pair<Rule>) -> Result<Weights, ParseError> {
    let span = span_of(&pair);
    let mut w = Weights {
        prefix: None,
        dtype: None,
        bindings: Vec::new(),
        span,
    };
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::string => w.prefix = Some(string_lit(p)),
            Rule::dtype => w.dtype = Some((dtype_name(&p), span_of(&p))),
            _ => w.bindings.push(build_binding(p)?),
        }
    }
    Ok(w)
}

fn build_binding(pair: Pair<Rule>) -> Result<Binding, ParseError> {
    let mut inner = pair.into_inner();
    let key_pair = inner.next().expect("binding key");
    let (key_start, key_text) = (key_pair.as_span().start(), key_pair.as_str());
    let segments: Vec<KeySegment> = key_pair
        .into_inner()
        .map(|seg| {
            let mut si = seg.into_inner();
            let name = ident(si.next().expect("key segment name"));
            KeySegment {
                name,
                index: si.next().map(ident),
            }
        })
        .collect();
    // The pair's span runs on over the whitespace after the key; end it at the key's last
    // character (the last name, or the `]` after its index).
    let last = segments.last().expect("a key has a segment");
    let key_end = match &last.index {
        Some(ix) => {
            let after = &key_text[ix.span.end - key_start..];
            ix.span.end + after.find(']').map_or(0, |i| i + 1)
        }
        None => last.name.span.end,
    };
    let key_span = Span::new(key_start, key_end);
    let tensor = string_lit(inner.next().expect("binding tensor"));
    let mut transposed = false;
    let (mut rows, mut columns) = (None, None);
    for p in inner {
        let rule = p.as_rule();
        if rule == Rule::transposed {
            transposed = true;
            continue;
        }
        let span = span_of(&p);
        let mut args = p.into_inner();
        let stride = Some(Stride {
            start: build_expr(args.next().expect("stride start"))?,
            step: build_expr(args.next().expect("stride step"))?,
            span,
        });
        if rule == Rule::rows {
            rows = stride;
        } else {
            columns = stride;
        }
    }
    Ok(Binding {
        key: Key {
            segments,
            span: key_span,
        },
        tensor,
        transposed,
        rows,
        columns,
    })
}

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        // Lowest first: `or`, `and`, `not`, comparisons, `+ -`, `* / %`, `-x`, `x[i]`.
        PrattParser::new()
            .op(Op::infix(Rule::or, Assoc::Left))
            .op(Op::infix(Rule::and, Assoc::Left))
            .op(Op::prefix(Rule::not))
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::rem, Assoc::Left))
            .op(Op::prefix(Rule::neg))
            .op(Op::postfix(Rule::index))
    })
}

/// How deep an expression tree may be: every later stage walks it recursively, so an
/// absurd input (a million `-` or `(`) must be refused here, not overflow a stack.
const MAX_EXPR_DEPTH: usize = 256;

fn build_expr(pair: Pair<Rule>) -> Result<Expr, ParseError> {
    build_expr_at(pair, 0)
}

/// An expression `depth` levels below the top one. Its own operators and operands add at
/// most their count to the tree's depth.
fn build_expr_at(pair: Pair<Rule>, depth: usize) -> Result<Expr, ParseError> {
    debug_assert_eq!(pair.as_rule(), Rule::expr);
    let depth = depth + pair.clone().into_inner().count();
    if depth > MAX_EXPR_DEPTH {
        // Point at where the expression starts: the whole of it may be very long.
        let start = pair.as_span().start();
        let first = pair.as_str().chars().next().map_or(0, char::len_utf8);
        return Err(ParseError {
            span: Span::new(start, start + first),
            message: format!(
                "expression too long or nested too deeply (more than {MAX_EXPR_DEPTH} levels)"
            ),
            label: "split this expression with `let` or params".into(),
        });
    }
    pratt()
        .map_primary(|p| build_primary(p, depth))
        .map_prefix(|op, rhs| {
            let rhs = Box::new(rhs?);
            let span = span_of(&op).to(rhs.span);
            let kind = match op.as_rule() {
                Rule::not => ExprKind::Not(rhs),
                _ => ExprKind::Neg(rhs),
            };
            Ok(Expr { kind, span })
        })
        .map_postfix(move |base, op| {
            let base = Box::new(base?);
            let span = base.span.to(span_of(&op));
            let index = op.into_inner().next().expect("an index expression");
            Ok(Expr {
                kind: ExprKind::Index {
                    base,
                    index: Box::new(build_expr_at(index, depth)?),
                },
                span,
            })
        })
        .map_infix(|lhs, op, rhs| {
            let (lhs, rhs) = (lhs?, rhs?);
            let op = match op.as_rule() {
                Rule::add => BinOp::Add,
                Rule::sub => BinOp::Sub,
                Rule::mul => BinOp::Mul,
                Rule::div => BinOp::Div,
                Rule::rem => BinOp::Rem,
                Rule::eq => BinOp::Eq,
                Rule::ne => BinOp::Ne,
                Rule::lt => BinOp::Lt,
                Rule::le => BinOp::Le,
                Rule::gt => BinOp::Gt,
                Rule::ge => BinOp::Ge,
                Rule::and => BinOp::And,
                _ => BinOp::Or,
            };
            let span = lhs.span.to(rhs.span);
            Ok(Expr {
                kind: ExprKind::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
                span,
            })
        })
        .parse(pair.into_inner())
}

fn build_primary(pair: Pair<Rule>, depth: usize) -> Result<Expr, ParseError> {
    let mut span = span_of(&pair);
    let kind = match pair.as_rule() {
        Rule::expr => return build_expr_at(pair, depth),
        Rule::number => parse_number(pair.as_str(), span)?,
        Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
        Rule::string => ExprKind::Str(string_lit(pair).value),
        Rule::if_expr => {
            let mut inner = pair.into_inner();
            let mut next = || build_expr_at(inner.next().expect("if-expression part"), depth);
            let (cond, then, otherwise) = (next()?, next()?, next()?);
            span = Span::new(span.start, otherwise.span.end);
            ExprKind::If {
                cond: Box::new(cond),
                then: Box::new(then),
                otherwise: Box::new(otherwise),
            }
        }
        Rule::path => {
            let parts: Vec<Ident> = pair.into_inner().map(ident).collect();
            // The pair's span includes the whitespace after the path; the names do not.
            span = parts[0].span.to(parts[parts.len() - 1].span);
            ExprKind::Path(parts)
        }
        Rule::list => ExprKind::List(
            pair.into_inner()
                .map(|e| build_expr_at(e, depth))
                .collect::<Result<_, _>>()?,
        ),
        Rule::call => {
            let mut inner = pair.into_inner();
            let func = ident(inner.next().expect("call name"));
            let args = inner
                .map(|a| {
                    let mut ai = a.into_inner();
                    let first = ai.next().expect("argument");
                    Ok(match ai.next() {
                        Some(value) => Arg {
                            name: Some(ident(first)),
                            value: build_expr_at(value, depth)?,
                        },
                        None => Arg {
                            name: None,
                            value: build_expr_at(first, depth)?,
                        },
                    })
                })
                .collect::<Result<_, ParseError>>()?;
            ExprKind::Call { func, args }
        }
        other => unreachable!("not a primary: {other:?}"),
    };
    Ok(Expr { kind, span })
}

fn parse_number(text: &str, span: Span) -> Result<ExprKind, ParseError> {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let is_float = clean.contains(['.', 'e', 'E']);
    if is_float {
        let v = clean.parse::<f64>().map_err(|_| ParseError {
            span,
            message: format!("`{text}` is not a valid number"),
            label: "not a number".into(),
        })?;
        // A literal is never silently infinite, nor 0 when its digits are not.
        let mantissa = clean.split(['e', 'E']).next().unwrap_or("");
        let nonzero = mantissa.chars().any(|c| matches!(c, '1'..='9'));
        if v.is_infinite() || (v == 0.0 && nonzero) {
            let to = if v == 0.0 { "0" } else { "infinity" };
            return Err(ParseError {
                span,
                message: format!("the number `{text}` rounds to {to} as a 64-bit float"),
                label: "out of range".into(),
            });
        }
        Ok(ExprKind::Float(v))
    } else {
        clean
            .parse::<i64>()
            .map(ExprKind::Int)
            .map_err(|_| ParseError {
                span,
                message: format!("the integer `{text}` does not fit in 64 bits"),
                label: "too large".into(),
            })
    }
}
