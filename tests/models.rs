//! Whole models against Hugging Face transformers: every checkpoint in
//! `tests/fixtures/models/<case>/` (written by transformers' own
//! `save_pretrained`, with expected outputs from transformers, made by
//! `make_model_fixtures.py`) is compiled from `models/<model_type>.moe` with the
//! params of its config.json, and run on the interpreter, the CPU backend and the
//! GPU backend (Mesa's software Vulkan driver in CI; its KV caches on the device):
//! - the logits of one forward pass over the prompt;
//! - greedy decoding through the KV cache (prefill, then one token per call):
//!   each step's logits and the chosen ids, as `model.generate(do_sample=False)`;
//! - the same ids without the cache: every step recomputed from the whole sequence;
//! - `moec run --backend gpu` on the prompt gives transformers' logits.

mod model_fixtures;

use model_fixtures::{argmax, f32s, rel_err, ENGINES, TOLERANCE};

use moec_compiler::driver::Compiler;
use moec_compiler::ir::{Graph, Op};
use moec_compiler::passes::last_token;
use moec_compiler::tensor::Tensor;
use moec_compiler::verify::verify;
use moec_runtime::io::{read_tensors, write_tensors};
use moec_runtime::session::{CpuOptions, Engine, Model, Session};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;

/// (fixture directory, model spec): every decoder-only checkpoint in `tests/fixtures/models/`.
fn cases() -> Vec<(String, String)> {
    let cases: Vec<(String, String)> = model_fixtures::model_fixtures()
        .into_iter()
        .filter(|f| !f.encoder_decoder)
        .map(|f| (f.case, f.model_type))
        .collect();
    assert!(cases.len() >= 7, "whole-model fixtures missing: {cases:?}");
    cases
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Fixture {
    dir: PathBuf,
    prompt: Vec<i32>,
    greedy: Vec<i32>,
    logits: Tensor,
    decode_logits: Tensor,
}

fn fixture(case: &str) -> Fixture {
    let dir = root().join("tests/fixtures/models").join(case);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<i32> {
        expected[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i32)
            .collect()
    };
    let mut tensors = read_tensors(&dir.join("expected.safetensors")).unwrap();
    Fixture {
        prompt: ids("prompt_ids"),
        greedy: ids("greedy_ids"),
        logits: tensors.remove("logits").unwrap(),
        decode_logits: tensors.remove("decode_logits").unwrap(),
        dir,
    }
}

fn open(case: &str, spec: &str, f: &Fixture, engine: Engine) -> Rc<Model> {
    open_graph(case, f, engine, compile(case, spec, f))
}

fn compile(case: &str, spec: &str, f: &Fixture) -> Graph {
    let compiled = Compiler::new()
        .checkpoint(&f.dir)
        .compile_file(&root().join("models").join(format!("{spec}.moe")))
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    compiled.graph
}

fn open_graph(case: &str, f: &Fixture, engine: Engine, g: Graph) -> Rc<Model> {
    Rc::new(Model::open(g, &f.dir, engine).unwrap_or_else(|e| panic!("{case}: {e}")))
}

fn last_row(logits: &Tensor) -> &[f32] {
    let v = f32s(logits);
    &v[v.len() - logits.shape[1]..]
}

fn logits(session: &mut Session, ids: &[i32]) -> Tensor {
    session.forward(ids).unwrap()
}

#[test]
fn forward_logits_match_transformers() {
    for (case, spec) in &cases() {
        let (case, spec) = (case.as_str(), spec.as_str());
        let f = fixture(case);
        for &engine in ENGINES {
            let model = open(case, spec, &f, engine);
            let got = logits(&mut model.session(None), &f.prompt);
            assert_eq!(got.shape, f.logits.shape, "{case} {engine:?}");
            let err = rel_err(f32s(&got), f32s(&f.logits));
            assert!(err <= TOLERANCE, "{case} {engine:?}: logits off by {err:e}");
        }
    }
}

/// Greedy decoding through the KV cache on `g`: each step's last logits row
/// against transformers', and the ids against `generate`'s.
fn check_greedy_decoding(case: &str, f: &Fixture, g: &Graph) {
    let vocab = f.logits.shape[1];
    for &engine in ENGINES {
        let model = open_graph(case, f, engine, g.clone());
        let mut session = model.session(None);
        let mut step = logits(&mut session, &f.prompt);
        let mut ids = Vec::new();
        for i in 0..f.greedy.len() {
            let want = &f32s(&f.decode_logits)[i * vocab..(i + 1) * vocab];
            let err = rel_err(last_row(&step), want);
            assert!(
                err <= TOLERANCE,
                "{case} {engine:?} step {i}: off by {err:e}"
            );
            let id = argmax(last_row(&step));
            ids.push(id);
            step = logits(&mut session, &[id]);
        }
        assert_eq!(ids, f.greedy, "{case} {engine:?}");
        assert_eq!(session.position(), f.prompt.len() + f.greedy.len());
    }
}

#[test]
fn greedy_decoding_with_the_cache_matches_generate() {
    for (case, spec) in &cases() {
        let (case, spec) = (case.as_str(), spec.as_str());
        let f = fixture(case);
        check_greedy_decoding(case, &f, &compile(case, spec, &f));
    }
}

/// What `moec generate` runs: the graph computing the last token's logits only.
#[test]
fn the_last_token_graph_decodes_like_generate() {
    for (case, spec) in &cases() {
        let (case, spec) = (case.as_str(), spec.as_str());
        let f = fixture(case);
        let mut g = compile(case, spec, &f);
        assert!(
            last_token::run(&mut g).unwrap(),
            "{case}: nothing rewritten"
        );
        verify(&g).unwrap_or_else(|e| panic!("{case}: {e}"));
        let (_, logits) = g.outputs.iter().find(|(n, _)| n == "logits").unwrap();
        let ty = g.value_type(*logits).to_string();
        assert_eq!(ty, format!("f32[1, {}]", f.logits.shape[1]), "{case}");
        // The final norm runs on one row too: `last_row` sits above it.
        let norm = g.operands(logits.node)[0].node;
        let above = g.operands(norm)[0].node;
        assert!(
            matches!(g.node(norm).op, Op::RmsNorm { .. }) && g.node(above).op == Op::LastRow,
            "{case}: lm_head reads {} of {}",
            g.node(norm).op.name(),
            g.node(above).op.name()
        );
        check_greedy_decoding(case, &f, &g);
    }
}

#[test]
fn decoding_without_the_cache_gives_the_same_ids() {
    for (case, spec) in &cases() {
        let (case, spec) = (case.as_str(), spec.as_str());
        let f = fixture(case);
        let model = open(case, spec, &f, Engine::Cpu(CpuOptions::threads(2)));
        let mut seq = f.prompt.clone();
        for (i, want) in f.greedy.iter().enumerate() {
            let got = argmax(last_row(&logits(&mut model.session(None), &seq)));
            assert_eq!(got, *want, "{case} step {i}");
            seq.push(got);
        }
    }
}

#[test]
fn a_call_past_the_position_limit_is_refused_and_changes_nothing() {
    let f = fixture("mixtral");
    let model = open("mixtral", "mixtral", &f, Engine::Interp);
    let mut session = model.session(Some(12));
    let before = logits(&mut session, &f.prompt);
    let err = session.forward(&[5, 6]).unwrap_err().to_string();
    assert!(
        err.contains("2 new tokens after 11") && err.contains("at most 12 positions"),
        "{err}"
    );
    assert_eq!(session.position(), 11);
    let next = logits(&mut session, &[argmax(last_row(&before))]);
    assert_eq!(argmax(last_row(&next)), f.greedy[1]);
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    let f = fixture("mixtral");
    let model = open(
        "mixtral",
        "mixtral",
        &f,
        Engine::Cpu(CpuOptions::threads(1)),
    );
    let mut session = model.session(None);
    let err = session.forward(&[1, 320]).unwrap_err().to_string();
    assert!(
        err.contains("token id 320") && err.contains("vocabulary of 320"),
        "{err}"
    );
    assert_eq!(session.position(), 0);
}

/// The command line's one-call path (`moec run`) on the GPU backend, with a model spec.
#[test]
fn moec_run_on_the_gpu_gives_transformers_logits() {
    let f = fixture("qwen3_moe");
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (
        tmp.path().join("ids.safetensors"),
        tmp.path().join("out.safetensors"),
    );
    let ids = Tensor::i32(vec![f.prompt.len()], f.prompt.clone());
    write_tensors(&input, &BTreeMap::from([("input_ids".to_string(), ids)])).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moec"))
        .args([
            "run",
            "models/qwen3_moe.moe",
            "--backend",
            "gpu",
            "--weights",
        ])
        .arg(&f.dir)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read_tensors(&output).unwrap().remove("logits").unwrap();
    assert_eq!(got.shape, f.logits.shape);
    let err = rel_err(f32s(&got), f32s(&f.logits));
    assert!(
        err <= TOLERANCE,
        "moec run --backend gpu: logits off by {err:e}"
    );
}
