//! The WGSL backend's codegen, with no adapter: every kernel of every example,
//! before and after the pass pipeline, at small and at the examples' real dims,
//! parses and validates with naga (inside `wgsl::lower`); the text of each
//! example's kernels (what `moec compile --target wgsl` writes) is snapshotted;
//! weights larger than one binding are split by whole rows and the split plan
//! still covers every weight element once, in order; plans survive a serde round trip.

mod common;

use common::{example_sources, small_dims};
use moec_compiler::backend::wgsl::{lower, Contents, Elem, Options, Plan, Segment, Step};
use moec_compiler::ir::Graph;
use moec_compiler::lower::lower_source;
use moec_compiler::passes::{run_pipeline, Upto};

fn graph(source: &str, params: &[(String, String)], upto: Upto) -> Graph {
    let mut g = lower_source(source, params).unwrap().graph;
    run_pipeline(&mut g, upto, true).unwrap();
    g
}

#[test]
fn every_example_lowers_and_validates() {
    for (name, source) in example_sources() {
        for params in [small_dims(&source), Vec::new()] {
            for upto in [Upto::None, Upto::All] {
                let g = graph(&source, &params, upto);
                for f16_weights in [false, true] {
                    let options = Options {
                        f16_weights,
                        ..Options::default()
                    };
                    let p = lower(&g, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(p.plan.kernels.len(), p.sources.len());
                    assert!(!p.plan.steps.is_empty(), "{name}");
                    check_plan(&g, &p.plan);
                }
            }
        }
    }
}

/// Buffers fit one binding, bindings name real buffers, and every weight buffer
/// holds what its segments say.
fn check_plan(g: &Graph, plan: &Plan) {
    for b in &plan.buffers {
        if let Contents::Weights { segments } = &b.contents {
            let len: u64 = segments.iter().map(Segment::elements).sum();
            assert_eq!(Some(len), b.elements.as_fixed(), "{}", b.name);
            assert!(
                len * b.elem.bytes() <= plan.max_binding_bytes.max(4),
                "{}",
                b.name
            );
            for s in segments {
                if let Segment::Weight {
                    weight, start, len, ..
                } = s
                {
                    let n: usize = g.weights[*weight].shape.iter().product();
                    assert!(start + len <= n as u64, "{}", b.name);
                }
            }
        }
    }
    for s in &plan.steps {
        match s {
            Step::Kernel {
                kernel, buffers, ..
            } => {
                assert!(*kernel < plan.kernels.len());
                assert!(buffers.iter().all(|b| *b < plan.buffers.len()));
            }
            Step::Copy { src, dst, .. } => {
                assert!(*src < plan.buffers.len() && *dst < plan.buffers.len())
            }
        }
    }
}

#[test]
fn kernels_snapshot() {
    insta::glob!("../../examples", "*.moe", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let g = graph(&source, &small_dims(&source), Upto::All);
        let p = lower(&g, &Options::default()).unwrap();
        let mut text = String::new();
        for (info, src) in p.plan.kernels.iter().zip(&p.sources) {
            text.push_str(&format!("// ===== kernel {} =====\n{src}\n", info.name));
        }
        insta::assert_snapshot!(text);
    });
}

#[test]
fn large_weights_split_by_rows() {
    let (_, source) = example_sources()
        .into_iter()
        .find(|(n, _)| n == "mixtral.moe")
        .unwrap();
    let mut params = small_dims(&source);
    params.retain(|(k, _)| k != "hidden_size" && k != "intermediate_size");
    params.push(("hidden_size".into(), "48".into()));
    params.push(("intermediate_size".into(), "80".into()));
    let g = graph(&source, &params, Upto::All);
    let whole = lower(&g, &Options::default()).unwrap();
    // A binding of 4 KiB holds 21 rows of 48 f32s.
    let small = Options {
        max_binding_bytes: 4096,
        f16_weights: false,
    };
    let split = lower(&g, &small).unwrap();
    check_plan(&g, &split.plan);
    let chunks = split
        .plan
        .buffers
        .iter()
        .filter(|b| b.name.contains('#'))
        .count();
    assert!(chunks > 8, "expected split weights, got {chunks} chunks");
    // The chunks of one value, in order, hold exactly what the unsplit buffer holds.
    for b in &whole.plan.buffers {
        let Contents::Weights { segments } = &b.contents else {
            continue;
        };
        let parts: Vec<Segment> = split
            .plan
            .buffers
            .iter()
            .filter(|c| c.name == b.name || c.name.starts_with(&format!("{}#", b.name)))
            .flat_map(|c| match &c.contents {
                Contents::Weights { segments } => segments.clone(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(flatten(segments), flatten(&parts), "{}", b.name);
    }
    assert!(split.sources.iter().any(|s| s.contains("switch chunk")));
}

/// Segments as (weight, element) runs, merged across chunk boundaries.
fn flatten(segments: &[Segment]) -> Vec<(usize, u64, u64)> {
    let mut out: Vec<(usize, u64, u64)> = Vec::new();
    for s in segments {
        if let Segment::Weight {
            weight, start, len, ..
        } = s
        {
            match out.last_mut() {
                Some(last) if last.0 == *weight && last.1 + last.2 == *start => last.2 += len,
                _ => out.push((*weight, *start, *len)),
            }
        }
    }
    out
}

#[test]
fn f16_weights_use_the_extension() {
    let (_, source) = example_sources()
        .into_iter()
        .find(|(n, _)| n == "mixtral.moe")
        .unwrap();
    let g = graph(&source, &small_dims(&source), Upto::All);
    let p = lower(
        &g,
        &Options {
            f16_weights: true,
            ..Options::default()
        },
    )
    .unwrap();
    let f16_buffers = p
        .plan
        .buffers
        .iter()
        .filter(|b| b.elem == Elem::F16)
        .count();
    assert!(f16_buffers >= 2, "the two stacked expert weights");
    for (info, src) in p.plan.kernels.iter().zip(&p.sources) {
        assert_eq!(info.f16, src.contains("enable f16;"), "{}", info.name);
    }
}

#[test]
fn plan_round_trips_through_json() {
    for (_, source) in example_sources() {
        let g = graph(&source, &small_dims(&source), Upto::All);
        let p = lower(&g, &Options::default()).unwrap();
        let json = serde_json::to_string(&p.plan).unwrap();
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p.plan);
    }
}

/// GPT-OSS's clamped-GLU experts, dense (min/max elementwise kernels) and scheduled (the
/// clamped-GLU epilogue in a grouped matmul), validate; the epilogue's constants are in the text.
#[test]
fn clamped_glu_experts_validate() {
    let source = "model m { input x: f32[tokens, 6]
        expert e(h: [n, 6]) -> [n, 6] {
          let gate = linear(h, 10, bias = true) let up = linear(h, 10, bias = true)
          let g = min(gate, 7.0) let u = clamp(up, -7.0, 7.0)
          let down = linear((u + 1) * (g * sigmoid(1.702 * g)), 6, bias = true) return down }
        router router(h: [n, 6]) { logits = linear(h, 8, bias = true)
          scores = softmax(logits, after_topk = true) select = topk(logits, 2) }
        let mlp = moe(x, experts = 8 * e, router = router) output mlp }";
    for upto in [Upto::None, Upto::All] {
        let g = graph(source, &[], upto);
        let p = lower(&g, &Options::default()).unwrap();
        let text = p.sources.join("\n");
        if upto == Upto::All {
            assert!(text.contains("min(max(acc_up[i][j]"), "{text}");
            assert!(text.contains("1.702"), "{text}");
        } else {
            assert!(text.contains("min(a[i], b[bi])") && text.contains("max(a[i], b[bi])"));
        }
    }
}
