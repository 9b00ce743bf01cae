//! What loading a model onto the CPU backend holds at its peak: weights are read
//! one matmul at a time and packed (`runtime/src/cpu/load.rs`), so a model with
//! bf16 weights never holds all of them in f32 at once, and the peak stays
//! within the memory plan (`budget::MemoryNeeds`) that admitted the model.
//! Measured with a global allocator that tracks the bytes live and their peak.

use moec_compiler::driver::Compiler;
use moec_compiler::quant::WeightFormat;
use moec_compiler::storage;
use moec_runtime::budget::MemoryNeeds;
use moec_runtime::cpu::CpuModel;
use moec_runtime::random::RandomWeights;
use moec_runtime::session::{CpuOptions, Engine};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Tracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        if size >= l.size() {
            grew(size - l.size());
        } else {
            LIVE.fetch_sub(l.size() - size, Ordering::Relaxed);
        }
        System.realloc(p, l, size)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

#[test]
fn loading_bf16_weights_never_holds_the_model_in_f32() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sets = [
        ("num_hidden_layers", "16"),
        ("hidden_size", "256"),
        ("intermediate_size", "512"),
        ("head_dim", "64"),
    ];
    let mut g = Compiler::new()
        .checkpoint(root.join("tests/fixtures/models/mixtral"))
        .sets(sets.map(|(k, v)| (k.to_string(), v.to_string())))
        .compile_file(&root.join("models/mixtral.moe"))
        .unwrap()
        .graph;
    // Random weights rounded to bf16, kept bf16 as a bf16 checkpoint's are.
    storage::keep_bf16(&mut g, |_| true);
    let f32_bytes: usize = g
        .weights
        .iter()
        .map(|w| 4 * w.shape.iter().product::<usize>())
        .sum();
    let plan = MemoryNeeds::of(&g, Engine::Cpu(CpuOptions::default()), 1, 0);
    let weights = RandomWeights {
        decls: &g.weights,
        seed: 1,
        format: WeightFormat::Bf16,
    };
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let model = CpuModel::new(&g, &weights).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let held = LIVE.load(Ordering::Relaxed) - before;
    drop(model);
    eprintln!(
        "f32 weights {f32_bytes} B, planned {} B, load peak {peak} B, held after {held} B",
        plan.weights
    );
    // Holding every weight in f32 (and then the packed copy) would take 1.5× this.
    assert!(
        peak < f32_bytes * 3 / 4,
        "loading peaked at {peak} B, the weights are {f32_bytes} B in f32"
    );
    // The plan counts weights, the load's transient values and activations, not the
    // compiled code and the model's bookkeeping (the graph, the run's steps): a few MB.
    let planned = plan.weights + plan.activations;
    assert!(
        peak as u64 <= planned + (4 << 20),
        "loading peaked at {peak} B, the plan allows {planned} B"
    );
}
