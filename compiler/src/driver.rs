//! The compile driver as a library: a spec file, the params a checkpoint's
//! `config.json` and `--set` give it, and how far to run the pass pipeline in;
//! the verified graph out. The CLI, the benchmarks and tests all compile through
//! here, so they cannot drift apart; the CLI only parses arguments and prints.
//!
//! Errors stay data ([`CompileError`]) until a caller renders them; a spec's
//! diagnostics render against its own text, naming the file, line and column.

use crate::config::{ConfigError, HfConfig};
use crate::diagnostic::Diagnostic;
use crate::ir::Graph;
use crate::lower::{lower, Const, Limits, ParamInputs, ParamSource};
use crate::passes::{run_pipeline, Upto};
use std::fmt;
use std::path::{Path, PathBuf};

/// A spec compiled to a graph.
#[derive(Debug)]
pub struct Compiled {
    pub graph: Graph,
    /// Every param with its value and where the value came from.
    pub params: Vec<(String, Const, ParamSource)>,
    /// Warnings and notes (never errors), rendered against the spec.
    pub notes: Vec<String>,
}

/// Why a spec did not compile.
#[derive(Debug)]
pub enum CompileError {
    /// The spec file could not be read.
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The checkpoint's config.json is malformed.
    Config(ConfigError),
    /// The spec is wrong: a diagnostic rendered against its text.
    Spec { rendered: String },
    /// A pass broke a graph invariant: a compiler bug.
    Internal(String),
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::Read { path, error } => {
                write!(f, "{}: cannot read the spec: {error}", path.display())
            }
            CompileError::Config(e) => write!(f, "{e}"),
            CompileError::Spec { rendered } => f.write_str(rendered),
            CompileError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for CompileError {}

/// What to compile a spec with.
#[derive(Clone, Debug)]
pub struct Compiler<'a> {
    sets: Vec<(String, String)>,
    checkpoint: Option<PathBuf>,
    limits: Limits,
    upto: Upto<'a>,
    verify: bool,
}

impl Default for Compiler<'_> {
    fn default() -> Self {
        Compiler {
            sets: Vec::new(),
            checkpoint: None,
            limits: Limits::default(),
            upto: Upto::All,
            verify: true,
        }
    }
}

impl<'a> Compiler<'a> {
    pub fn new() -> Compiler<'a> {
        Compiler::default()
    }

    /// Params from this checkpoint's config.json (a directory, or the config file
    /// itself); a directory without one gives none.
    pub fn checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(path.into());
        self
    }

    /// `--set name=value` overrides, applied after config.json.
    pub fn sets(mut self, sets: impl IntoIterator<Item = (String, String)>) -> Self {
        self.sets.extend(sets);
        self
    }

    /// How much lowering may unroll (`--limit`).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How far to run the pass pipeline (all of it by default).
    pub fn upto(mut self, upto: Upto<'a>) -> Self {
        self.upto = upto;
        self
    }

    /// Compiles the spec in `path`.
    pub fn compile_file(&self, path: &Path) -> Result<Compiled, CompileError> {
        let source = std::fs::read_to_string(path).map_err(|error| CompileError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        self.compile_source(&path.display().to_string(), &source)
    }

    /// Compiles spec text; `name` is the file name its diagnostics show.
    pub fn compile_source(&self, name: &str, source: &str) -> Result<Compiled, CompileError> {
        let config = match &self.checkpoint {
            Some(dir) => HfConfig::open(dir).map_err(CompileError::Config)?,
            None => None,
        };
        let inputs = ParamInputs {
            sets: self.sets.clone(),
            config,
            limits: self.limits,
        };
        let lowered = moec_grammar::parse(source)
            .map_err(Diagnostic::from)
            .and_then(|spec| lower(&spec, &inputs))
            .map_err(|d| CompileError::Spec {
                rendered: d.render(name, source),
            })?;
        let mut graph = lowered.graph;
        run_pipeline(&mut graph, self.upto, self.verify).map_err(CompileError::Internal)?;
        Ok(Compiled {
            graph,
            params: lowered.params,
            notes: lowered
                .notes
                .iter()
                .map(|n| n.render(name, source))
                .collect(),
        })
    }
}
