//! The conformance matrix: every architecture's MoE block against Hugging Face
//! transformers, on every backend, with params from the checkpoint alone.
//!
//! Each `tests/fixtures/blocks/<model_type>/` (made by `make_block_fixtures.py`) is a
//! checkpoint transformers wrote with `save_pretrained` (config.json,
//! model.safetensors) plus `block.safetensors`: layer 0's MoE block input `x`, its
//! output `y` and, where transformers exposes it, the experts it `selected`. The
//! spec `examples/<model_type>.moe` is compiled with that directory as its
//! checkpoint — config.json supplies every param, nothing is `--set` — and run on
//! the interpreter (lowered and optimized graphs), the CPU backend and the GPU
//! backend (whatever adapter wgpu finds; none is a failure, as in `gpu_backend.rs`).
//! Each must give `y` within 1e-5 of transformers relative to max |y|, and the
//! same set of experts per token; and the spec must read every tensor of the
//! block's module (one it ignores is a feature it lacks).
//!
//! A block spec reads `input x` and writes `output y`; its router's selection is
//! exposed by the harness, not the spec. A fixture without a spec is an
//! architecture the language cannot express yet: it is listed as unverified, not
//! failed. The matrix in README.md is rendered from these results and the
//! whole-model fixtures (✓ passed, ✗ failed, — nothing to run);
//! `MOEC_UPDATE_README=1` rewrites it, otherwise a stale matrix fails the test.

mod model_fixtures;

use moec_compiler::driver::Compiler;
use moec_compiler::interp;
use moec_compiler::ir::{Graph, Value};
use moec_compiler::passes::{run_pipeline, Upto};
use moec_compiler::tensor::Tensor;
use moec_runtime::cpu::CpuModel;
use moec_runtime::gpu::{GpuModel, GpuOptions};
use moec_runtime::io::read_tensors;
use moec_runtime::weights::{bind, WeightSource};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Largest |moec − transformers| relative to the largest |transformers| value.
const TOLERANCE: f32 = 1e-5;

const BEGIN: &str =
    "<!-- conformance matrix: rendered by tests/conformance.rs (MOEC_UPDATE_README=1 rewrites it) -->";
const END: &str = "<!-- end of conformance matrix -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where a block runs.
#[derive(Clone, Copy)]
enum Backend {
    Lowered,
    Optimized,
    Cpu,
    Gpu,
}

const BACKENDS: [Backend; 4] = [
    Backend::Lowered,
    Backend::Optimized,
    Backend::Cpu,
    Backend::Gpu,
];

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Lowered => "interp (lowered)",
            Backend::Optimized => "interp (optimized)",
            Backend::Cpu => "cpu",
            Backend::Gpu => "gpu",
        }
    }
}

/// One architecture's fixture.
struct Block {
    model_type: String,
    dir: PathBuf,
    x: Tensor,
    y: Tensor,
    selected: Option<Tensor>,
}

/// Every `tests/fixtures/blocks/<model_type>/`, sorted.
fn blocks() -> Vec<Block> {
    let dir = root().join("tests/fixtures/blocks");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("block.safetensors").exists())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let mut t = read_tensors(&dir.join("block.safetensors"))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            Block {
                model_type: dir.file_name().unwrap().to_string_lossy().into_owned(),
                x: t.remove("x").expect("block.safetensors holds x"),
                y: t.remove("y").expect("block.safetensors holds y"),
                selected: t.remove("selected"),
                dir,
            }
        })
        .collect()
}

/// The lowered graph of `spec` on the block's checkpoint, with the router's
/// selection as an extra output `selected_experts`.
fn lowered(block: &Block, spec: &Path) -> Result<Graph, String> {
    let mut g = Compiler::new()
        .checkpoint(&block.dir)
        .upto(Upto::None)
        .compile_file(spec)
        .map_err(|e| e.to_string())?
        .graph;
    if block.selected.is_some() {
        let node =
            g.g.node_indices()
                .find(|n| {
                    g.g[*n]
                        .label
                        .as_deref()
                        .is_some_and(|l| l.ends_with(".selected_experts"))
                })
                .ok_or("the spec has no router selection to compare")?;
        g.outputs
            .push(("selected_experts".into(), Value { node, port: 1 }));
    }
    Ok(g)
}

/// Block tensors transformers itself never reads: LongcatFlashMoE allocates projections for its
/// zero-computation experts (4 and 5 of the fixture) and runs them as identities.
const UNREAD_BY_TRANSFORMERS: &[(&str, &str)] = &[
    ("longcat_flash", "model.layers.0.mlp.experts.4."),
    ("longcat_flash", "model.layers.0.mlp.experts.5."),
];

/// Every tensor of the checkpoint under the block's module (`module` in meta.json) must be
/// read by the spec: one it ignores (a bias, a shared expert, a selection bias) is a feature
/// the spec lacks, whose numbers would differ silently on checkpoints where it matters.
fn reads_the_whole_block(g: &Graph, block: &Block) -> Result<(), String> {
    let meta = std::fs::read_to_string(block.dir.join("meta.json")).map_err(|e| e.to_string())?;
    let meta: serde_json::Value = serde_json::from_str(&meta).map_err(|e| e.to_string())?;
    let module = meta["module"].as_str().ok_or("meta.json names no module")?;
    let source = WeightSource::open(&block.dir).map_err(|e| e.to_string())?;
    let read: BTreeSet<&str> = g.weights.iter().map(|w| w.tensor.as_str()).collect();
    let ignored: Vec<&str> = source
        .tensor_names()
        .filter(|t| t.starts_with(&format!("{module}.")) && !read.contains(t))
        .filter(|t| {
            !UNREAD_BY_TRANSFORMERS
                .iter()
                .any(|(m, p)| *m == block.model_type && t.starts_with(p))
        })
        .collect();
    if ignored.is_empty() {
        Ok(())
    } else {
        Err(format!("the spec reads no part of {}", ignored.join(", ")))
    }
}

/// Runs `g` on `backend` with the checkpoint's weights.
fn run(g: &Graph, block: &Block, backend: Backend) -> Result<BTreeMap<String, Tensor>, String> {
    let source = WeightSource::open(&block.dir).map_err(|e| e.to_string())?;
    let weights = bind(&g.weights, &source).map_err(|e| e.to_string())?;
    let inputs = BTreeMap::from([("x".to_string(), block.x.clone())]);
    match backend {
        Backend::Lowered | Backend::Optimized => interp::run(g, &weights, &inputs),
        Backend::Cpu => CpuModel::new(g, &weights)?.with_threads(1).run(&inputs),
        Backend::Gpu => GpuModel::new(g, &weights, GpuOptions::default())?.run(&inputs),
    }
}

/// Max |got − want| over max |want|.
fn rel_error(got: &Tensor, want: &Tensor) -> Result<f32, String> {
    if got.shape != want.shape {
        return Err(format!(
            "y is {:?}, transformers' {:?}",
            got.shape, want.shape
        ));
    }
    let max = want.as_f32().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = got
        .as_f32()
        .iter()
        .zip(want.as_f32())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    Ok(err / max.max(f32::MIN_POSITIVE))
}

/// The first token whose set of selected experts differs, if any.
fn selection_mismatch(got: &Tensor, want: &Tensor) -> Option<String> {
    if got.shape != want.shape {
        return Some(format!(
            "selects {:?}, transformers {:?}",
            got.shape, want.shape
        ));
    }
    let k = want.shape[1];
    let rows = |t: &Tensor| -> Vec<BTreeSet<i32>> {
        t.as_i32()
            .chunks(k)
            .map(|r| r.iter().copied().collect())
            .collect()
    };
    rows(got)
        .into_iter()
        .zip(rows(want))
        .enumerate()
        .find(|(_, (g, w))| g != w)
        .map(|(t, (g, w))| format!("token {t} selects experts {g:?}, transformers {w:?}"))
}

/// One backend's verdict on a block: the relative error of `y`, or why it failed.
fn verdict(g: &Graph, block: &Block, backend: Backend) -> Result<f32, String> {
    let out = run(g, block, backend)?;
    let y = out.get("y").ok_or("the spec has no output y")?;
    let err = rel_error(y, &block.y)?;
    if let Some(want) = &block.selected {
        if let Some(m) = selection_mismatch(&out["selected_experts"], want) {
            return Err(m);
        }
    }
    if err > TOLERANCE {
        return Err(format!("y off by {err:.1e} (relative to max |y|)"));
    }
    Ok(err)
}

/// What the matrix shows of one block: whether transformers' selection was
/// compared, and each backend's verdict (None: no spec).
struct Row {
    selection: bool,
    verdicts: Option<Vec<Result<f32, String>>>,
}

/// Every backend's verdict on a block, in `BACKENDS` order; None without a spec.
fn check(block: &Block) -> Option<Vec<Result<f32, String>>> {
    let spec = root()
        .join("examples")
        .join(format!("{}.moe", block.model_type));
    if !spec.exists() {
        return None;
    }
    let lowered =
        match lowered(block, &spec).and_then(|g| reads_the_whole_block(&g, block).map(|_| g)) {
            Ok(g) => g,
            Err(e) => return Some(vec![Err(e); BACKENDS.len()]),
        };
    let mut optimized = lowered.clone();
    if let Err(e) = run_pipeline(&mut optimized, Upto::All, true) {
        let mut v = vec![Err(format!("pass pipeline: {e}")); BACKENDS.len()];
        v[0] = verdict(&lowered, block, Backend::Lowered);
        return Some(v);
    }
    Some(
        BACKENDS
            .iter()
            .map(|&b| match b {
                Backend::Lowered => verdict(&lowered, block, b),
                _ => verdict(&optimized, block, b),
            })
            .collect(),
    )
}

/// The README matrix: one row per architecture with a block fixture or a
/// whole-model fixture.
fn matrix(results: &BTreeMap<String, Row>) -> String {
    let models: BTreeSet<String> = model_fixtures::model_fixtures()
        .into_iter()
        .map(|f| f.model_type)
        .collect();
    let types: BTreeSet<&String> = results.keys().chain(&models).collect();
    let mut s = String::from("| model_type | block spec |");
    for b in BACKENDS {
        s += &format!(" {} |", b.name());
    }
    s += " selection compared | whole model (interp, cpu, gpu) |\n|---|---|";
    s += &"---|".repeat(BACKENDS.len() + 2);
    s += "\n";
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    for t in types {
        let (hooked, verdicts) = results
            .get(t)
            .map_or((false, None), |r| (r.selection, r.verdicts.as_ref()));
        let spec = if verdicts.is_some() {
            format!("[`{t}.moe`](examples/{t}.moe)")
        } else {
            "—".into()
        };
        s += &format!("| {t} | {spec} |");
        for i in 0..BACKENDS.len() {
            s += &format!(" {} |", verdicts.map_or("—", |v| mark(v[i].is_ok())));
        }
        let selection = match (results.contains_key(t), hooked) {
            (false, _) => "—",
            (true, true) => "yes",
            (true, false) => "no (not exposed)",
        };
        let whole = if models.contains(t) { "✓" } else { "—" };
        s += &format!(" {selection} | {whole} |\n");
    }
    s
}

/// Checks (or, with `MOEC_UPDATE_README=1`, rewrites) the matrix in README.md.
fn check_readme(table: &str) -> Result<(), String> {
    let path = root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (start, end) = match (readme.find(BEGIN), readme.find(END)) {
        (Some(s), Some(e)) if s < e => (s + BEGIN.len(), e),
        _ => return Err(format!("README.md lacks the markers {BEGIN} … {END}")),
    };
    let want = format!("\n{table}");
    if readme[start..end] == want {
        return Ok(());
    }
    if std::env::var_os("MOEC_UPDATE_README").is_some() {
        std::fs::write(
            &path,
            format!("{}{want}{}", &readme[..start], &readme[end..]),
        )
        .unwrap();
        return Ok(());
    }
    Err(format!(
        "README.md's conformance matrix is stale (MOEC_UPDATE_README=1 rewrites it); \
         it should read:\n{table}"
    ))
}

#[test]
fn every_block_matches_transformers_on_every_backend() {
    let blocks = blocks();
    assert!(blocks.len() >= 4, "block fixtures missing");
    let mut results = BTreeMap::new();
    let mut failures = Vec::new();
    for block in &blocks {
        let verdicts = check(block);
        match &verdicts {
            None => println!("{:20} no spec", block.model_type),
            Some(v) => {
                for (b, r) in BACKENDS.iter().zip(v) {
                    match r {
                        Ok(err) => println!("{:20} {:20} {err:.1e}", block.model_type, b.name()),
                        Err(e) => {
                            failures.push(format!("{} on {}: {e}", block.model_type, b.name()))
                        }
                    }
                }
            }
        }
        let row = Row {
            selection: block.selected.is_some(),
            verdicts,
        };
        results.insert(block.model_type.clone(), row);
    }
    let readme = check_readme(&matrix(&results));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    readme.unwrap();
}
