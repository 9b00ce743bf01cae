//! Ops checked against torch rather than against another part of moec: layernorm
//! (with weight and bias), exact GeLU and its tanh approximation, on the input and
//! weights of `tests/fixtures/ops/` (made by `make_op_fixtures.py` with
//! `torch.nn.functional`, in f64), through the interpreter and the CPU backend;
//! and T5's relative position buckets against transformers' own
//! `_relative_position_bucket` (`relative_buckets.safetensors`, made by
//! `make_encoder_decoder_fixtures.py`) at every relative position in -300..=300.

use moec_compiler::driver::Compiler;
use moec_compiler::interp;
use moec_compiler::ir::RelativeBias;
use moec_compiler::tensor::Tensor;
use moec_runtime::cpu::CpuModel;
use moec_runtime::io::read_tensors;
use moec_runtime::weights::{bind, WeightSource};
use std::collections::BTreeMap;
use std::path::PathBuf;

const SPEC: &str = "model ops {
  input x: f32[tokens, 8]
  let ln = layernorm(x, eps = 1e-5)
  output ln
  output g = gelu(x)
  output gt = gelu_tanh(x)
  weights { ln = \"ln.weight\"  ln.bias = \"ln.bias\" }
}";

fn close(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>, how: &str) {
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.shape, w.shape, "{how}: {name}");
        for (i, (a, b)) in g.as_f32().iter().zip(w.as_f32()).enumerate() {
            assert!(
                (a - b).abs() <= 2e-6 * (1.0 + b.abs()),
                "{how}: {name}[{i}] = {a}, torch gives {b}"
            );
        }
    }
}

#[test]
fn layernorm_and_gelus_match_torch() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ops");
    let g = Compiler::new()
        .compile_source("ops.moe", SPEC)
        .unwrap_or_else(|e| panic!("{e}"))
        .graph;
    let source = WeightSource::open(&dir.join("weights.safetensors")).unwrap();
    let w = bind(&g.weights, &source).unwrap();
    let x = read_tensors(&dir.join("input.safetensors")).unwrap();
    let want = read_tensors(&dir.join("expected.safetensors")).unwrap();
    close(&interp::run(&g, &w, &x).unwrap(), &want, "interp");
    let cpu = CpuModel::new(&g, &w).unwrap();
    close(&cpu.run(&x).unwrap(), &want, "cpu");
}

#[test]
fn relative_buckets_match_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ops");
    let tables = read_tensors(&dir.join("relative_buckets.safetensors")).unwrap();
    let positions = tables["relative_position"].as_i32();
    for (name, buckets, max_distance, bidirectional) in [
        ("bidirectional_32_128", 32, 128, true),
        ("causal_32_128", 32, 128, false),
        ("bidirectional_16_12", 16, 12, true),
        ("causal_16_12", 16, 12, false),
    ] {
        let bias = RelativeBias {
            buckets,
            max_distance,
            bidirectional,
        };
        let want = tables[name].as_i32();
        assert_eq!(want.len(), positions.len(), "{name}");
        for (&rel, &bucket) in positions.iter().zip(want) {
            let got = interp::relative_bucket(bias, rel as i64);
            assert_eq!(got as i32, bucket, "{name}: relative position {rel}");
        }
    }
}
