//! The constant language and compile-time control flow, lowered: param values of
//! every kind, the repeat variable as an integer, `if` expressions and statements
//! (only the taken branch is lowered, its `let`s stay visible after it), outputs
//! stacked per layer. Expected values are written out in each test.

use moec_compiler::interp;
use moec_compiler::ir::{Graph, Op};
use moec_compiler::lower::{lower_source, Const, Lowered};
use moec_compiler::tensor::Tensor;
use moec_compiler::verify::verify;
use std::collections::BTreeMap;

fn lower(source: &str) -> Lowered {
    let lowered =
        lower_source(source, &[]).unwrap_or_else(|d| panic!("{}", d.render("test.moe", source)));
    verify(&lowered.graph).unwrap();
    lowered
}

fn param(l: &Lowered, name: &str) -> Const {
    l.params
        .iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no param {name}"))
        .1
        .clone()
}

fn count(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.g.node_weights().filter(|n| pred(&n.op)).count()
}

/// Runs a graph without weights on x = [[1, 2]].
fn run(g: &Graph) -> BTreeMap<String, Tensor> {
    let x = Tensor::f32(vec![1, 2], vec![1.0, 2.0]);
    interp::run(g, &[], &BTreeMap::from([("x".to_string(), x)])).unwrap()
}

#[test]
fn params_hold_strings_lists_and_the_results_of_comparisons() {
    let l = lower(
        r#"model m {
             param layer_types = ["full_attention", "sliding_attention", "full_attention"]
             param mlp_only_layers = []
             param n = len(layer_types)
             param second_is_full = layer_types[1] == "full_attention"
             param k = if n > 2 then 4 else 2
             param logic = 1 < 2.5 and not (2 >= 3) or false
             param strings_differ = "a" != "b"
             param rope_type = "default"
             param scales = [1, 0.5]
             param guarded = len(mlp_only_layers) > 0 and mlp_only_layers[0] == 0
             input x: f32[tokens, 2]
             output x
           }"#,
    );
    let s = |v: &str| Const::Str(v.into());
    assert_eq!(
        param(&l, "layer_types"),
        Const::List(vec![
            s("full_attention"),
            s("sliding_attention"),
            s("full_attention")
        ])
    );
    assert_eq!(param(&l, "mlp_only_layers"), Const::List(vec![]));
    assert_eq!(param(&l, "n"), Const::Int(3));
    assert_eq!(param(&l, "second_is_full"), Const::Bool(false));
    assert_eq!(param(&l, "k"), Const::Int(4));
    assert_eq!(param(&l, "logic"), Const::Bool(true));
    assert_eq!(param(&l, "strings_differ"), Const::Bool(true));
    assert_eq!(param(&l, "rope_type"), s("default"));
    // Integers among numbers become numbers.
    assert_eq!(
        param(&l, "scales"),
        Const::List(vec![Const::Float(1.0), Const::Float(0.5)])
    );
    // `and` does not evaluate `mlp_only_layers[0]` of the empty list.
    assert_eq!(param(&l, "guarded"), Const::Bool(false));
}

#[test]
fn comparisons_follow_numbers_not_types() {
    let l = lower(
        "model m {
           param a = 2 == 2.0
           param b = 3 <= 2
           param c = 1e-6 < 1e-5
           param d = true != false
           param e = -1 >= -1
           input x: f32[tokens, 2]
           output x
         }",
    );
    let got: Vec<Const> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| param(&l, n))
        .collect();
    let want = [true, false, true, true, true].map(Const::Bool);
    assert_eq!(got, want);
}

#[test]
fn ln_and_sqrt_give_numbers() {
    // DeepSeek-V3's softmax scale: (0.1 · ln(40) + 1)² / sqrt(192).
    let l = lower(
        "model m {
           param e = ln(1)
           param r = sqrt(16)
           param mscale = 0.1 * ln(40.0) + 1
           param scale = mscale * mscale / sqrt(128 + 64)
           input x: f32[tokens, 2]
           output x
         }",
    );
    assert_eq!(param(&l, "e"), Const::Float(0.0));
    assert_eq!(param(&l, "r"), Const::Float(4.0));
    let Const::Float(scale) = param(&l, "scale") else {
        panic!("scale is not a number")
    };
    // 0.1 · 3.6888794541139363 + 1 = 1.3688879454113936; squared / 13.856406460551018.
    assert!((scale - 0.135_233_778_860_880_1).abs() < 1e-15, "{scale}");
}

#[test]
fn ln_and_sqrt_reject_numbers_outside_their_domain() {
    for (source, message) in [
        ("ln(0)", "`ln` of 0 is not defined"),
        ("sqrt(-1.5)", "`sqrt` of -1.5 is not defined"),
        ("ln(\"e\")", "`ln` of a string"),
    ] {
        let spec = format!("model m {{ param a = {source} input x: f32[tokens, 2] output x }}");
        let d = lower_source(&spec, &[]).expect_err(source);
        assert_eq!(d.message, message, "{source}");
    }
}

#[test]
fn the_repeat_variable_is_the_layer_index() {
    // x · 1 · 2 · 3
    let l = lower(
        "model m {
           input x: f32[tokens, 2]
           repeat layer in 3 {
             x = x * (layer + 1)
           }
           output y = x
         }",
    );
    assert_eq!(run(&l.graph)["y"].as_f32(), [6.0, 12.0]);
}

#[test]
fn only_the_taken_branch_is_lowered_and_its_lets_stay_visible() {
    // layer 0: h = 2x, x = 3x; layer 1: h = 3·3x = 9x, x = 12x.
    let l = lower(
        "model m {
           param first_k = 1
           input x: f32[tokens, 2]
           repeat layer in 2 {
             if layer < first_k {
               let h = x * 2.0
             } else if layer == 1 {
               let h = x * 3.0
             } else {
               let h = softmax(x)
             }
             x = h + x
             output h
           }
           output y = x
         }",
    );
    assert_eq!(count(&l.graph, |op| matches!(op, Op::Softmax)), 0);
    let out = run(&l.graph);
    assert_eq!(out["y"].as_f32(), [12.0, 24.0]);
    assert_eq!(out["h"].shape, [2, 1, 2]);
    assert_eq!(out["h"].as_f32(), [2.0, 4.0, 9.0, 18.0]);
}

#[test]
fn top_level_ifs_without_a_taken_branch_lower_nothing() {
    let l = lower(
        r#"model m {
             param rope_type = "default"
             input x: f32[tokens, 2]
             if rope_type == "yarn" { let scaled = x * 2.0 }
             if rope_type != "yarn" { output y = x * 5.0 }
           }"#,
    );
    assert_eq!(run(&l.graph)["y"].as_f32(), [5.0, 10.0]);
}

#[test]
fn if_expressions_choose_arguments_and_whole_lets() {
    let l = lower(
        "model m {
           param wide = false
           param use_norm = true
           input x: f32[tokens, 4]
           let a = linear(x, if wide then 8 else 2, bias = not wide)
           let n = if use_norm then rmsnorm(x, eps = if wide then 1e-5 else 1e-6) else linear(x, 4)
           output a
           output n
         }",
    );
    let shapes: Vec<(&str, &[usize])> = l
        .graph
        .weights
        .iter()
        .map(|w| (w.key.as_str(), w.shape.as_slice()))
        .collect();
    assert_eq!(shapes, [("a", &[2, 4][..]), ("a.bias", &[2]), ("n", &[4])]);
    assert_eq!(count(&l.graph, |op| matches!(op, Op::Linear { .. })), 1);
}

/// DeepSeek's dense first layers: a plain MLP where `layer < first_k_dense_replace`,
/// a MoE layer after; the weights bound are those of the branch each layer took.
#[test]
fn layers_choose_dense_or_moe_blocks() {
    let l = lower(
        "model m {
           param hidden_size = 8
           param intermediate_size = 16
           param moe_intermediate_size = 4
           param n_routed_experts = 4
           param num_experts_per_tok = 2
           param num_hidden_layers = 3
           param first_k_dense_replace = 1
           param rms_norm_eps = 1e-6
           input x: f32[tokens, hidden_size]
           expert swiglu(h: [n, hidden_size]) -> [n, hidden_size] {
             let gate_proj = linear(h, moe_intermediate_size)
             let up_proj = linear(h, moe_intermediate_size)
             let down_proj = linear(silu(gate_proj) * up_proj, hidden_size)
             return down_proj
           }
           router gate(h: [n, hidden_size]) {
             logits = linear(h, n_routed_experts)
             scores = softmax(logits)
             select = topk(scores, num_experts_per_tok)
           }
           repeat layer in num_hidden_layers {
             let post_attention_layernorm = rmsnorm(x, eps = rms_norm_eps)
             if layer < first_k_dense_replace {
               let gate_proj = linear(post_attention_layernorm, intermediate_size)
               let up_proj = linear(post_attention_layernorm, intermediate_size)
               let mlp = linear(silu(gate_proj) * up_proj, hidden_size)
               x = x + mlp
             } else {
               let mlp = moe(post_attention_layernorm, experts = n_routed_experts * swiglu, router = gate)
               x = x + mlp
             }
           }
           output y = x
           weights \"model.layers.{layer}\" {
             post_attention_layernorm = \"post_attention_layernorm.weight\"
             gate_proj = \"mlp.gate_proj.weight\"
             up_proj = \"mlp.up_proj.weight\"
             mlp = \"mlp.down_proj.weight\"
             gate.logits = \"mlp.gate.weight\"
             experts[e].gate_proj = \"mlp.experts.{e}.gate_proj.weight\"
             experts[e].up_proj = \"mlp.experts.{e}.up_proj.weight\"
             experts[e].down_proj = \"mlp.experts.{e}.down_proj.weight\"
           }
         }",
    );
    let names: Vec<&str> = l.graph.weights.iter().map(|w| w.tensor.as_str()).collect();
    for present in [
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.gate.weight",
        "model.layers.2.mlp.experts.3.down_proj.weight",
        "model.layers.2.post_attention_layernorm.weight",
    ] {
        assert!(names.contains(&present), "{present} in {names:?}");
    }
    for absent in [
        "model.layers.0.mlp.gate.weight",
        "model.layers.1.mlp.gate_proj.weight",
    ] {
        assert!(!names.contains(&absent), "{absent}");
    }
    // 1 dense layer of 3 linears, 2 moe layers of a router and 4 experts of 3 linears.
    assert_eq!(
        count(&l.graph, |op| matches!(op, Op::Linear { .. })),
        3 + 2 * (1 + 4 * 3)
    );
}

#[test]
fn clamp_min_and_max_of_constants_stay_constants() {
    let l = lower(
        "model m { param a = clamp(9, 0, 4) param b = clamp(-0.5, -1, 1.5) param c = min(3, 2.5)
          param d = max(2, 7) input x: f32[tokens, 2] let y = x * clamp(a, 1, 2) output y }",
    );
    assert_eq!(param(&l, "a"), Const::Int(4));
    assert_eq!(param(&l, "b"), Const::Float(-0.5));
    assert_eq!(param(&l, "c"), Const::Float(2.5));
    assert_eq!(param(&l, "d"), Const::Int(7));
    assert_eq!(count(&l.graph, |o| matches!(o, Op::Binary(_))), 1);
    assert_eq!(run(&l.graph)["y"].as_f32(), &[2.0, 4.0]);
}
