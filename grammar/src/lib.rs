//! The `.moe` language front end: the pest grammar (`moe.pest`), the AST with
//! byte spans, and parse errors as plain data.
//!
//! This crate knows nothing of the IR: it turns text into an [`ast::Spec`] or a
//! [`ParseError`] and stops there. Rendering errors with source snippets is the
//! caller's business (the compiler's `diagnostics` module does it).

pub mod ast;
mod parse;

pub use ast::Span;
pub use parse::{parse, parse_expr, ParseError};
