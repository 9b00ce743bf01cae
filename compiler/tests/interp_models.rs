//! The reference interpreter on whole-model and encoder-decoder pieces, against
//! small cases computed by hand here: per-head slices and concats, NLLB-MoE's
//! top-2 capacity with batch priority and renormalized kept gates, fairseq's
//! sinusoidal position rows.

mod by_hand;

use by_hand::*;
use moec_compiler::interp;
use moec_compiler::lower::lower_source;
use moec_compiler::tensor::Tensor;
use std::collections::BTreeMap;

#[test]
fn slices_and_concats_of_heads() {
    // x has 2 heads of 3 columns: [x0 x1 x2 | x3 x4 x5].
    let spec = "model m { input x: f32[tokens, 6]
        let tail = slice(x, start = 1, len = 2, heads = 2)
        let first = slice(x, start = 0, len = 1)
        let shared = concat(tail, first, heads = 2, broadcast = true)
        let paired = concat(tail, slice(x, start = 0, len = 2, heads = 2), heads = 2)
        let joined = concat(first, x)
        output tail output shared output paired output joined }";
    let xs = vec![
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        vec![10.0, 11.0, 12.0, 13.0, 14.0, 15.0],
    ];
    let out = run(spec, &[], &xs);
    assert_close(
        &out["tail"],
        &[vec![1.0, 2.0, 4.0, 5.0], vec![11.0, 12.0, 14.0, 15.0]],
    );
    assert_close(
        &out["shared"],
        &[
            vec![1.0, 2.0, 0.0, 4.0, 5.0, 0.0],
            vec![11.0, 12.0, 10.0, 14.0, 15.0, 10.0],
        ],
    );
    assert_close(
        &out["paired"],
        &[
            vec![1.0, 2.0, 0.0, 1.0, 4.0, 5.0, 3.0, 4.0],
            vec![11.0, 12.0, 10.0, 11.0, 14.0, 15.0, 13.0, 14.0],
        ],
    );
    assert_close(
        &out["joined"],
        &[
            vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            vec![10.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0],
        ],
    );
    assert_eq!(out["shared"].shape, vec![2, 6]);
}

/// NLLB-MoE's top-2 capacity: ⌈0.4 · 4⌉ = 2 slots per expert, first choices before
/// second ones, tokens by their first choice's probability (batch-prioritized), the
/// kept gates renormalized, then scaled by 0.8 (1 - moe_token_dropout).
#[test]
fn nllb_top2_capacity_prioritizes_confident_tokens_and_renormalizes_the_kept() {
    let spec = "model m { input x: f32[tokens, 3]
          expert lin3(h: [n, 3]) -> [n, 3] { let w = linear(h, 3) return w }
          router r(h: [n, 3]) { logits = linear(h, 3) select = topk(scores, 2) scale = 0.8 }
          let y = moe(x, experts = 3 * lin3, router = r,
                      capacity = fraction(0.4, drop = priority, renormalize = true))
          output y  output counts = y.expert_counts
          weights { r.logits = \"router\" experts[e].w = \"e{e}\" } }";
    let eye = |s: f32| vec![s, 0.0, 0.0, 0.0, s, 0.0, 0.0, 0.0, s];
    let weights = [
        ("router", eye(1.0)),
        ("e0", eye(1.0)),
        ("e1", eye(2.0)),
        ("e2", eye(3.0)),
    ];
    let xs = vec![
        vec![0.0, 1.0, 0.5], // first 1 (p 0.51), second 2
        vec![0.0, 3.0, 1.0], // first 1 (p 0.84), second 2
        vec![0.5, 2.0, 0.0], // first 1 (p 0.74), second 0
        vec![3.0, 0.0, 1.5], // first 0 (p 0.79), second 2
    ];
    let out = run(spec, &weights, &xs);
    // By hand, in priority order t1, t3, t2, t0: first choices t1→1, t3→0, t2→1, t0→1
    // (expert 1 full: dropped); second choices t1→2, t3→2, t2→0, t0→2 (full: dropped).
    // Token order (`drop = arrival`) would have kept t0's choices and dropped t2's first.
    let kept: [&[usize]; 4] = [&[], &[1, 2], &[1, 0], &[0, 2]];
    let want: Vec<Vec<f32>> = xs
        .iter()
        .zip(kept)
        .map(|(x, experts)| {
            let p = softmax(x);
            let sum: f32 = experts.iter().map(|&e| p[e]).sum();
            let gate: f32 = experts
                .iter()
                .map(|&e| p[e] / sum.max(f32::EPSILON) * (e + 1) as f32)
                .sum();
            x.iter().map(|v| 0.8 * gate * v).collect()
        })
        .collect();
    assert_close(&out["y"], &want);
    assert_eq!(out["counts"].as_i32(), &[2, 2, 2]);
}

/// fairseq's sinusoidal table (M2M100/NLLB) written out for width 6: h = 3 frequencies
/// exp(-i·ln(10000)/2), sines then cosines, at row position + offset.
#[test]
fn sinusoidal_positions_are_fairseqs_table_rows() {
    let spec = "model m { input x: f32[tokens, 6] input ids: i32[tokens]
          let y = x + sinusoidal_positions(ids, 6, offset = 2)
          output y }";
    let g = lower_source(spec, &[]).unwrap().graph;
    let x = Tensor::f32(vec![3, 6], vec![0.0; 18]);
    let ids = Tensor::i32(vec![3], vec![5, 7, 9]);
    let inputs = BTreeMap::from([("x".to_string(), x), ("ids".to_string(), ids)]);
    let out = interp::run(&g, &[], &inputs).unwrap();
    let want: Vec<Vec<f32>> = (0..3)
        .map(|p| {
            let r = (p + 2) as f64;
            let f: Vec<f64> = (0..3)
                .map(|i| (-(i as f64) * 10000f64.ln() / 2.0).exp())
                .collect();
            let sin = f.iter().map(|f| (r * f).sin() as f32);
            let cos = f.iter().map(|f| (r * f).cos() as f32);
            sin.chain(cos).collect()
        })
        .collect();
    assert_close(&out["y"], &want);
}
