//! One compiled model shared by 8 threads: every call returns the same values as
//! the same call alone. The GPU model and the interpreter's (graph, weights) are
//! `Sync` and run through `&self`, so sharing them is the API. The CPU model and a
//! `Session` are not `Sync` (the JIT module; one sequence's KV caches), so sharing
//! one does not compile: see the `compile_fail` doc tests in `moec_runtime`'s crate doc.

mod backends;
#[path = "../compiler/tests/common/mod.rs"]
mod common;

use backends::{example, graph};
use common::{inputs, small_dims, weights};
use moec_compiler::passes::Upto;
use moec_compiler::tensor::Tensor;
use moec_runtime::gpu::{GpuModel, GpuOptions};
use std::collections::BTreeMap;

type Outputs = BTreeMap<String, Tensor>;

const THREADS: usize = 8;

/// Runs every input alone, then all of them from `THREADS` threads at once (each
/// thread several times, interleaved), and compares.
fn serves_threads<M: Sync>(model: &M, run: impl Fn(&M, &Outputs) -> Outputs + Sync) {
    let source = example("mixtral.moe");
    let g = graph(&source, &small_dims(&source), Upto::All);
    // Different token counts, so concurrent calls also differ in size.
    let calls: Vec<Outputs> = (0..THREADS)
        .map(|i| inputs(&g, 1 + 5 * i, i as u64))
        .collect();
    let alone: Vec<Outputs> = calls.iter().map(|x| run(model, x)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = calls
            .iter()
            .map(|x| s.spawn(|| (0..4).map(|_| run(model, x)).collect::<Vec<_>>()))
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            for got in h.join().expect("a thread panicked") {
                assert!(got == alone[i], "call {i}: a concurrent result differs");
            }
        }
    });
}

fn mixtral() -> (moec_compiler::ir::Graph, Vec<Tensor>) {
    let source = example("mixtral.moe");
    let g = graph(&source, &small_dims(&source), Upto::All);
    let w = weights(&g, 11);
    (g, w)
}

#[test]
fn gpu_model_serves_8_threads() {
    let (g, w) = mixtral();
    let model = GpuModel::new(&g, &w, GpuOptions::default()).unwrap();
    serves_threads(&model, |m, x| m.run(x).unwrap());
}

#[test]
fn interpreter_serves_8_threads() {
    let (g, w) = mixtral();
    serves_threads(&(g, w), |(g, w), x| {
        moec_compiler::interp::run(g, w, x).unwrap()
    });
}
