//! The GPU backend (WGSL on wgpu) against the reference interpreter, on whatever
//! adapter wgpu finds — Mesa's software Vulkan driver in CI: every example,
//! scheduled and dense, at 0, 1 and odd token counts; routing that leaves all
//! experts but one empty; capacity drops; weights split across bindings; f16
//! weights where the adapter has them; random specs (few: software is slow);
//! attention variants (partial, interleaved and llama3 rope, GQA, windows,
//! sinks, non-causal) call after call through sessions whose KV caches stay on
//! the device, two sessions interleaved on one model; caches too large for a
//! binding refused. Whole models: `tests/models.rs`.

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
use moec_runtime::session::{Engine, Model, Session};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::rc::Rc;

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

/// Three attention layers between them covering every attention and rope
/// variant, with room for more keys than one tile of the kernel (64).
const ATTENTION: &str = "model attn {
  param max_position_embeddings = 160
  input x: f32[tokens, 16]
  rotary partial { head_dim = 4 rotary_dim = 2 theta = 500.0 }
  rotary pairs {
    head_dim = 4 interleaved = true type = \"llama3\" factor = 8.0
    original_max_position_embeddings = 8
  }
  let q_proj = linear(x, 16)
  let q = rmsnorm(q_proj, eps = 1e-6, head_dim = 4)
  let k = linear(x, 8)
  let v = linear(x, 12)
  let a = attention(rope(q, partial), rope(k, partial), v, heads = 4, kv_heads = 2, window = 3, sinks = true)
  let b = attention(rope(q, pairs), rope(k, pairs), v, heads = 4, kv_heads = 2, causal = false)
  let k_one = linear(x, 4)
  let v_one = linear(x, 6)
  let c = attention(q, k_one, v_one, heads = 4, kv_heads = 1)
  output a
  output b
  output c
}";

fn session_on(g: &Graph, w: &[Tensor], engine: Engine) -> Session {
    Rc::new(Model::new(g.clone(), w.to_vec(), engine).unwrap()).session(None)
}

/// Calls of 70, 1, 1 and 75 tokens (three key tiles) through one session per
/// engine, twice over on the GPU with the two sessions' calls interleaved on one model.
#[test]
fn attention_call_after_call_matches_the_interpreter() {
    let g = graph(ATTENTION, &[], Upto::All);
    let w = weights(&g, 3);
    let gpu =
        Rc::new(Model::new(g.clone(), w.clone(), Engine::Gpu(GpuOptions::default())).unwrap());
    let mut on_gpu = [gpu.session(None), gpu.session(None)];
    let mut on_interp = [
        session_on(&g, &w, Engine::Interp),
        session_on(&g, &w, Engine::Interp),
    ];
    for (call, t) in [70, 1, 1, 75].into_iter().enumerate() {
        for s in 0..2 {
            let x: BTreeMap<String, Tensor> = inputs(&g, t, (10 * call + s) as u64);
            let want = on_interp[s].run(&x).unwrap();
            let got = on_gpu[s].run(&x).unwrap();
            assert_outputs_close(
                &got,
                &want,
                REL,
                &format!("session {s}, call {call} ({t} tokens)"),
            );
        }
    }
    assert_eq!(on_gpu[0].position(), 147);
}

#[test]
fn kv_caches_larger_than_a_binding_are_refused_with_both_numbers() {
    let g = graph(ATTENTION, &[], Upto::All);
    let options = GpuOptions {
        max_binding_bytes: Some(300),
        ..GpuOptions::default()
    };
    let err = GpuModel::new(&g, &weights(&g, 1), options).err().unwrap();
    assert!(
        err.contains("KV cache")
            && err.contains("needs 5120 bytes for 160 positions")
            && err.contains("(300 bytes)"),
        "{err}"
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
