//! Limits on what lowering unrolls: layers per `repeat`, experts per `moe`, and
//! nodes in the whole graph. A spec is small but its params multiply; a mistyped
//! `--set num_hidden_layers=100000000` would otherwise run for minutes and take
//! gigabytes before anything could fail. Each limit is checked before the work it
//! bounds, and its error names the limit and how to raise it (`--limit NAME=N`).
//!
//! Expression and `if` nesting are bounded by the parser, not here.

use crate::diagnostic::Diagnostic;
use moec_grammar::Span;
use std::fmt;

/// The largest structure lowering unrolls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Iterations of one `repeat` (the largest released MoE models have ~100 layers).
    pub layers: u64,
    /// Experts of one `moe` call, all groups together (released models: ≤ 384).
    pub experts: u64,
    /// Nodes of the lowered graph (Mixtral 8x7B's 32 layers lower to ~2,500).
    pub nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            layers: 1024,
            experts: 4096,
            nodes: 1_000_000,
        }
    }
}

/// What a limit bounds, for its error.
#[derive(Clone, Copy)]
pub enum Limit {
    Layers,
    Experts,
    Nodes,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Layers => "layers",
            Limit::Experts => "experts",
            Limit::Nodes => "nodes",
        })
    }
}

impl Limits {
    /// One limit from `NAME=N` text (`--limit layers=4096`).
    pub fn parse(text: &str) -> Result<(Limit, u64), String> {
        let names = "layers, experts, nodes";
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=N (NAME one of {names}), found `{text}`"))?;
        let n = value
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not a whole number", value.trim()))?;
        let what = match name.trim() {
            "layers" => Limit::Layers,
            "experts" => Limit::Experts,
            "nodes" => Limit::Nodes,
            other => return Err(format!("no limit named `{other}`; limits: {names}")),
        };
        Ok((what, n))
    }

    /// These limits with `what` set to `n`.
    pub fn with(mut self, what: Limit, n: u64) -> Limits {
        match what {
            Limit::Layers => self.layers = n,
            Limit::Experts => self.experts = n,
            Limit::Nodes => self.nodes = usize::try_from(n).unwrap_or(usize::MAX),
        }
        self
    }

    /// An error at `span` when `count` of `what` exceeds its limit.
    pub fn check(&self, what: Limit, count: u64, span: Span) -> Result<(), Diagnostic> {
        let limit = match what {
            Limit::Layers => self.layers,
            Limit::Experts => self.experts,
            Limit::Nodes => self.nodes as u64,
        };
        if count <= limit {
            return Ok(());
        }
        let message = match what {
            Limit::Nodes => format!("the unrolled graph exceeds the limit of {limit} nodes"),
            _ => format!("{count} {what} exceed the limit of {limit} {what}"),
        };
        Err(
            Diagnostic::at(span, message, format!("too many {what}")).with_help(format!(
                "raise the limit with `--limit {what}=N` if this is intended"
            )),
        )
    }
}
