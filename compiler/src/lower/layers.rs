//! Layers with their own weights that a `let` names: `linear` (optional bias, or
//! the table of an embedding reused with `tied = EMB`) and the norms (`rmsnorm`,
//! per head with `head_dim`, and `layernorm`). Arguments are checked here, with the
//! spec's spans; `let_value` in `mod.rs` dispatches to them.

use super::bind::{Seg, WeightPath};
use super::expr::Args;
use super::{Lowerer, Scope, Val};
use crate::diagnostic::Diagnostic;
use crate::ir::{Dim, F32Bits, Op, Value};
use moec_grammar::ast::{Arg, Expr, ExprKind, Ident};

impl Lowerer<'_> {
    /// `linear(x, out)` or `linear(x, out, bias = true)`.
    pub(super) fn linear(
        &mut self,
        e: &Expr,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
        label: Option<String>,
    ) -> Result<Value, Diagnostic> {
        let a = Args::new(e, "linear", args, &["bias", "tied"])?;
        let [x, out] = a.positional::<2>("linear(x, out)")?;
        let x = self.tensor(x, scope, path)?;
        let out = self.dim(out)?;
        let bias = self.weight_flag(a.named("bias"), "bias", &path.child(Seg::name("bias")))?;
        let width = self.width(x, e.span)?;
        let w = match a.named("tied") {
            Some(t) => {
                self.binder.absent(path);
                self.tied_table(t, scope, out, width)?
            }
            None => self.weight(path, vec![out as usize, width as usize], e.span)?,
        };
        let mut operands = vec![x, w];
        if bias {
            operands.push(self.weight(
                &path.child(Seg::name("bias")),
                vec![out as usize],
                e.span,
            )?);
        }
        self.node(Op::Linear { bias }, &operands, label, e.span)
    }

    /// `tied = NAME`: the table of the embedding `NAME`, reused as an `[out, width]`
    /// weight (tied input and output embeddings).
    pub(super) fn tied_table(
        &mut self,
        t: &Expr,
        scope: &Scope,
        out: u64,
        width: u64,
    ) -> Result<Value, Diagnostic> {
        let not_embedding = || {
            Diagnostic::at(
                t.span,
                format!("`tied = {t}` must name an embedding"),
                "not an embedding",
            )
            .with_help(
                "write `let embed_tokens = embedding(ids, vocab, width)` and `tied = embed_tokens`",
            )
        };
        let v = match &t.kind {
            ExprKind::Path(p) if p.len() == 1 => match scope.vars.get(&p[0].name) {
                Some((Val::Tensor(v), _)) => *v,
                _ => return Err(not_embedding()),
            },
            _ => return Err(not_embedding()),
        };
        if self.graph.node(v.node).op != Op::Embedding {
            return Err(not_embedding());
        }
        let table = self.graph.operands(v.node)[1];
        let shape = &self.graph.value_type(table).shape;
        if shape.as_slice() != [Dim::fixed(out), Dim::fixed(width)] {
            return Err(Diagnostic::at(
                t.span,
                format!(
                    "the embedding table is {}, this linear needs [{out}, {width}]",
                    self.graph.value_type(table)
                ),
                "shapes differ",
            ));
        }
        Ok(table)
    }

    pub(super) fn norm(
        &mut self,
        e: &Expr,
        func: &Ident,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
        label: Option<String>,
    ) -> Result<Value, Diagnostic> {
        let layer_norm = func.name == "layernorm";
        let allowed: &[&str] = if layer_norm {
            &["eps"]
        } else {
            &["eps", "head_dim"]
        };
        let a = Args::new(e, &func.name, args, allowed)?;
        let [x] = a.positional::<1>(&format!("{func}(x, eps = ...)"))?;
        let x = self.tensor(x, scope, path)?;
        let eps = match a.named("eps") {
            Some(v) => self.float(v, "eps")?,
            None if layer_norm => 1e-5,
            None => 1e-6,
        };
        if eps <= 0.0 {
            return Err(Diagnostic::at(
                e.span,
                format!("eps must be positive, found {eps}"),
                "here",
            ));
        }
        let width = self.width(x, e.span)?;
        // `head_dim = D`: each group of D values (one head) is normalized on its own.
        let d = match a.named("head_dim") {
            Some(h) => {
                let d = self.dim(h)?;
                if width % d != 0 {
                    return Err(Diagnostic::at(
                        h.span,
                        format!("head_dim {d} does not divide the width {width} of the input"),
                        "here",
                    ));
                }
                d
            }
            None => width,
        } as usize;
        let eps = F32Bits::new(eps as f32);
        let mut operands = vec![x, self.weight(path, vec![d], e.span)?];
        let op = if layer_norm {
            operands.push(self.weight(&path.child(Seg::name("bias")), vec![d], e.span)?);
            Op::LayerNorm { eps }
        } else {
            Op::RmsNorm { eps }
        };
        self.node(op, &operands, label, e.span)
    }
}
