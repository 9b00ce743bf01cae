//! Routing traces against transformers: for every whole-model fixture, the
//! trace of one forward pass over its prompt (`runtime::trace` on the optimized
//! graph's probes, interpreter and CPU backend) gives the experts, routing
//! weights and router entropies that transformers' own router modules computed
//! (`tests/fixtures/make_trace_fixtures.py`); and `moec trace` writes them, with
//! the token strings, to a safetensors file.

use moec_compiler::driver::Compiler;
use moec_compiler::ir::Op;
use moec_compiler::tensor::{Tensor, TensorData};
use moec_runtime::io::read_tensors;
use moec_runtime::session::{CpuOptions, Engine, Model};
use moec_runtime::trace::{probed, Trace};
use std::collections::BTreeMap;
use std::path::PathBuf;

const CASES: &[&str] = &[
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
    "gpt_oss",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A whole-model fixture's directory and its spec compiled against it.
fn compiled(case: &str) -> (PathBuf, moec_compiler::ir::Graph) {
    let dir = root().join("tests/fixtures/models").join(case);
    let spec = root().join("models").join(format!("{case}.moe"));
    let g = Compiler::new()
        .checkpoint(&dir)
        .compile_file(&spec)
        .unwrap()
        .graph;
    (dir, g)
}

fn f32s(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        TensorData::I32(_) => panic!("expected f32"),
    }
}

fn i32s(t: &Tensor) -> &[i32] {
    match &t.data {
        TensorData::I32(v) => v,
        TensorData::F32(_) => panic!("expected i32"),
    }
}

fn prompt(dir: &std::path::Path) -> Vec<i32> {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = expected["prompt_ids"].as_array().unwrap();
    ids.iter().map(|v| v.as_i64().unwrap() as i32).collect()
}

/// The trace's experts (`[T, L, k]`) equal transformers' (`[L, T, k]`), and its
/// routing weights are within `tolerance` (relative, at least absolute).
fn assert_routing(
    at: &str,
    got: &BTreeMap<String, Tensor>,
    experts: &Tensor,
    weights: &Tensor,
    tolerance: f32,
) {
    let (layers, tokens, k) = (experts.shape[0], experts.shape[1], experts.shape[2]);
    assert_eq!(got["routed_experts"].shape, [tokens, layers, k], "{at}");
    for (l, t, j) in
        (0..layers).flat_map(|l| (0..tokens).flat_map(move |t| (0..k).map(move |j| (l, t, j))))
    {
        let (w_at, g_at) = ((l * tokens + t) * k + j, (t * layers + l) * k + j);
        let at = format!("{at} layer {l} token {t} slot {j}");
        let (ge, we) = (i32s(&got["routed_experts"])[g_at], i32s(experts)[w_at]);
        assert_eq!(ge, we, "{at}");
        let (gw, ww) = (f32s(&got["routing_weights"])[g_at], f32s(weights)[w_at]);
        assert!(
            (gw - ww).abs() <= tolerance * ww.abs().max(1.0),
            "{at}: weight {gw} vs {ww}"
        );
    }
}

/// Entropy (nats) of the softmax of `row`.
fn entropy(row: &[f32]) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
    let e: Vec<f64> = row.iter().map(|v| (*v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).map(|p| -p * p.ln()).sum()
}

#[test]
fn traces_match_the_routers_of_transformers() {
    for case in CASES {
        let (dir, g) = compiled(case);
        let (traced, blocks) = probed(&g).unwrap_or_else(|e| panic!("{case}: {e}"));
        // Probes block no fusion: every block's router is one fused op.
        let routers =
            g.g.node_weights()
                .filter(|n| matches!(n.op, Op::Router(_)))
                .count();
        assert_eq!(routers, blocks.len(), "{case}: fused routers");
        let want = read_tensors(&dir.join("trace.safetensors")).unwrap();
        let (logits, weights, experts) = (
            &want["router_logits"],
            &want["routing_weights"],
            &want["selected_experts"],
        );
        let (layers, tokens, k) = (experts.shape[0], experts.shape[1], experts.shape[2]);
        let e = logits.shape[2];
        assert_eq!(blocks.len(), layers, "{case}: MoE blocks");
        let ids = prompt(&dir);
        let inputs = BTreeMap::from([("input_ids".to_string(), Tensor::i32(vec![tokens], ids))]);
        for engine in [Engine::Interp, Engine::Cpu(CpuOptions::threads(2))] {
            let model = std::rc::Rc::new(Model::open(traced.clone(), &dir, engine).unwrap());
            let outputs = model.session(None).run(&inputs).unwrap();
            let trace = Trace::from_outputs(&blocks, &outputs, tokens).unwrap();
            let got = &trace.tensors;
            let at = format!("{case} {engine:?}");
            assert_routing(&at, got, experts, weights, 1e-5);
            for (l, t) in (0..layers).flat_map(|l| (0..tokens).map(move |t| (l, t))) {
                let row = &f32s(logits)[(l * tokens + t) * e..(l * tokens + t + 1) * e];
                let (h, want) = (
                    f32s(&got["router_entropy"])[t * layers + l] as f64,
                    entropy(row),
                );
                assert!(
                    (h - want).abs() <= 1e-5,
                    "{case} {engine:?} layer {l} token {t}: entropy {h} vs {want}"
                );
            }
            // Each slot's norm ‖w·E(x)‖ and their sum's, ‖Σ w·E(x)‖, fit the triangle
            // inequalities (the slots are mapped back from the dispatch order right).
            let (norms, routed) = (f32s(&got["expert_norm"]), f32s(&got["routed_norm"]));
            for (t, l) in (0..tokens).flat_map(|t| (0..layers).map(move |l| (t, l))) {
                let n = &norms[(t * layers + l) * k..(t * layers + l + 1) * k];
                let (sum, max) = (
                    n.iter().sum::<f32>(),
                    n.iter().fold(0.0f32, |m, v| m.max(*v)),
                );
                let r = routed[t * layers + l];
                let at = format!("{case} {engine:?} token {t} layer {l}: {n:?} vs {r}");
                assert!(n.iter().all(|v| *v > 0.0), "{at}");
                assert!(
                    r <= sum * (1.0 + 1e-5) && r >= (2.0 * max - sum) * (1.0 - 1e-5),
                    "{at}"
                );
            }
            let counts = i32s(&got["expert_counts"]);
            assert_eq!(
                counts.iter().sum::<i32>() as usize,
                layers * tokens * k,
                "{case}: counts"
            );
        }
    }
}

#[test]
fn moec_trace_writes_a_safetensors_file_with_token_strings() {
    let dir = root().join("tests/fixtures/models/mixtral");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("trace.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_moec"))
        .args(["trace", "models/mixtral.moe", "--weights"])
        .arg(&dir)
        .args(["--prompt", "The expert", "-o"])
        .arg(&file)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], "moec-trace-1");
    assert_eq!(
        meta["blocks"],
        r#"["layers.0.block_sparse_moe","layers.1.block_sparse_moe"]"#
    );
    let tokens: Vec<String> = serde_json::from_str(&meta["tokens"]).unwrap();
    assert_eq!(tokens.concat(), "The expert", "{tokens:?}");
    let t = read_tensors(&file).unwrap();
    assert_eq!(t["routed_experts"].shape, [tokens.len(), 2, 2]);
}

#[test]
fn every_example_keeps_its_probes_through_the_passes() {
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "moe") {
            continue;
        }
        let g = Compiler::new().compile_file(&path).unwrap().graph;
        let (_, blocks) = probed(&g).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!blocks.is_empty(), "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 5, "{seen} examples");
}

/// Tracing a generation: the prompt, then each greedy token through the KV cache,
/// gives transformers' routing over the whole sequence in one pass.
#[test]
fn tracing_a_generation_follows_every_new_token() {
    for case in CASES {
        let dir = root().join("tests/fixtures/models").join(case);
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("trace.safetensors");
        let ids: Vec<String> = prompt(&dir).iter().map(|i| i.to_string()).collect();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_moec"))
            .arg("trace")
            .arg(root().join("models").join(format!("{case}.moe")))
            .arg("--weights")
            .arg(&dir)
            .args([
                "--prompt-ids",
                &ids.join(","),
                "--max-new-tokens",
                "8",
                "--backend",
                "cpu",
                "-o",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let bytes = std::fs::read(&file).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        let got_ids: Vec<i64> = serde_json::from_str(&meta["ids"]).unwrap();
        let mut want_ids: Vec<i64> = prompt(&dir).iter().map(|i| *i as i64).collect();
        want_ids.extend(
            expected["greedy_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap()),
        );
        assert_eq!(got_ids, want_ids, "{case}: ids");
        assert_eq!(meta["prompt_tokens"], prompt(&dir).len().to_string());
        let got = read_tensors(&file).unwrap();
        let want = read_tensors(&dir.join("trace.safetensors")).unwrap();
        let (experts, weights) = (
            &want["generated.selected_experts"],
            &want["generated.routing_weights"],
        );
        assert_routing(case, &got, experts, weights, 1e-4);
    }
}

/// Stored weights (`--expert-format`, `--weight-format`: bf16, q8_0, q4_0)
/// against the same model with f32 weights, on every whole-model fixture's
/// prompt: the share of (layer, token) pairs whose set of selected experts is
/// unchanged, and the largest logit error relative to the largest logit.
/// Prints the table the notes quote; fails when a format is far off what its
/// bits per weight give (a misplaced scale or nibble routes almost every token
/// elsewhere).
#[test]
fn stored_weights_keep_most_routing_choices() {
    use moec_compiler::quant::WeightFormat;
    use moec_compiler::storage::{Scope, Storage};
    use moec_runtime::cpu::MatmulIsa;
    if !MatmulIsa::available().contains(&MatmulIsa::Avx512) {
        eprintln!("skipped: quantized weights need the AVX-512 matmuls");
        return;
    }
    let mut table = vec![
        "| model | stored | same top-k sets | max logit error / max logit |".to_string(),
        "|:---|:---|---:|---:|".to_string(),
    ];
    for case in CASES {
        let (dir, g) = compiled(case);
        let (traced, blocks) = probed(&g).unwrap();
        let ids = prompt(&dir);
        let tokens = ids.len();
        let inputs = BTreeMap::from([("input_ids".to_string(), Tensor::i32(vec![tokens], ids))]);
        let run = |storage: Option<Storage>| {
            let options = CpuOptions {
                isa: Some(MatmulIsa::Avx512),
                ..CpuOptions::threads(2)
            };
            let mut g = traced.clone();
            if let Some(s) = storage {
                s.apply(&mut g);
            }
            let model = std::rc::Rc::new(Model::open(g, &dir, Engine::Cpu(options)).unwrap());
            let outputs = model.session(None).run(&inputs).unwrap();
            let trace = Trace::from_outputs(&blocks, &outputs, tokens).unwrap();
            (
                outputs["logits"].clone(),
                trace.tensors["routed_experts"].clone(),
            )
        };
        let (logits, routed) = run(None);
        let k = routed.shape[2];
        for storage in Storage::all() {
            let (q_logits, q_routed) = run(Some(storage));
            let format = storage.format;
            let stored = match storage.scope {
                Scope::Experts => format!("experts {}", format.name()),
                Scope::Matmuls => format!("all {}", format.name()),
            };
            let sets = |t: &Tensor| -> Vec<Vec<i32>> {
                i32s(t)
                    .chunks(k)
                    .map(|c| {
                        let mut c = c.to_vec();
                        c.sort_unstable();
                        c
                    })
                    .collect()
            };
            let (a, b) = (sets(&routed), sets(&q_routed));
            let same = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
            let max = f32s(&logits).iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = f32s(&logits)
                .iter()
                .zip(f32s(&q_logits))
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
                / max;
            table.push(format!(
                "| {case} | {stored} | {:.1}% | {err:.2e} |",
                100.0 * same
            ));
            // Quantized weights also quantize the activations (8-bit blocks), and q4_0
            // everywhere moves tiny random models' flat logits far (0.72 of the largest
            // on DeepSeek-V3's low-rank attention) while keeping most routing choices:
            // the routing share is what catches a broken layout.
            let (min_same, max_err) = match (format, storage.scope) {
                (WeightFormat::Bf16, _) => (0.95, 0.03),
                (WeightFormat::Q8_0, _) => (0.85, 0.1),
                (_, Scope::Experts) => (0.5, 0.5),
                (_, Scope::Matmuls) => (0.5, 1.0),
            };
            assert!(
                same >= min_same && err <= max_err,
                "{case} {stored}: {:.1}% same top-k sets, logit error {err:.2e}\n{}",
                100.0 * same,
                table.join("\n")
            );
        }
    }
    println!("{}", table.join("\n"));
}
