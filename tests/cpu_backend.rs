//! The CPU backend (Cranelift JIT) against the reference interpreter: every
//! example, scheduled and dense, at several token counts; routing that leaves all
//! experts but one empty; capacity drops; random specs.

#[path = "../compiler/tests/common/mod.rs"]
mod common;

use common::{assert_outputs_close, inputs, small_dims, weights};
use moec_compiler::interp;
use moec_compiler::ir::Graph;
use moec_compiler::lower::lower_source;
use moec_compiler::passes::{run_pipeline, Upto};
use moec_compiler::tensor::Tensor;
use moec_runtime::cpu::CpuModel;
use proptest::prelude::*;
use std::path::PathBuf;

const REL: f32 = 1e-4;

fn graph(source: &str, sets: &[(String, String)], upto: Upto) -> Graph {
    let mut g = lower_source(source, sets)
        .unwrap_or_else(|d| panic!("{}", d.render("test.moe", source)))
        .graph;
    run_pipeline(&mut g, upto, true).unwrap();
    g
}

/// Runs `g` on both backends at each token count and compares.
fn check(g: &Graph, w: &[Tensor], tokens: &[usize], what: &str) {
    for threads in [1, 3] {
        let model = CpuModel::new(g, w)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .with_threads(threads);
        for &t in tokens {
            let x = inputs(g, t, t as u64);
            let want = interp::run(g, w, &x).unwrap();
            let got = model.run(&x).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_outputs_close(&got, &want, REL, &format!("{what}, {t} tokens"));
        }
    }
}

fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn examples_match_the_interpreter() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".moe"))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        let source = example(&name);
        for (upto, label) in [(Upto::All, "scheduled"), (Upto::None, "dense")] {
            let g = graph(&source, &small_dims(&source), upto);
            check(
                &g,
                &weights(&g, 7),
                &[0, 1, 7, 33],
                &format!("{name} {label}"),
            );
        }
    }
}

/// Zero router weights tie every logit, so every token picks the lowest experts:
/// Switch (top-1) sends everything to expert 0, Mixtral (top-2) to experts 0 and 1.
#[test]
fn all_tokens_to_one_expert() {
    for name in ["switch.moe", "mixtral.moe"] {
        let source = example(name);
        let mut sets = small_dims(&source);
        if name == "switch.moe" {
            sets.push(("expert_capacity".into(), "1000".into()));
        }
        let g = graph(&source, &sets, Upto::All);
        let mut w = weights(&g, 3);
        for (t, d) in w.iter_mut().zip(&g.weights) {
            if d.key.ends_with(".logits") {
                *t = Tensor::zeros(t.shape.clone());
            }
        }
        assert!(w.iter().any(|t| t.as_f32().iter().all(|v| *v == 0.0)));
        check(&g, &w, &[1, 33], name);
    }
}

#[test]
fn capacity_drops_match() {
    let source = example("switch.moe");
    let mut sets = small_dims(&source);
    sets.push(("expert_capacity".into(), "2".into()));
    let g = graph(&source, &sets, Upto::All);
    check(&g, &weights(&g, 11), &[7, 33], "switch with capacity 2");
}

/// A random layer: experts, top-k, odd widths (tails in every loop), the
/// activation, biases and a capacity.
fn spec(e: u64, k: u64, d: u64, i: u64, act: usize, bias: bool, cap: u64) -> String {
    let k = 1 + (k - 1) % e;
    let body = match act {
        0 => format!(
            "let gate = linear(h, {i}, bias = {bias}) let up = linear(h, {i}, bias = {bias}) \
             let down = linear(silu(gate) * up, {d}) return down"
        ),
        a => {
            let f = ["gelu", "gelu_tanh", "relu", "sigmoid"][(a - 1) % 4];
            format!(
                "let up = linear(h, {i}, bias = {bias}) let down = linear({f}(up), {d}, bias = {bias}) return down"
            )
        }
    };
    let capacity = if cap == 0 {
        String::new()
    } else {
        format!(", capacity = fixed({cap}, drop = arrival)")
    };
    format!(
        "model p {{
  input x: f32[tokens, {d}]
  expert ffn(h: [n, {d}]) -> [n, {d}] {{ {body} }}
  router gate(h: [n, {d}]) {{
    logits = linear(h, {e})
    scores = softmax(logits)
    select = topk(scores, {k})
    normalize = true
  }}
  let y = moe(x, experts = {e} * ffn, router = gate{capacity})
  output y
}}"
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_specs_match_the_interpreter(
        (e, k, d, i) in (1u64..=9, 1u64..=4, 1u64..=19, 1u64..=21),
        (act, bias, cap) in (0usize..5, any::<bool>(), 0u64..4),
        tokens in prop_oneof![Just(0usize), Just(1usize), 2usize..=40],
        seed in any::<u64>(),
    ) {
        let source = spec(e, k, d, i, act, bias, cap);
        let g = graph(&source, &[], Upto::All);
        check(&g, &weights(&g, seed), &[tokens], &format!("seed {seed}:\n{source}"));
    }
}
