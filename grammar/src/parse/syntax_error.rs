//! A pest failure as a [`ParseError`] that says, in words, what was expected
//! where: rule names become phrases ("an expression", "a dtype"), literal tokens
//! are quoted, and an unterminated string or comment points at its start.

use super::{ParseError, Rule};
use crate::ast::Span;
use pest::error::{ErrorVariant, InputLocation};

pub(super) fn syntax_error(source: &str, err: pest::error::Error<Rule>) -> ParseError {
    let (start, end) = match err.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    // Point at the whole offending token when there is one, so the snippet underlines it.
    let end = if end > start {
        end
    } else {
        start + token_len(&source[start.min(source.len())..])
    };
    let rest = &source[start.min(source.len())..];
    if let Some(e) = unterminated(rest, start) {
        return e;
    }
    let found = describe_found(rest);
    let literals: Vec<String> = err
        .parse_attempts()
        .map(|a| a.expected_tokens())
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.to_string())
        .filter(|t| is_punctuation(t))
        .map(|t| format!("`{t}`"))
        .collect();
    let (message, label) = match err.variant {
        ErrorVariant::ParsingError {
            positives,
            negatives,
        } => {
            let mut wanted: Vec<&str> = positives.iter().map(|r| rule_name(*r)).collect();
            // Indexing is one of the operators that may follow an operand: no `[` of its own.
            let indexing = positives.contains(&Rule::index);
            wanted.extend(
                literals
                    .iter()
                    .map(String::as_str)
                    .filter(|l| !(indexing && *l == "`[`")),
            );
            wanted.sort_unstable();
            wanted.dedup();
            if wanted.is_empty() && !negatives.is_empty() {
                let not: Vec<&str> = negatives.iter().map(|r| rule_name(*r)).collect();
                (
                    format!("unexpected {}", not.join(" or ")),
                    format!("{} is not allowed here", not.join(" or ")),
                )
            } else {
                let list = join_or(&wanted);
                (
                    format!("expected {list}, found {found}"),
                    format!("expected {list}"),
                )
            }
        }
        // The parser's step budget (`parse::STEP_LIMIT`) or its stack guard ran out.
        ErrorVariant::CustomError { message } if message.ends_with("limit reached") => (
            format!(
                "the spec is too deeply nested or too long to parse (the parser stopped after {} steps here)",
                super::STEP_LIMIT
            ),
            "the parser stopped here".to_string(),
        ),
        ErrorVariant::CustomError { message } => (message.clone(), message),
    };
    ParseError {
        span: Span::new(start, end),
        message,
        label,
    }
}

/// A `/*` or `"` at the error position that is never closed: pest only says what it
/// expected before it, so name the real problem.
fn unterminated(rest: &str, start: usize) -> Option<ParseError> {
    if rest.starts_with("/*") && !rest.contains("*/") {
        return Some(ParseError {
            span: Span::new(start, start + 2),
            message: "unclosed block comment".into(),
            label: "this `/*` has no matching `*/`".into(),
        });
    }
    let line = rest.strip_prefix('"')?.split('\n').next().unwrap_or("");
    (!line.contains('"')).then(|| ParseError {
        span: Span::new(start, start + 1),
        message: "unterminated string".into(),
        label: "this string has no closing `\"` on its line".into(),
    })
}

/// Literal tokens worth naming in "expected ..." (not whitespace or comment openers).
fn is_punctuation(token: &str) -> bool {
    matches!(
        token,
        "{" | "}" | "(" | ")" | "[" | "]" | "," | "=" | ":" | "->" | "."
    )
}

fn token_len(rest: &str) -> usize {
    let mut chars = rest.chars();
    match chars.next() {
        None => 0,
        Some(c) if c.is_alphanumeric() || c == '_' => rest
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map_or(rest.len(), |(i, _)| i),
        Some(c) => c.len_utf8(),
    }
}

fn describe_found(rest: &str) -> String {
    let n = token_len(rest);
    if n == 0 {
        "end of file".to_string()
    } else {
        format!("`{}`", &rest[..n])
    }
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => "something else".to_string(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// The words a user sees for a grammar rule in "expected ..." messages.
fn rule_name(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::ident => "a name",
        Rule::keyword => "a keyword",
        Rule::model => "`model NAME { ... }`",
        Rule::param => "`param`",
        Rule::param_from => "`from \"config.field\"`",
        Rule::input => "`input`",
        Rule::expert => "`expert`",
        Rule::router => "`router`",
        Rule::rotary => "`rotary`",
        Rule::weights => "`weights`",
        Rule::repeat => "`repeat`",
        Rule::let_stmt => "`let`",
        Rule::assign => "an assignment",
        Rule::output => "`output`",
        Rule::if_stmt | Rule::if_word => "`if`",
        Rule::block => "`{`",
        Rule::return_stmt => "`return`",
        Rule::dtype => "a dtype (f32, f16, bf16 or i32)",
        Rule::shape => "a shape like `[tokens, hidden_size]`",
        Rule::signature => "`(NAME: [dims])`",
        Rule::field => "a router field `name = value`",
        Rule::binding => "a binding `key = \"tensor.name\"`",
        Rule::key | Rule::key_segment => "a weight key",
        Rule::string | Rule::string_body => "a string in double quotes",
        Rule::transposed => "`transposed`",
        Rule::columns => "`columns(start, step)`",
        Rule::rows => "`rows(start, step)`",
        Rule::expr
        | Rule::call
        | Rule::list
        | Rule::path
        | Rule::number
        | Rule::boolean
        | Rule::if_expr => "an expression",
        Rule::arg | Rule::arg_name => "an argument",
        Rule::add
        | Rule::sub
        | Rule::mul
        | Rule::div
        | Rule::rem
        | Rule::eq
        | Rule::ne
        | Rule::lt
        | Rule::le
        | Rule::gt
        | Rule::ge
        | Rule::and
        | Rule::or => "an operator",
        Rule::index | Rule::postfix => "an operator",
        Rule::neg => "`-`",
        Rule::not => "`not`",
        Rule::item => {
            "a declaration (param, input, expert, router, let, output, repeat or weights)"
        }
        Rule::statement => "a statement (let, output, if or an assignment)",
        Rule::infix => "an operator",
        Rule::prefix | Rule::primary => "an expression",
        Rule::spec | Rule::WHITESPACE | Rule::COMMENT => "a model",
        Rule::expr_text => "an expression",
    }
}
