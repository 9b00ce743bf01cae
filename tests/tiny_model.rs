//! The tiny trained Mixtral in `models/tiny/` (trained on the Python standard library by
//! `models/tiny/train.py`): `moec generate models/mixtral.moe --weights models/tiny` — the
//! README's first command — gives transformers' greedy ids for the prompt in
//! `models/tiny/expected.json` (`generate(do_sample=False)` on the same bf16 checkpoint, loaded in
//! float32) on the interpreter, the CPU backend and the GPU backend (Mesa's software Vulkan
//! driver in CI; its KV caches on the device), and prints the text the Python tokenizer
//! decodes them to. The whole user path runs: tokenizing the text prompt, eos ids from
//! generation_config.json, config params, bf16 weights, decoding.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_tiny_model_generates_transformers_greedy_text() {
    let dir = root().join("models/tiny");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let prompt = expected["prompt"].as_str().unwrap();
    let max_new = expected["max_new_tokens"].to_string();
    for backend in ["interp", "cpu", "gpu"] {
        let out = Command::new(env!("CARGO_BIN_EXE_moec"))
            .args(["generate", "models/mixtral.moe", "--weights", "models/tiny"])
            .args(["--prompt", prompt, "--max-new-tokens", &max_new])
            .args(["--backend", backend, "--json"])
            .current_dir(root())
            .output()
            .expect("moec runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{backend}: {stderr}");
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let prompt_tokens = expected["prompt_ids"].as_array().unwrap().len();
        assert_eq!(line["prompt_tokens"], prompt_tokens, "{backend}: prompt");
        assert_eq!(line["ids"], expected["greedy_ids"], "{backend}: ids");
        assert_eq!(line["text"], expected["text"], "{backend}: text");
    }
}
