//! The abstract syntax tree of a `.moe` spec. Every node that a diagnostic can
//! point at carries a [`Span`] of byte offsets into the source.

use std::fmt;

/// A half-open byte range `start..end` in the source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
    pub fn len(self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// A name as written, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A whole file: exactly one `model`.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: Ident,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Param(Param),
    Input(Input),
    Expert(Expert),
    Router(Router),
    Rotary(Rotary),
    Weights(Weights),
    Repeat(Repeat),
    Stmt(Stmt),
}

/// `param NAME = EXPR [from "a.b", "c"]`: a compile-time constant, taken from a
/// checkpoint's config.json when it has the field, overridable with `--set`.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub value: Expr,
    /// The config.json fields (dotted paths) listed after `from`, in order; empty
    /// when there is no `from` (the field named like the param).
    pub from: Vec<StringLit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DTypeName {
    F32,
    F16,
    BF16,
    I32,
}

impl fmt::Display for DTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DTypeName::F32 => "f32",
            DTypeName::F16 => "f16",
            DTypeName::BF16 => "bf16",
            DTypeName::I32 => "i32",
        })
    }
}

/// `input NAME: DTYPE[DIMS]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub name: Ident,
    pub dtype: DTypeName,
    pub dtype_span: Span,
    pub shape: Shape,
}

/// `[d0, d1, ...]`: each dim an expression over params, or a symbol such as `tokens`.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub dims: Vec<Expr>,
    pub span: Span,
}

/// `(h: [n, hidden_size])`: the one tensor argument of an expert or router.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub arg: Ident,
    pub shape: Shape,
}

/// `expert NAME(h: [n, d]) -> [n, d] { let ...; return EXPR }`: a template
/// instantiated once per expert.
#[derive(Clone, Debug, PartialEq)]
pub struct Expert {
    pub name: Ident,
    pub signature: Signature,
    pub result: Shape,
    pub body: Vec<Let>,
    pub result_expr: Expr,
}

/// `router NAME(h: [n, d]) { FIELD = EXPR ... }`: the gating network.
#[derive(Clone, Debug, PartialEq)]
pub struct Router {
    pub name: Ident,
    pub signature: Signature,
    pub fields: Vec<Field>,
}

/// `rotary NAME { FIELD = EXPR ... }`: a rotary position embedding's settings,
/// applied with `rope(x, NAME)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotary {
    pub name: Ident,
    pub fields: Vec<Field>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: Ident,
    pub value: Expr,
}

/// `repeat VAR in COUNT { statements }`: the body once per layer; `{VAR}` in
/// weight names is the layer index.
#[derive(Clone, Debug, PartialEq)]
pub struct Repeat {
    pub var: Ident,
    pub count: Expr,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Let {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `let NAME = EXPR`: a new value.
    Let(Let),
    /// `NAME = EXPR`: rebinds a value declared outside a `repeat` body, carrying
    /// it to the next layer.
    Assign(Let),
    /// `output NAME` or `output NAME = EXPR`.
    Output { name: Ident, value: Option<Expr> },
    /// `if C { ... } else if C { ... } else { ... }`.
    If(If),
}

impl Stmt {
    /// The `let`s this statement makes: itself, or those in any branch of an `if`.
    pub fn lets(&self) -> Vec<&Let> {
        match self {
            Stmt::Let(l) => vec![l],
            Stmt::If(i) => i
                .branches
                .iter()
                .flat_map(|b| &b.body)
                .chain(&i.otherwise)
                .flat_map(Stmt::lets)
                .collect(),
            Stmt::Assign(_) | Stmt::Output { .. } => Vec::new(),
        }
    }
}

/// A compile-time choice between statements: the body of the first branch whose
/// condition is true, else `otherwise` (empty without an `else`), stands in place of
/// the `if`.
#[derive(Clone, Debug, PartialEq)]
pub struct If {
    pub branches: Vec<Branch>,
    pub otherwise: Vec<Stmt>,
}

/// `if COND { body }` or `else if COND { body }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub cond: Expr,
    pub body: Vec<Stmt>,
}

/// `weights "prefix" as bf16 { key = "tensor.name" ... }`: binds the model's
/// weights to names in safetensors files.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub prefix: Option<StringLit>,
    pub dtype: Option<(DTypeName, Span)>,
    pub bindings: Vec<Binding>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StringLit {
    pub value: String,
    pub span: Span,
}

/// `experts[e].gate = "experts.{e}.w1.weight" [transposed] [rows(start, step)] [columns(start, step)]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub key: Key,
    pub tensor: StringLit,
    /// The tensor is stored `[in, out]` instead of the `[out, in]` of a Hugging Face `Linear`.
    pub transposed: bool,
    /// `rows(start, step)`: entries of the stored tensor's second-to-last axis.
    pub rows: Option<Stride>,
    /// `columns(start, step)`: entries of the stored tensor's last axis.
    pub columns: Option<Stride>,
}

/// `rows(start, step)` / `columns(start, step)`: the weight is every `step`-th entry of an
/// axis of the stored tensor, from `start`: interleaved fused projections such as GPT-OSS's
/// `gate_up_proj` (step 2), one half of a concatenated one (step 1), one expert's rows of
/// experts stacked without an axis of their own (`rows(e * F, 1)`). `start` may read `{e}`'s
/// variable and the repeat variable.
#[derive(Clone, Debug, PartialEq)]
pub struct Stride {
    pub start: Expr,
    pub step: Expr,
    pub span: Span,
}

/// A dotted weight path such as `experts[e].gate` or `gate.logits`.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub segments: Vec<KeySegment>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeySegment {
    pub name: Ident,
    /// The index variable of `experts[e]`.
    pub index: Option<Ident>,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(&s.name.name)?;
            if let Some(ix) = &s.index {
                write!(f, "[{}]", ix.name)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    /// `== != < <= > >=`.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }
    /// `and`, `or`.
    pub fn is_logical(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or)
    }
}

impl fmt::Display for BinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// `"text"`.
    Str(String),
    /// `name` or `name.field`.
    Path(Vec<Ident>),
    Call {
        func: Ident,
        args: Vec<Arg>,
    },
    List(Vec<Expr>),
    Neg(Box<Expr>),
    /// `not e`.
    Not(Box<Expr>),
    /// `list[i]`.
    Index {
        base: Box<Expr>,
        index: Box<Expr>,
    },
    /// `if cond then a else b`: a compile-time choice.
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

/// A call argument, positional or `name = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Int(v) => write!(f, "{v}"),
            ExprKind::Float(v) => write!(f, "{v:?}"),
            ExprKind::Bool(v) => write!(f, "{v}"),
            ExprKind::Str(v) => write!(f, "\"{v}\""),
            ExprKind::Path(parts) => {
                let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
                f.write_str(&names.join("."))
            }
            ExprKind::Call { func, args } => {
                write!(f, "{func}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if let Some(n) = &a.name {
                        write!(f, "{n} = ")?;
                    }
                    write!(f, "{}", a.value)?;
                }
                f.write_str(")")
            }
            ExprKind::List(items) => {
                f.write_str("[")?;
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str("]")
            }
            ExprKind::Neg(e) => write!(f, "-{e}"),
            ExprKind::Not(e) => write!(f, "not {e}"),
            ExprKind::Index { base, index } => write!(f, "{base}[{index}]"),
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => write!(f, "(if {cond} then {then} else {otherwise})"),
            ExprKind::Binary { op, lhs, rhs } => write!(f, "({lhs} {op} {rhs})"),
        }
    }
}
