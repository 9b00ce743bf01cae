//! The pass pipeline: IR snapshots after every step for every example, "optimized
//! equals lowered" under the interpreter (examples and random specs), the named
//! canonicalization rewrites, buffer plans without overlaps, and stats by hand.

mod common;

use common::{assert_outputs_close, inputs, small_dims, small_examples, weights};
use moec_compiler::ir::{Graph, Op, WeightFormat};
use moec_compiler::lower::lower_source;
use moec_compiler::passes::memory::{plan, MemoryPlan};
use moec_compiler::passes::{canonicalize, run_pipeline, Upto, PIPELINE};
use moec_compiler::storage::{self, Storage};
use moec_compiler::{interp, print, stats, verify};
use proptest::prelude::*;

fn lower(source: &str, sets: &[(String, String)]) -> Graph {
    lower_source(source, sets)
        .unwrap_or_else(|d| panic!("{}", d.render("test.moe", source)))
        .graph
}

/// The IR text after each pipeline step, one snapshot per example and step.
#[test]
fn ir_after_each_step() {
    insta::glob!("../../examples", "*.moe", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let lowered = lower(&source, &small_dims(&source));
        for (name, _) in PIPELINE {
            let mut g = lowered.clone();
            run_pipeline(&mut g, Upto::After(name), true).unwrap();
            insta::assert_snapshot!(format!("after_{name}"), print::text(&g));
        }
    });
}

/// Runs the lowered graph and the fully optimized one (verified after every
/// step) on the same weights and inputs; the outputs must agree.
fn check_equivalent(lowered: &Graph, tokens: usize, seed: u64, what: &str) -> Graph {
    let mut optimized = lowered.clone();
    run_pipeline(&mut optimized, Upto::All, true).unwrap_or_else(|e| panic!("{what}: {e}"));
    let x = inputs(lowered, tokens, seed);
    let want = interp::run(lowered, &weights(lowered, seed), &x)
        .unwrap_or_else(|e| panic!("{what}: lowered: {e}"));
    let got = interp::run(&optimized, &weights(&optimized, seed), &x)
        .unwrap_or_else(|e| panic!("{what}: optimized: {e}"));
    assert_outputs_close(&got, &want, 1e-5, what);
    optimized
}

/// Fails unless the pipeline fired: the experts run as grouped matmuls over dispatched
/// rows and the router is one fused op, so a pass that silently stops rewriting (and
/// leaves the correct but slow lowered form) fails the equivalence tests too.
fn assert_rewritten(g: &Graph, what: &str) {
    let has = |f: fn(&Op) -> bool| g.g.node_weights().any(|n| f(&n.op));
    assert!(
        has(|o| matches!(o, Op::GroupedLinear { .. })),
        "{what}: no grouped_linear after scheduling:\n{}",
        print::text(g)
    );
    assert!(
        // Selections that are one op from the start (expert choice, sparsemixer) count as fused.
        has(|o| matches!(
            o,
            Op::Router(_) | Op::ExpertChoice { .. } | Op::SparseMixer { .. }
        )),
        "{what}: the router was not fused:\n{}",
        print::text(g)
    );
}

/// Examples whose routed experts stay dense, as documented (schedule.rs, passes_fusion.rs):
/// experts of several shapes form several groups (heterogeneous); the routing weight scales the
/// experts' input (llama4_text) or a clamped SwiGLU without α has no fused epilogue (hy_v4);
/// zero-computation experts form no group (longcat_flash).
const DENSE_BY_DESIGN: &[&str] = &[
    "heterogeneous.moe",
    "llama4_text.moe",
    "hy_v4.moe",
    "longcat_flash.moe",
];

#[test]
fn examples_optimized_equal_lowered() {
    for (name, g) in small_examples() {
        for tokens in [0, 1, 7] {
            let what = format!("{name} at {tokens} tokens");
            let optimized = check_equivalent(&g, tokens, 7, &what);
            if !DENSE_BY_DESIGN.contains(&name.as_str()) {
                assert_rewritten(&optimized, &what);
            }
        }
    }
}

/// Canonicalizes `source` and compares the IR text.
fn check_canonical(source: &str, want: &str) {
    let mut g = lower(source, &[]);
    canonicalize::run(&mut g).unwrap();
    verify::verify(&g).unwrap();
    assert_eq!(print::text(&g).trim(), want.trim(), "\n{}", print::text(&g));
}

#[test]
fn canonicalize_identities() {
    // mul_x_one, add_x_zero, sub_x_zero, div_x_one and mul_neg_neg all reduce to x;
    // the constants and binaries they leave behind are dead.
    check_canonical(
        "model m { input x: f32[tokens, 4]
           let a = x * 1.0 + 0.0
           let b = (a - 0.0) / 1.0
           let c = -(-b)
           output c }",
        "graph m {\n  %0 = input[name=x] : f32[tokens, 4]  // x\n  output c = %0\n}",
    );
}

#[test]
fn canonicalize_cse_and_folding() {
    // Two equal `linear`s of the same weight merge; `silu(h) * 2 * 3` keeps both
    // multiplications (no reassociation); the unused `z` is dead.
    check_canonical(
        "model m { param w = 2 input x: f32[tokens, 4]
           let h = linear(x, 4)
           let z = silu(x)
           let y = silu(h) * h + silu(h) * h
           let q = y * w * 3
           output q
           weights { h = \"h.weight\" } }",
        "graph m {
  w0 h = \"h.weight\" [4, 4]
  %0 = input[name=x] : f32[tokens, 4]  // x
  %1 = weight[id=0] : f32[4, 4]  // h
  %2 = linear %0, %1 : f32[tokens, 4]  // h
  %3 = silu %2 : f32[tokens, 4]
  %4 = mul %3, %2 : f32[tokens, 4]
  %5 = add %4, %4 : f32[tokens, 4]  // y
  %6 = const[value=2.0] : f32[]
  %7 = mul %5, %6 : f32[tokens, 4]
  %8 = const[value=3.0] : f32[]
  %9 = mul %7, %8 : f32[tokens, 4]  // q
  output q = %9
}",
    );
}

#[test]
fn canonicalize_keeps_unused_inputs_and_reports_no_change() {
    let mut g = lower(
        "model m { input x: f32[tokens, 4] input u: f32[tokens, 2] output x }",
        &[],
    );
    let before = print::text(&g);
    assert!(!canonicalize::run(&mut g).unwrap());
    assert_eq!(print::text(&g), before);
    assert_eq!(g.inputs.len(), 2);
}

/// No two buffers live at the same time overlap in either coordinate, nor at
/// their run-time addresses for a few token counts.
fn check_plan(g: &Graph, p: &MemoryPlan, what: &str) {
    let values: Vec<_> = p.offsets.keys().copied().collect();
    assert_eq!(
        values.len(),
        p.live.len(),
        "{what}: every live value is placed"
    );
    for (i, a) in values.iter().enumerate() {
        let ((a_off, b_off), (a_len, b_len)) = (p.offsets[a], p.footprints[a]);
        assert!(
            a_off + a_len <= p.peak_per_token && b_off + b_len <= p.peak_fixed,
            "{what}: {a:?} outside the arena"
        );
        for b in &values[i + 1..] {
            let (la, lb) = (p.live[a], p.live[b]);
            if la.0 > lb.1 || lb.0 > la.1 {
                continue;
            }
            let ((c_off, d_off), (c_len, d_len)) = (p.offsets[b], p.footprints[b]);
            let disjoint =
                |x: u64, xl: u64, y: u64, yl: u64| xl == 0 || yl == 0 || x + xl <= y || y + yl <= x;
            assert!(
                disjoint(a_off, a_len, c_off, c_len),
                "{what}: {a:?} and {b:?} overlap per token"
            );
            assert!(
                disjoint(b_off, b_len, d_off, d_len),
                "{what}: {a:?} and {b:?} overlap in the fixed arena"
            );
            for t in [0, 1, 7, 300] {
                let size = |v| {
                    let (pt, f) = moec_compiler::passes::memory::byte_size(g.value_type(v));
                    pt * t as u64 + f
                };
                let (x, y) = (p.address(*a, t).unwrap(), p.address(*b, t).unwrap());
                assert!(
                    x + size(*a) <= p.peak_bytes(t) && y + size(*b) <= p.peak_bytes(t),
                    "{what}: past the arena"
                );
                assert!(
                    disjoint(x, size(*a), y, size(*b)),
                    "{what}: {a:?} and {b:?} overlap at {t} tokens"
                );
            }
        }
    }
}

#[test]
fn memory_plans_never_overlap() {
    for (name, lowered) in small_examples() {
        let mut optimized = lowered.clone();
        run_pipeline(&mut optimized, Upto::All, true).unwrap();
        for (g, which) in [(&lowered, "lowered"), (&optimized, "optimized")] {
            let p = plan(g);
            assert!(
                p.peak_per_token > 0,
                "{name}: a [tokens, ..] output needs space"
            );
            check_plan(g, &p, &format!("{name} {which}"));
        }
    }
}

#[test]
fn memory_reuses_dead_buffers() {
    // A chain of elementwise ops needs two buffers at a time, never three.
    let g = lower("model m { input x: f32[tokens, 4] let a = silu(x) let b = relu(a) let c = gelu(b) output c }", &[]);
    let p = plan(&g);
    check_plan(&g, &p, "chain");
    assert_eq!((p.peak_per_token, p.peak_fixed), (2 * 4 * 4, 0));
    assert_eq!(p.peak_bytes(10), 320);
}

#[test]
fn stats_count_by_hand() {
    // linear 4→8 on T rows: 2·T·8·4 FLOPs, 8·4·4 weight bytes; silu: 8·T FLOPs.
    let g = lower(
        "model m { input x: f32[tokens, 4] let h = linear(x, 8) let y = silu(h) output y }",
        &[],
    );
    let s = stats::stats(&g, 10);
    assert_eq!(
        s,
        stats::Stats {
            tokens: 10,
            flops: 2 * 10 * 8 * 4 + 80,
            weight_bytes: 128,
            peak_bytes: 2 * 10 * 8 * 4,
            kernels: 2
        }
    );
    let table = stats::table(&s, &s);
    assert!(
        table.contains("kernels") && table.contains("1.000"),
        "{table}"
    );
}

#[test]
fn stats_of_mixtral_never_exceed_dense() {
    let (_, dense) = small_examples()
        .into_iter()
        .find(|(n, _)| n == "mixtral.moe")
        .expect("mixtral example");
    let mut g = dense.clone();
    run_pipeline(&mut g, Upto::All, true).unwrap();
    for tokens in [1, 16, 128] {
        let (s, d) = (stats::stats(&g, tokens), stats::stats(&dense, tokens));
        assert!(
            s.flops <= d.flops && s.weight_bytes <= d.weight_bytes && s.kernels <= d.kernels,
            "{s:?} vs {d:?}"
        );
        // Dense: per expert 3 linears of 8·16 MACs per token.
        assert!(d.flops >= 8 * 3 * 2 * 8 * 16 * tokens as u64);
    }
}

/// A random MoE layer, as raw choices; `spec` turns them into valid source text.
#[derive(Clone, Debug)]
struct Layer {
    experts: u64,
    k: u64,
    hidden: u64,
    inter: u64,
    swiglu: bool,
    sigmoid: bool,
    /// 0 off, 1 by the sum, 2 by the 2-norm, 3 by the sum bounded below by 0.6.
    normalize: u8,
    scale: u8,
    /// 0 dropless, 1 factor, 2 fixed.
    capacity: u8,
    factor: u8,
    fixed: u64,
    drop_score: bool,
    /// (use, which divisor, kept groups, max score)
    groups: (bool, u8, u8, bool),
    /// 0 none, 1 shared, 2 shared with gate.
    shared: u8,
    /// 0 plain, 1 weights scale the experts' input (Llama 4), 2 an output bias (JetMoE).
    block: u8,
}

impl Layer {
    /// Whether the routing weight scales the experts' input (`scale_input = true`).
    fn scales_input(&self) -> bool {
        self.block % 3 == 1
    }

    fn spec(&self) -> String {
        let (e, d, i) = (self.experts, self.hidden, self.inter);
        let k = 1 + (self.k - 1) % e.min(8);
        let body = |name: &str, i: u64| {
            if self.swiglu {
                format!(
                    "expert {name}(h: [n, {d}]) -> [n, {d}] {{ let gate = linear(h, {i}) let up = linear(h, {i}) \
                     let down = linear(silu(gate) * up, {d}) return down }}"
                )
            } else {
                format!("expert {name}(h: [n, {d}]) -> [n, {d}] {{ let up = linear(h, {i}) let down = linear(gelu(up), {d}) return down }}")
            }
        };
        let mut select = format!("topk(scores, {k}");
        let divisors: Vec<u64> = (2..=e).filter(|g| e % g == 0).collect();
        if self.groups.0 && !divisors.is_empty() {
            let g = divisors[self.groups.1 as usize % divisors.len()];
            let per = e / g;
            let keep = (1 + u64::from(self.groups.2) % g).max(k.div_ceil(per));
            let score = if self.groups.3 || per < 2 {
                "max"
            } else {
                "top2_sum"
            };
            select.push_str(&format!(
                ", groups = {g}, topk_groups = {keep}, group_score = {score}"
            ));
        }
        select.push(')');
        let scale = [1.0, 2.5, 0.5][self.scale as usize % 3];
        let mut args = format!("experts = {e} * ffn, router = gate");
        let policy = if self.drop_score { "score" } else { "arrival" };
        match self.capacity % 3 {
            1 => args.push_str(&format!(
                ", capacity = factor({}, drop = {policy})",
                [0.5, 1.0, 1.25, 2.0][self.factor as usize % 4]
            )),
            2 => args.push_str(&format!(
                ", capacity = fixed({}, drop = {policy})",
                self.fixed
            )),
            _ => {}
        }
        match self.block % 3 {
            _ if self.scales_input() => args.push_str(", scale_input = true"),
            2 => args.push_str(", bias = true"),
            _ => {}
        }
        let shared = match self.shared % 3 {
            0 => String::new(),
            n => {
                args.push_str(if n == 1 {
                    ", shared = shared_ffn"
                } else {
                    ", shared = shared_ffn, shared_gate = true"
                });
                body("shared_ffn", i + 1)
            }
        };
        format!(
            "model p {{
  input x: f32[tokens, {d}]
  {}
  {shared}
  router gate(h: [n, {d}]) {{
    logits = linear(h, {e})
    scores = {}(logits)
    select = {select}
    {}
    scale = {scale:?}
  }}
  let y = moe(x, {args})
  output y
  output router_logits = y.router_logits
  output selected = y.selected_experts
  output counts = y.expert_counts
  output z_loss = y.z_loss
}}",
            body("ffn", i),
            if self.sigmoid { "sigmoid" } else { "softmax" },
            [
                "normalize = false",
                "normalize = true",
                "normalize = true normalize_p = 2.0",
                "normalize = true normalize_min = 0.6",
            ][self.normalize as usize % 4],
        )
    }
}

fn layer() -> impl Strategy<Value = Layer> {
    (
        (1u64..=64, 1u64..=8, 2u64..=16, 2u64..=16),
        (any::<bool>(), any::<bool>(), 0u8..4, 0u8..3),
        (0u8..3, 0u8..4, 1u64..=8, any::<bool>()),
        (any::<bool>(), any::<u8>(), any::<u8>(), any::<bool>()),
        (0u8..3, 0u8..3),
    )
        .prop_map(
            |(
                (experts, k, hidden, inter),
                (swiglu, sigmoid, normalize, scale),
                (capacity, factor, fixed, drop_score),
                groups,
                (shared, block),
            )| {
                Layer {
                    experts,
                    k,
                    hidden,
                    inter,
                    swiglu,
                    sigmoid,
                    normalize,
                    scale,
                    capacity,
                    factor,
                    fixed,
                    drop_score,
                    groups,
                    shared,
                    block,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_specs_optimized_equal_lowered(
        l in layer(),
        tokens in prop_oneof![Just(0usize), Just(1usize), 0usize..=300],
        seed in any::<u64>(),
    ) {
        let source = l.spec();
        let g = lower(&source, &[]);
        let what = format!("{tokens} tokens, seed {seed}:\n{source}");
        let optimized = check_equivalent(&g, tokens, seed, &what);
        // Input-scaled experts (Llama 4) stay dense by design.
        if !l.scales_input() {
            assert_rewritten(&optimized, &what);
        }
    }
}

#[test]
fn stats_count_quantized_experts_by_their_blocks() {
    // 2 experts of 2 linears 32→64 and 64→32 (one 32-value block per row of the first,
    // two per row of the second), and a router 32→2 that stays f32.
    let src = "model m {
      input x: f32[tokens, 32]
      expert e(h: [n, 32]) -> [n, 32] { let up = linear(h, 64) let down = linear(relu(up), 32) return down }
      router r(h: [n, 32]) { logits = linear(h, 2) scores = softmax(logits) select = topk(scores, 1) }
      let y = moe(x, experts = 2 * e, router = r)
      output y
    }";
    let mut g = lower(src, &[]);
    run_pipeline(&mut g, Upto::All, true).unwrap();
    let f32_bytes = stats::stats(&g, 4).weight_bytes;
    let router = 2 * 32 * 4;
    assert_eq!(f32_bytes, router + 2 * (64 * 32 + 32 * 64) * 4);
    // q4_0: 18 bytes per block of 32 values; q8_0: 34.
    for (format, block) in [(WeightFormat::Q4_0, 18), (WeightFormat::Q8_0, 34)] {
        let mut stored = g.clone();
        Storage::experts(format).apply(&mut stored);
        let stored = stats::stats(&stored, 4).weight_bytes;
        assert_eq!(stored, router + 2 * (64 + 32 * 2) * block, "{format}");
    }
}

/// `--weight-format` covers every matmul but routers (a 32-column one,
/// sigmoid-scored, here) and those narrower than a block (a one-column
/// linear); `--expert-format` only the stacked experts.
#[test]
fn weight_format_covers_every_matmul_but_routers_and_narrow_ones() {
    let src = "model m {
      input x: f32[tokens, 64]
      expert e(h: [n, 64]) -> [n, 64] { let up = linear(h, 64) return up }
      router r(h: [n, 64]) { logits = linear(h, 32) scores = sigmoid(logits) select = topk(scores, 1) }
      let a = linear(x, 64)
      let g = linear(a, 1)
      let y = moe(a, experts = 32 * e, router = r)
      let z = linear(y, 64)
      output z
      output g
    }";
    let mut g = lower(src, &[]);
    run_pipeline(&mut g, Upto::All, true).unwrap();
    let columns = |storage: Storage| {
        let mut c: Vec<(String, u64)> = storage
            .covered(&g)
            .into_iter()
            .map(|n| {
                let w = g.value_type(g.operands(n)[1]);
                let shape = w.concrete_shape(1);
                (
                    g.node(n).op.name().to_string(),
                    shape[shape.len() - 2] as u64,
                )
            })
            .collect();
        c.sort();
        c
    };
    let matmuls = columns(Storage::matmuls(WeightFormat::Q8_0));
    assert_eq!(
        matmuls,
        [
            ("grouped_linear".to_string(), 64),
            ("linear".to_string(), 64),
            ("linear".to_string(), 64)
        ],
        "the router and the 1-column linear stay f32"
    );
    let experts = columns(Storage::experts(WeightFormat::Q8_0));
    assert_eq!(experts, [("grouped_linear".to_string(), 64)]);
    // Bytes: six [64, 64] matrices read at 4 tokens (two linears, and 4 of the 32
    // experts: 4 routed rows) at 34 bytes per 32 values instead of 4 per value.
    let f32s = stats::stats(&g, 4).weight_bytes;
    Storage::matmuls(WeightFormat::Q8_0).apply(&mut g);
    let q8 = stats::stats(&g, 4).weight_bytes;
    // The choice is part of the graph: it verifies and survives serde (artifacts).
    verify::verify(&g).unwrap();
    let back: Graph = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
    assert_eq!(back.stored, g.stored);
    assert_eq!(f32s - q8, 6 * 64 * 64 * 4 - 6 * 64 * 2 * 34);
}

#[test]
fn capacity_and_its_drop_rule_are_chosen_by_compile_time_ifs() {
    let src = |frac: &str, prio: &str| {
        format!(
            "model m {{
          param frac = {frac}
          param prio = {prio}
          input x: f32[tokens, 8]
          expert e(h: [n, 8]) -> [n, 8] {{ let w = linear(h, 8) return w }}
          router r(h: [n, 8]) {{ logits = linear(h, 4) scores = softmax(logits) select = topk(scores, 2) }}
          let y = moe(x, experts = 4 * e, router = r,
                      capacity = if frac > 0 then fraction(frac, drop = if prio then priority else arrival)
                                 else fixed(3, drop = if prio then priority else arrival))
          output y
        }}"
        )
    };
    for (frac, prio, want) in [
        ("0.5", "true", "experts=4 fraction=0.5 policy=Priority"),
        ("0.5", "false", "experts=4 fraction=0.5 policy=Arrival"),
        ("0.0", "true", "experts=4 fixed=3 policy=Priority"),
        ("-1.0", "false", "experts=4 fixed=3 policy=Arrival"),
    ] {
        let text = print::text(&lower(&src(frac, prio), &[]));
        assert!(text.contains(want), "{frac} {prio}: {text}");
    }
}

/// A bf16 checkpoint's matmuls keep bf16 weights (`storage::keep_bf16`): every
/// matmul whose weights are all bf16 tensors, also through the experts' stacking,
/// but not one with an f32 tensor among its weights, nor one a storage choice
/// already stored otherwise.
#[test]
fn a_bf16_checkpoint_keeps_its_matmuls_bf16() {
    let src = "model m {
      input x: f32[tokens, 64]
      expert e(h: [n, 64]) -> [n, 64] { let up = linear(h, 64) return up }
      router r(h: [n, 64]) { logits = linear(h, 4) scores = softmax(logits) select = topk(scores, 1) }
      let a = linear(x, 64)
      let y = moe(a, experts = 4 * e, router = r)
      let z = linear(y, 32)
      output z
    }";
    let stored_by_width = |experts: Option<WeightFormat>| {
        let mut g = lower(src, &[]);
        run_pipeline(&mut g, Upto::All, true).unwrap();
        if let Some(f) = experts {
            Storage::experts(f).apply(&mut g);
        }
        // The router's [4, 64] tensor is f32 in this checkpoint; the rest bf16.
        let router: Vec<usize> = vec![4, 64];
        let bf16: Vec<bool> = g.weights.iter().map(|w| w.shape != router).collect();
        storage::keep_bf16(&mut g, |id| bf16[id]);
        verify::verify(&g).unwrap();
        let mut stored: Vec<(String, u64, WeightFormat)> = g
            .stored
            .iter()
            .map(|(&n, &f)| {
                let shape = g.value_type(g.operands(n)[1]).concrete_shape(1);
                (
                    g.node(n).op.name().to_string(),
                    shape[shape.len() - 2] as u64,
                    f,
                )
            })
            .collect();
        stored.sort_by_key(|(name, width, _)| (name.clone(), *width));
        stored
    };
    let bf16 = WeightFormat::Bf16;
    assert_eq!(
        stored_by_width(None),
        [
            ("grouped_linear".to_string(), 64, bf16),
            ("linear".to_string(), 32, bf16),
            ("linear".to_string(), 64, bf16),
        ],
        "every matmul but the router"
    );
    assert_eq!(
        stored_by_width(Some(WeightFormat::Q8_0))[0],
        ("grouped_linear".to_string(), 64, WeightFormat::Q8_0),
        "the experts stay as --expert-format stores them"
    );
}
