//! The graph IR.
pub mod weight;
