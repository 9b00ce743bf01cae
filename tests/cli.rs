//! The `moec` command as a user runs it: exit status 0 on success, 1 with a
//! located message on any error, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn moec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moec"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("moec runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Fails unless the command exited 1 with a message and without a panic.
fn assert_user_error(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1, got {:?}\n{err}",
        o.status
    );
    assert!(!err.contains("panicked"), "panic:\n{err}");
    assert!(!err.trim().is_empty());
    err
}

const MIXTRAL_FIXTURE_DIMS: [&str; 4] =
    ["--set", "hidden_size=16", "--set", "intermediate_size=32"];

#[test]
fn check_passes_on_every_example() {
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let o = moec(&["check", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
    }
}

#[test]
fn run_writes_outputs_named_after_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("y.safetensors");
    let o = moec(&[
        "run",
        "examples/mixtral.moe",
        "--random-weights",
        "1",
        "--set",
        "hidden_size=64",
        "--tokens",
        "5",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("y").unwrap().shape(), &[5, 64]);
    assert_eq!(st.tensor("router_logits").unwrap().shape(), &[5, 8]);
}

/// `moec run --backend BACKEND` on the Mixtral fixture's files writes its expected output.
fn run_on_fixture_files(backend: &str) {
    let w = Path::new("tests/fixtures/mixtral/weights.safetensors");
    run_matches_the_fixture(backend, w, &MIXTRAL_FIXTURE_DIMS);
}

/// `moec run --backend BACKEND --weights W [ARGS]` on the Mixtral fixture's input writes
/// the fixture's expected output.
fn run_matches_the_fixture(backend: &str, w: &Path, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("y.safetensors");
    let dir = Path::new("tests/fixtures/mixtral");
    let mut args = vec!["run", "examples/mixtral.moe", "--backend", backend];
    args.extend(extra);
    let x = dir.join("input.safetensors");
    args.extend([
        "--weights",
        w.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let o = moec(&args);
    assert!(o.status.success(), "{backend}: {}", stderr(&o));
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(root().join(dir).join("expected.safetensors")).unwrap();
    let (got, want) = (
        safetensors::SafeTensors::deserialize(&got).unwrap(),
        safetensors::SafeTensors::deserialize(&want).unwrap(),
    );
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (g, w) = (
        f32s(got.tensor("y").unwrap().data()),
        f32s(want.tensor("y").unwrap().data()),
    );
    let max = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_eq!(g.len(), w.len(), "{backend}");
    assert!(
        g.iter().zip(&w).all(|(a, b)| (a - b).abs() <= 1e-5 * max),
        "{backend}"
    );
}

#[test]
fn run_on_fixture_files_matches_the_fixture() {
    run_on_fixture_files("interp");
}

#[test]
fn run_cpu_backend_on_fixture_files_matches_the_fixture() {
    run_on_fixture_files("cpu");
}

/// A checkpoint directory laid out as Hugging Face does it: `config.json` beside
/// `model.safetensors` (the Mixtral fixture's weights).
fn mixtral_checkpoint(config: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("tests/fixtures/mixtral/weights.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("config.json"), config).unwrap();
    tmp
}

const MIXTRAL_FIXTURE_CONFIG: &str = r#"{
  "model_type": "mixtral", "hidden_size": 16, "intermediate_size": 32,
  "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000, "rope_scaling": null
}"#;

#[test]
fn run_takes_params_from_the_checkpoint_config() {
    let ckpt = mixtral_checkpoint(MIXTRAL_FIXTURE_CONFIG);
    run_matches_the_fixture("interp", ckpt.path(), &[]);
}

#[test]
fn check_lists_params_with_where_they_came_from() {
    let ckpt = mixtral_checkpoint(
        &MIXTRAL_FIXTURE_CONFIG.replace("\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 1"),
    );
    let dir = ckpt.path().to_str().unwrap();
    let args = ["check", "examples/mixtral.moe", "--weights", dir];
    let o = moec(&[&args[..], &["--set", "num_experts_per_tok=2"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let params: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| *l != "params:")
        .skip(1)
        .take(5)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        params,
        [
            ["model_type", "=", "\"mixtral\"", "default"],
            ["hidden_size", "=", "16", "config.json"],
            ["intermediate_size", "=", "32", "config.json"],
            ["num_local_experts", "=", "8", "config.json"],
            ["num_experts_per_tok", "=", "2", "--set"],
        ],
        "{out}"
    );
    assert!(out.contains("binds all 25 weights"), "{out}");
    // Without config.json the same spec keeps its defaults, which these weights do not fit.
    std::fs::remove_file(ckpt.path().join("config.json")).unwrap();
    let err = assert_user_error(&moec(&args));
    assert!(err.contains("model.safetensors"), "{err}");
}

/// `--max-memory` bounds what `generate` and `trace` plan for, before any weight is read.
#[test]
fn generate_and_trace_refuse_a_model_larger_than_max_memory() {
    let out = tempfile::tempdir().unwrap();
    let trace = out.path().join("t.safetensors");
    let trace = trace.to_str().unwrap();
    let base = [
        "models/mixtral.moe",
        "--weights",
        "models/tiny",
        "--prompt-ids",
        "1,2",
    ];
    for (command, extra) in [("generate", &[][..]), ("trace", &["-o", trace][..])] {
        let args = [
            &[command][..],
            &base[..],
            &["--max-memory", "1MiB"][..],
            extra,
        ]
        .concat();
        let err = assert_user_error(&moec(&args));
        assert!(
            err.contains("the model needs") && err.contains("but --max-memory allows 1.00 MiB"),
            "{command}: {err}"
        );
        assert!(!err.contains("note:"), "{command}: {err}");
    }
    assert!(!out.path().join("t.safetensors").exists());
}

#[test]
fn a_config_missing_a_field_names_the_param_that_kept_its_default() {
    let ckpt = mixtral_checkpoint(&MIXTRAL_FIXTURE_CONFIG.replace("\"hidden_size\": 16, ", ""));
    let dir = ckpt.path().to_str().unwrap();
    for command in ["check", "run"] {
        let mut args = vec![command, "examples/mixtral.moe", "--weights", dir];
        if command == "run" {
            args.extend(["--tokens", "2"]);
        }
        let err = assert_user_error(&moec(&args));
        assert!(
            err.contains("has shape [8, 16], expected [8, 4096]")
                && err.contains("note: config.json has no field for these params, so they kept the spec's defaults: hidden_size = 4096"),
            "{command}: {err}"
        );
    }
}

#[test]
fn a_malformed_checkpoint_config_is_an_error_naming_it() {
    let ckpt = mixtral_checkpoint("{\n  \"hidden_size\": 16,\n}");
    let dir = ckpt.path().to_str().unwrap();
    for command in ["check", "graph"] {
        let err = assert_user_error(&moec(&[command, "examples/mixtral.moe", "--weights", dir]));
        assert!(
            err.contains("config.json:3:1: invalid JSON: trailing comma"),
            "{command}: {err}"
        );
    }
}

/// `moec compile` of the Mixtral fixture's spec for `target` into a fresh directory.
fn compile_mixtral(target: &str) -> (tempfile::TempDir, PathBuf, Output) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kernels");
    let mut args = vec!["compile", "examples/mixtral.moe", "--target", target, "-o"];
    args.push(dir.to_str().unwrap());
    args.extend(MIXTRAL_FIXTURE_DIMS);
    let o = moec(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    (tmp, dir, o)
}

#[test]
fn compile_clif_writes_a_file_per_kernel() {
    let (_tmp, dir, o) = compile_mixtral("clif");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "clif"))
        .collect();
    assert!(!files.is_empty(), "no .clif file in {}", dir.display());
    let stdout = String::from_utf8_lossy(&o.stdout);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.starts_with("function %matmul_"), "{}", f.display());
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(stdout.contains(name), "{name} not listed:\n{stdout}");
    }
}

#[test]
fn compile_wgsl_writes_kernels_and_a_plan() {
    let (_tmp, dir, _) = compile_mixtral("wgsl");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
    let kernels = plan["kernels"].as_array().unwrap();
    assert!(kernels.len() >= 6, "{plan}");
    for k in kernels {
        let name = k["name"].as_str().unwrap();
        let text = std::fs::read_to_string(dir.join(format!("{name}.wgsl"))).unwrap();
        assert!(text.contains("fn main("), "{name}");
    }
    assert!(plan["steps"].as_array().unwrap().len() >= kernels.len());
}

#[test]
fn run_gpu_backend_on_fixture_files_matches_the_fixture() {
    run_on_fixture_files("gpu");
}

#[test]
fn f16_weights_are_a_gpu_option() {
    let mut args = vec![
        "run",
        "examples/mixtral.moe",
        "--random-weights",
        "1",
        "--tokens",
        "3",
    ];
    args.push("--f16-weights");
    args.extend(MIXTRAL_FIXTURE_DIMS);
    let err = assert_user_error(&moec(&args));
    assert!(
        err.contains("--f16-weights") && err.contains("--backend gpu"),
        "{err}"
    );
    args.extend(["--backend", "gpu"]);
    let o = moec(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `--weight-format` and `--expert-format` run on the interp and cpu backends
/// (refused on the gpu, not ignored), are exclusive, and count in `graph --stats`.
#[test]
fn weight_formats_run_on_interp_and_cpu() {
    let mut args = vec!["run", "examples/mixtral.moe", "--random-weights", "1"];
    args.extend(["--tokens", "3", "--weight-format", "q8_0"]);
    args.extend(MIXTRAL_FIXTURE_DIMS);
    let with = |more: &[&'static str]| moec(&[args.clone(), more.to_vec()].concat());
    let err = assert_user_error(&with(&["--backend", "gpu"]));
    let gpu_refusal = err.contains("--weight-format") && err.contains("--backend cpu or interp");
    assert!(gpu_refusal, "{err}");
    for backend in ["interp", "cpu"] {
        let o = with(&["--backend", backend]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
    }
    let o = with(&["--backend", "cpu", "--expert-format", "q4_0"]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    let stats = |format: &str| {
        let mut a = vec!["graph", "examples/mixtral.moe", "--stats"];
        a.extend(["--weight-format", format]);
        a.extend(MIXTRAL_FIXTURE_DIMS);
        let o = moec(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_ne!(stats("q4_0"), stats("f32"));
}

#[test]
fn gpu_backend_without_an_adapter_is_a_clear_error() {
    // No DX12 on Linux: wgpu finds no adapter at all.
    let o = Command::new(env!("CARGO_BIN_EXE_moec"))
        .args([
            "run",
            "examples/mixtral.moe",
            "--random-weights",
            "1",
            "--tokens",
            "2",
            "--backend",
            "gpu",
        ])
        .args(MIXTRAL_FIXTURE_DIMS)
        .env("WGPU_BACKEND", "dx12")
        .output()
        .unwrap();
    let err = assert_user_error(&o);
    assert!(
        err.contains("no GPU adapter") && err.contains("mesa-vulkan-drivers"),
        "{err}"
    );
}

#[test]
fn check_weights_reports_every_mismatch_at_once() {
    // The fixture's experts are 32 wide; claim 64 so all 24 expert tensors are mis-shaped.
    let o = moec(&[
        "check",
        "examples/mixtral.moe",
        "--set",
        "hidden_size=16",
        "--set",
        "intermediate_size=64",
        "--weights",
        "tests/fixtures/mixtral/weights.safetensors",
    ]);
    let err = assert_user_error(&o);
    assert_eq!(err.matches("has shape").count(), 24, "{err}");
    assert!(err.contains("experts.7.w2.weight"), "{err}");
}

#[test]
fn check_weights_suggests_rows_for_experts_stacked_without_an_axis() {
    // DBRX's w1/v1/w2 are [E·F, H]; binding them as fused [E, F, H] tensors gives one error
    // per tensor (not per expert), each saying how to bind the experts' rows.
    let spec = std::fs::read_to_string(root().join("examples/dbrx.moe"))
        .unwrap()
        .replace("experts[e].", "experts.")
        .replace(" rows(e * ffn_hidden_size, 1)", "");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("dbrx.moe");
    std::fs::write(&path, spec).unwrap();
    let o = moec(&[
        "check",
        path.to_str().unwrap(),
        "--weights",
        "tests/fixtures/blocks/dbrx",
    ]);
    let err = assert_user_error(&o);
    assert_eq!(err.matches("has shape [96, 16]").count(), 3, "{err}");
    assert!(
        err.contains("the file holds 4 experts one after another along the first axis")
            && err.contains("keying the binding `experts[e].w2` and writing `rows(e * 24, 1)`"),
        "{err}"
    );
}

#[test]
fn check_weights_names_missing_tensors_and_close_names() {
    // Qwen2-MoE's weights under Mixtral's names: nothing matches.
    let o = moec(&[
        "check",
        "examples/mixtral.moe",
        "--set",
        "hidden_size=16",
        "--set",
        "intermediate_size=32",
        "--weights",
        "tests/fixtures/qwen2_moe/weights.safetensors",
    ]);
    let err = assert_user_error(&o);
    assert!(
        err.contains("model.layers.0.block_sparse_moe.gate.weight"),
        "{err}"
    );
    assert!(err.contains("qwen2_moe/weights.safetensors"), "{err}");
}

#[test]
fn truncated_weights_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(root().join("tests/fixtures/mixtral/weights.safetensors")).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let path = tmp.path().join(format!("cut{cut}.safetensors"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let mut args = vec![
            "run",
            "examples/mixtral.moe",
            "--tokens",
            "2",
            "--weights",
            path.to_str().unwrap(),
        ];
        args.extend(MIXTRAL_FIXTURE_DIMS);
        let err = assert_user_error(&moec(&args));
        assert!(err.contains(&format!("cut{cut}.safetensors")), "{err}");
    }
}

#[test]
fn wrong_input_shape_is_a_clear_error() {
    // The fixture input is 16 wide; the spec at default dims wants 4096.
    let o = moec(&[
        "run",
        "examples/mixtral.moe",
        "--random-weights",
        "0",
        "--set",
        "intermediate_size=8",
        "--input",
        "tests/fixtures/mixtral/input.safetensors",
    ]);
    let err = assert_user_error(&o);
    assert!(err.contains("input `x`") && err.contains("4096"), "{err}");
}

#[test]
fn spec_errors_are_located() {
    let cases: Vec<PathBuf> = std::fs::read_dir(root().join("tests/cases/errors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        cases.len() >= 20,
        "expected at least 20 error cases, found {}",
        cases.len()
    );
    for path in cases {
        // A first line `// args: --set a=1` gives the case's command-line arguments.
        let source = std::fs::read_to_string(&path).unwrap();
        let extra: Vec<&str> = source
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("// args:"))
            .map_or(Vec::new(), |a| a.split_whitespace().collect());
        let mut args = vec!["check", path.to_str().unwrap()];
        args.extend(extra);
        let err = assert_user_error(&moec(&args));
        // A located message names the file; parse/lower errors add line:col.
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()),
            "{}: {err}",
            path.display()
        );
    }
}

#[test]
fn unknown_set_param_is_an_error() {
    let err = assert_user_error(&moec(&[
        "check",
        "examples/mixtral.moe",
        "--set",
        "hiden_size=3",
    ]));
    assert!(
        err.contains("hiden_size") && err.contains("hidden_size"),
        "{err}"
    );
}

#[test]
fn missing_spec_file_is_an_error() {
    let err = assert_user_error(&moec(&["check", "examples/nope.moe"]));
    assert!(err.contains("nope.moe"), "{err}");
}

#[test]
fn bench_runs_on_a_weights_file_and_reports_json() {
    let w = "tests/fixtures/mixtral/weights.safetensors";
    let mut args = vec!["bench", "examples/mixtral.moe", "--weights", w];
    args.extend(MIXTRAL_FIXTURE_DIMS);
    args.extend([
        "--tokens",
        "1,7",
        "--repeats",
        "1",
        "--threads",
        "2",
        "--json",
    ]);
    let o = moec(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "scheduled and dense at 2 token counts:\n{out}"
    );
    for line in lines {
        for key in [
            "\"graph\":",
            "\"tokens\":",
            "\"backend\":\"cpu\"",
            "\"median_ms\":",
        ] {
            assert!(line.contains(key), "{key} in {line}");
        }
        assert!(line.contains("\"gflops\":") && line.contains("\"weight_gbps\":"));
    }
    // The fixture's weights do not fit the spec's default dims: every mismatch, no panic.
    let err = assert_user_error(&moec(&["bench", "examples/mixtral.moe", "--weights", w]));
    assert!(err.contains("weights.safetensors"), "{err}");
}

/// `moec generate` on a checkpoint directory holding only `files`: the message it exits with.
fn generate_error(files: &[(&str, &str)], args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let weights = dir.path().to_str().unwrap();
    let mut all = vec!["generate", "examples/mixtral.moe", "--weights", weights];
    all.extend(args);
    assert_user_error(&moec(&all))
}

#[test]
fn generate_checks_its_arguments_before_opening_a_model() {
    let cases: [(&[&str], &str); 7] = [
        (
            &["--prompt", "hi", "--prompt-ids", "1"],
            "give the prompt once",
        ),
        (&[], "no prompt: give --prompt TEXT or --prompt-ids 1,2,3"),
        (&["--prompt-ids", "1,x"], "--prompt-ids: expected token ids"),
        (&["--prompt-ids", "-1"], "--prompt-ids: expected token ids"),
        (
            &["--prompt-ids", "1", "--temperature", "1", "--top-p", "0"],
            "top-p must be above 0 and at most 1, found 0",
        ),
        (
            &["--prompt-ids", "1", "--temperature", "-1"],
            "the temperature must be a number above 0, found -1",
        ),
        (
            &["--prompt-ids", "1", "--top-k", "2"],
            "give --temperature T",
        ),
    ];
    for (args, expected) in cases {
        let err = generate_error(&[], args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn generate_from_text_needs_a_tokenizer() {
    let err = generate_error(&[], &["--prompt", "hello"]);
    assert!(
        err.contains("has no tokenizer.json") && err.contains("--prompt-ids 1,2,3"),
        "{err}"
    );
    let err = generate_error(&[("tokenizer.json", "{}")], &["--prompt", "hello"]);
    assert!(
        err.contains("tokenizer.json: not a tokenizer.json"),
        "{err}"
    );
}

#[test]
fn generate_names_a_malformed_generation_config() {
    let files = [("generation_config.json", r#"{"eos_token_id": "</s>"}"#)];
    let err = generate_error(&files, &["--prompt-ids", "1,2"]);
    assert!(
        err.contains("generation_config.json: `eos_token_id` must be a token id"),
        "{err}"
    );
}

#[test]
fn extra_input_tensors_are_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(root().join("tests/fixtures/mixtral/input.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let x = file.tensor("x").unwrap();
    let stray = [0u8; 4];
    let stray =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &stray).unwrap();
    let input = tmp.path().join("input.safetensors");
    safetensors::serialize_to_file([("x", x), ("stray", stray)], None, &input).unwrap();
    let mut args = vec![
        "run",
        "examples/mixtral.moe",
        "--random-weights",
        "1",
        "--input",
        input.to_str().unwrap(),
    ];
    args.extend(MIXTRAL_FIXTURE_DIMS);
    let o = moec(&args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("input.safetensors: warning: 1 tensor(s) in the file are no input")
            && err.contains("`stray`"),
        "{err}"
    );
}

/// Launched by mpirun (its environment says several ranks), a build without the `mpi`
/// feature refuses rather than running the whole model on every rank.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_multi_rank_launch_needs_the_mpi_feature() {
    let o = Command::new(env!("CARGO_BIN_EXE_moec"))
        .args(["generate", "models/mixtral.moe", "--weights"])
        .arg(root().join("tests/fixtures/models/mixtral"))
        .args(["--prompt-ids", "1,2", "--max-new-tokens", "1"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .current_dir(root())
        .output()
        .unwrap();
    let err = assert_user_error(&o);
    assert!(
        err.contains("launched as 2 ranks") && err.contains("--features mpi"),
        "{err}"
    );
}

#[test]
fn expert_ranks_need_an_mpirun_launch() {
    let o = moec(&[
        "generate",
        "models/mixtral.moe",
        "--weights",
        "tests/fixtures/models/mixtral",
        "--prompt-ids",
        "1,2",
        "--expert-ranks",
        "0,1,0,1",
    ]);
    assert!(assert_user_error(&o).contains("--expert-ranks places experts on the ranks"));
}
