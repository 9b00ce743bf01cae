//! Weight binding: matches each weight the graph needs against the spec's
//! `weights { key = "name" }` blocks, fills `{e}`/`{layer}` templates, evaluates
//! `rows(...)`/`columns(...)` (which may read those variables), and reports bindings that
//! match nothing, tensors bound twice, and `transposed`/`rows` on a vector. Shapes against
//! the file are the runtime's to check.

use super::consts::{eval_const, Const};
use crate::diagnostic::Diagnostic;
use crate::ir::{AxisSlice, WeightDecl, WeightFormat};
use moec_grammar::ast::{Binding, DTypeName, Expr, Stride, Weights};
use moec_grammar::Span;
use std::collections::HashMap;

/// One segment of a weight's logical path: `experts[3]`, `gate`.
#[derive(Clone, Debug, PartialEq)]
pub struct Seg {
    pub name: String,
    pub index: Option<usize>,
}

impl Seg {
    pub fn name(name: &str) -> Seg {
        Seg {
            name: name.to_string(),
            index: None,
        }
    }
    pub fn indexed(name: &str, index: usize) -> Seg {
        Seg {
            name: name.to_string(),
            index: Some(index),
        }
    }
}

/// Where a weight sits in the model: the layer of a `repeat`, the `moe` binding it
/// belongs to, and its path inside (`experts[3].gate`).
#[derive(Clone, Debug)]
pub struct WeightPath {
    pub layer: Option<(String, usize)>,
    pub moe: Option<String>,
    pub segs: Vec<Seg>,
}

impl WeightPath {
    pub fn child(&self, seg: Seg) -> WeightPath {
        let mut p = self.clone();
        p.segs.push(seg);
        p
    }

    /// The canonical key: `layers.0.y.experts.3.gate`.
    pub fn key(&self) -> String {
        let mut parts = Vec::new();
        if let Some((_, i)) = &self.layer {
            parts.push(format!("layers.{i}"));
        }
        parts.extend(self.moe.clone());
        for s in &self.segs {
            parts.push(s.name.clone());
            parts.extend(s.index.map(|i| i.to_string()));
        }
        parts.join(".")
    }

    /// The key as a user would write it in a `weights` block: `experts[e].gate`.
    pub fn pattern(&self) -> String {
        self.segs
            .iter()
            .map(|s| {
                if s.index.is_some() {
                    format!("{}[e]", s.name)
                } else {
                    s.name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}

struct Block<'a> {
    prefix: Option<&'a str>,
    prefix_span: Span,
    storage: Option<WeightFormat>,
    bindings: Vec<&'a Binding>,
}

/// The spec's weight bindings, and which of them have matched a weight.
pub struct Binder<'a> {
    blocks: Vec<Block<'a>>,
    used: HashMap<(usize, usize), bool>,
    patterns: Vec<String>,
    /// First key segments of weights that branches not taken would have made.
    skipped: std::collections::HashSet<String>,
}

impl<'a> Binder<'a> {
    pub fn new(blocks: &[&'a Weights]) -> Binder<'a> {
        let blocks = blocks
            .iter()
            .map(|w| Block {
                prefix: w.prefix.as_ref().map(|p| p.value.as_str()),
                prefix_span: w.prefix.as_ref().map_or(w.span, |p| p.span),
                storage: w.dtype.map(|(d, _)| match d {
                    DTypeName::F32 => WeightFormat::F32,
                    DTypeName::F16 => WeightFormat::F16,
                    DTypeName::BF16 => WeightFormat::Bf16,
                    DTypeName::I32 => unreachable!("rejected by `Lowerer::new`"),
                }),
                bindings: w.bindings.iter().collect(),
            })
            .collect();
        Binder {
            blocks,
            skipped: Default::default(),
            used: HashMap::new(),
            patterns: Vec::new(),
        }
    }

    /// Resolves a weight of `shape` at `path`; `owner` is the spec location that creates it,
    /// `params` the constants a binding's `rows(...)`/`columns(...)` may read (with the
    /// binding's index variables and the repeat variable).
    pub fn resolve(
        &mut self,
        path: &WeightPath,
        shape: Vec<usize>,
        owner: Span,
        params: &HashMap<String, Const>,
    ) -> Result<WeightDecl, Diagnostic> {
        let pattern = path.pattern();
        if !self.patterns.contains(&pattern) {
            self.patterns.push(pattern.clone());
        }
        let key = path.key();
        let mut found: Vec<(usize, usize, KeyMatch)> = Vec::new();
        for (bi, block) in self.blocks.iter().enumerate() {
            for (ki, b) in block.bindings.iter().enumerate() {
                if let Some(m) = match_key(b, path) {
                    found.push((bi, ki, m));
                }
            }
        }
        // A key qualified with the moe's name beats an unqualified one.
        let qualified = |(bi, ki, _): &(usize, usize, KeyMatch)| {
            let b = self.blocks[*bi].bindings[*ki];
            path.moe.as_deref() == Some(b.key.segments[0].name.name.as_str())
                && b.key.segments.len() > path.segs.len()
        };
        if found.iter().any(qualified) {
            found.retain(qualified);
        }
        match found.as_slice() {
            [] => Ok(WeightDecl {
                key: key.clone(),
                pattern,
                tensor: key,
                expert_slice: None,
                transposed: false,
                rows: None,
                columns: None,
                shape,
                storage: None,
                span: owner,
            }),
            [(bi, ki, KeyMatch { slice, vars })] => {
                self.used.insert((*bi, *ki), true);
                let block = &self.blocks[*bi];
                let b = block.bindings[*ki];
                let mut vars = vars.clone();
                if let Some((name, i)) = &path.layer {
                    vars.push((name.clone(), *i));
                }
                let name = fill(&b.tensor.value, &vars, b.tensor.span)?;
                let tensor = match block.prefix {
                    Some(p) if !p.is_empty() => {
                        format!("{}.{name}", fill(p, &vars, block.prefix_span)?)
                    }
                    _ => name,
                };
                if shape.len() < 2 {
                    vector_layout(b, &pattern, &shape)?;
                }
                let (rows, columns) = strides(b, &vars, params)?;
                Ok(WeightDecl {
                    key,
                    pattern,
                    tensor,
                    expert_slice: *slice,
                    transposed: b.transposed,
                    rows,
                    columns,
                    shape,
                    storage: block.storage,
                    span: b.key.span,
                })
            }
            [first, second, ..] => {
                let b1 = self.blocks[first.0].bindings[first.1];
                let b2 = self.blocks[second.0].bindings[second.1];
                Err(Diagnostic::at(
                    b2.key.span,
                    format!("two bindings match the weight `{key}`"),
                    "this one",
                )
                .with_related(b1.key.span, "and this one")
                .with_help("qualify a key with its moe's name, e.g. `y.experts[e].gate`"))
            }
        }
    }

    /// Marks the bindings of the weight at `path` as used although the weight is not
    /// made: a bool param switched it off (`bias = router_bias` with `router_bias =
    /// false`), and its binding stays right for the configurations that have it.
    pub fn absent(&mut self, path: &WeightPath) {
        for (bi, block) in self.blocks.iter().enumerate() {
            for (ki, b) in block.bindings.iter().enumerate() {
                if match_key(b, path).is_some() {
                    self.used.insert((bi, ki), true);
                }
            }
        }
    }

    /// Notes that a branch not taken would have made weights whose keys start with
    /// `name`: their bindings are right for the configurations that take it.
    pub fn skipped(&mut self, name: &str) {
        self.skipped.insert(name.to_string());
    }

    /// Errors for bindings that matched no weight (unless only a branch not taken
    /// makes it), and for tensors bound to two weights.
    pub fn finish(&self, decls: &[WeightDecl]) -> Result<(), Diagnostic> {
        for (bi, block) in self.blocks.iter().enumerate() {
            for (ki, b) in block.bindings.iter().enumerate() {
                if !self.used.contains_key(&(bi, ki))
                    && !self.skipped.contains(&b.key.segments[0].name.name)
                {
                    let mut patterns = self.patterns.clone();
                    patterns.sort();
                    return Err(Diagnostic::at(
                        b.key.span,
                        format!("the binding `{}` matches no weight of the model", b.key),
                        "no weight has this key",
                    )
                    .with_help(format!(
                        "the model's weight keys are: {}",
                        patterns.join(", ")
                    )));
                }
            }
        }
        type Part<'d> = (&'d str, Option<usize>, Option<AxisSlice>, Option<AxisSlice>);
        let mut seen: HashMap<Part, &WeightDecl> = HashMap::new();
        for d in decls {
            let part = (d.tensor.as_str(), d.expert_slice, d.rows, d.columns);
            if let Some(prev) = seen.insert(part, d) {
                return Err(bound_twice(prev, d));
            }
        }
        Ok(())
    }
}

/// The error for one part of a tensor bound to two weights, with the likeliest fix.
fn bound_twice(prev: &WeightDecl, d: &WeightDecl) -> Diagnostic {
    // The same binding reached from two layers of a `repeat` lacks `{layer}`.
    let strip = |k: &str| {
        k.strip_prefix("layers.")
            .and_then(|r| r.split_once('.'))
            .map(|(_, r)| r.to_string())
    };
    let same_in_layers = strip(&prev.key).is_some() && strip(&prev.key) == strip(&d.key);
    // The keys as a `weights` block writes them, unless that is one key twice.
    let (a, b) = if prev.pattern == d.pattern {
        (&prev.key, &d.key)
    } else {
        (&prev.pattern, &d.pattern)
    };
    let mut err = Diagnostic::at(
        d.span,
        format!(
            "the tensor \"{}\" is bound to both `{a}` and `{b}`",
            d.tensor
        ),
        "bound twice",
    );
    if prev.span != d.span {
        err = err.with_related(prev.span, "also bound here");
    }
    let help = if same_in_layers {
        "inside `repeat`, put the repeat variable (e.g. `{layer}`) in the tensor name".to_string()
    } else if d.rows.is_some() || d.columns.is_some() {
        "weights that share a tensor read different parts of it: check the two `rows(...)`/`columns(...)`".to_string()
    } else if prev.shape.len() == 2 && d.shape.len() == 2 {
        // One fused projection feeding two linears: each takes its half of the stored
        // output axis (rows as stored `[out, in]`, columns as stored `[in, out]`).
        let (axis, n) = if d.transposed {
            ("columns", prev.shape[0])
        } else {
            ("rows", prev.shape[0])
        };
        format!(
            "a fused tensor (both projections in one, e.g. gate and up as `[2·{n}, ...]`) feeds each weight its part: `{} = \"...\"{t} {axis}(0, 1)` and `{} = \"...\"{t} {axis}({n}, 1)` (or `{axis}(0, 2)`/`{axis}(1, 2)` if interleaved); otherwise each weight needs a tensor of its own",
            prev.pattern,
            d.pattern,
            t = if d.transposed { " transposed" } else { "" },
        )
    } else {
        "each weight needs a tensor of its own; check the two names".to_string()
    };
    err.with_help(help)
}

/// A binding that matches a weight: the expert slice (for a fused `[E, ...]` tensor)
/// and the index variables it binds (`e` = 3).
struct KeyMatch {
    slice: Option<usize>,
    vars: Vec<(String, usize)>,
}

fn match_key(b: &Binding, path: &WeightPath) -> Option<KeyMatch> {
    let mut segs = b.key.segments.as_slice();
    if segs.len() == path.segs.len() + 1 {
        let first = &segs[0];
        if first.index.is_some() || path.moe.as_deref() != Some(first.name.name.as_str()) {
            return None;
        }
        segs = &segs[1..];
    }
    if segs.len() != path.segs.len() {
        return None;
    }
    let mut slice = None;
    let mut vars = Vec::new();
    for (k, p) in segs.iter().zip(&path.segs) {
        if k.name.name != p.name {
            return None;
        }
        match (&k.index, p.index) {
            (None, None) => {}
            (Some(var), Some(i)) => vars.push((var.name.clone(), i)),
            (None, Some(i)) if slice.is_none() => slice = Some(i),
            _ => return None,
        }
    }
    Some(KeyMatch { slice, vars })
}

/// `transposed` and `rows(...)` need a matrix: on a vector (a bias, a norm's weight) they
/// would be silently meaningless.
fn vector_layout(b: &Binding, pattern: &str, shape: &[usize]) -> Result<(), Diagnostic> {
    let what = if b.transposed {
        "`transposed`"
    } else if b.rows.is_some() {
        "`rows(...)`"
    } else {
        return Ok(());
    };
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    Err(Diagnostic::at(
        b.key.span,
        format!(
            "{what} on `{pattern}`, a vector [{}]: a vector has no rows to transpose or pick",
            dims.join(", ")
        ),
        "a vector weight",
    )
    .with_help("drop it; `columns(start, step)` picks entries of a vector"))
}

/// The binding's `rows(...)` and `columns(...)`, evaluated with its index variables (`e`)
/// and the repeat variable known: start ≥ 0, step ≥ 1.
fn strides(
    b: &Binding,
    vars: &[(String, usize)],
    params: &HashMap<String, Const>,
) -> Result<(Option<AxisSlice>, Option<AxisSlice>), Diagnostic> {
    if b.rows.is_none() && b.columns.is_none() {
        return Ok((None, None));
    }
    let mut scope;
    let consts = if vars.is_empty() {
        params
    } else {
        scope = params.clone();
        for (name, i) in vars {
            scope.insert(name.clone(), Const::Int(*i as i64));
        }
        &scope
    };
    let eval = |s: &Option<Stride>, axis: &str, which: &str| {
        s.as_ref()
            .map(|s| {
                let int = |e: &Expr, what: &str, least: i64| match eval_const(e, consts)? {
                    Const::Int(v) if v >= least => Ok(v as usize),
                    other => Err(Diagnostic::at(
                        e.span,
                        format!(
                            "the {axis}' {what} must be an integer of at least {least}, `{e}` is {other}"
                        ),
                        "here",
                    )
                    .with_help(format!(
                        "`{axis}(start, step)` reads entries start, start + step, ... of the stored tensor's {which} axis"
                    ))),
                };
                Ok::<_, Diagnostic>(AxisSlice {
                    start: int(&s.start, "start", 0)?,
                    step: int(&s.step, "step", 1)?,
                })
            })
            .transpose()
    };
    Ok((
        eval(&b.rows, "rows", "second-to-last")?,
        eval(&b.columns, "columns", "last")?,
    ))
}

/// Replaces `{var}` in a tensor-name template.
fn fill(template: &str, vars: &[(String, usize)], span: Span) -> Result<String, Diagnostic> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| {
            Diagnostic::at(
                span,
                format!("unclosed `{{` in \"{template}\""),
                "expected `}`",
            )
        })?;
        let var = &rest[open + 1..close];
        match vars.iter().find(|(n, _)| n == var) {
            Some((_, i)) => out.push_str(&i.to_string()),
            None => {
                let known: Vec<String> = vars.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                return Err(Diagnostic::at(
                    span,
                    format!("unknown placeholder `{{{var}}}` in \"{template}\""),
                    "here",
                )
                .with_help(if known.is_empty() {
                    "no placeholders here: `{e}` needs a key with `[e]`, and a repeat's variable is only known inside the `repeat`".to_string()
                } else {
                    format!("this binding can use {}", known.join(", "))
                }));
            }
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
