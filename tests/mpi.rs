//! Expert parallelism across processes (feature `mpi`): `mpirun -np 2` and `-np 3` of
//! `moec generate --backend cpu` on every whole-model fixture must give exactly the ids
//! transformers' `generate` gave (`expected.json`), the single-process ones; with 3 ranks
//! the fixtures' 4 or 8 experts do not divide evenly, and every decode step (one token)
//! leaves ranks with no token to send. A rank that cannot load its experts, or ranks that
//! disagree on what to run, end every rank with a message, within seconds.
//!
//! Needs `mpirun` (Open MPI; `.ci/run` installs it); runs as root with
//! `--allow-run-as-root`, and with `--oversubscribe` on machines with fewer cores than ranks.
#![cfg(feature = "mpi")]

mod model_fixtures;

use model_fixtures::model_fixtures;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn fixture_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/models/{case}"))
}

fn spec(model_type: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("models/{model_type}.moe"))
        .display()
        .to_string()
}

/// `mpirun` with `ranks` (each a `moec` argument list; several make an MPMD launch).
fn mpirun(ranks: &[(usize, Vec<String>)]) -> Output {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--allow-run-as-root"]);
    for (i, (n, args)) in ranks.iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-np", &n.to_string(), env!("CARGO_BIN_EXE_moec")]);
        c.args(args);
    }
    c.output()
        .unwrap_or_else(|e| panic!("mpirun: {e} (install openmpi-bin)"))
}

fn generate_args(model_type: &str, weights: &Path, prompt: &[i64], new: usize) -> Vec<String> {
    let ids: Vec<String> = prompt.iter().map(i64::to_string).collect();
    [
        "generate",
        &spec(model_type),
        "--weights",
        &weights.display().to_string(),
        "--prompt-ids",
        &ids.join(","),
        "--max-new-tokens",
        &new.to_string(),
        "--backend",
        "cpu",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The fixture's prompt and transformers' greedy ids.
fn expected(case: &str) -> (Vec<i64>, Vec<i64>) {
    let text = std::fs::read_to_string(fixture_dir(case).join("expected.json")).unwrap();
    let e: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| -> Vec<i64> {
        e[k].as_array()
            .unwrap_or_else(|| panic!("{case}: expected.json has no {k}"))
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    (ids("prompt_ids"), ids("greedy_ids"))
}

/// The ids of the one JSON line the run printed (rank 0's only).
fn generated_ids(o: &Output, what: &str) -> Vec<i64> {
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{what}: {}\n{stdout}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "{what}: one rank writes: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_i64().unwrap())
        .collect()
}

#[test]
fn generate_on_2_and_3_ranks_gives_transformers_ids() {
    // Encoder-decoder models are not partitioned yet (`moec` refuses them under mpirun).
    for f in model_fixtures().into_iter().filter(|f| !f.encoder_decoder) {
        let (prompt, want) = expected(&f.case);
        let args = generate_args(&f.model_type, &fixture_dir(&f.case), &prompt, want.len());
        for ranks in [2, 3] {
            let what = format!("{} on {ranks} ranks", f.case);
            assert_eq!(
                generated_ids(&mpirun(&[(ranks, args.clone())]), &what),
                want,
                "{what}"
            );
        }
    }
}

#[test]
fn an_interleaved_placement_gives_the_same_ids() {
    let (prompt, want) = expected("mixtral");
    let mut args = generate_args("mixtral", &fixture_dir("mixtral"), &prompt, want.len());
    args.extend(["--expert-ranks".into(), "1,0,1,0".into()]);
    let o = mpirun(&[(2, args)]);
    assert_eq!(generated_ids(&o, "mixtral, experts 1,0,1,0"), want);
}

#[test]
fn a_rank_that_cannot_load_its_experts_ends_every_rank() {
    // Rank 1 of 2 holds experts 2 and 3 of the mixtral fixture; one of expert 3's tensors
    // is missing from this copy of the checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let src = fixture_dir("mixtral");
    for file in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(src.join(file), dir.path().join(file)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let missing = "model.layers.0.block_sparse_moe.experts.3.w2.weight";
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != missing)
        .collect();
    assert_eq!(kept.len() + 1, st.len(), "the fixture has {missing}");
    safetensors::serialize_to_file(kept, None, &dir.path().join("model.safetensors")).unwrap();

    let (prompt, _) = expected("mixtral");
    let started = Instant::now();
    let o = mpirun(&[(2, generate_args("mixtral", dir.path(), &prompt, 4))]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("rank 1 of 2") && stderr.contains(missing),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn ranks_running_different_settings_end_with_a_message() {
    let (prompt, _) = expected("mixtral");
    let weights = fixture_dir("mixtral");
    let o = mpirun(&[
        (1, generate_args("mixtral", &weights, &prompt, 4)),
        (1, generate_args("mixtral", &weights, &prompt, 5)),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("rank(s) 1 run a different model, placement or settings than rank 0"),
        "{stderr}"
    );
}

#[test]
fn expert_ranks_must_name_a_rank_for_every_expert() {
    let (prompt, _) = expected("mixtral");
    let mut args = generate_args("mixtral", &fixture_dir("mixtral"), &prompt, 2);
    args.extend(["--expert-ranks".into(), "0,0,1".into()]);
    let o = mpirun(&[(2, args)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("names 3 experts, the layer has 4"),
        "{stderr}"
    );
}

#[test]
fn run_on_3_ranks_writes_the_single_process_logits() {
    use moec_compiler::tensor::Tensor;
    use moec_runtime::io::{read_tensors, write_tensors};
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let (prompt, _) = expected("mixtral");
    let ids: Vec<i32> = prompt.iter().map(|i| *i as i32).collect();
    let input = dir.path().join("ids.safetensors");
    let inputs = BTreeMap::from([("input_ids".to_string(), Tensor::i32(vec![ids.len()], ids))]);
    write_tensors(&input, &inputs).unwrap();
    let run = |out: &Path| -> Vec<String> {
        [
            "run",
            &spec("mixtral"),
            "--weights",
            &fixture_dir("mixtral").display().to_string(),
            "--input",
            &input.display().to_string(),
            "--output",
            &out.display().to_string(),
            "--backend",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let single = dir.path().join("single.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_moec"))
        .args(run(&single))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ranked = dir.path().join("ranked.safetensors");
    let o = mpirun(&[(3, run(&ranked))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        stdout.matches("wrote").count(),
        1,
        "only rank 0 writes: {stdout}"
    );
    assert_eq!(
        read_tensors(&ranked).unwrap(),
        read_tensors(&single).unwrap()
    );
}
