//! `moec build`: the standalone executable it links writes what `moec run --backend
//! cpu` writes (bit for bit) and what transformers computed (the Mixtral fixture);
//! a missing linker or runtime library, and bad weights or inputs given to the
//! executable, are clear errors with exit status 1, never a panic.

use moec_compiler::tensor::Tensor;
use moec_runtime::io::{read_tensors, write_tensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const DIMS: [&str; 4] = ["--set", "hidden_size=16", "--set", "intermediate_size=32"];
const FIXTURE: &str = "tests/fixtures/mixtral";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(file: &str) -> PathBuf {
    root().join(FIXTURE).join(file)
}

/// A fresh directory under cargo's per-test scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("build")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn moec(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moec"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .expect("moec runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fails unless the command exited 1 with a message and without a panic; returns stderr.
fn assert_user_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{:?}\n{}", o.status, text(o));
    assert!(!err.contains("panicked") && !err.trim().is_empty(), "{err}");
    err
}

/// `args` for `moec build` of the Mixtral example at the fixture's dims into `exe`.
fn build_args(exe: &Path) -> Vec<String> {
    let mut args = vec!["build", "examples/mixtral.moe", "-o", exe.to_str().unwrap()];
    args.extend(DIMS);
    args.into_iter().map(String::from).collect()
}

/// The Mixtral executable, built once for all tests.
fn mixtral_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let exe = scratch("exe").join("mixtral");
        let args = build_args(&exe);
        let o = moec(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("built"), "{}", text(&o));
        exe
    })
}

fn run_exe(weights: &Path, input: &Path, output: &Path) -> Output {
    Command::new(mixtral_exe())
        .args(["--weights", weights.to_str().unwrap()])
        .args(["--input", input.to_str().unwrap()])
        .args(["--output", output.to_str().unwrap()])
        .output()
        .expect("the built executable runs")
}

#[test]
fn built_executable_matches_moec_run_and_the_fixture() {
    let dir = scratch("match");
    let (got, want_run) = (dir.join("exe.safetensors"), dir.join("run.safetensors"));
    let (w, x) = (fixture("weights.safetensors"), fixture("input.safetensors"));
    let o = run_exe(&w, &x, &got);
    assert!(o.status.success(), "{}", text(&o));
    let mut args = vec!["run", "examples/mixtral.moe", "--backend", "cpu"];
    args.extend(DIMS);
    let paths = [
        w.to_str().unwrap(),
        x.to_str().unwrap(),
        want_run.to_str().unwrap(),
    ];
    args.extend([
        "--weights",
        paths[0],
        "--input",
        paths[1],
        "--output",
        paths[2],
    ]);
    let o = moec(&args, &[]);
    assert!(o.status.success(), "{}", text(&o));

    let got = read_tensors(&got).unwrap();
    assert_eq!(got, read_tensors(&want_run).unwrap(), "exe vs moec run");
    let want = read_tensors(&fixture("expected.safetensors")).unwrap();
    let (g, w) = (got["y"].as_f32(), want["y"].as_f32());
    let max = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_eq!(g.len(), w.len());
    assert!(g.iter().zip(w).all(|(a, b)| (a - b).abs() <= 1e-5 * max));
}

#[test]
fn built_executable_reports_bad_weights_and_inputs() {
    let dir = scratch("bad");
    let (w, x, y) = (
        fixture("weights.safetensors"),
        fixture("input.safetensors"),
        dir.join("y.safetensors"),
    );

    let missing = dir.join("nope.safetensors");
    let err = assert_user_error(&run_exe(&missing, &x, &y));
    assert!(err.contains("nope.safetensors"), "{err}");

    let mut weights = read_tensors(&w).unwrap();
    let gone = "model.layers.0.block_sparse_moe.gate.weight";
    assert!(weights.remove(gone).is_some());
    let partial = dir.join("partial.safetensors");
    write_tensors(&partial, &weights).unwrap();
    let err = assert_user_error(&run_exe(&partial, &x, &y));
    assert!(
        err.contains(gone) && err.contains("partial.safetensors"),
        "{err}"
    );

    let narrow = dir.join("narrow.safetensors");
    let x8 = Tensor::f32(vec![7, 8], vec![0.5; 56]);
    write_tensors(&narrow, &BTreeMap::from([("x".to_string(), x8)])).unwrap();
    let err = assert_user_error(&run_exe(&w, &narrow, &y));
    assert!(
        err.contains("narrow.safetensors") && err.contains("input `x`") && err.contains("16"),
        "{err}"
    );
    assert!(!y.exists(), "no output after an error");

    let o = Command::new(mixtral_exe())
        .args(["--weights", w.to_str().unwrap()])
        .output()
        .unwrap();
    let err = assert_user_error(&o);
    assert!(err.contains("--input") && err.contains("usage"), "{err}");
}

#[test]
fn build_without_a_linker_is_a_clear_error() {
    let exe = scratch("no_cc").join("mixtral");
    let args = build_args(&exe);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = assert_user_error(&moec(&args, &[("CC", "/nonexistent/cc")]));
    assert!(
        err.contains("/nonexistent/cc") && err.contains("CC"),
        "{err}"
    );
    assert!(!exe.exists());
    let leftovers = std::fs::read_dir(exe.parent().unwrap()).unwrap().count();
    assert_eq!(leftovers, 0, "the object file is removed");
}

#[test]
fn build_without_the_runtime_library_is_a_clear_error() {
    let exe = scratch("no_lib").join("mixtral");
    let mut args = build_args(&exe);
    args.extend([
        "--runtime-lib".into(),
        "/nonexistent/libmoec_runtime.a".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = assert_user_error(&moec(&args, &[]));
    assert!(
        err.contains("/nonexistent/libmoec_runtime.a") && err.contains("cargo build"),
        "{err}"
    );
    let args = build_args(&exe);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = assert_user_error(&moec(&args, &[("MOEC_RUNTIME_LIB", "/nonexistent/rt.a")]));
    assert!(err.contains("/nonexistent/rt.a"), "{err}");
    assert!(!exe.exists());
}

#[test]
fn build_refuses_a_runtime_library_of_another_build() {
    let dir = scratch("other_lib");
    let exe = dir.join("mixtral");
    // An archive without this build's artifact format (as one of an older moec would be).
    let other = dir.join("libmoec_runtime.a");
    std::fs::write(&other, b"!<arch>\nmoec-aot 0.0.1 src 0000000000000000\n").unwrap();
    let mut args = build_args(&exe);
    args.extend(["--runtime-lib".into(), other.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = assert_user_error(&moec(&args, &[]));
    assert!(
        err.contains("from another moec build") && err.contains(moec_runtime::aot::FORMAT),
        "{err}"
    );
    assert!(!exe.exists());
}

/// Builds `models/mixtral.moe` with the params (and bf16 matmuls) of checkpoint `ckpt` into `exe`.
fn build_mixtral_model(ckpt: &Path, exe: &Path) {
    let args = [
        "build",
        "models/mixtral.moe",
        "--weights",
        ckpt.to_str().unwrap(),
        "-o",
        exe.to_str().unwrap(),
    ];
    let built = moec(&args, &[]);
    assert!(built.status.success(), "{}", text(&built));
}

/// A whole model built into an executable generates transformers' greedy ids and
/// writes the logits `moec run --backend cpu` writes, with no spec and no moec.
#[test]
fn a_whole_model_executable_generates_and_runs_like_moec() {
    let dir = root().join("tests/fixtures/models/mixtral");
    let ckpt = dir.to_str().unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<i64> {
        expected[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let prompt: Vec<String> = ids("prompt_ids").iter().map(i64::to_string).collect();
    let prompt = prompt.join(",");
    let out = scratch("model");
    let exe = out.join("mixtral_model");
    build_mixtral_model(&dir, &exe);

    let run = |cmd: &mut Command| {
        let o = cmd.current_dir(root()).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    let generated = run(Command::new(&exe).args([
        "--weights",
        ckpt,
        "--prompt-ids",
        &prompt,
        "--max-new-tokens",
        "8",
        "--json",
    ]));
    let line: serde_json::Value = serde_json::from_slice(&generated.stdout).unwrap();
    let got: Vec<i64> = line["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(got, ids("greedy_ids"));

    let input = out.join("ids.safetensors");
    let ids_tensor = Tensor::i32(
        vec![ids("prompt_ids").len()],
        ids("prompt_ids").iter().map(|v| *v as i32).collect(),
    );
    write_tensors(
        &input,
        &BTreeMap::from([("input_ids".to_string(), ids_tensor)]),
    )
    .unwrap();
    let (aot, jit) = (out.join("aot.safetensors"), out.join("jit.safetensors"));
    run(Command::new(&exe).args([
        "--weights",
        ckpt,
        "--input",
        input.to_str().unwrap(),
        "--output",
        aot.to_str().unwrap(),
    ]));
    let o = moec(
        &[
            "run",
            "models/mixtral.moe",
            "--weights",
            ckpt,
            "--backend",
            "cpu",
            "--input",
            input.to_str().unwrap(),
            "--output",
            jit.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read_tensors(&aot).unwrap(), read_tensors(&jit).unwrap());
}

/// Built with `--weights` of a bf16 checkpoint (models/tiny), the executable keeps its
/// matmuls bf16 as `moec generate` does (same greedy ids as transformers), and refuses
/// the same weights in f32, which its bf16 panels would round.
#[test]
fn a_bf16_checkpoint_executable_keeps_bf16_and_refuses_f32_weights() {
    let tiny = root().join("models/tiny");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("expected.json")).unwrap())
            .unwrap();
    let out = scratch("bf16");
    let exe = out.join("tiny");
    build_mixtral_model(&tiny, &exe);
    let generate = |weights: &Path| {
        Command::new(&exe)
            .args(["--weights", weights.to_str().unwrap()])
            .args(["--prompt", expected["prompt"].as_str().unwrap()])
            .args(["--max-new-tokens", &expected["max_new_tokens"].to_string()])
            .arg("--json")
            .output()
            .unwrap()
    };
    let o = generate(&tiny);
    assert!(o.status.success(), "{}", text(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["ids"], expected["greedy_ids"]);

    // The same checkpoint with every tensor widened to f32.
    let wide = out.join("tiny_f32");
    std::fs::create_dir_all(&wide).unwrap();
    for file in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(tiny.join(file), wide.join(file)).unwrap();
    }
    let tensors = read_tensors(&tiny.join("model.safetensors")).unwrap();
    write_tensors(&wide.join("model.safetensors"), &tensors).unwrap();
    let err = assert_user_error(&generate(&wide));
    assert!(
        err.contains("tiny_f32") && err.contains("in bf16") && err.contains("build it again"),
        "{err}"
    );
}
