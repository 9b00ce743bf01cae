//! Compile-time control flow: `if` statements (the taken branch is lowered in place
//! of the statement, so its `let`s stay visible after it), the `repeat` variable as
//! an integer constant, and the per-layer outputs of a `repeat` gathered for stacking.

use super::bind::WeightPath;
use super::{Lowerer, Scope};
use crate::diagnostic::Diagnostic;
use crate::ir::Value;
use moec_grammar::ast::{self, ExprKind, Ident};

impl Lowerer<'_> {
    /// Lowers the body of the first branch whose condition holds (else the `else`
    /// body) into `scope`; the other branches are not lowered.
    pub(super) fn if_stmt(
        &mut self,
        i: &ast::If,
        scope: &mut Scope,
        layer: Option<&WeightPath>,
        outputs: &mut Vec<(Ident, Value)>,
    ) -> Result<(), Diagnostic> {
        let mut taken = &i.otherwise;
        for branch in &i.branches {
            if self.condition(&branch.cond, scope)? {
                taken = &branch.body;
                break;
            }
        }
        let bodies = i.branches.iter().map(|b| &b.body).chain([&i.otherwise]);
        for body in bodies.filter(|b| !std::ptr::eq(*b, taken)) {
            self.skip_weights(body);
        }
        for stmt in taken {
            self.stmt(stmt, scope, layer, outputs)?;
        }
        Ok(())
    }

    /// Tells the binder which weight keys the statements of a branch not taken
    /// would have made: a `let`'s name, or for a `moe` its router's name and its
    /// expert keys.
    fn skip_weights(&mut self, body: &[ast::Stmt]) {
        for stmt in body {
            match stmt {
                ast::Stmt::Let(l) | ast::Stmt::Assign(l) => {
                    self.binder.skipped(&l.name.name);
                    if let ExprKind::Call { func, args } = &l.value.kind {
                        if func.name == "moe" {
                            for key in ["experts", "shared", "shared_gate"] {
                                self.binder.skipped(key);
                            }
                            let router = args
                                .iter()
                                .find(|a| a.name.as_ref().is_some_and(|n| n.name == "router"));
                            if let Some(ExprKind::Path(p)) = router.map(|a| &a.value.kind) {
                                self.binder.skipped(&p[0].name);
                            }
                        }
                    }
                }
                ast::Stmt::If(i) => {
                    for b in &i.branches {
                        self.skip_weights(&b.body);
                    }
                    self.skip_weights(&i.otherwise);
                }
                ast::Stmt::Output { .. } => {}
            }
        }
    }

    /// The repeat variable is a constant inside the body: its name must be free.
    pub(super) fn declare_repeat_var(
        &mut self,
        var: &Ident,
        scope: &Scope,
    ) -> Result<(), Diagnostic> {
        let prev = scope
            .vars
            .get(&var.name)
            .map(|(_, span)| *span)
            .or_else(|| self.declared.get(&var.name).copied());
        if let Some(prev) = prev {
            return Err(Diagnostic::at(
                var.span,
                format!("the repeat variable `{var}` is already defined"),
                "the layer index is named here",
            )
            .with_related(prev, "defined here")
            .with_help("give the layer index a name that no param, input or value has"));
        }
        self.declared.insert(var.name.clone(), var.span);
        Ok(())
    }
}

/// Each output of a `repeat` body with its values in the layers that define it, in
/// layer order (an output inside an `if` branch, such as the router logits of the
/// layers that have a `moe`, stacks over the layers that took the branch), in the
/// order the outputs are first defined.
pub(super) fn stack_by_name(layers: Vec<Vec<(Ident, Value)>>) -> Vec<(Ident, Vec<Value>)> {
    let mut stacked: Vec<(Ident, Vec<Value>)> = Vec::new();
    for outputs in layers {
        for (name, v) in outputs {
            match stacked.iter_mut().find(|(n, _)| n.name == name.name) {
                Some((_, values)) => values.push(v),
                None => stacked.push((name, vec![v])),
            }
        }
    }
    stacked
}
