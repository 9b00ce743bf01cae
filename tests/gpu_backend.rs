//! The GPU backend (WGSL on wgpu) against the reference interpreter, on whatever
//! adapter wgpu finds — Mesa's software Vulkan driver in CI: every example,
//! scheduled and dense, at 0, 1 and odd token counts; routing that leaves all
//! experts but one empty; capacity drops; weights split across bindings; f16
//! weights where the adapter has them; random specs (few: software is slow);
//! attention variants (partial, interleaved and llama3 rope, GQA, windows,
//! sinks, non-causal, T5's relative bias past its max distance) call after call
//! through sessions whose KV caches stay on the device, two sessions interleaved
//! on one model; caches too large for a binding refused; an encoder-decoder
//! checkpoint's two stages (encoder, then the decoder over its outputs, at once
//! and token by token). Whole models: `tests/models.rs`.

mod backends;
#[path = "../compiler/tests/common/mod.rs"]
mod common;

use backends::{
    assert_scheduled, clamped_glu_cases, example, example_cases, graph, random_layer,
    routing_cases, REL,
};
use common::{assert_outputs_close, inputs, small_dims, weights};
use moec_compiler::driver::Compiler;
use moec_compiler::interp;
use moec_compiler::ir::Graph;
use moec_compiler::passes::{stages, Upto};
use moec_compiler::tensor::Tensor;
use moec_runtime::gpu::{GpuModel, GpuOptions};
use moec_runtime::session::{Engine, Model, Session};
use moec_runtime::{bind, WeightSource};
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

/// T5's relative position bias: bidirectional without a mask (an encoder's) and
/// causal with a KV cache (a decoder's), 8 buckets of max distance 5, so most key
/// and query pairs of these calls are farther apart than the last bucket's start.
const BIASED: &str = "model biased {
  param max_position_embeddings = 160
  input x: f32[tokens, 16]
  let both = relative_position_bias(4, buckets = 8, max_distance = 5, bidirectional = true)
  let back = relative_position_bias(4, buckets = 8, max_distance = 5, bidirectional = false)
  let q = linear(x, 16)
  let k = linear(x, 8)
  let v = linear(x, 12)
  let a = attention(q, k, v, heads = 4, kv_heads = 2, causal = false, bias = both)
  let b = attention(q, k, v, heads = 4, kv_heads = 2, bias = back)
  output a
  output b
}";

/// The bidirectional bias alone at lengths from one key to more than one key
/// tile (GPU model runs as first calls), then both through sessions call after
/// call (20, 1, 1, 70 tokens: the causal bias reads the cache).
#[test]
fn relative_bias_beyond_max_distance_matches_the_interpreter() {
    let g = graph(BIASED, &[], Upto::All);
    let w = weights(&g, 11);
    check(&g, &w, &[1, 13, 70], "relative bias");
    let mut on_gpu = session_on(&g, &w, Engine::Gpu(GpuOptions::default()));
    let mut on_interp = session_on(&g, &w, Engine::Interp);
    for (call, t) in [20, 1, 1, 70].into_iter().enumerate() {
        let x = inputs(&g, t, call as u64);
        let want = on_interp.run(&x).unwrap();
        let got = on_gpu.run(&x).unwrap();
        assert_outputs_close(&got, &want, REL, &format!("call {call} ({t} tokens)"));
    }
}

/// Every output within `rel` of the interpreter's relative to its largest |value|
/// (i32 outputs exactly).
fn assert_close_to_max(
    got: &BTreeMap<String, Tensor>,
    want: &BTreeMap<String, Tensor>,
    rel: f32,
    what: &str,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.shape, w.shape, "{what}: shape of `{name}`");
        if w.dtype_name() == "i32" {
            assert_eq!(g.as_i32(), w.as_i32(), "{what}: `{name}`");
            continue;
        }
        let max = w.as_f32().iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = g
            .as_f32()
            .iter()
            .zip(w.as_f32())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= rel * max.max(f32::MIN_POSITIVE),
            "{what}: `{name}` differs by {err}, max |value| {max}"
        );
    }
}

/// The Switch Transformers checkpoint (transformers' own) as the runtime runs it:
/// its encoder stage on the prompt, then its decoder stage with the encoder's
/// outputs as its `encoder.N` inputs — 9 tokens at once, then one at a time
/// through the KV caches — each on the GPU against the interpreter on the same
/// stage graphs, within 1e-4 of the largest |value|; at three source lengths.
#[test]
fn encoder_decoder_stages_match_the_interpreter() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/models/switch_transformers");
    let g = Compiler::new()
        .checkpoint(&dir)
        .compile_file(&root.join("models/switch_transformers.moe"))
        .unwrap()
        .graph;
    let split = stages::split(&g)
        .unwrap()
        .expect("an encoder-decoder graph");
    let source = WeightSource::open(&dir).unwrap();
    // Unsplit, the graph computes over `source`: refused with the reason.
    let err = GpuModel::new(
        &g,
        &bind(&g.weights, &source).unwrap(),
        GpuOptions::default(),
    )
    .err()
    .expect("an unsplit encoder-decoder graph is refused");
    assert!(err.contains("stages::split"), "{err}");
    let (enc, dec) = (&split.encoder, &split.decoder);
    let (enc_w, dec_w) = (
        bind(&enc.weights, &source).unwrap(),
        bind(&dec.weights, &source).unwrap(),
    );
    let enc_gpu = GpuModel::new(enc, &enc_w, GpuOptions::default()).unwrap();
    let dec_gpu = GpuModel::new(dec, &dec_w, GpuOptions::default()).unwrap();
    assert!(!split.carried.is_empty());
    // The fixture's prompt; then 20 source tokens (encoder distances past the
    // max distance, 12; the decoder's source-sized buffers grow) and 5 (they are
    // reused), on the same two models.
    let prompt = vec![1, 54, 260, 310, 280, 261, 267, 264, 70, 85, 274];
    let long: Vec<i32> = (0..20).map(|i| (i * 37 + 5) % 320).collect();
    for prompt in [prompt, long, vec![1, 7, 300, 2, 9]] {
        let s = prompt.len();
        let enc_in = BTreeMap::from([("input_ids".to_string(), Tensor::i32(vec![s], prompt))]);
        let want = interp::run(enc, &enc_w, &enc_in).unwrap();
        let got = enc_gpu.run(&enc_in).unwrap();
        assert_close_to_max(&got, &want, 1e-4, &format!("encoder, {s} tokens"));
        // The decoder reads the interpreter's encoder outputs on both sides.
        let carried: BTreeMap<String, Tensor> = split
            .carried
            .iter()
            .map(|n| (n.clone(), want[n].clone()))
            .collect();
        let ids = [0, 88, 118, 118, 91, 30, 161, 252, 252];
        let dec_in = |ids: &[i32]| {
            let mut x = carried.clone();
            x.insert(
                "decoder_input_ids".to_string(),
                Tensor::i32(vec![ids.len()], ids.to_vec()),
            );
            x
        };
        let at_once = dec_in(&ids);
        let want = interp::run(dec, &dec_w, &at_once).unwrap();
        let got = dec_gpu.run(&at_once).unwrap();
        assert_close_to_max(&got, &want, 1e-4, &format!("decoder, 9 tokens, source {s}"));
        let mut state = interp::State::new(dec);
        let mut caches = dec_gpu.caches(ids.len()).unwrap();
        for (past, id) in ids.iter().enumerate() {
            let x = dec_in(&[*id]);
            let want = interp::run_with_state(dec, &dec_w, &x, &mut state).unwrap();
            let got = dec_gpu.run_with_caches(&x, &mut caches, past).unwrap();
            let what = format!("decoder, token {past}, source {s}");
            assert_close_to_max(&got, &want, 1e-4, &what);
        }
    }
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
