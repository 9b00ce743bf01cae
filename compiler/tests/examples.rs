//! Every bundled example lowers, verifies, and its IR text matches the snapshot.

use moec_compiler::lower::lower_source;
use moec_compiler::{print, verify};

#[test]
fn examples_lower_to_verified_ir() {
    insta::glob!("../../examples", "*.moe", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let lowered = lower_source(&source, &small_dims(&source))
            .unwrap_or_else(|d| panic!("{}", d.render(&path.display().to_string(), &source)));
        verify::verify(&lowered.graph).unwrap();
        insta::assert_snapshot!(print::text(&lowered.graph));
    });
}

/// Overrides that shrink the real models' dims so snapshots stay readable: every
/// example keeps its structure, only the widths shrink.
fn small_dims(source: &str) -> Vec<(String, String)> {
    [
        ("hidden_size", "8"),
        ("d_model", "8"),
        ("intermediate_size", "16"),
        ("moe_intermediate_size", "16"),
        ("shared_expert_intermediate_size", "16"),
        ("d_ff", "16"),
        ("num_hidden_layers", "2"),
    ]
    .iter()
    .filter(|(k, _)| source.contains(&format!("param {k} ")))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
