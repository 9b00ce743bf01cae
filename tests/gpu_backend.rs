//! The GPU backend (WGSL on wgpu) against the reference interpreter, on whatever
//! adapter wgpu finds — Mesa's software Vulkan driver in CI: every example,
//! scheduled and dense, at 0, 1 and odd token counts; routing that leaves all
//! experts but one empty; capacity drops; weights split across bindings; f16
//! weights where the adapter has them; random specs (few: software is slow).

mod backends;
#[path = "../compiler/tests/common/mod.rs"]
mod common;

use backends::{
    assert_scheduled, clamped_glu_cases, example, example_cases, graph, random_layer,
    routing_cases, REL,
};
use common::{assert_outputs_close, inputs, small_dims, weights};
use moec_compiler::interp;
use moec_compiler::ir::Graph;
use moec_compiler::passes::Upto;
use moec_compiler::tensor::Tensor;
use moec_runtime::gpu::{GpuModel, GpuOptions};
use proptest::prelude::*;

/// Token counts every example runs at: none, one, odd sizes and a smaller count after a larger one (reused buffers).
const TOKENS: [usize; 5] = [0, 1, 7, 33, 5];

/// Runs `g` on the GPU and the interpreter at each token count and compares,
/// reusing one model across token counts (and growing its buffers).
fn check(g: &Graph, w: &[Tensor], tokens: &[usize], what: &str) {
    check_with(g, w, tokens, what, GpuOptions::default(), REL);
}

fn check_with(
    g: &Graph,
    w: &[Tensor],
    tokens: &[usize],
    what: &str,
    options: GpuOptions,
    rel: f32,
) {
    let model = GpuModel::new(g, w, options).unwrap_or_else(|e| panic!("{what}: {e}"));
    for &t in tokens {
        let x = inputs(g, t, t as u64);
        let want = interp::run(g, w, &x).unwrap();
        let got = model.run(&x).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_outputs_close(
            &got,
            &want,
            rel,
            &format!("{what}, {t} tokens on {}", model.adapter()),
        );
    }
}

#[test]
fn examples_match_the_interpreter() {
    for c in example_cases(&TOKENS) {
        check(&c.graph, &c.weights, &c.tokens, &c.what);
    }
}

#[test]
fn clamped_glu_epilogue_matches() {
    for c in clamped_glu_cases() {
        check(&c.graph, &c.weights, &c.tokens, &c.what);
    }
}

#[test]
fn routing_edge_cases_match() {
    for c in routing_cases() {
        check(&c.graph, &c.weights, &c.tokens, &c.what);
    }
}

/// Column slices of every head (and of whole rows), as multi-head latent attention splits
/// its projections.
#[test]
fn per_head_slices_match() {
    let source = "model m { input x: f32[tokens, 12]
        let rot = slice(x, start = 2, len = 2, heads = 3)
        let tail = slice(x, start = 9, len = 3)
        output y = slice(rot, start = 1, len = 1, heads = 3) + tail
        output rot }";
    let g = graph(source, &[], Upto::All);
    check(&g, &[], &TOKENS, "per-head slices");
}

/// More rows than one tile and experts holding several tiles each.
#[test]
fn many_tokens_span_tiles() {
    let source = example("mixtral.moe");
    let g = graph(&source, &small_dims(&source), Upto::All);
    check(&g, &weights(&g, 5), &[150], "mixtral, 150 tokens");
}

/// f16 weight storage, compared with the interpreter on the same f16-rounded weights.
#[test]
fn f16_weights_match_on_rounded_weights() {
    let source = example("mixtral.moe");
    let g = graph(&source, &small_dims(&source), Upto::All);
    let w: Vec<Tensor> = weights(&g, 9)
        .into_iter()
        .map(|t| {
            let rounded = t
                .as_f32()
                .iter()
                .map(|v| half::f16::from_f32(*v).to_f32())
                .collect();
            Tensor::f32(t.shape.clone(), rounded)
        })
        .collect();
    // Not a skip: CI's adapter (Mesa lavapipe) has shader-f16, and so does every GPU
    // the f16 path is for; the CLI test `f16_weights_are_a_gpu_option` relies on it too.
    let probe = GpuModel::new(&g, &w, GpuOptions::default()).unwrap();
    assert!(
        probe.adapter().f16,
        "{} has no shader-f16, so the f16 weight path cannot be checked",
        probe.adapter()
    );
    let options = GpuOptions {
        f16_weights: true,
        ..GpuOptions::default()
    };
    check_with(&g, &w, &[1, 9], "mixtral f16", options, REL);
}

/// Expert weights split across many small bindings give the same results.
#[test]
fn weights_split_across_bindings_match() {
    let source = example("mixtral.moe");
    let g = graph(&source, &small_dims(&source), Upto::All);
    let options = GpuOptions {
        max_binding_bytes: Some(1000),
        ..GpuOptions::default()
    };
    let w = weights(&g, 4);
    let model = GpuModel::new(&g, &w, options).unwrap();
    let chunks = model.plan().buffers.iter().filter(|b| b.name.contains('#'));
    assert!(chunks.count() > 8, "weights were not split");
    check_with(
        &g,
        &w,
        &[1, 40],
        "mixtral, 1000-byte bindings",
        options,
        REL,
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    #[test]
    fn random_specs_match_the_interpreter((source, seed, tokens) in random_layer()) {
        let g = graph(&source, &[], Upto::All);
        let what = format!("seed {seed}:\n{source}");
        assert_scheduled(&g, &what);
        check(&g, &weights(&g, seed), &[tokens], &what);
    }
}
