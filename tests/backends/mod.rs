//! What the backend test suites share: example specs, graphs at small dims, and
//! a random-layer spec generator, so every backend is held to the same cases.

#![allow(dead_code)] // each suite uses its own subset

use crate::common::{small_dims, weights};
use moec_compiler::ir::{Graph, Op};
use moec_compiler::lower::lower_source;
use moec_compiler::passes::{run_pipeline, Upto};
use moec_compiler::tensor::Tensor;
use proptest::prelude::*;
use std::path::PathBuf;

/// Relative tolerance of every backend against the interpreter.
pub const REL: f32 = 1e-4;

pub fn graph(source: &str, sets: &[(String, String)], upto: Upto) -> Graph {
    let mut g = lower_source(source, sets)
        .unwrap_or_else(|d| panic!("{}", d.render("test.moe", source)))
        .graph;
    run_pipeline(&mut g, upto, true).unwrap();
    g
}

pub fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// File names of every bundled example, sorted.
pub fn example_names() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".moe"))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    names
}

/// A graph, its weights and the token counts to run it at.
pub struct Case {
    pub what: String,
    pub graph: Graph,
    pub weights: Vec<Tensor>,
    pub tokens: Vec<usize>,
}

/// Every example, scheduled and dense (all experts on every token), at small dims.
pub fn example_cases(tokens: &[usize]) -> Vec<Case> {
    let mut cases = Vec::new();
    for name in example_names() {
        let source = example(&name);
        for (upto, label) in [(Upto::All, "scheduled"), (Upto::None, "dense")] {
            let g = graph(&source, &small_dims(&source), upto);
            cases.push(Case {
                what: format!("{name} {label}"),
                weights: weights(&g, 7),
                graph: g,
                tokens: tokens.to_vec(),
            });
        }
    }
    cases
}

/// Zero router weights tie every logit, so every token picks the lowest experts:
/// Switch (top-1) sends everything to expert 0, Mixtral (top-2) to experts 0 and 1.
fn one_expert_cases() -> Vec<Case> {
    ["switch.moe", "mixtral.moe"]
        .into_iter()
        .map(|name| {
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
            Case {
                what: format!("{name}, all tokens to the first experts"),
                graph: g,
                weights: w,
                tokens: vec![1, 33],
            }
        })
        .collect()
}

/// Routing edge cases: all tokens on the first experts, most slots dropped by capacity, and
/// the router forms of the conformance architectures.
pub fn routing_cases() -> Vec<Case> {
    let mut cases = one_expert_cases();
    cases.push(capacity_case());
    cases.extend(router_form_cases());
    cases
}

/// Router and block forms, each scheduled and dense: DBRX's p-norm, Ernie 4.5's bounded sum
/// with a selection bias, Llama 4's sigmoid of the kept logits scaling the experts' input,
/// JetMoE's output bias, PhiMoE's sparsemixer (a wide threshold, so masks vary).
fn router_form_cases() -> Vec<Case> {
    let forms = [
        (
            "p-norm (p = 2)",
            "scores = softmax(logits) select = topk(scores, 3) normalize = true normalize_p = 2.0",
            "",
        ),
        (
            "bounded sum, selection bias",
            "scores = softmax(logits) select = topk(scores, 2, selection_bias = true) \
             normalize = true normalize_min = 0.5",
            "",
        ),
        (
            "sigmoid of the kept logits scaling the input, output bias",
            "scores = sigmoid(logits, after_topk = true) select = topk(logits, 2)",
            ", scale_input = true, bias = true",
        ),
        (
            "sparsemixer",
            "select = sparsemixer(logits, 2, eps = 0.3)",
            "",
        ),
    ];
    let mut cases = Vec::new();
    for (what, router, args) in forms {
        let source = format!(
            "model form {{ input x: f32[tokens, 6]
            expert e(h: [n, 6]) -> [n, 6] {{ let gate = linear(h, 10) let up = linear(h, 10)
              let down = linear(silu(gate) * up, 6) return down }}
            router router(h: [n, 6]) {{ logits = linear(h, 8) {router} }}
            let mlp = moe(x, experts = 8 * e, router = router{args}) output mlp }}"
        );
        for (upto, label) in [(Upto::All, "scheduled"), (Upto::None, "dense")] {
            let g = graph(&source, &[], upto);
            cases.push(Case {
                what: format!("{what}, {label}"),
                weights: weights(&g, 3),
                graph: g,
                tokens: vec![0, 1, 7, 33],
            });
        }
    }
    cases
}

/// GPT-OSS's MoE block (biased router, softmax over the top-k logits, clamped-GLU experts
/// with biases) with a limit small enough that random activations hit every clamp, and
/// widths that leave the last weight panel partial; scheduled (the clamped-GLU epilogue
/// fused into a grouped matmul) and dense.
pub fn clamped_glu_cases() -> Vec<Case> {
    let source = "model gpt_oss_block { param limit = 0.3 param alpha = 1.702
        input x: f32[tokens, 6]
        expert e(h: [n, 6]) -> [n, 6] {
          let gate = linear(h, 10, bias = true) let up = linear(h, 10, bias = true)
          let g = min(gate, limit) let u = clamp(up, -limit, limit)
          let down = linear((u + 1) * (g * sigmoid(alpha * g)), 6, bias = true) return down }
        router router(h: [n, 6]) { logits = linear(h, 8, bias = true)
          scores = softmax(logits, after_topk = true) select = topk(logits, 2) }
        let mlp = moe(x, experts = 8 * e, router = router) output mlp }";
    [(Upto::All, "scheduled"), (Upto::None, "dense")]
        .into_iter()
        .map(|(upto, label)| {
            let g = graph(source, &[], upto);
            Case {
                what: format!("clamped GLU experts, {label}"),
                weights: weights(&g, 5),
                graph: g,
                tokens: vec![0, 1, 7, 33],
            }
        })
        .collect()
}

/// Switch with capacity 2: most slots are dropped.
fn capacity_case() -> Case {
    let source = example("switch.moe");
    let mut sets = small_dims(&source);
    sets.push(("expert_capacity".into(), "2".into()));
    let g = graph(&source, &sets, Upto::All);
    Case {
        what: "switch with capacity 2".into(),
        weights: weights(&g, 11),
        graph: g,
        tokens: vec![7, 33],
    }
}

/// Random layers: (spec source, weight seed, token count) with 0, 1 and odd token counts.
pub fn random_layer() -> impl Strategy<Value = (String, u64, usize)> {
    (
        (1u64..=9, 1u64..=4, 1u64..=19, 1u64..=21),
        (0usize..5, any::<bool>(), 0u64..4),
        prop_oneof![Just(0usize), Just(1usize), 2usize..=40],
        any::<u64>(),
    )
        .prop_map(|((e, k, d, i), (act, bias, cap), tokens, seed)| {
            (spec(e, k, d, i, act, bias, cap), seed, tokens)
        })
}

/// Fails unless scheduling fired on a random layer's graph (its experts run as
/// grouped matmuls), so the backends are held to the sparse path they are built for.
pub fn assert_scheduled(g: &Graph, what: &str) {
    assert!(
        g.g.node_weights()
            .any(|n| matches!(n.op, Op::GroupedLinear { .. })),
        "{what}: no grouped_linear: the pipeline did not schedule the experts"
    );
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
