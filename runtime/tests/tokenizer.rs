//! `tokenizer.json` text in and out: a small hand-written SentencePiece-style tokenizer (BOS added,
//! byte fallback, a leading-space marker), the streaming detokenizer on it, the errors for a missing
//! or broken file, and the cases the Python `tokenizers` library produced for the model fixtures.

use std::path::{Path, PathBuf};

use moec_runtime::generate::{TextStream, Tokenizer, TokenizerError};
use serde_json::Value;

/// Llama-style: `▁` for spaces, `<s>` prepended, unknown characters spelled as UTF-8 bytes.
const SENTENCEPIECE: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
  "post_processor": {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
  },
  "decoder": {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
    {"type": "ByteFallback"},
    {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}
  ]},
  "model": {
    "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
    "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0xC3>": 3, "<0xA9>": 4, "▁": 5, "h": 6, "i": 7,
              "t": 8, "e": 9, "r": 10, "▁h": 11, "▁hi": 12, "▁t": 13, "▁th": 14, "▁the": 15},
    "merges": ["▁ h", "▁h i", "▁ t", "▁t h", "▁th e"]
  }
}"#;

fn sentencepiece() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), SENTENCEPIECE).unwrap();
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    (dir, tokenizer)
}

/// The pieces a stream returns for `ids`, one per id, and what `finish` returns.
fn stream(tokenizer: &Tokenizer, ids: &[i32]) -> (Vec<String>, String) {
    let mut stream = TextStream::new(tokenizer);
    let pieces = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    (pieces, stream.finish().unwrap())
}

#[test]
fn encode_adds_special_tokens_and_decode_skips_them() {
    let (_dir, t) = sentencepiece();
    assert_eq!(t.encode("hi there").unwrap(), [1, 12, 15, 10, 9]);
    assert_eq!(t.encode_plain("hi there").unwrap(), [12, 15, 10, 9]);
    assert_eq!(t.encode("hé").unwrap(), [1, 11, 3, 4]);
    assert_eq!(t.decode(&[1, 12, 15, 10, 9, 2]).unwrap(), "hi there");
    assert!(matches!(
        t.decode(&[12, -1]),
        Err(TokenizerError::NegativeId(-1))
    ));
}

#[test]
fn a_stream_returns_each_ids_text_and_holds_back_partial_characters() {
    let (_dir, t) = sentencepiece();
    // The space before "the" belongs to it although "hi" was decoded alone; é is two byte tokens.
    let (pieces, rest) = stream(&t, &[12, 15, 10, 3, 4, 15, 2]);
    assert_eq!(pieces, ["hi", " the", "r", "", "é", " the", ""]);
    assert_eq!(rest, "");
    assert_eq!(
        pieces.concat(),
        t.decode(&[12, 15, 10, 3, 4, 15, 2]).unwrap()
    );
    // A character cut off by the end comes out of `finish` as U+FFFD.
    let (pieces, rest) = stream(&t, &[12, 3]);
    assert_eq!(pieces, ["hi", ""]);
    assert_eq!(rest, "\u{FFFD}");
}

#[test]
fn a_missing_tokenizer_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_dir(dir.path()).err().unwrap();
    assert!(matches!(e, TokenizerError::Missing { .. }));
    assert_eq!(
        e.to_string(),
        format!("{} has no tokenizer.json", dir.path().display())
    );
}

#[test]
fn a_malformed_tokenizer_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    // The last one (found by fuzz/ `tokenizer`) makes the tokenizers library panic.
    let bad_decoder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/tokenizer/crash-bad-decoder.json");
    let bad_decoder = std::fs::read(bad_decoder).unwrap();
    for text in [
        &b"{"[..],
        br#"{"model": {"type": "NoSuchModel"}}"#,
        &bad_decoder,
    ] {
        std::fs::write(&path, text).unwrap();
        let e = Tokenizer::from_dir(dir.path()).err().unwrap();
        assert!(matches!(e, TokenizerError::Malformed { .. }), "{e}");
        let prefix = format!("{}: not a tokenizer.json: ", path.display());
        assert!(e.to_string().starts_with(&prefix), "{e}");
    }
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

/// Every model fixture's tokenizer against `tokenizer_cases.json`, made by the Python `tokenizers`
/// library (`tests/fixtures/make_model_fixtures.py`): the same ids for each text, the same text
/// back (special tokens skipped), and streamed pieces that add up to it.
#[test]
fn tokenizers_match_the_python_library() {
    let cases_path = models().join("tokenizer_cases.json");
    let Ok(text) = std::fs::read_to_string(&cases_path) else {
        eprintln!(
            "skipped: {} is not here (the model fixtures are not in this checkout)",
            cases_path.display()
        );
        return;
    };
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    let dirs: Vec<PathBuf> = std::fs::read_dir(models())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("tokenizer.json").is_file())
        .collect();
    assert!(!dirs.is_empty());
    for dir in dirs {
        let t = Tokenizer::from_dir(&dir).unwrap();
        for case in &cases {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<i32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let decoded = case["decoded_skip_special"].as_str().unwrap();
            let at = format!("{}: {text:?}", dir.display());
            assert_eq!(t.encode_plain(text).unwrap(), ids, "{at}");
            assert_eq!(t.decode(&ids).unwrap(), decoded, "{at}");
            let (pieces, rest) = stream(&t, &ids);
            assert_eq!(pieces.concat() + &rest, decoded, "{at}");
        }
    }
}
