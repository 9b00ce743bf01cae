//! The fusion and scheduling passes on every bundled example: each of
//! `fuse_router`, `fuse_experts` and `schedule`, applied cumulatively, leaves a
//! verified graph that the interpreter runs to the lowered graph's outputs; each
//! fires where it should; scheduled top-2-of-8 experts do a quarter of the dense
//! experts' matmul FLOPs.

mod common;

use common::{assert_outputs_close, inputs, small_example, small_examples, weights};
use moec_compiler::ir::{Dim, Epilogue, F32Bits, Graph, Op};
use moec_compiler::lower::lower_source;
use moec_compiler::passes::{fuse_experts, fuse_router, schedule, PassFn};
use moec_compiler::{interp, verify};

const PASSES: &[(&str, PassFn)] = &[
    ("fuse_router", fuse_router::run),
    ("fuse_experts", fuse_experts::run),
    ("schedule", schedule::run),
];

fn lower(source: &str, sets: &[(String, String)]) -> Graph {
    lower_source(source, sets)
        .unwrap_or_else(|d| panic!("{}", d.render("test.moe", source)))
        .graph
}

fn count(g: &Graph, f: impl Fn(&Op) -> bool) -> usize {
    g.g.node_weights().filter(|n| f(&n.op)).count()
}

/// After each pass in turn: verified, and the same outputs as the lowered graph at 0, 1 and 5 tokens.
#[test]
fn each_pass_keeps_every_example_equal_to_the_lowered_graph() {
    for (name, lowered) in small_examples() {
        let w = weights(&lowered, 7);
        let runs: Vec<_> = [0, 1, 5]
            .into_iter()
            .map(|t| {
                let x = inputs(&lowered, t, 11 + t as u64);
                let want = interp::run(&lowered, &w, &x).unwrap();
                (t, x, want)
            })
            .collect();
        let mut g = lowered.clone();
        for (pass, run) in PASSES {
            run(&mut g).unwrap_or_else(|e| panic!("{name}: {pass}: {e}"));
            verify::verify(&g).unwrap_or_else(|e| panic!("{name}: after {pass}: {e}"));
            // Weights are keyed by name, so pruned or renumbered weights get the same values.
            let w = weights(&g, 7);
            for (t, x, want) in &runs {
                let got = interp::run(&g, &w, x).unwrap();
                assert_outputs_close(
                    &got,
                    want,
                    1e-5,
                    &format!("{name} after {pass}, {t} tokens"),
                );
            }
        }
    }
}

/// What each pass leaves in every example, so a pass that silently stops firing fails here.
#[test]
fn passes_fire_on_every_example() {
    for (name, mut g) in small_examples() {
        let layers = count(&g, |o| *o == Op::DenseCombine);
        let topk = count(&g, |o| matches!(o, Op::TopK { .. }));
        let shared_gates = g
            .weights
            .iter()
            .filter(|w| w.key.ends_with(".shared_gate"))
            .count();
        for (_, run) in PASSES {
            run(&mut g).unwrap();
        }
        assert_eq!(
            count(&g, |o| matches!(o, Op::Router(_))),
            topk,
            "{name}: routers"
        );
        assert_eq!(
            count(&g, |o| matches!(o, Op::TopK { .. } | Op::Gather)),
            0,
            "{name}: router chain left"
        );
        if name == "llama4_text.moe" || name == "hy_v4.moe" {
            // Llama 4's `scale_input` (each expert reads its own scaled input) and Hunyuan V4's
            // clamped SwiGLU without α (no fused epilogue) leave the routed experts dense; the
            // shared experts are fused.
            assert_eq!(count(&g, |o| *o == Op::DenseCombine), layers, "{name}");
            continue;
        }
        if name == "longcat_flash.moe" {
            // Zero-computation (identity) experts form no expert group: the layer stays dense,
            // every expert on every token (correct, not sparse; see the conformance matrix).
            assert_eq!(count(&g, |o| *o == Op::DenseCombine), 1, "{name}");
            continue;
        }
        assert_eq!(
            count(&g, |o| *o == Op::DenseCombine),
            0,
            "{name}: dense combine left"
        );
        let scheduled = count(&g, |o| matches!(o, Op::ScatterAdd { .. }));
        if name == "heterogeneous.moe" {
            // Three expert groups: fused, but left dense (see schedule.rs).
            assert_eq!(
                (scheduled, count(&g, |o| *o == Op::ExpertSum)),
                (0, 3),
                "{name}"
            );
        } else {
            assert_eq!(scheduled, layers, "{name}: scheduled layers");
        }
        // Shared experts are fused as one-expert groups: no plain linear is left but the router's
        // logits (and the shared-expert gates, `shared_gate = true`).
        let linears = count(&g, |o| matches!(o, Op::Linear { .. }));
        assert_eq!(linears, layers + shared_gates, "{name}: plain linears left");
    }
}

/// Matmul FLOPs at `tokens` tokens, from the op types: 2·rows·N·K per linear, 2·E·T·N·K per expert
/// linear, 2·R·N·K per grouped linear over R = k·T rows. The router's logits count too.
fn matmul_flops(g: &Graph, tokens: usize) -> u64 {
    let dims = |t: &moec_compiler::ir::TensorType| -> Vec<u64> {
        t.shape
            .iter()
            .map(|d: &Dim| d.eval(tokens) as u64)
            .collect()
    };
    g.g.node_indices()
        .map(|n| {
            let ops = g.operands(n);
            let ty = |i: usize| dims(g.value_type(ops[i]));
            match g.node(n).op {
                Op::Linear { .. } => {
                    let (x, w) = (ty(0), ty(1));
                    2 * x[..x.len() - 1].iter().product::<u64>() * w[0] * w[1]
                }
                Op::ExpertLinear { .. } => {
                    let (x, w) = (ty(0), ty(1));
                    2 * w[0] * x[x.len() - 2] * w[1] * w[2]
                }
                Op::GroupedLinear { .. } => {
                    let (x, w) = (ty(0), ty(1));
                    2 * x[0] * w[1] * w[2]
                }
                _ => 0,
            }
        })
        .sum()
}

#[test]
fn scheduled_top2_of_8_does_a_quarter_of_the_dense_expert_flops() {
    let lowered = small_example("mixtral.moe");
    let tokens = 64;
    let router = 2 * tokens as u64 * 8 * 8;
    let dense = matmul_flops(&lowered, tokens) - router;
    let mut g = lowered.clone();
    for (_, run) in PASSES {
        run(&mut g).unwrap();
    }
    let scheduled = matmul_flops(&g, tokens) - router;
    // 8 experts × (gate, up, down) of 16×8 on every token, against 2 slots per token.
    assert_eq!(dense, 8 * 3 * 2 * tokens as u64 * 16 * 8);
    assert_eq!(scheduled * 4, dense);
}

/// Runs the three passes on `spec` and compares with the lowered graph at 0, 1, 5 and 16 tokens.
fn check_spec(spec: &str) -> Graph {
    let lowered = lower(spec, &[]);
    let mut g = lowered.clone();
    for (pass, run) in PASSES {
        run(&mut g).unwrap_or_else(|e| panic!("{pass}: {e}"));
        verify::verify(&g).unwrap_or_else(|e| panic!("after {pass}: {e}"));
    }
    for t in [0, 1, 5, 16] {
        let x = inputs(&lowered, t, 3 + t as u64);
        let want = interp::run(&lowered, &weights(&lowered, 5), &x).unwrap();
        let got = interp::run(&g, &weights(&g, 5), &x).unwrap();
        assert_outputs_close(&got, &want, 1e-5, &format!("{t} tokens"));
    }
    g
}

const EXPERTS: &str = "
  expert glu(h: [n, 6]) -> [n, 6] { let a = linear(h, 10) let b = linear(h, 10) let c = linear(b * gelu(a), 6) return c }
  expert mlp(h: [n, 6]) -> [n, 6] { let a = linear(h, 12, bias = true) let b = linear(silu(a), 6, bias = true) return b }
  expert deep(h: [n, 6]) -> [n, 6] { let a = linear(h, 8) let b = linear(relu(a), 8) let c = linear(sigmoid(b), 6) return c }
  expert odd(h: [n, 6]) -> [n, 6] { let a = linear(h, 6) let b = linear(a * h, 6) return b }";

fn spec(router: &str, moe_args: &str) -> String {
    format!(
        "model m {{ input x: f32[tokens, 6] {EXPERTS}
           router r(h: [n, 6]) {{ logits = linear(h, 8) {router} }}
           let y = moe(x, {moe_args}) output y output sel = y.selected_experts output counts = y.expert_counts }}"
    )
}

#[test]
fn capacity_drops_are_never_computed_and_add_nothing() {
    for capacity in ["factor(0.5, drop = score)", "fixed(1)", "factor(1.25)"] {
        let g = check_spec(&spec(
            "scores = softmax(logits) select = topk(scores, 2) normalize = true",
            &format!("experts = 8 * deep, router = r, capacity = {capacity}"),
        ));
        assert_eq!(
            count(&g, |o| matches!(o, Op::ScatterAdd { .. })),
            1,
            "{capacity}"
        );
    }
    let g = check_spec(&spec(
        "scores = softmax(logits) select = topk(scores, 1)",
        "experts = 8 * mlp, router = r, capacity = fixed(1, dropped = passthrough)",
    ));
    assert_eq!(count(&g, |o| *o == Op::PassThrough), 1);
    assert_eq!(count(&g, |o| matches!(o, Op::ScatterAdd { .. })), 1);
}

#[test]
fn heterogeneous_routed_and_several_gated_shared_experts() {
    let g = check_spec(&spec(
        "scores = sigmoid(logits) select = topk(scores, 3, groups = 4, topk_groups = 2, selection_bias = true) \
         normalize = true scale = 1.5",
        "experts = [3 * glu, 1 * mlp, 4 * deep], router = r, shared = [glu, 2 * mlp], shared_gate = true",
    ));
    // Three routed groups, three one-expert shared groups.
    assert_eq!(count(&g, |o| *o == Op::ExpertSum), 6);
    assert_eq!(
        count(&g, |o| matches!(o, Op::Linear { .. })),
        2,
        "router logits and shared gate"
    );
}

#[test]
fn after_topk_scoring_and_expert_choice_stay_equal() {
    check_spec(&spec(
        "scores = softmax(logits, after_topk = true) select = topk(logits, 2)",
        "experts = 8 * glu, router = r",
    ));
    check_spec(&spec(
        "scores = sigmoid(logits, after_topk = true) select = topk(logits, 3)",
        "experts = 8 * glu, router = r",
    ));
    let g = check_spec(&spec(
        "scores = softmax(logits) select = expert_choice(scores, 1.5)",
        "experts = 8 * deep, router = r",
    ));
    assert_eq!(count(&g, |o| matches!(o, Op::GroupedLinear { .. })), 3);
}

#[test]
fn an_unreadable_expert_leaves_its_layer_dense_and_equal() {
    let g = check_spec(&spec(
        "select = topk(scores, 2)",
        "experts = [4 * glu, 4 * odd], router = r, shared = mlp",
    ));
    assert_eq!(count(&g, |o| *o == Op::DenseCombine), 1);
    // The router still fuses; the shared expert is not reached without a fused combine.
    assert_eq!(count(&g, |o| matches!(o, Op::Router(_))), 1);
}

/// GPT-OSS's experts with a limit small enough that random activations hit every clamp.
fn clamped_spec(product: &str) -> String {
    format!(
        "model m {{ input x: f32[tokens, 6]
           expert e(h: [n, 6]) -> [n, 6] {{
             let a = linear(h, 10, bias = true) let b = linear(h, 10, bias = true)
             let g = min(a, 0.3) let u = b
             let c = linear({product}, 6, bias = true) return c }}
           router r(h: [n, 6]) {{ logits = linear(h, 8, bias = true)
             scores = softmax(logits, after_topk = true) select = topk(logits, 2) }}
           let y = moe(x, experts = 8 * e, router = r) output y }}"
    )
}

#[test]
fn clamped_glu_experts_fuse_and_stay_equal() {
    let clamped = |o: &Op| {
        matches!(
            o,
            Op::GroupedLinear {
                epilogue: Epilogue::ClampedGlu { .. },
                bias: true,
                ..
            }
        )
    };
    for product in [
        "(clamp(u, -0.3, 0.3) + 1) * (g * sigmoid(1.702 * g))",
        "(sigmoid(g * 1.702) * g) * (1 + min(max(u, -0.3), 0.3))",
    ] {
        let g = check_spec(&clamped_spec(product));
        assert_eq!(count(&g, clamped), 1, "{product}");
        assert_eq!(count(&g, |o| *o == Op::DenseCombine), 0, "{product}");
        let Some(Op::GroupedLinear { epilogue, .. }) =
            g.g.node_weights().map(|n| &n.op).find(|o| clamped(o))
        else {
            unreachable!()
        };
        assert_eq!(
            *epilogue,
            Epilogue::ClampedGlu {
                alpha: F32Bits::new(1.702),
                limit: F32Bits::new(0.3)
            }
        );
    }
    // Near misses: another up limit, `+ 2`, the sigmoid of the unclamped gate, max for min.
    for product in [
        "(clamp(u, -0.3, 0.5) + 1) * (g * sigmoid(1.702 * g))",
        "(clamp(u, -0.3, 0.3) + 2) * (g * sigmoid(1.702 * g))",
        "(clamp(u, -0.3, 0.3) + 1) * (g * sigmoid(1.702 * a))",
        "(max(min(u, -0.3), 0.3) + 1) * (g * sigmoid(1.702 * g))",
    ] {
        let g = check_spec(&clamped_spec(product));
        assert_eq!(count(&g, clamped), 0, "{product}");
        assert_eq!(count(&g, |o| *o == Op::DenseCombine), 1, "{product}");
    }
}
