//! Weight bindings as lowered: one fused `[E, ...]` tensor bound to every expert's weight
//! (its expert slice), `transposed`, `columns(start, step)` and `rows(start, step)` with params
//! and `e`, and a router called `router`.

use moec_compiler::ir::{AxisSlice, WeightDecl};
use moec_compiler::lower::lower_source;

const SPEC: &str = "model m { param hidden_size = 4 param intermediate_size = 3
  param interleave = 2
  input x: f32[tokens, hidden_size]
  expert e(h: [n, hidden_size]) -> [n, hidden_size] {
    let gate = linear(h, intermediate_size, bias = true)
    let up   = linear(h, intermediate_size, bias = true)
    let down = linear(silu(gate) * up, hidden_size) return down }
  router router(h: [n, hidden_size]) { logits = linear(h, 2) select = topk(scores, 1) }
  let mlp = moe(x, experts = 2 * e, router = router) output mlp
  weights \"mlp\" {
    router.logits     = \"router.weight\"
    experts.gate      = \"experts.gate_up_proj\" transposed columns(0, interleave)
    experts.up        = \"experts.gate_up_proj\" transposed columns(interleave - 1, interleave)
    experts.gate.bias = \"experts.gate_up_proj_bias\" columns(0, 2)
    experts.up.bias   = \"experts.gate_up_proj_bias\" columns(1, 2)
    experts.down      = \"experts.down_proj\" transposed
  } }";

fn decl<'g>(decls: &'g [WeightDecl], key: &str) -> &'g WeightDecl {
    decls
        .iter()
        .find(|d| d.key == key)
        .unwrap_or_else(|| panic!("no weight {key}"))
}

#[test]
fn interleaved_columns_of_fused_tensors() {
    let g = lower_source(SPEC, &[])
        .unwrap_or_else(|d| panic!("{}", d.render("t.moe", SPEC)))
        .graph;
    let up = decl(&g.weights, "mlp.experts.1.up");
    assert_eq!(up.tensor, "mlp.experts.gate_up_proj");
    assert_eq!(up.expert_slice, Some(1));
    assert!(up.transposed);
    assert_eq!(up.columns, Some(AxisSlice { start: 1, step: 2 }));
    assert_eq!(up.shape, [3, 4]);
    let bias = decl(&g.weights, "mlp.experts.0.gate.bias");
    assert_eq!(
        (bias.expert_slice, bias.columns, bias.transposed),
        (Some(0), Some(AxisSlice { start: 0, step: 2 }), false)
    );
    let down = decl(&g.weights, "mlp.experts.1.down");
    assert_eq!((down.columns, down.transposed), (None, true));
    assert_eq!(
        decl(&g.weights, "mlp.router.logits").tensor,
        "mlp.router.weight"
    );
    let text = moec_compiler::print::text(&g);
    assert!(
        text.contains("mlp.experts.1.up = \"mlp.experts.gate_up_proj\" slice=1 transposed columns(1, 2) [3, 4]"),
        "{text}"
    );
}

/// GraniteMoE's `[E, 2I, D]` halves by `rows`, and DBRX's experts stacked without an axis
/// (`[E·F, D]`) by per-expert rows that read `e`.
const ROWS: &str = "model m { param hidden_size = 4 param intermediate_size = 3
  input x: f32[tokens, hidden_size]
  expert e(h: [n, hidden_size]) -> [n, hidden_size] {
    let gate = linear(h, intermediate_size)
    let up   = linear(h, intermediate_size)
    let down = linear(silu(gate) * up, hidden_size) return down }
  router router(h: [n, hidden_size]) { logits = linear(h, 2) select = topk(scores, 1) }
  let a = moe(x, experts = 2 * e, router = router)
  let b = moe(a, experts = 2 * e, router = router)
  output b
  weights {
    a.experts.gate    = \"a.input_linear\" rows(0, 1)
    a.experts.up      = \"a.input_linear\" rows(intermediate_size, 1)
    a.experts.down    = \"a.output_linear\"
    b.experts[e].gate = \"b.w1\" rows(e * intermediate_size, 1)
    b.experts[e].up   = \"b.v1\" rows(e * intermediate_size, 1)
    b.experts[e].down = \"b.w2\" transposed rows(e * intermediate_size, 1)
  } }";

#[test]
fn rows_of_concatenated_and_flat_stacked_tensors() {
    let g = lower_source(ROWS, &[])
        .unwrap_or_else(|d| panic!("{}", d.render("t.moe", ROWS)))
        .graph;
    let up = decl(&g.weights, "a.experts.1.up");
    assert_eq!(
        (up.tensor.as_str(), up.expert_slice, up.rows, up.columns),
        (
            "a.input_linear",
            Some(1),
            Some(AxisSlice { start: 3, step: 1 }),
            None
        )
    );
    assert_eq!(up.pattern, "experts[e].up");
    let down = decl(&g.weights, "b.experts.1.down");
    assert_eq!(
        (
            down.expert_slice,
            down.transposed,
            down.rows,
            down.shape.as_slice()
        ),
        (
            None,
            true,
            Some(AxisSlice { start: 3, step: 1 }),
            &[4, 3][..]
        )
    );
    let text = moec_compiler::print::text(&g);
    assert!(
        text.contains("b.experts.1.gate = \"b.w1\" rows(3, 1) [3, 4]"),
        "{text}"
    );
}
