//! AST to graph IR. Params are evaluated first (defaults, config.json, `--set`); then
//! the dataflow statements are lowered in order, experts instantiated per expert,
//! `repeat` bodies unrolled per layer, `if` statements replaced by their taken
//! branch, and every weight resolved against the spec's `weights` blocks. Shapes
//! are checked here, with the spec's spans, so users see their own names in
//! errors; the verifier re-checks the result.

mod attention;
mod bind;
mod consts;
mod expr;
mod flow;
mod heads;
mod layers;
mod limits;
mod moe;
mod params;
mod positions;
mod router;

use crate::diagnostic::Diagnostic;
use crate::ir::{Dim, Graph, Op, RelativeBias, TensorType, Value};
use bind::{Binder, Seg, WeightPath};
use consts::eval_const;
pub use consts::Const;
pub use limits::{Limit, Limits};
use moec_grammar::ast::{self, DTypeName, Expr, ExprKind, Ident, Item, Spec, Stmt};
use moec_grammar::Span;
pub use params::{ParamInputs, ParamSource};
use std::collections::HashMap;

/// A lowered spec: the graph, and warnings and notes worth telling the user.
#[derive(Debug)]
pub struct Lowered {
    pub graph: Graph,
    pub notes: Vec<Diagnostic>,
    /// Every param in declaration order: its value and where the value came from.
    pub params: Vec<(String, Const, ParamSource)>,
}

/// Lowers a parsed spec, its params decided by `inputs` (`--set`, config.json).
pub fn lower(spec: &Spec, inputs: &ParamInputs) -> Result<Lowered, Diagnostic> {
    Lowerer::new(spec, inputs)?.run(spec)
}

/// What a name in a dataflow scope stands for.
#[derive(Clone, Debug)]
enum Val {
    Tensor(Value),
    /// A `moe(...)` result: the hidden states and its inspection outputs.
    Moe(moe::MoeOutputs),
}

#[derive(Clone, Default)]
struct Scope {
    vars: HashMap<String, (Val, Span)>,
}

struct Lowerer<'a> {
    /// Param values, and the repeat variable while its body is lowered.
    params: HashMap<String, Const>,
    param_values: Vec<(String, Const, ParamSource)>,
    experts: HashMap<String, &'a ast::Expert>,
    routers: HashMap<String, &'a ast::Router>,
    rotaries: HashMap<String, &'a ast::Rotary>,
    /// The `Positions` node every `rope` reads, made at the first one.
    positions: Option<Value>,
    /// Each `relative_position_bias(...)` table and its bucketing, for the attentions using it.
    relative_biases: HashMap<Value, RelativeBias>,
    binder: Binder<'a>,
    graph: Graph,
    notes: Vec<Diagnostic>,
    limits: Limits,
    /// Spans of every top-level declaration, for duplicate-name errors.
    declared: HashMap<String, Span>,
}

impl<'a> Lowerer<'a> {
    fn new(spec: &'a Spec, inputs: &ParamInputs) -> Result<Lowerer<'a>, Diagnostic> {
        let mut declared: HashMap<String, Span> = HashMap::new();
        let mut declare = |name: &Ident, what: &str| -> Result<(), Diagnostic> {
            if let Some(prev) = declared.insert(name.name.clone(), name.span) {
                return Err(Diagnostic::at(
                    name.span,
                    format!("`{name}` is defined twice"),
                    format!("{what} redefined here"),
                )
                .with_related(prev, "first defined here"));
            }
            Ok(())
        };
        let mut params = Vec::new();
        let mut experts = HashMap::new();
        let mut routers = HashMap::new();
        let mut rotaries = HashMap::new();
        let mut weights = Vec::new();
        for item in &spec.items {
            match item {
                Item::Param(p) => {
                    declare(&p.name, "param")?;
                    params.push(p);
                }
                Item::Expert(e) => {
                    declare(&e.name, "expert")?;
                    experts.insert(e.name.name.clone(), e);
                }
                Item::Router(r) => {
                    declare(&r.name, "router")?;
                    routers.insert(r.name.name.clone(), r);
                }
                Item::Input(i) => declare(&i.name, "input")?,
                Item::Weights(w) => {
                    if let Some((DTypeName::I32, span)) = w.dtype {
                        return Err(Diagnostic::at(
                            span,
                            "weights cannot be stored as i32",
                            "not a weight dtype",
                        )
                        .with_help("weights are stored as f32, f16 or bf16"));
                    }
                    weights.push(w)
                }
                Item::Rotary(r) => {
                    declare(&r.name, "rotary")?;
                    rotaries.insert(r.name.name.clone(), r);
                }
                Item::Repeat(_) | Item::Stmt(_) => {}
            }
        }
        let param_values = params::eval_params(&params, inputs)?;
        Ok(Lowerer {
            params: param_values
                .iter()
                .map(|(n, v, _)| (n.clone(), v.clone()))
                .collect(),
            param_values,
            experts,
            routers,
            rotaries,
            positions: None,
            relative_biases: HashMap::new(),
            binder: Binder::new(&weights),
            graph: Graph::new(spec.name.name.clone()),
            notes: Vec::new(),
            limits: inputs.limits,
            declared,
        })
    }

    fn run(mut self, spec: &Spec) -> Result<Lowered, Diagnostic> {
        let mut scope = Scope::default();
        let mut outputs: Vec<(Ident, Value)> = Vec::new();
        for item in &spec.items {
            match item {
                Item::Input(i) => {
                    let ty = self.input_type(i)?;
                    let v = self
                        .graph
                        .add_input(&i.name.name, ty)
                        .map_err(|m| Diagnostic::at(i.name.span, m, "this input"))?;
                    scope
                        .vars
                        .insert(i.name.name.clone(), (Val::Tensor(v), i.name.span));
                }
                Item::Stmt(stmt) => self.stmt(stmt, &mut scope, None, &mut outputs)?,
                Item::Repeat(r) => self.repeat(r, &mut scope, &mut outputs)?,
                Item::Param(_)
                | Item::Expert(_)
                | Item::Router(_)
                | Item::Rotary(_)
                | Item::Weights(_) => {}
            }
        }
        if outputs.is_empty() {
            return Err(Diagnostic::at(
                spec.name.span,
                format!("model `{}` has no outputs", spec.name),
                "no `output`",
            )
            .with_help("add `output y` for a value `y`"));
        }
        for (name, v) in outputs {
            self.graph.outputs.push((name.name, v));
        }
        if self.graph.is_stateful() {
            self.graph.max_positions = Some(self.max_positions(spec)?);
        }
        self.graph.decoder_start = self.decoder_start(spec)?;
        self.binder.finish(&self.graph.weights)?;
        Ok(Lowered {
            graph: self.graph,
            notes: self.notes,
            params: self.param_values,
        })
    }

    /// The most positions a model with KV caches holds: its `max_position_embeddings` param.
    fn max_positions(&self, spec: &Spec) -> Result<u64, Diagnostic> {
        match self.params.get("max_position_embeddings") {
            Some(Const::Int(n)) if *n > 0 => Ok(*n as u64),
            Some(other) => Err(Diagnostic::at(
                spec.name.span,
                format!("max_position_embeddings must be a positive integer, it is {other}"),
                "in this model",
            )),
            None => Err(Diagnostic::at(
                spec.name.span,
                "a model with attention needs `param max_position_embeddings = N`",
                "its KV caches need a size",
            )
            .with_help(
                "the param bounds the positions a session holds (prompt and generated tokens)",
            )),
        }
    }

    /// An encoder-decoder model's (one with a `source` input) `decoder_start_token_id` param.
    fn decoder_start(&self, spec: &Spec) -> Result<Option<i32>, Diagnostic> {
        let encoder = self.graph.inputs.iter().any(|&n| {
            matches!(&self.graph.node(n).op, Op::Input { ty, .. } if ty.shape[0].uses_source())
        });
        if !encoder {
            return Ok(None);
        }
        match self.params.get("decoder_start_token_id") {
            Some(Const::Int(n)) if (0..=i32::MAX as i64).contains(n) => Ok(Some(*n as i32)),
            Some(other) => Err(Diagnostic::at(
                spec.name.span,
                format!("decoder_start_token_id must be a token id, it is {other}"),
                "in this model",
            )),
            None => Err(Diagnostic::at(
                spec.name.span,
                "an encoder-decoder model needs `param decoder_start_token_id = N`",
                "it reads a `source` input",
            )
            .with_help("generation starts the decoder from this token (config.json's `decoder_start_token_id`)")),
        }
    }

    fn input_type(&self, input: &ast::Input) -> Result<TensorType, Diagnostic> {
        if !matches!(input.dtype, DTypeName::F32 | DTypeName::I32) {
            return Err(Diagnostic::at(
                input.dtype_span,
                format!("input `{}` must be f32 or i32", input.name),
                "not supported",
            )
            .with_help("f16 and bf16 are storage types for weights; inputs are f32 (activations) or i32 (token ids)"));
        }
        // `tokens` (this call's tokens) or `source` (an encoder's: the source sequence).
        let mut shape = Vec::new();
        for (i, d) in input.shape.dims.iter().enumerate() {
            let symbol = match &d.kind {
                ExprKind::Path(p) if p.len() == 1 && p[0].name == "tokens" => Some(Dim::TOKENS),
                ExprKind::Path(p) if p.len() == 1 && p[0].name == "source" => Some(Dim::SOURCE),
                _ => None,
            };
            match symbol {
                Some(_) if i != 0 => {
                    return Err(Diagnostic::at(
                        d.span,
                        format!("`{d}` must be the first dim"),
                        "here",
                    ));
                }
                Some(s) => shape.push(s),
                None => shape.push(Dim::fixed(self.dim(d)?)),
            }
        }
        let rows = shape.first().copied();
        let by_symbol = matches!(rows, Some(Dim::TOKENS | Dim::SOURCE));
        if input.dtype == DTypeName::I32 {
            if shape.len() != 1 || !by_symbol {
                return Err(Diagnostic::at(
                    input.shape.span,
                    format!(
                        "i32 input `{}` must have shape [tokens] (or [source]: an encoder's)",
                        input.name
                    ),
                    "found this shape",
                ));
            }
            return Ok(TensorType::i32(shape));
        }
        if shape.len() != 2 || !by_symbol {
            return Err(Diagnostic::at(
                input.shape.span,
                format!(
                    "input `{}` must have shape [tokens, width] (or [source, width]: an encoder's)",
                    input.name
                ),
                "found this shape",
            ));
        }
        Ok(TensorType::f32(shape))
    }

    /// A positive dimension given by a constant expression.
    fn dim(&self, e: &Expr) -> Result<u64, Diagnostic> {
        match eval_const(e, &self.params)? {
            Const::Int(v) if v > 0 => Ok(v as u64),
            Const::Int(v) => Err(Diagnostic::at(
                e.span,
                format!("dimension `{e}` is {v}; dimensions must be positive"),
                format!("evaluates to {v}"),
            )),
            other => Err(Diagnostic::at(
                e.span,
                format!("dimension `{e}` must be an integer, it is {other}"),
                format!("is {}", other.kind()),
            )),
        }
    }

    fn int(&self, e: &Expr, what: &str) -> Result<u64, Diagnostic> {
        match eval_const(e, &self.params)? {
            Const::Int(v) if v > 0 => Ok(v as u64),
            other => Err(Diagnostic::at(
                e.span,
                format!("{what} must be a positive integer, `{e}` is {other}"),
                "expected a positive integer",
            )),
        }
    }

    /// A number the graph stores as f32 (an eps, a scale, a factor): one that f32
    /// holds without rounding it to 0 or to infinity.
    fn float(&self, e: &Expr, what: &str) -> Result<f64, Diagnostic> {
        let v = eval_const(e, &self.params)?;
        let x = v
            .as_f64()
            .ok_or_else(|| Diagnostic::at(e.span, format!("{what} must be a number"), v.kind()))?;
        let stored = x as f32;
        if stored.is_infinite() || (stored == 0.0 && x != 0.0) {
            let to = if stored == 0.0 { "0" } else { "infinity" };
            return Err(Diagnostic::at(
                e.span,
                format!("{what} {x:e} rounds to {to} as f32"),
                "stored as f32",
            )
            .with_help("f32 holds magnitudes from about 1.4e-45 to 3.4e38"));
        }
        Ok(x)
    }

    fn bool(&self, e: &Expr, what: &str) -> Result<bool, Diagnostic> {
        match eval_const(e, &self.params)? {
            Const::Bool(b) => Ok(b),
            other => Err(Diagnostic::at(
                e.span,
                format!("{what} must be true or false"),
                format!("is {}", other.kind()),
            )),
        }
    }

    /// An optional bool flag that adds a weight (`bias = ...`, `selection_bias = ...`):
    /// false when absent. When a param switches it off, a binding for the weight at
    /// `path` is not an error (see [`Binder::absent`]).
    fn weight_flag(
        &mut self,
        e: Option<&Expr>,
        what: &str,
        path: &WeightPath,
    ) -> Result<bool, Diagnostic> {
        let Some(e) = e else { return Ok(false) };
        let on = self.bool(e, what)?;
        if !on && matches!(e.kind, ExprKind::Path(_)) {
            self.binder.absent(path);
        }
        Ok(on)
    }

    fn repeat(
        &mut self,
        r: &ast::Repeat,
        scope: &mut Scope,
        outputs: &mut Vec<(Ident, Value)>,
    ) -> Result<(), Diagnostic> {
        let count = self.int(&r.count, "the repeat count")?;
        self.limits.check(Limit::Layers, count, r.count.span)?;
        self.declare_repeat_var(&r.var, scope)?;
        let mut per_layer = Vec::new();
        for layer in 0..count as usize {
            self.params
                .insert(r.var.name.clone(), Const::Int(layer as i64));
            let mut inner = scope.clone();
            let mut layer_outputs = Vec::new();
            for stmt in &r.body {
                for l in stmt.lets() {
                    if scope.vars.contains_key(&l.name.name) {
                        return Err(Diagnostic::at(
                            l.name.span,
                            format!("`{}` is already defined outside this repeat", l.name),
                            "shadows an outer value",
                        )
                        .with_help(format!(
                            "write `{} = ...` to carry it to the next layer",
                            l.name
                        )));
                    }
                }
                let path = WeightPath {
                    layer: Some((r.var.name.clone(), layer)),
                    moe: None,
                    segs: Vec::new(),
                };
                self.stmt(stmt, &mut inner, Some(&path), &mut layer_outputs)?;
            }
            for (name, _) in scope.vars.clone() {
                let carried = inner.vars[&name].clone();
                scope.vars.insert(name, carried);
            }
            per_layer.push(layer_outputs);
        }
        self.params.remove(&r.var.name);
        self.declared.remove(&r.var.name);
        for (name, values) in flow::stack_by_name(per_layer) {
            let node = self
                .graph
                .add(Op::Stack, &values, Some(name.name.clone()))
                .map_err(|m| {
                    Diagnostic::at(
                        name.span,
                        format!("cannot stack `{name}` over layers: {m}"),
                        "this output",
                    )
                })?;
            self.add_output(outputs, name, node.into())?;
        }
        Ok(())
    }

    fn add_output(
        &mut self,
        outputs: &mut Vec<(Ident, Value)>,
        name: Ident,
        v: Value,
    ) -> Result<(), Diagnostic> {
        if let Some((prev, _)) = outputs.iter().find(|(n, _)| n.name == name.name) {
            return Err(Diagnostic::at(
                name.span,
                format!("output `{name}` is defined twice"),
                "again here",
            )
            .with_related(prev.span, "first here"));
        }
        outputs.push((name, v));
        Ok(())
    }

    fn stmt(
        &mut self,
        stmt: &Stmt,
        scope: &mut Scope,
        layer: Option<&WeightPath>,
        outputs: &mut Vec<(Ident, Value)>,
    ) -> Result<(), Diagnostic> {
        let root = layer.cloned().unwrap_or(WeightPath {
            layer: None,
            moe: None,
            segs: Vec::new(),
        });
        match stmt {
            Stmt::Let(l) => {
                if let Some((_, prev)) = scope.vars.get(&l.name.name) {
                    return Err(Diagnostic::at(
                        l.name.span,
                        format!("`{}` is defined twice", l.name),
                        "redefined here",
                    )
                    .with_related(*prev, "first defined here"));
                }
                if let Some(prev) = self.declared.get(&l.name.name) {
                    return Err(Diagnostic::at(
                        l.name.span,
                        format!("`{}` is already a declaration", l.name),
                        "redefined here",
                    )
                    .with_related(*prev, "declared here"));
                }
                let v = self.let_value(&l.name, &l.value, scope, &root)?;
                scope.vars.insert(l.name.name.clone(), (v, l.name.span));
            }
            Stmt::Assign(l) => {
                if layer.is_none() {
                    return Err(Diagnostic::at(l.name.span, format!("cannot assign to `{}` here", l.name), "assignment")
                        .with_help(format!("use `let {} = ...`; assignments carry values between layers inside `repeat`", l.name)));
                }
                let Some((old, _)) = scope.vars.get(&l.name.name).cloned() else {
                    return Err(Diagnostic::at(
                        l.name.span,
                        format!("unknown value `{}`", l.name),
                        "not defined before the repeat",
                    ));
                };
                let v = self.let_value(&l.name, &l.value, scope, &root)?;
                let (Val::Tensor(old), Val::Tensor(new)) = (&old, &v) else {
                    return Err(Diagnostic::at(
                        l.value.span,
                        "only tensors can be carried between layers",
                        "not a tensor",
                    ));
                };
                let (ot, nt) = (self.graph.value_type(*old), self.graph.value_type(*new));
                if ot != nt {
                    return Err(Diagnostic::at(
                        l.value.span,
                        format!(
                            "`{}` changes type between layers: {ot} becomes {nt}",
                            l.name
                        ),
                        format!("this is {nt}"),
                    ));
                }
                scope.vars.insert(l.name.name.clone(), (v, l.name.span));
            }
            Stmt::Output { name, value } => {
                let v = match value {
                    Some(e) => self.tensor(e, scope, &root)?,
                    None => self.tensor(
                        &Expr {
                            kind: ExprKind::Path(vec![name.clone()]),
                            span: name.span,
                        },
                        scope,
                        &root,
                    )?,
                };
                self.add_output(outputs, name.clone(), v)?;
            }
            Stmt::If(i) => self.if_stmt(i, scope, layer, outputs)?,
        }
        Ok(())
    }

    /// The right-hand side of a `let`: where `linear`, norms and `moe` may appear,
    /// because the `let`'s name names their weights.
    fn let_value(
        &mut self,
        name: &Ident,
        e: &Expr,
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<Val, Diagnostic> {
        if let ExprKind::If {
            cond,
            then,
            otherwise,
        } = &e.kind
        {
            let taken = if self.condition(cond, scope)? {
                then
            } else {
                otherwise
            };
            return self.let_value(name, taken, scope, path);
        }
        if let ExprKind::Call { func, args } = &e.kind {
            let label = Some(name.name.clone());
            match func.name.as_str() {
                "linear" => {
                    return self
                        .linear(e, args, scope, &path.child(Seg::name(&name.name)), label)
                        .map(Val::Tensor)
                }
                "rmsnorm" | "layernorm" => {
                    return self
                        .norm(
                            e,
                            func,
                            args,
                            scope,
                            &path.child(Seg::name(&name.name)),
                            label,
                        )
                        .map(Val::Tensor)
                }
                "embedding" => {
                    return self
                        .embedding(e, args, scope, &path.child(Seg::name(&name.name)), label)
                        .map(Val::Tensor)
                }
                "attention" => {
                    return self
                        .attention(e, args, scope, &path.child(Seg::name(&name.name)), label)
                        .map(Val::Tensor)
                }
                "relative_position_bias" => {
                    return self
                        .relative_position_bias(e, args, &path.child(Seg::name(&name.name)))
                        .map(Val::Tensor)
                }
                "moe" => {
                    let mut p = path.clone();
                    p.moe = Some(name.name.clone());
                    return self.moe(e, args, scope, &p, &name.name).map(Val::Moe);
                }
                _ => {}
            }
        }
        let v = self.tensor(e, scope, path)?;
        if self.graph.node(v.node).label.is_none() {
            self.graph.g[v.node].label = Some(name.name.clone());
        }
        Ok(Val::Tensor(v))
    }

    fn width(&self, v: Value, span: Span) -> Result<u64, Diagnostic> {
        let t = self.graph.value_type(v);
        t.width().ok_or_else(|| {
            Diagnostic::at(
                span,
                format!("expected a [rows, width] tensor, found {t}"),
                "here",
            )
        })
    }

    fn weight(
        &mut self,
        path: &WeightPath,
        shape: Vec<usize>,
        owner: Span,
    ) -> Result<Value, Diagnostic> {
        TensorType::f32(shape.iter().map(|&d| Dim::fixed(d as u64)).collect())
            .check_size()
            .map_err(|m| Diagnostic::at(owner, m, "this weight"))?;
        let decl = self.binder.resolve(path, shape, owner, &self.params)?;
        Ok(self.graph.add_weight(decl))
    }

    fn node(
        &mut self,
        op: Op,
        operands: &[Value],
        label: Option<String>,
        span: Span,
    ) -> Result<Value, Diagnostic> {
        let nodes = self.graph.g.node_count() as u64;
        self.limits.check(Limit::Nodes, nodes + 1, span)?;
        self.graph
            .add(op, operands, label)
            .map(Value::from)
            .map_err(|m| Diagnostic::at(span, m, "in this expression"))
    }
}

/// Lowers source text with `--set name=value` overrides (and no config.json), with
/// parse errors as diagnostics too.
pub fn lower_source(source: &str, overrides: &[(String, String)]) -> Result<Lowered, Diagnostic> {
    let spec = moec_grammar::parse(source)?;
    let inputs = ParamInputs {
        sets: overrides.to_vec(),
        ..ParamInputs::default()
    };
    lower(&spec, &inputs)
}
