//! `sinusoidal_positions(ids, width, offset = N)`: fairseq's fixed sinusoidal
//! position embeddings (M2M100, NLLB), a value computed from positions alone
//! (no weight). The positions depend on where the ids come from: a `source`
//! sequence is given whole, so its positions are its row numbers (`RowPositions`
//! of the ids: an encoder node, as `passes::stages` decides from operands); any
//! other sequence continues from the positions the KV caches hold (`Positions`,
//! stateful: a decoder node).

use super::bind::WeightPath;
use super::consts::{eval_const, Const};
use super::expr::Args;
use super::{Lowerer, Scope};
use crate::diagnostic::Diagnostic;
use crate::ir::{DType, Op, Value};
use moec_grammar::ast::{Arg, Expr};

impl Lowerer<'_> {
    pub(super) fn sinusoidal_positions(
        &mut self,
        e: &Expr,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<Value, Diagnostic> {
        let usage = "sinusoidal_positions(ids, width, offset = N)";
        let a = Args::new(e, "sinusoidal_positions", args, &["offset"])?;
        let [ids_expr, width_expr] = a.positional::<2>(usage)?;
        let ids = self.tensor(ids_expr, scope, path)?;
        let ty = self.graph.value_type(ids).clone();
        if ty.dtype != DType::I32 || ty.rank() != 1 {
            return Err(Diagnostic::at(
                ids_expr.span,
                format!("sinusoidal positions count the rows of i32 token ids, this is {ty}"),
                "not token ids",
            )
            .with_help(
                "pass the ids the embedding reads: `sinusoidal_positions(input_ids, d_model)`",
            ));
        }
        let width = self.dim(width_expr)?;
        if width < 4 {
            return Err(Diagnostic::at(
                width_expr.span,
                format!("sinusoidal position embeddings need a width of at least 4, found {width}"),
                format!("width {width}"),
            )
            .with_help("the table's frequencies divide by width / 2 - 1"));
        }
        let offset = match a.named("offset") {
            None => 0,
            Some(o) => match eval_const(o, &self.params)? {
                Const::Int(v) if v >= 0 => v as u64,
                other => return Err(bad_offset(o, other)),
            },
        };
        let positions = if ty.shape[0].uses_source() {
            self.node(Op::RowPositions, &[ids], None, e.span)?
        } else {
            match self.positions {
                Some(p) => p,
                None => {
                    let p = self.node(Op::Positions, &[], Some("positions".into()), e.span)?;
                    self.positions = Some(p);
                    p
                }
            }
        };
        self.node(Op::Sinusoidal { width, offset }, &[positions], None, e.span)
    }
}

fn bad_offset(o: &Expr, value: Const) -> Diagnostic {
    Diagnostic::at(
        o.span,
        format!("the position offset must be an integer of at least 0, `{o}` is {value}"),
        "expected an integer ≥ 0",
    )
    .with_help("fairseq's tables start at padding_idx + 1: `offset = pad_token_id + 1`")
}
