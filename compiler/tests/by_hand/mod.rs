//! Helpers of the interpreter's by-hand tests (`interp.rs`, `interp_models.rs`):
//! lower and run a spec on named weights, plain-arithmetic references, comparisons.
#![allow(dead_code)] // each test crate uses some of them

use moec_compiler::interp;
use moec_compiler::lower::lower_source;
use moec_compiler::tensor::Tensor;
use std::collections::{BTreeMap, HashMap};

/// Lowers `spec`, binds weights by tensor name, runs on `x` ([tokens, width]).
pub fn run(spec: &str, weights: &[(&str, Vec<f32>)], x: &[Vec<f32>]) -> BTreeMap<String, Tensor> {
    let g = lower_source(spec, &[])
        .unwrap_or_else(|d| panic!("{}", d.render("test.moe", spec)))
        .graph;
    let by_name: HashMap<&str, &Vec<f32>> = weights.iter().map(|(n, v)| (*n, v)).collect();
    let bound = g
        .weights
        .iter()
        .map(|d| {
            let data = by_name
                .get(d.tensor.as_str())
                .unwrap_or_else(|| panic!("no test weight {}", d.tensor));
            Tensor::f32(d.shape.clone(), (*data).clone())
        })
        .collect::<Vec<_>>();
    let width = x[0].len();
    let input = Tensor::f32(vec![x.len(), width], x.concat());
    interp::run(&g, &bound, &BTreeMap::from([("x".to_string(), input)])).unwrap()
}

pub fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

pub fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().cloned().fold(f32::MIN, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

pub fn assert_close(got: &Tensor, want: &[Vec<f32>]) {
    let flat = want.concat();
    assert_eq!(got.as_f32().len(), flat.len());
    for (i, (g, w)) in got.as_f32().iter().zip(&flat).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}\n{got:?}"
        );
    }
}

/// Experts are single linears `W_e · h` so a test can write them out.
pub const LINEAR_EXPERT: &str = "expert lin(h: [n, 2]) -> [n, 2] { let w = linear(h, 2) return w }";

pub fn expert_weights(n: usize) -> Vec<(String, Vec<f32>)> {
    (0..n)
        .map(|e| {
            (
                format!("e{e}"),
                vec![1.0 + e as f32, 0.5, -0.25 * e as f32, 1.0 - 0.3 * e as f32],
            )
        })
        .collect()
}

pub fn tokens() -> Vec<Vec<f32>> {
    vec![
        vec![1.0, 0.0],
        vec![0.0, 1.0],
        vec![1.0, 1.0],
        vec![-1.0, 0.5],
        vec![0.5, -2.0],
    ]
}

pub fn weights_of<'a>(
    experts: &'a [(String, Vec<f32>)],
    extra: &[(&'a str, Vec<f32>)],
) -> Vec<(&'a str, Vec<f32>)> {
    let mut all: Vec<(&str, Vec<f32>)> = experts
        .iter()
        .map(|(n, w)| (n.as_str(), w.clone()))
        .collect();
    all.extend(extra.iter().cloned());
    all
}
