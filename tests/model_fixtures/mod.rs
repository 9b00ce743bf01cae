//! The whole-model fixtures: every `tests/fixtures/models/<case>/` holding a
//! checkpoint (`config.json`), with the `model_type` its config names, which picks
//! the spec `models/<model_type>.moe`. `tests/models.rs` runs each one, and the
//! conformance matrix in README.md counts an architecture's whole model as verified
//! by the same rule, so the two cannot disagree.

use moec_compiler::tensor::{Tensor, TensorData};
use moec_runtime::gpu::GpuOptions;
use moec_runtime::session::{CpuOptions, Engine};
use std::path::PathBuf;

/// A whole-model fixture: its directory name, the `model_type` of its config, and
/// whether it is an encoder-decoder (`is_encoder_decoder`: `tests/encoder_decoder.rs`
/// runs those; `tests/models.rs` the decoder-only ones).
pub struct ModelFixture {
    pub case: String,
    pub model_type: String,
    #[allow(dead_code)] // read by some of the test crates that include this module
    pub encoder_decoder: bool,
}

/// Every whole-model fixture, sorted by directory name.
pub fn model_fixtures() -> Vec<ModelFixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let mut cases: Vec<ModelFixture> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .map(|p| {
            let text = std::fs::read_to_string(p.join("config.json")).unwrap();
            let config: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}/config.json: {e}", p.display()));
            ModelFixture {
                case: p.file_name().unwrap().to_string_lossy().into_owned(),
                model_type: config["model_type"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}/config.json has no model_type", p.display()))
                    .to_string(),
                encoder_decoder: config["is_encoder_decoder"].as_bool() == Some(true),
            }
        })
        .collect();
    cases.sort_by(|a, b| a.case.cmp(&b.case));
    cases
}

/// A tensor's f32 values (a test failure when it holds i32).
#[allow(dead_code)] // used by some of the test crates that include this module
pub fn f32s(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        TensorData::I32(_) => panic!("expected f32"),
    }
}

/// The largest |got − want| relative to the largest |want|.
#[allow(dead_code)]
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / max
}

/// The index of the largest value (ties: the lower index), as greedy decoding picks.
#[allow(dead_code)]
pub fn argmax(row: &[f32]) -> i32 {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as i32
}

/// Every engine a whole model runs on: the interpreter, the CPU backend on 2
/// threads, the GPU backend (Mesa's software Vulkan driver in CI).
#[allow(dead_code)]
pub const ENGINES: &[Engine] = &[
    Engine::Interp,
    Engine::Cpu(CpuOptions::threads(2)),
    Engine::Gpu(GpuOptions {
        f16_weights: false,
        max_binding_bytes: None,
    }),
];

/// Largest |a − b| relative to the largest |b| a whole model's outputs may be off
/// transformers' by.
#[allow(dead_code)]
pub const TOLERANCE: f32 = 1e-4;
