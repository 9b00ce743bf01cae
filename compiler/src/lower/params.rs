//! Param values: each param's default, replaced by its checkpoint's config.json
//! field when there is one, replaced by `--set` when given; where each value came
//! from; and `model_type`, which a config must match and nothing replaces.

use super::consts::{closest, eval_const, Const};
use super::limits::Limits;
use crate::config::{to_const, HfConfig};
use crate::diagnostic::Diagnostic;
use moec_grammar::ast::{Expr, ExprKind, Ident, Param};
use std::collections::HashMap;

/// What decides params besides their defaults.
#[derive(Clone, Debug, Default)]
pub struct ParamInputs {
    /// `--set NAME=VALUE`, in order (a later one wins).
    pub sets: Vec<(String, String)>,
    /// The checkpoint's config.json.
    pub config: Option<HfConfig>,
    /// How much lowering may unroll.
    pub limits: Limits,
}

/// Where a param's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamSource {
    /// The spec's `param NAME = DEFAULT`.
    Default,
    /// config.json, at this dotted path (`text_config.hidden_size`).
    Config(String),
    /// `--set`.
    Set,
}

/// The param that names the checkpoints a spec is for.
const MODEL_TYPE: &str = "model_type";

/// Evaluates params in declaration order, each to its value and its source. A param
/// may read params declared after it (item order does not matter); each is evaluated
/// once the params it reads are, and a cycle is an error.
pub fn eval_params(
    params: &[&Param],
    inputs: &ParamInputs,
) -> Result<Vec<(String, Const, ParamSource)>, Diagnostic> {
    for (name, _) in &inputs.sets {
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
    let mut sources = HashMap::new();
    let mut pending: Vec<&Param> = params.to_vec();
    while !pending.is_empty() {
        let waiting = |p: &Param, env: &HashMap<String, Const>| {
            let mut names = Vec::new();
            free_names(&p.value, &mut names);
            names
                .iter()
                .any(|n| !env.contains_key(&n.name) && params.iter().any(|q| q.name.name == n.name))
        };
        let (ready, blocked): (Vec<&Param>, Vec<&Param>) =
            pending.iter().partition(|p| !waiting(p, &env));
        let Some(first) = ready.first() else {
            return Err(param_cycle(&blocked));
        };
        // One at a time, in declaration order, so errors come out in a stable order.
        let p = *first;
        pending.retain(|q| !std::ptr::eq(*q, p));
        check_paths(p)?;
        let default = eval_const(&p.value, &env)?;
        let (value, source) = if p.name.name == MODEL_TYPE {
            (model_type(p, default, inputs)?, ParamSource::Default)
        } else {
            // `--set` wins; the config is not even read for a param it sets.
            let set = inputs.sets.iter().rev().find(|(n, _)| *n == p.name.name);
            let configured = match (set, &inputs.config) {
                (None, Some(config)) => from_config(p, &default, config)?,
                _ => None,
            };
            match (set, configured) {
                (Some((_, text)), _) => (set_value(p, &default, text, &env)?, ParamSource::Set),
                (None, Some((value, path))) => (value, ParamSource::Config(path)),
                (None, None) => (default, ParamSource::Default),
            }
        };
        env.insert(p.name.name.clone(), value);
        sources.insert(p.name.name.clone(), source);
    }
    Ok(params
        .iter()
        .map(|p| {
            let name = &p.name.name;
            (name.clone(), env[name].clone(), sources[name].clone())
        })
        .collect())
}

/// `param model_type = "mixtral"`: a string that config.json's `model_type`, if any,
/// must equal; never replaced.
fn model_type(p: &Param, default: Const, inputs: &ParamInputs) -> Result<Const, Diagnostic> {
    let Const::Str(spec) = &default else {
        return Err(Diagnostic::at(
            p.value.span,
            format!(
                "`{MODEL_TYPE}` names a Hugging Face model type: a string, not {}",
                default.kind()
            ),
            format!("is {default}"),
        )
        .with_help(format!("write `param {MODEL_TYPE} = \"mixtral\"`")));
    };
    if inputs.sets.iter().any(|(n, _)| n == MODEL_TYPE) {
        return Err(Diagnostic::at(
            p.value.span,
            format!("--set {MODEL_TYPE}: `{MODEL_TYPE}` says which checkpoints the spec is for; it cannot be set"),
            "declared here",
        ));
    }
    if let Some(config) = &inputs.config {
        let checkpoint = config.model_type().unwrap_or(spec);
        if checkpoint != spec {
            return Err(Diagnostic::at(
                p.value.span,
                format!(
                    "{} is a `{checkpoint}` checkpoint, but this spec is for `{spec}`",
                    config.path().display()
                ),
                format!("this spec is for `{spec}`"),
            )
            .with_help(format!(
                "use a spec for `{checkpoint}`, or a `{spec}` checkpoint"
            )));
        }
    }
    Ok(default)
}

/// Every `from` path is names joined by `.`.
fn check_paths(p: &Param) -> Result<(), Diagnostic> {
    match p
        .from
        .iter()
        .find(|path| path.value.split('.').any(str::is_empty))
    {
        Some(path) => Err(Diagnostic::at(
            path.span,
            format!("`{}` is not a config.json path", path.value),
            "expected names joined by `.`",
        )
        .with_help("write `from \"rope_parameters.rope_theta\"`")),
        None => Ok(()),
    }
}

/// The param's value in config.json, with the path it was found at: the first of its
/// `from` paths (or its own name) that the config has and is not null.
fn from_config(
    p: &Param,
    default: &Const,
    config: &HfConfig,
) -> Result<Option<(Const, String)>, Diagnostic> {
    let own = [p.name.name.as_str()];
    let paths: Vec<&str> = if p.from.is_empty() {
        own.to_vec()
    } else {
        p.from.iter().map(|s| s.value.as_str()).collect()
    };
    let Some((path, json)) = paths.iter().find_map(|path| config.lookup(path)) else {
        return Ok(None);
    };
    let file = config.path().display();
    let shown = shorten(&json.to_string());
    let value = to_const(json).map_err(|what| {
        Diagnostic::at(
            p.value.span,
            format!("{file}: `{path}` is {what} ({shown}), which no param can take"),
            format!("declared as {} here", default.type_name()),
        )
    })?;
    let found = value.type_name();
    default
        .conform(value)
        .map(|v| Some((v, path.clone())))
        .ok_or_else(|| {
            Diagnostic::at(
                p.value.span,
                format!(
                    "{file}: `{path}` is {shown} ({found}), but param `{}` is {}",
                    p.name,
                    default.type_name()
                ),
                format!("declared as {} here", default.type_name()),
            )
        })
}

/// A JSON value short enough for one line of an error.
fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// A `--set` value for a param whose default is `default`: the raw text for a string,
/// `[a, b]` in spec syntax for a list, else a number or bool.
fn set_value(
    p: &Param,
    default: &Const,
    text: &str,
    env: &HashMap<String, Const>,
) -> Result<Const, Diagnostic> {
    let v = match default {
        Const::Str(_) => return Ok(Const::Str(text.to_string())),
        Const::List(_) => {
            let not_a_list = |why: String| {
                Diagnostic::at(
                    p.value.span,
                    format!("--set {}={text}: {why}", p.name),
                    format!("`{}` is declared as {} here", p.name, default.type_name()),
                )
                .with_help(format!(
                    "write a list as in the spec, like the default: --set '{}={default}'",
                    p.name
                ))
            };
            let e = moec_grammar::parse_expr(text).map_err(|e| not_a_list(e.message))?;
            if !matches!(e.kind, ExprKind::List(_)) {
                return Err(not_a_list(format!("`{text}` is not a list `[...]`")));
            }
            eval_const(&e, env).map_err(|d| not_a_list(d.message))?
        }
        _ => parse_override(text).ok_or_else(|| {
            Diagnostic::at(
                p.value.span,
                format!("--set {}={text}: `{text}` is not a number or bool", p.name),
                format!("`{}` is declared as {} here", p.name, default.kind()),
            )
        })?,
    };
    let kind = v.type_name();
    default.conform(v).ok_or_else(|| {
        Diagnostic::at(
            p.value.span,
            format!(
                "--set {}={text}: `{}` is {}, not {kind}",
                p.name,
                p.name,
                default.type_name(),
            ),
            format!("declared as {} here", default.type_name()),
        )
    })
}

/// Parses a `--set` number or bool: `64`, `2.5`, `true`.
fn parse_override(text: &str) -> Option<Const> {
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

/// The names an expression reads (`a` in `2 * a`; not call names or fields).
pub(super) fn free_names<'e>(e: &'e Expr, out: &mut Vec<&'e Ident>) {
    match &e.kind {
        ExprKind::Path(parts) if parts.len() == 1 => out.push(&parts[0]),
        ExprKind::Neg(inner) | ExprKind::Not(inner) => free_names(inner, out),
        ExprKind::Binary { lhs, rhs, .. } => {
            free_names(lhs, out);
            free_names(rhs, out);
        }
        ExprKind::Index { base, index } => {
            free_names(base, out);
            free_names(index, out);
        }
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => {
            free_names(cond, out);
            free_names(then, out);
            free_names(otherwise, out);
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
            .find(|q| names.iter().any(|n| n.name == q.name.name))
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
