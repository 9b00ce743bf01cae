//! End-of-sequence ids from a checkpoint directory: `generation_config.json` first, then
//! `config.json`, one id or a list, and errors naming the file and field.

use std::path::Path;

use moec_runtime::generate::{eos_ids, EosError};

fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn ids(files: &[(&str, &str)]) -> Vec<i32> {
    eos_ids(dir(files).path()).unwrap()
}

fn error(files: &[(&str, &str)]) -> (EosError, String) {
    let dir = dir(files);
    let e = eos_ids(dir.path()).unwrap_err();
    let message = e.to_string();
    let path = dir.path().display().to_string();
    (e, message.replace(&path, "DIR"))
}

#[test]
fn generation_config_comes_first() {
    let files = [
        ("generation_config.json", r#"{"eos_token_id": [7, 9]}"#),
        ("config.json", r#"{"eos_token_id": 2}"#),
    ];
    assert_eq!(ids(&files), [7, 9]);
}

#[test]
fn config_is_the_fallback() {
    assert_eq!(
        ids(&[
            ("generation_config.json", r#"{"bos_token_id": 1}"#),
            ("config.json", r#"{"eos_token_id": 2}"#),
        ]),
        [2]
    );
    assert_eq!(
        ids(&[
            ("generation_config.json", r#"{"eos_token_id": null}"#),
            ("config.json", r#"{"eos_token_id": [3]}"#),
        ]),
        [3]
    );
    assert_eq!(ids(&[("config.json", r#"{"eos_token_id": 4}"#)]), [4]);
}

#[test]
fn no_eos_anywhere_is_none() {
    assert!(ids(&[]).is_empty());
    assert!(ids(&[("config.json", r#"{"eos_token_id": null}"#)]).is_empty());
    assert!(ids(&[("config.json", r#"{"vocab_size": 10}"#)]).is_empty());
}

#[test]
fn malformed_files_are_errors_naming_file_and_field() {
    let (e, message) = error(&[("generation_config.json", "{")]);
    assert!(matches!(e, EosError::Json { .. }));
    assert!(
        message.starts_with("DIR/generation_config.json: not valid JSON"),
        "{message}"
    );
    let (_, message) = error(&[("config.json", "[2]")]);
    assert_eq!(message, "DIR/config.json: expected a JSON object");
    for bad in [r#""</s>""#, "-1", "2.5", "[2, \"x\"]", "4294967296"] {
        let (e, message) = error(&[("config.json", &format!("{{\"eos_token_id\": {bad}}}"))]);
        assert!(matches!(e, EosError::Field { .. }));
        assert!(
            message.starts_with("DIR/config.json: `eos_token_id` must be a token id"),
            "{message}"
        );
    }
}

/// The model fixtures' files, made by transformers, against the id their `expected.json` records.
#[test]
fn model_fixtures_name_their_eos_id() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
    let Ok(entries) = std::fs::read_dir(&models) else {
        eprintln!(
            "skipped: {} is not here (the model fixtures are not in this checkout)",
            models.display()
        );
        return;
    };
    for dir in entries.map(|e| e.unwrap().path()) {
        let Ok(expected) = std::fs::read_to_string(dir.join("expected.json")) else {
            continue;
        };
        let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
        let eos = expected["eos_token_id"].as_i64().unwrap() as i32;
        assert_eq!(eos_ids(&dir).unwrap(), [eos], "{}", dir.display());
    }
}
