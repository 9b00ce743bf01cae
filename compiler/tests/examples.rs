//! Every bundled example lowers, verifies, and its IR text matches the snapshot.

mod common;

use common::small_dims;
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
