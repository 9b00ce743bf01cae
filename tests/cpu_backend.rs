//! The CPU backend (Cranelift JIT) against the reference interpreter: every
//! example, scheduled and dense, at several token counts; routing that leaves all
//! experts but one empty; capacity drops; random specs; bf16 weights (bf16
//! panels). Every check runs every matmul path the host has: the portable JIT
//! kernel alone, the gemm path forced on every segment (`with_gemm_rows(1)`),
//! and the AVX-512 tiles (`MatmulIsa::Avx512`, on hosts with AVX-512F).

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
use moec_compiler::quant::{dequantize, WeightFormat};
use moec_compiler::storage::Storage;
use moec_compiler::tensor::Tensor;
use moec_runtime::cpu::{CpuModel, MatmulIsa};
use proptest::prelude::*;

/// Token counts every example runs at: none, one, odd sizes.
const TOKENS: [usize; 4] = [0, 1, 7, 33];

/// Every matmul path this host runs: (inner loops, gemm from rows).
fn paths() -> Vec<(MatmulIsa, usize)> {
    let mut paths = vec![(MatmulIsa::Portable, usize::MAX), (MatmulIsa::Portable, 1)];
    if MatmulIsa::available().contains(&MatmulIsa::Avx512) {
        paths.push((MatmulIsa::Avx512, usize::MAX));
    } else {
        eprintln!("skipped: the AVX-512 matmul path (this host has no AVX-512F)");
    }
    paths
}

/// Runs `g` on both backends at each token count and compares, with 1 and 3
/// threads (every call split over the 3, however small), on every matmul path.
fn check(g: &Graph, w: &[Tensor], tokens: &[usize], what: &str) {
    for (isa, gemm_rows) in paths() {
        for threads in [1, 3] {
            let model = CpuModel::for_isa(g, &w, isa)
                .unwrap_or_else(|e| panic!("{what}: {e}"))
                .with_threads(threads)
                .with_split_from(0)
                .with_gemm_rows(gemm_rows);
            for &t in tokens {
                let x = inputs(g, t, t as u64);
                let want = interp::run(g, w, &x).unwrap();
                let got = model.run(&x).unwrap_or_else(|e| panic!("{what}: {e}"));
                let how = format!(
                    "{what}, {t} tokens, {threads} threads, {}, gemm from {gemm_rows} rows",
                    isa.name()
                );
                assert_outputs_close(&got, &want, REL, &how);
            }
        }
    }
}

#[test]
fn examples_match_the_interpreter() {
    for c in example_cases(&TOKENS) {
        check(&c.graph, &c.weights, &c.tokens, &c.what);
    }
}

/// Weights rounded to bf16 are packed as bf16 panels and widened in the kernel
/// (and in the gemm path's blocks); the interpreter runs the same bf16 values.
#[test]
fn bf16_weights_match_the_interpreter() {
    for name in [
        "mixtral.moe",
        "qwen2_moe.moe",
        "switch.moe",
        "deepseek_v3.moe",
    ] {
        let source = example(name);
        let g = graph(&source, &small_dims(&source), Upto::All);
        let w: Vec<Tensor> = weights(&g, 5)
            .into_iter()
            .map(|t| dequantize(WeightFormat::Bf16, t))
            .collect();
        check(&g, &w, &TOKENS, &format!("{name} bf16"));
    }
}

/// Weights stored as bf16, q8_0 or q4_0 (`--expert-format`: the experts only;
/// `--weight-format`: every matmul but the routers) on the AVX-512 tiles
/// compute what the interpreter computes on the same graph (dequantized
/// weights; for q8_0 / q4_0, activations in 8-bit blocks), every example and
/// dims of whole and partial blocks (K 40: a block and a part; 96: three).
#[test]
fn stored_weights_match_the_interpreter() {
    if !MatmulIsa::available().contains(&MatmulIsa::Avx512) {
        eprintln!("skipped: quantized weights need the AVX-512 matmuls");
        return;
    }
    for name in [
        "mixtral.moe",
        "qwen2_moe.moe",
        "deepseek_v3.moe",
        "gpt_oss.moe",
    ] {
        let source = example(name);
        let mut sets = small_dims(&source);
        for (k, v) in &mut sets {
            if k == "hidden_size" || k == "d_model" {
                *v = "40".into();
            } else if v == "16" {
                *v = "96".into();
            }
        }
        let f32_graph = graph(&source, &sets, Upto::All);
        let w = weights(&f32_graph, 5);
        for storage in Storage::all() {
            let mut g = f32_graph.clone();
            storage.apply(&mut g);
            let how = format!("{name} {storage:?}");
            assert!(!g.stored.is_empty(), "{how}: no stored weights");
            for isa in [MatmulIsa::Avx512, MatmulIsa::Amx] {
                // AMX rounds bf16 matmuls' activations (`amx_path_stays_within_bf16_rounding`).
                let inexact = isa == MatmulIsa::Amx && storage.format == WeightFormat::Bf16;
                if !MatmulIsa::available().contains(&isa) || inexact {
                    continue;
                }
                let model = CpuModel::for_isa(&g, &w, isa).unwrap();
                for t in [1, 7, 33] {
                    let x = inputs(&g, t, t as u64);
                    let want = interp::run(&g, &w, &x).unwrap();
                    let got = model.run(&x).unwrap();
                    let how = format!("{how}, {t} tokens, {}", isa.name());
                    assert_outputs_close(&got, &want, REL, &how);
                }
            }
        }
    }
}

/// `MatmulIsa::Amx` rounds the activations of bf16 matmuls with 16+ rows to
/// bf16, so it is not exact: on a layer whose experts get 40+ rows each (and K a
/// multiple of 32, so every such matmul runs on the AMX tiles), its output stays
/// within bf16 rounding of the interpreter's (relative L2 error under 1%; a
/// wrong tile layout gives errors of order 1).
#[test]
fn amx_path_stays_within_bf16_rounding() {
    if !MatmulIsa::available().contains(&MatmulIsa::Amx) {
        eprintln!("skipped: this host cannot run AMX tiles");
        return;
    }
    let source = example("mixtral.moe");
    let sets: Vec<(String, String)> = [
        ("hidden_size", "64"),
        ("intermediate_size", "96"),
        ("num_local_experts", "4"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let g = graph(&source, &sets, Upto::All);
    let w: Vec<Tensor> = weights(&g, 5)
        .into_iter()
        .map(|t| dequantize(WeightFormat::Bf16, t))
        .collect();
    let x = inputs(&g, 96, 3);
    let want = interp::run(&g, &w, &x).unwrap();
    for threads in [1, 3] {
        let model = CpuModel::for_isa(&g, &w, MatmulIsa::Amx)
            .unwrap()
            .with_threads(threads)
            .with_split_from(0);
        let got = model.run(&x).unwrap();
        for (name, want) in &want {
            let (got, want) = (got[name].as_f32(), want.as_f32());
            let diff: f64 = got
                .iter()
                .zip(want)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let norm: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
            let rel = (diff / norm.max(1e-30)).sqrt();
            assert!(
                rel < 1e-2,
                "{name}, {threads} threads: relative L2 error {rel:.2e}"
            );
            assert!(
                rel > 0.0,
                "{name}: exactly equal, so the AMX tiles did not run"
            );
        }
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_specs_match_the_interpreter((source, seed, tokens) in random_layer()) {
        let g = graph(&source, &[], Upto::All);
        let what = format!("seed {seed}:\n{source}");
        assert_scheduled(&g, &what);
        check(&g, &weights(&g, seed), &[tokens], &what);
    }
}
