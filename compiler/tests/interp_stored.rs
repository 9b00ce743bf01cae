//! The interpreter on matmuls whose weights the graph stores in another format
//! (`Graph::stored`), against sums worked by hand from the documented rules
//! (`quant.rs`): the weights as the format holds them and, for q8_0 / q4_0,
//! the activations in 8-bit blocks.

use half::f16;
use moec_compiler::interp;
use moec_compiler::ir::WeightFormat;
use moec_compiler::lower::lower_source;
use moec_compiler::storage::Storage;
use moec_compiler::tensor::Tensor;
use std::collections::BTreeMap;

/// `y = linear(x, 32)` over one token, weights stored as `format`: `y[0]`
/// (the other rows of the weight are zero).
fn first_output(format: WeightFormat, w0: [f32; 3]) -> f64 {
    let spec = "model m { input x: f32[tokens, 32] let y = linear(x, 32) output y }";
    let mut g = lower_source(spec, &[]).unwrap().graph;
    Storage::matmuls(format).apply(&mut g);
    assert_eq!(g.stored.len(), 1, "{format}: the linear is stored");
    let mut w = vec![0.0f32; 32 * 32];
    w[..3].copy_from_slice(&w0);
    let mut x = vec![0.0f32; 32];
    x[..3].copy_from_slice(&[0.5, -1.0, 0.25]);
    let inputs = BTreeMap::from([("x".to_string(), Tensor::f32(vec![1, 32], x))]);
    let out = interp::run(&g, &[Tensor::f32(vec![32, 32], w)], &inputs).unwrap();
    let y = out["y"].as_f32();
    assert!(y[1..].iter().all(|v| *v == 0.0), "{format}: {y:?}");
    f64::from(y[0])
}

/// The activations [0.5, -1, 0.25] in a q8 block: d = 1/127, q = 64, -127, 32
/// (0.5·127 = 63.5 rounds away from zero).
fn activation_block() -> (f64, [f64; 3]) {
    (f64::from(1.0f32 / 127.0), [64.0, -127.0, 32.0])
}

#[test]
fn q8_0_weights_and_activations_in_blocks() {
    // Weights [1, 2, 3]: d = 3/127 (stored as f16), q = round(w·127/3) = 42, 85, 127.
    let dw = f16::from_f32(3.0 / 127.0).to_f64();
    let (dx, qx) = activation_block();
    let want = dw * dx * (qx[0] * 42.0 + qx[1] * 85.0 + qx[2] * 127.0);
    let got = first_output(WeightFormat::Q8_0, [1.0, 2.0, 3.0]);
    assert!((got - want).abs() <= 1e-6 * want.abs(), "{got} vs {want}");
    // Unquantized, the sum is -0.75: the rounding is visible.
    assert!((got + 0.75).abs() > 1e-3, "{got}");
}

#[test]
fn q4_0_weights_and_activations_in_blocks() {
    // Weights [1, 2, 3]: d = 3 / -8 = -0.375, q = trunc(w/d + 8.5) = 5, 3, 0, so the
    // weights are (q - 8)·d = 1.125, 1.875, 3.
    let (dx, qx) = activation_block();
    let want = dx * (qx[0] * 1.125 + qx[1] * 1.875 + qx[2] * 3.0);
    let got = first_output(WeightFormat::Q4_0, [1.0, 2.0, 3.0]);
    assert!((got - want).abs() <= 1e-6 * want.abs(), "{got} vs {want}");
}

#[test]
fn bf16_weights_round_and_activations_stay() {
    // 1.001 rounds to 1 in bf16 (8 significant bits); x is not rounded.
    let got = first_output(WeightFormat::Bf16, [1.001, 2.0, 3.0]);
    assert_eq!(got, 0.5 - 2.0 + 0.75);
}
