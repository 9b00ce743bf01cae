//! The reference interpreter against small cases computed independently here,
//! with plain arithmetic written out in each test (2–6 experts, 3–5 tokens).

mod by_hand;

use by_hand::*;
use moec_compiler::interp;
use moec_compiler::lower::lower_source;
use moec_compiler::tensor::Tensor;
use std::collections::BTreeMap;

#[test]
fn top1_with_fixed_capacity_drops_late_tokens() {
    let spec = format!(
        "model m {{ input x: f32[tokens, 2] {LINEAR_EXPERT}
          router r(h: [n, 2]) {{ logits = linear(h, 3) select = topk(scores, 1) }}
          let y = moe(x, experts = 3 * lin, router = r, capacity = fixed(1))
          output y  output counts = y.expert_counts
          weights {{ r.logits = \"router\" experts[e].w = \"e{{e}}\" }} }}"
    );
    let router = vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5];
    let ew = expert_weights(3);
    let xs = tokens();
    let out = run(&spec, &weights_of(&ew, &[("router", router.clone())]), &xs);
    // By hand: each expert keeps only the first token routed to it.
    let mut taken = [false; 3];
    let want: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let p = softmax(&matvec(&router, x));
            let e = (0..3).fold(0, |b, i| if p[i] > p[b] { i } else { b });
            if std::mem::replace(&mut taken[e], true) {
                vec![0.0, 0.0]
            } else {
                matvec(&ew[e].1, x).iter().map(|v| v * p[e]).collect()
            }
        })
        .collect();
    assert_close(&out["y"], &want);
    assert!(
        want.iter().filter(|r| r == &&vec![0.0, 0.0]).count() >= 2,
        "the case must drop tokens"
    );
    let want_counts: Vec<i32> = taken.iter().map(|t| i32::from(*t)).collect();
    assert_eq!(out["counts"].as_i32(), want_counts.as_slice());
}

#[test]
fn top1_passthrough_rule_scales_the_input() {
    let spec = format!(
        "model m {{ input x: f32[tokens, 2] {LINEAR_EXPERT}
          router r(h: [n, 2]) {{ logits = linear(h, 2) select = topk(scores, 1) }}
          let y = moe(x, experts = 2 * lin, router = r, capacity = fixed(1, dropped = passthrough))
          output y
          weights {{ r.logits = \"router\" experts[e].w = \"e{{e}}\" }} }}"
    );
    let router = vec![1.0, 0.0, 0.0, 0.0];
    let ew = expert_weights(2);
    let xs = vec![vec![1.0, 2.0], vec![2.0, 1.0], vec![-1.0, 1.0]];
    let out = run(&spec, &weights_of(&ew, &[("router", router.clone())]), &xs);
    // Tokens 0 and 1 pick expert 0 (logit 1, 2 > 0); token 1 is dropped and passes through as p·x.
    let p: Vec<Vec<f32>> = xs.iter().map(|x| softmax(&matvec(&router, x))).collect();
    let want = vec![
        matvec(&ew[0].1, &xs[0])
            .iter()
            .map(|v| v * p[0][0])
            .collect(),
        xs[1].iter().map(|v| v * p[1][0]).collect(),
        matvec(&ew[1].1, &xs[2])
            .iter()
            .map(|v| v * p[2][1])
            .collect::<Vec<f32>>(),
    ];
    assert_close(&out["y"], &want);
}

#[test]
fn top2_renormalized() {
    let spec = format!(
        "model m {{ input x: f32[tokens, 2] {LINEAR_EXPERT}
          router r(h: [n, 2]) {{ logits = linear(h, 4) scores = softmax(logits) select = topk(scores, 2) normalize = true }}
          let y = moe(x, experts = 4 * lin, router = r)
          output y
          weights {{ r.logits = \"router\" experts[e].w = \"e{{e}}\" }} }}"
    );
    let router = vec![1.0, -1.0, 0.3, 0.8, -0.5, 0.2, 0.0, 1.5];
    let ew = expert_weights(4);
    let xs = tokens();
    let out = run(&spec, &weights_of(&ew, &[("router", router.clone())]), &xs);
    let want: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let p = softmax(&matvec(&router, x));
            let mut order: Vec<usize> = (0..4).collect();
            order.sort_by(|a, b| p[*b].partial_cmp(&p[*a]).unwrap());
            let (a, b) = (order[0], order[1]);
            let (wa, wb) = (p[a] / (p[a] + p[b]), p[b] / (p[a] + p[b]));
            let (ya, yb) = (matvec(&ew[a].1, x), matvec(&ew[b].1, x));
            vec![wa * ya[0] + wb * yb[0], wa * ya[1] + wb * yb[1]]
        })
        .collect();
    assert_close(&out["y"], &want);
}

/// DBRX's p-norm (p = 2) and Ernie 4.5's lower bound on the denominator, by hand: sigmoid
/// scores (their top-2 sum may fall below the bound).
#[test]
fn top2_renormalized_by_p_norm_and_bounded_sum() {
    let router = vec![1.0, -1.0, 0.3, 0.8, -0.5, 0.2, 0.0, 1.5];
    let ew = expert_weights(4);
    let xs = tokens();
    for (fields, p, min) in [
        ("normalize_p = 2.0", 2.0f32, 0.0f32),
        ("normalize_min = 1.2", 1.0, 1.2),
    ] {
        let spec = format!(
            "model m {{ input x: f32[tokens, 2] {LINEAR_EXPERT}
              router r(h: [n, 2]) {{ logits = linear(h, 4) scores = sigmoid(logits)
                select = topk(scores, 2) normalize = true {fields} }}
              let y = moe(x, experts = 4 * lin, router = r)
              output y
              weights {{ r.logits = \"router\" experts[e].w = \"e{{e}}\" }} }}"
        );
        let out = run(&spec, &weights_of(&ew, &[("router", router.clone())]), &xs);
        let want: Vec<Vec<f32>> = xs
            .iter()
            .map(|x| {
                let s: Vec<f32> = matvec(&router, x)
                    .iter()
                    .map(|l| 1.0 / (1.0 + (-l).exp()))
                    .collect();
                let mut order: Vec<usize> = (0..4).collect();
                order.sort_by(|a, b| s[*b].partial_cmp(&s[*a]).unwrap());
                let (a, b) = (order[0], order[1]);
                let norm = (s[a].powf(p) + s[b].powf(p)).powf(1.0 / p).max(min);
                let (ya, yb) = (matvec(&ew[a].1, x), matvec(&ew[b].1, x));
                (0..2)
                    .map(|c| (s[a] * ya[c] + s[b] * yb[c]) / norm)
                    .collect()
            })
            .collect();
        assert_close(&out["y"], &want);
    }
}

/// Llama 4's block: top-2 on the logits, each kept logit's sigmoid scales the expert's
/// *input*; the experts have biases (so scaling the input differs from scaling the output and
/// unchosen experts must not count); JetMoE's bias on the block's output.
#[test]
fn input_scaled_by_sigmoid_of_kept_logits_with_output_bias() {
    let spec = "model m { input x: f32[tokens, 2]
          expert lin(h: [n, 2]) -> [n, 2] { let w = linear(h, 2, bias = true) return w }
          router r(h: [n, 2]) { logits = linear(h, 4) scores = sigmoid(logits, after_topk = true)
            select = topk(logits, 2) }
          let y = moe(x, experts = 4 * lin, router = r, scale_input = true, bias = true)
          output y
          weights { r.logits = \"router\" experts[e].w = \"e{e}\" experts[e].w.bias = \"b{e}\"
            y.bias = \"out_bias\" } }";
    let router = vec![1.0, -1.0, 0.3, 0.8, -0.5, 0.2, 0.0, 1.5];
    let ew = expert_weights(4);
    let biases: Vec<(String, Vec<f32>)> = (0..4)
        .map(|e| (format!("b{e}"), vec![0.5 - e as f32, 0.25 * e as f32]))
        .collect();
    let out_bias = vec![0.125, -0.75];
    let mut all = weights_of(
        &ew,
        &[("router", router.clone()), ("out_bias", out_bias.clone())],
    );
    all.extend(biases.iter().map(|(n, b)| (n.as_str(), b.clone())));
    let xs = tokens();
    let out = run(spec, &all, &xs);
    let want: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let l = matvec(&router, x);
            let mut order: Vec<usize> = (0..4).collect();
            order.sort_by(|a, b| l[*b].partial_cmp(&l[*a]).unwrap());
            let mut y = out_bias.clone();
            for &e in &order[..2] {
                let s = 1.0 / (1.0 + (-l[e]).exp());
                let scaled: Vec<f32> = x.iter().map(|v| v * s).collect();
                let h = matvec(&ew[e].1, &scaled);
                for c in 0..2 {
                    y[c] += h[c] + biases[e].1[c];
                }
            }
            y
        })
        .collect();
    assert_close(&out["y"], &want);
}

/// PhiMoE's sparsemixer by hand: the best logit, weighted by the softmax at it over the
/// logits within the threshold (m - s) / max(|s|, m) ≤ 2·eps; then the best of the rest the
/// same way over the experts not chosen. eps = 0.3 keeps close logits in the softmax.
#[test]
fn sparsemixer_two_rounds() {
    let spec = format!(
        "model m {{ input x: f32[tokens, 2] {LINEAR_EXPERT}
          router r(h: [n, 2]) {{ logits = linear(h, 4) select = sparsemixer(logits, 2, eps = 0.3) }}
          let y = moe(x, experts = 4 * lin, router = r)
          output y
          weights {{ r.logits = \"router\" experts[e].w = \"e{{e}}\" }} }}"
    );
    let router = vec![1.0, 0.2, 0.9, 0.3, -0.5, 1.2, 0.8, 0.0];
    let ew = expert_weights(4);
    let xs = tokens();
    let out = run(&spec, &weights_of(&ew, &[("router", router.clone())]), &xs);
    let mut masked_some = false;
    let want: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let s = matvec(&router, x);
            let mut chosen: Vec<usize> = Vec::new();
            let mut y = vec![0.0f32; 2];
            for _ in 0..2 {
                let rest: Vec<usize> = (0..4).filter(|j| !chosen.contains(j)).collect();
                let best = rest
                    .iter()
                    .copied()
                    .fold(rest[0], |b, j| if s[j] > s[b] { j } else { b });
                let m = s[best];
                let kept: Vec<usize> = rest
                    .iter()
                    .copied()
                    .filter(|&j| (m - s[j]) / s[j].abs().max(m) <= 0.6)
                    .collect();
                masked_some |= kept.len() < rest.len();
                let w = 1.0 / kept.iter().map(|&j| (s[j] - m).exp()).sum::<f32>();
                let h = matvec(&ew[best].1, x);
                for c in 0..2 {
                    y[c] += w * h[c];
                }
                chosen.push(best);
            }
            y
        })
        .collect();
    assert!(
        masked_some,
        "the threshold masks no expert: the case tests nothing"
    );
    assert_close(&out["y"], &want);
}

#[test]
fn sigmoid_bias_and_groups_with_negative_bias() {
    // 6 experts in 3 groups of 2; keep 2 groups; top-2; weights from the unbiased scores,
    // normalized, scaled by 2.5. The bias on experts 0 and 1 is strongly negative.
    let spec = format!(
        "model m {{ input x: f32[tokens, 2] {LINEAR_EXPERT}
          router r(h: [n, 2]) {{
            logits = linear(h, 6) scores = sigmoid(logits)
            select = topk(scores, 2, groups = 3, topk_groups = 2, selection_bias = true)
            normalize = true scale = 2.5 }}
          let y = moe(x, experts = 6 * lin, router = r)
          output y
          weights {{ r.logits = \"router\" r.selection_bias = \"bias\" experts[e].w = \"e{{e}}\" }} }}"
    );
    let router = vec![2.0, 0.0, 1.5, 0.5, 0.1, 0.1, -0.2, 0.3, 0.4, -0.4, 0.0, 0.2];
    let bias = vec![-1.0, -0.8, 0.0, 0.05, 0.1, 0.0];
    let ew = expert_weights(6);
    let xs = tokens();
    let out = run(
        &spec,
        &weights_of(&ew, &[("router", router.clone()), ("bias", bias.clone())]),
        &xs,
    );
    let mut chose_biased_away = false;
    let want: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let s: Vec<f32> = matvec(&router, x).into_iter().map(sigmoid).collect();
            let c: Vec<f32> = s.iter().zip(&bias).map(|(a, b)| a + b).collect();
            let group_score = |g: usize| c[2 * g] + c[2 * g + 1];
            let mut groups = [0, 1, 2];
            groups.sort_by(|a, b| group_score(*b).partial_cmp(&group_score(*a)).unwrap());
            let mut cands: Vec<usize> = groups[..2]
                .iter()
                .flat_map(|g| [2 * g, 2 * g + 1])
                .collect();
            cands.sort_by(|a, b| c[*b].partial_cmp(&c[*a]).unwrap());
            let (a, b) = (cands[0], cands[1]);
            let best_unbiased = (0..6).fold(0, |m, i| if s[i] > s[m] { i } else { m });
            chose_biased_away |= best_unbiased != a && best_unbiased != b;
            let total = s[a] + s[b];
            let (wa, wb) = (2.5 * s[a] / total, 2.5 * s[b] / total);
            let (ya, yb) = (matvec(&ew[a].1, x), matvec(&ew[b].1, x));
            vec![wa * ya[0] + wb * yb[0], wa * ya[1] + wb * yb[1]]
        })
        .collect();
    assert!(
        chose_biased_away,
        "the negative bias must change a selection in this case"
    );
    assert_close(&out["y"], &want);
}

#[test]
fn expert_choice_each_expert_takes_its_best_tokens() {
    let spec = format!(
        "model m {{ input x: f32[tokens, 2] {LINEAR_EXPERT}
          router r(h: [n, 2]) {{ logits = linear(h, 3) select = expert_choice(scores, 1.5) }}
          let y = moe(x, experts = 3 * lin, router = r)
          output y  output counts = y.expert_counts
          weights {{ r.logits = \"router\" experts[e].w = \"e{{e}}\" }} }}"
    );
    let router = vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.5];
    let ew = expert_weights(3);
    let xs = tokens()[..4].to_vec();
    let out = run(&spec, &weights_of(&ew, &[("router", router.clone())]), &xs);
    // Capacity ceil(4 · 1.5 / 3) = 2 tokens per expert.
    let p: Vec<Vec<f32>> = xs.iter().map(|x| softmax(&matvec(&router, x))).collect();
    let mut want = vec![vec![0.0f32; 2]; 4];
    for e in 0..3 {
        let mut toks: Vec<usize> = (0..4).collect();
        toks.sort_by(|a, b| p[*b][e].partial_cmp(&p[*a][e]).unwrap());
        for &t in &toks[..2] {
            let y = matvec(&ew[e].1, &xs[t]);
            want[t][0] += p[t][e] * y[0];
            want[t][1] += p[t][e] * y[1];
        }
    }
    assert_close(&out["y"], &want);
    assert_eq!(out["counts"].as_i32(), &[2, 2, 2]);
}

#[test]
fn shared_expert_with_sigmoid_gate() {
    let spec = format!(
        "model m {{ input x: f32[tokens, 2] {LINEAR_EXPERT}
          router r(h: [n, 2]) {{ logits = linear(h, 2) select = topk(scores, 1) }}
          let y = moe(x, experts = 2 * lin, router = r, shared = lin, shared_gate = true)
          output y
          weights {{ r.logits = \"router\" experts[e].w = \"e{{e}}\" shared.w = \"s\" shared_gate = \"g\" }} }}"
    );
    let router = vec![0.5, -1.0, -0.5, 1.0];
    let (shared, gate) = (vec![0.3, -0.6, 0.9, 0.1], vec![0.7, -0.2]);
    let ew = expert_weights(2);
    let xs = tokens()[..3].to_vec();
    let out = run(
        &spec,
        &weights_of(
            &ew,
            &[
                ("router", router.clone()),
                ("s", shared.clone()),
                ("g", gate.clone()),
            ],
        ),
        &xs,
    );
    let want: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let p = softmax(&matvec(&router, x));
            let e = if p[1] > p[0] { 1 } else { 0 };
            let routed = matvec(&ew[e].1, x);
            let g = sigmoid(matvec(&gate, x)[0]);
            let s = matvec(&shared, x);
            vec![p[e] * routed[0] + g * s[0], p[e] * routed[1] + g * s[1]]
        })
        .collect();
    assert_close(&out["y"], &want);
}

#[test]
fn rmsnorm() {
    let spec = "model m { param eps = 0.001 input x: f32[tokens, 3]
        let n = rmsnorm(x, eps = eps) output n weights { n = \"norm\" } }";
    let w = vec![1.0, 2.0, 0.5];
    let xs = vec![
        vec![1.0, 2.0, 3.0],
        vec![-1.0, 0.0, 4.0],
        vec![0.1, 0.1, 0.1],
    ];
    let out = run(spec, &[("norm", w.clone())], &xs);
    let want: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / 3.0;
            let r = 1.0 / (ms + 0.001).sqrt();
            x.iter().zip(&w).map(|(v, w)| v * r * w).collect()
        })
        .collect();
    assert_close(&out["n"], &want);
}

#[test]
fn zero_tokens_give_empty_outputs() {
    let spec = format!(
        "model m {{ input x: f32[tokens, 2] {LINEAR_EXPERT}
          router r(h: [n, 2]) {{ logits = linear(h, 2) select = topk(scores, 1) }}
          let y = moe(x, experts = 2 * lin, router = r, capacity = factor(1.0))
          output y  output aux = y.aux_loss  output z = y.z_loss
          weights {{ r.logits = \"router\" experts[e].w = \"e{{e}}\" }} }}"
    );
    let g = lower_source(&spec, &[]).unwrap().graph;
    let weights: Vec<Tensor> = g
        .weights
        .iter()
        .map(|d| Tensor::zeros(d.shape.clone()))
        .collect();
    let x = Tensor::f32(vec![0, 2], vec![]);
    let out = interp::run(&g, &weights, &BTreeMap::from([("x".to_string(), x)])).unwrap();
    assert_eq!(out["y"].shape, vec![0, 2]);
    assert_eq!(out["aux"].as_f32(), &[0.0]);
}

#[test]
fn min_max_and_clamp_with_constants_and_tensors() {
    let spec = "model m { param limit = 1.5 input x: f32[tokens, 3]
        let a = linear(x, 3)
        let lo = min(a, limit)
        let hi = max(-1, a)
        let c = clamp(a, -limit, limit)
        let both = min(a, x) + max(x, a)
        output lo output hi output c output both
        weights { a = \"a\" } }";
    // a = x·Wᵀ with W = diag(2, -3, 0.5).
    let w = vec![2.0, 0.0, 0.0, 0.0, -3.0, 0.0, 0.0, 0.0, 0.5];
    let xs = vec![vec![1.0, 2.0, -4.0], vec![-0.5, 0.25, 10.0]];
    let out = run(spec, &[("a", w)], &xs);
    let a: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| vec![2.0 * x[0], -3.0 * x[1], 0.5 * x[2]])
        .collect();
    let each = |f: &dyn Fn(f32, f32) -> f32| -> Vec<Vec<f32>> {
        a.iter()
            .zip(&xs)
            .map(|(a, x)| a.iter().zip(x).map(|(a, x)| f(*a, *x)).collect())
            .collect()
    };
    // a = [2, -6, -2], [-1, -0.75, 5]
    assert_close(&out["lo"], &[vec![1.5, -6.0, -2.0], vec![-1.0, -0.75, 1.5]]);
    assert_close(&out["hi"], &[vec![2.0, -1.0, -1.0], vec![-1.0, -0.75, 5.0]]);
    assert_close(&out["c"], &[vec![1.5, -1.5, -1.5], vec![-1.0, -0.75, 1.5]]);
    assert_close(&out["both"], &each(&|a, x| a + x));
}

#[test]
fn min_and_max_propagate_nan() {
    let spec = "model m { input x: f32[tokens, 2]
        let lo = min(x, 0) let hi = max(x, 0) let c = clamp(x, -1, 1)
        output lo output hi output c }";
    let out = run(spec, &[], &[vec![f32::NAN, 3.0]]);
    for name in ["lo", "hi", "c"] {
        let v = out[name].as_f32();
        assert!(v[0].is_nan(), "{name}: {v:?}");
    }
    assert_eq!(out["lo"].as_f32()[1], 0.0);
    assert_eq!(out["hi"].as_f32()[1], 3.0);
    assert_eq!(out["c"].as_f32()[1], 1.0);
}

/// GPT-OSS's MoE block by hand: top-2 of 3 experts on the biased logits, softmax over the
/// two chosen, clamped GLU experts with biases, the down bias scaled by the routing weight. Run
/// as lowered and after the pass pipeline (the clamped-GLU epilogue of a grouped matmul).
#[test]
fn clamped_glu_experts_by_hand() {
    let spec = "model m { param limit = 1.0 param alpha = 1.702 input x: f32[tokens, 2]
        expert e(h: [n, 2]) -> [n, 2] {
          let gate = linear(h, 2, bias = true) let up = linear(h, 2, bias = true)
          let g = min(gate, limit) let u = clamp(up, -limit, limit)
          let down = linear((u + 1) * (g * sigmoid(alpha * g)), 2, bias = true) return down }
        router router(h: [n, 2]) { logits = linear(h, 3, bias = true)
          scores = softmax(logits, after_topk = true) select = topk(logits, 2) }
        let y = moe(x, experts = 3 * e, router = router) output y
        weights { router.logits = \"r\" router.logits.bias = \"rb\"
          experts[e].gate = \"g{e}\" experts[e].gate.bias = \"gb{e}\"
          experts[e].up = \"u{e}\" experts[e].up.bias = \"ub{e}\"
          experts[e].down = \"d{e}\" experts[e].down.bias = \"db{e}\" } }";
    let mats = |e: usize, s: f32| -> Vec<f32> {
        (0..4)
            .map(|i| s * (1.0 + i as f32 + e as f32) * if i % 3 == 0 { 1.0 } else { -0.5 })
            .collect()
    };
    let mut w: Vec<(String, Vec<f32>)> = vec![
        ("r".into(), vec![1.0, -1.0, 0.5, 2.0, -1.5, 0.25]),
        ("rb".into(), vec![0.25, -0.5, 0.1]),
    ];
    for e in 0..3 {
        w.push((format!("g{e}"), mats(e, 0.9)));
        w.push((format!("gb{e}"), vec![0.1, -0.2]));
        w.push((format!("u{e}"), mats(e, -1.1)));
        w.push((format!("ub{e}"), vec![0.3, 0.05]));
        w.push((format!("d{e}"), mats(e, 0.4)));
        w.push((format!("db{e}"), vec![0.5, -0.25 * e as f32]));
    }
    let named: Vec<(&str, Vec<f32>)> = w.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let find = |n: &str| w.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let xs = tokens();
    // Gate above the limit, up above it, up below its negative: each must occur.
    let mut hits = [0; 3];
    let mut chosen_sets = std::collections::BTreeSet::new();
    let want: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let add = |a: Vec<f32>, b: Vec<f32>| -> Vec<f32> {
                a.iter().zip(&b).map(|(a, b)| a + b).collect()
            };
            let logits = add(matvec(&find("r"), x), find("rb"));
            // The two largest logits, then a softmax over just those two.
            let mut order = [0, 1, 2];
            order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
            let chosen = [order[0], order[1]];
            chosen_sets.insert(chosen);
            let p = softmax(&[logits[chosen[0]], logits[chosen[1]]]);
            let mut y = vec![0.0f32; 2];
            for (&e, pe) in chosen.iter().zip(&p) {
                let gate = add(matvec(&find(&format!("g{e}")), x), find(&format!("gb{e}")));
                let up = add(matvec(&find(&format!("u{e}")), x), find(&format!("ub{e}")));
                let h: Vec<f32> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| {
                        hits[0] += usize::from(*g > 1.0);
                        hits[1] += usize::from(*u > 1.0);
                        hits[2] += usize::from(*u < -1.0);
                        let g = g.min(1.0);
                        let u = u.clamp(-1.0, 1.0);
                        (u + 1.0) * g * sigmoid(1.702 * g)
                    })
                    .collect();
                let out = add(matvec(&find(&format!("d{e}")), &h), find(&format!("db{e}")));
                for (y, o) in y.iter_mut().zip(&out) {
                    *y += pe * o;
                }
            }
            y
        })
        .collect();
    assert!(hits.iter().all(|h| *h > 0), "clamps hit: {hits:?}");
    assert!(chosen_sets.len() > 1, "every token chose {chosen_sets:?}");
    assert_close(&run(spec, &named, &xs)["y"], &want);

    let mut g = lower_source(spec, &[]).unwrap().graph;
    moec_compiler::passes::run_pipeline(&mut g, moec_compiler::passes::Upto::All, true).unwrap();
    assert!(g.g.node_weights().any(|n| matches!(
        n.op,
        moec_compiler::ir::Op::GroupedLinear {
            epilogue: moec_compiler::ir::Epilogue::ClampedGlu { .. },
            ..
        }
    )));
    let bound: Vec<Tensor> = g
        .weights
        .iter()
        .map(|d| Tensor::f32(d.shape.clone(), find(&d.tensor)))
        .collect();
    let input = Tensor::f32(vec![xs.len(), 2], xs.concat());
    let out = interp::run(&g, &bound, &BTreeMap::from([("x".to_string(), input)])).unwrap();
    assert_close(&out["y"], &want);
}
