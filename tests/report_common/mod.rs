//! What `tests/report.rs` and `tests/report_browser.rs` share: running `moec`,
//! and a routing trace of the Mixtral fixture on its transformers prompt.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn moec(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moec"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("moec runs")
}

/// A temporary directory holding `trace.safetensors`: `moec trace` of the Mixtral
/// fixture on the prompt its transformers trace was taken on.
pub fn trace_fixture() -> (tempfile::TempDir, PathBuf) {
    let fixture = root().join("tests/fixtures/models/mixtral");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    let ids: Vec<String> = expected["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.safetensors");
    let ids = ids.join(",");
    let o = moec(&[
        "trace".as_ref(),
        "models/mixtral.moe".as_ref(),
        "--weights".as_ref(),
        fixture.as_os_str(),
        "--prompt-ids".as_ref(),
        ids.as_ref(),
        "-o".as_ref(),
        trace.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (dir, trace)
}
