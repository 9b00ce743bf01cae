//! Columns of rows split into heads: `slice(x, start = S, len = L, heads = H)` keeps
//! columns `S..S+L` of each of x's H heads, and `concat(a, b, heads = H)` joins a's
//! heads with b's, head by head (`broadcast = true`: b's one head joins every head).
//! Without `heads` (one head) they slice and join whole rows. Multi-head latent
//! attention splits its projections and builds its keys from these.

use super::bind::WeightPath;
use super::consts::{eval_const, Const};
use super::expr::Args;
use super::{Lowerer, Scope};
use crate::diagnostic::Diagnostic;
use crate::ir::{Op, Value};
use moec_grammar::ast::{Arg, Expr};
use moec_grammar::Span;

impl Lowerer<'_> {
    /// `slice(x, start = S, len = L)` or `slice(x, start = S, len = L, heads = H)`.
    pub(super) fn slice(
        &mut self,
        e: &Expr,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<Value, Diagnostic> {
        let a = Args::new(e, "slice", args, &["start", "len", "heads"])?;
        let [x] = a.positional::<1>("slice(x, start = S, len = L, heads = H)")?;
        let x_span = x.span;
        let x = self.tensor(x, scope, path)?;
        let required = |n: &str| {
            a.named(n).ok_or_else(|| {
                Diagnostic::at(
                    e.span,
                    format!("slice needs `{n} = ...`"),
                    "missing argument",
                )
                .with_help("usage: slice(x, start = S, len = L, heads = H)")
            })
        };
        let start_expr = required("start")?;
        let start = self.index(start_expr, "start")?;
        let len = self.int(required("len")?, "len")?;
        let heads = self.heads(a.named("heads"))?;
        let head = self.head_width(x, heads, x_span, a.named("heads"))?;
        if start + len > head {
            return Err(Diagnostic::at(
                start_expr.span,
                format!(
                    "columns {start}..{} do not fit in heads of {head} columns",
                    start + len
                ),
                "past the end of a head",
            ));
        }
        self.node(Op::SliceCols { heads, start, len }, &[x], None, e.span)
    }

    /// `concat(a, b)`, `concat(a, b, heads = H)`, `concat(a, b, heads = H, broadcast = true)`.
    pub(super) fn concat(
        &mut self,
        e: &Expr,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<Value, Diagnostic> {
        let a = Args::new(e, "concat", args, &["heads", "broadcast"])?;
        let [first, second] = a.positional::<2>("concat(a, b, heads = H)")?;
        let (a_span, b_span) = (first.span, second.span);
        let (x, y) = (
            self.tensor(first, scope, path)?,
            self.tensor(second, scope, path)?,
        );
        let heads = self.heads(a.named("heads"))?;
        let broadcast = match a.named("broadcast") {
            Some(b) => self.bool(b, "broadcast")?,
            None => false,
        };
        self.head_width(x, heads, a_span, a.named("heads"))?;
        let b_heads = if broadcast { 1 } else { heads };
        self.head_width(y, b_heads, b_span, a.named("heads"))?;
        let (tx, ty) = (self.graph.value_type(x), self.graph.value_type(y));
        if tx.shape[0] != ty.shape[0] {
            return Err(Diagnostic::at(
                e.span,
                format!("concat joins rows one by one, but {tx} and {ty} have different rows"),
                "rows differ",
            )
            .with_related(a_span, format!("this is {tx}"))
            .with_related(b_span, format!("this is {ty}")));
        }
        self.node(Op::ConcatCols { heads, broadcast }, &[x, y], None, e.span)
    }

    /// `heads = H`, or one head.
    fn heads(&self, heads: Option<&Expr>) -> Result<u64, Diagnostic> {
        heads.map_or(Ok(1), |h| self.int(h, "heads"))
    }

    /// A non-negative integer (a column index).
    fn index(&self, e: &Expr, what: &str) -> Result<u64, Diagnostic> {
        match eval_const(e, &self.params)? {
            Const::Int(v) if v >= 0 => Ok(v as u64),
            other => Err(Diagnostic::at(
                e.span,
                format!("{what} must be an integer ≥ 0, `{e}` is {other}"),
                "expected a column index",
            )),
        }
    }

    /// The width of one of the `heads` heads of the `[rows, width]` value `v`.
    fn head_width(
        &self,
        v: Value,
        heads: u64,
        span: Span,
        heads_arg: Option<&Expr>,
    ) -> Result<u64, Diagnostic> {
        let width = self.width(v, span)?;
        if !width.is_multiple_of(heads) {
            let d = Diagnostic::at(
                span,
                format!("this is {width} wide, which is not {heads} whole heads"),
                format!("{width} wide"),
            );
            return Err(match heads_arg {
                Some(h) => d.with_related(h.span, format!("{heads} heads")),
                None => d,
            });
        }
        Ok(width / heads)
    }
}
