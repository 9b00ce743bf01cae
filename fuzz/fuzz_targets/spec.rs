//! Spec text through parsing, lowering, the whole pass pipeline and the verifier
//! (small unroll limits, so one input stays fast), and an encoder-decoder's split
//! into its two programs; a graph that compiles and is small is also run in the
//! interpreter on random weights and inputs, as it is and with its matmuls'
//! weights stored as q4_0. Any panic is a bug: bad text must
//! become a diagnostic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moec_compiler::driver::Compiler;
use moec_compiler::ir::WeightFormat;
use moec_compiler::lower::Limits;
use moec_compiler::storage::Storage;
use moec_compiler::verify;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits {
        layers: 16,
        experts: 64,
        nodes: 20_000,
    };
    let Ok(compiled) = Compiler::new()
        .limits(limits)
        .compile_source("fuzz.moe", text)
    else {
        return;
    };
    let g = compiled.graph;
    let _ = moec_compiler::passes::stages::split(&g);
    let values: usize = g
        .weights
        .iter()
        .map(|w| w.shape.iter().product::<usize>())
        .sum();
    if values > 1 << 16 || g.is_stateful() {
        return;
    }
    // Also with every matmul's weights stored as q4_0 (`--weight-format`): the
    // choice must verify, and the interpreter computes those matmuls apart.
    let mut stored = g.clone();
    Storage::matmuls(WeightFormat::Q4_0).apply(&mut stored);
    verify::verify(&stored).expect("a stored weight format on a verified graph verifies");
    let weights = moec_runtime::random::random_weights(&g.weights, 1);
    for tokens in [0, 3] {
        let inputs = moec_runtime::random::random_inputs(&g, tokens, 2);
        let _ = moec_compiler::interp::run(&g, &weights, &inputs);
        let _ = moec_compiler::interp::run(&stored, &weights, &inputs);
    }
});
