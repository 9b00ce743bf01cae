//! The pass pipeline, declared once as a list of named steps. Each pass lives
//! in its own file as `fn run(&mut Graph) -> Result<bool, String>` (true when it
//! changed the graph); `run_pipeline` runs them in order and can verify after
//! each step and stop after any of them (`moec graph --after NAME`).

use crate::ir::Graph;
use crate::verify::verify;

pub mod canonicalize;
pub mod fuse_experts;
pub mod fuse_router;
pub mod last_token;
pub mod memory;
pub mod partition;
pub mod rewrite;
pub mod schedule;
pub mod stages;

/// A pass: rewrites the graph, says whether it changed anything.
pub type PassFn = fn(&mut Graph) -> Result<bool, String>;

/// The pipeline, in order. Names are unique; `--after NAME` refers to them.
pub const PIPELINE: &[(&str, PassFn)] = &[
    ("canonicalize", canonicalize::run),
    ("fuse_router", fuse_router::run),
    ("fuse_experts", fuse_experts::run),
    ("schedule", schedule::run),
    ("cleanup", canonicalize::run),
];

/// The names of the pipeline's steps, in order.
pub fn names() -> Vec<&'static str> {
    PIPELINE.iter().map(|(n, _)| *n).collect()
}

/// Which steps to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upto<'a> {
    /// No passes: the graph as lowered.
    None,
    /// Every step.
    All,
    /// Every step up to and including this one.
    After(&'a str),
}

/// Runs the pipeline up to `upto`. With `check`, verifies after every step and
/// names the step that broke an invariant.
pub fn run_pipeline(g: &mut Graph, upto: Upto, check: bool) -> Result<(), String> {
    if let Upto::After(name) = upto {
        if !PIPELINE.iter().any(|(n, _)| *n == name) {
            return Err(format!(
                "no pass named `{name}`; the pipeline is: {}",
                names().join(", ")
            ));
        }
    }
    if upto == Upto::None {
        return Ok(());
    }
    for (name, pass) in PIPELINE {
        pass(g).map_err(|e| format!("pass `{name}`: {e}"))?;
        if check {
            verify(g).map_err(|e| format!("after pass `{name}`: {e}"))?;
        }
        if upto == Upto::After(name) {
            break;
        }
    }
    Ok(())
}
