//! The examples against Hugging Face transformers: every fixture in
//! `tests/fixtures/<case>/` (made by `make_fixtures.py` from the real MoE blocks)
//! is run through the interpreter on the fixture's weights, with `--set` taken
//! from the fixture's config, and compared with transformers' outputs.

use moec_compiler::interp;
use moec_compiler::ir::{Graph, WeightFormat};
use moec_compiler::lower::lower_source;
use moec_compiler::passes::{run_pipeline, Upto};
use moec_compiler::tensor::Tensor;
use moec_runtime::cpu::{CpuModel, MatmulIsa};
use moec_runtime::io::read_tensors;
use moec_runtime::session::{CpuOptions, Engine, Model};
use moec_runtime::weights::{bind, WeightSource};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example a fixture names, lowered with the fixture's config values for the
/// params the example declares.
fn lower_for_case(case: &serde_json::Value) -> Graph {
    let example = root().join("examples").join(
        case["example"]
            .as_str()
            .expect("case.json names its example"),
    );
    let source = std::fs::read_to_string(&example).unwrap();
    let spec = moec_grammar::parse(&source).unwrap();
    let params: BTreeSet<String> = spec
        .items
        .iter()
        .filter_map(|i| match i {
            moec_grammar::ast::Item::Param(p) => Some(p.name.name.clone()),
            _ => None,
        })
        .collect();
    let sets: Vec<(String, String)> = case["set"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| params.contains(*k))
        .map(|(k, v)| (k.clone(), v.to_string().trim_matches('"').to_string()))
        .collect();
    let mut g = lower_source(&source, &sets)
        .unwrap_or_else(|d| panic!("{}", d.render(&example.display().to_string(), &source)))
        .graph;
    // Expose the selection for comparison with transformers' choice.
    let selected = g.g.node_indices().find(|n| {
        g.g[*n]
            .label
            .as_deref()
            .is_some_and(|l| l.ends_with(".selected_experts"))
    });
    let selected = selected.expect("the example has a router");
    g.outputs.push((
        "selected_experts".into(),
        moec_compiler::ir::Value {
            node: selected,
            port: 1,
        },
    ));
    g
}

fn max_abs(t: &Tensor) -> f32 {
    t.as_f32().iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Max abs error relative to the largest expected magnitude.
fn rel_error(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.shape, want.shape);
    let err = got
        .as_f32()
        .iter()
        .zip(want.as_f32())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    err / max_abs(want).max(f32::MIN_POSITIVE)
}

struct Outcome {
    y_error: f32,
    logits_error: f32,
}

/// How a case is run: the interpreter or a backend.
type Run = dyn Fn(&Graph, &[Tensor], &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor>;

fn check_case(dir: &Path, run: &Run) -> Outcome {
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let g = lower_for_case(&case);
    let source = WeightSource::open(&dir.join("weights.safetensors")).unwrap();
    let weights = bind(&g.weights, &source).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let inputs = read_tensors(&dir.join("input.safetensors")).unwrap();
    let expected = read_tensors(&dir.join("expected.safetensors")).unwrap();
    let out = run(&g, &weights, &inputs);

    let tokens = inputs["x"].shape[0];
    let (got, want) = (&out["selected_experts"], &expected["selected_experts"]);
    assert_eq!(got.shape, want.shape, "{}: selection shape", dir.display());
    let k = want.shape[1];
    for t in 0..tokens {
        let g: BTreeSet<i32> = got.as_i32()[t * k..(t + 1) * k].iter().copied().collect();
        let w: BTreeSet<i32> = want.as_i32()[t * k..(t + 1) * k].iter().copied().collect();
        assert_eq!(
            g,
            w,
            "{}: token {t} selects different experts",
            dir.display()
        );
    }
    // Router losses, where the fixture has them (switch: make_op_fixtures.py, transformers' own
    // load_balancing_loss_func and router_z_loss_func).
    if let Ok(losses) = read_tensors(&dir.join("losses.safetensors")) {
        for (name, want) in &losses {
            let err = rel_error(&out[name], want);
            assert!(err < 1e-5, "{}: {name} is off by {err:.1e}", dir.display());
        }
    }
    Outcome {
        y_error: rel_error(&out["y"], &expected["y"]),
        logits_error: rel_error(&out["router_logits"], &expected["router_logits"]),
    }
}

fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn interpreter_matches_transformers_on_every_fixture() {
    let dirs = fixture_dirs();
    assert!(dirs.len() >= 9, "fixtures missing: {dirs:?}");
    let mut table =
        String::from("| case | max rel. error y | max rel. error router_logits |\n|---|---|---|\n");
    let mut failures = Vec::new();
    for dir in &dirs {
        let o = check_case(dir, &|g, w, x| interp::run(g, w, x).unwrap());
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        table.push_str(&format!(
            "| {name} | {:.1e} | {:.1e} |\n",
            o.y_error, o.logits_error
        ));
        if o.y_error > 1e-5 || o.logits_error > 1e-5 {
            failures.push(name);
        }
    }
    println!("{table}");
    assert!(failures.is_empty(), "over 1e-5: {failures:?}\n{table}");
}

/// The CPU backend on the bf16 fixture: bf16 panels widened in the kernel, on
/// every matmul path the host has (the JIT kernel, the gemm path, the AVX-512
/// tiles' bf16 pairs), give transformers' output.
#[test]
fn cpu_backend_matches_transformers_on_bf16_weights() {
    let dir = root().join("tests/fixtures/mixtral_bf16");
    let mut paths = vec![(MatmulIsa::Portable, usize::MAX), (MatmulIsa::Portable, 1)];
    paths.extend(
        MatmulIsa::available()
            .into_iter()
            .filter(|isa| *isa != MatmulIsa::Portable)
            .map(|isa| (isa, usize::MAX)),
    );
    for (isa, gemm_rows) in paths {
        let o = check_case(&dir, &move |g, w, x| {
            let model = CpuModel::for_isa(g, &w, isa)
                .unwrap()
                .with_gemm_rows(gemm_rows);
            model.run(x).unwrap()
        });
        assert!(
            o.y_error <= 1e-5 && o.logits_error <= 1e-5,
            "{}, gemm from {gemm_rows} rows: y {:.1e}, router_logits {:.1e}",
            isa.name(),
            o.y_error,
            o.logits_error
        );
    }
}

/// Opened as a model on the CPU (`Model::open`, the optimized graph), the bf16
/// checkpoint's matmul weights stay bf16 (`Graph::stored`, also through the
/// experts' stacking) and are read tensor by tensor as they are packed: still
/// transformers' output, on every matmul path the host has.
#[test]
fn a_bf16_checkpoint_opens_as_bf16_on_the_cpu() {
    let dir = root().join("tests/fixtures/mixtral_bf16");
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let mut g = lower_for_case(&case);
    run_pipeline(&mut g, Upto::All, true).unwrap();
    let matmuls =
        g.g.node_indices()
            .filter(|&n| g.node(n).op.matmul_attrs().is_some())
            .count();
    let inputs = read_tensors(&dir.join("input.safetensors")).unwrap();
    let expected = read_tensors(&dir.join("expected.safetensors")).unwrap();
    for isa in MatmulIsa::available() {
        let engine = Engine::Cpu(CpuOptions {
            threads: None,
            isa: Some(isa),
        });
        let model = Model::open(g.clone(), &dir.join("weights.safetensors"), engine).unwrap();
        let stored = &model.graph().stored;
        assert_eq!(stored.len(), matmuls, "{}: matmuls kept bf16", isa.name());
        assert!(stored.values().all(|f| *f == WeightFormat::Bf16));
        let out = Rc::new(model).session(None).run(&inputs).unwrap();
        let y = rel_error(&out["y"], &expected["y"]);
        let logits = rel_error(&out["router_logits"], &expected["router_logits"]);
        assert!(
            y <= 1e-5 && logits <= 1e-5,
            "{}: y {y:.1e}, router_logits {logits:.1e}",
            isa.name()
        );
    }
}

/// A checkpoint split into shards with an index loads to the same result.
#[test]
fn sharded_checkpoint_gives_the_same_output() {
    let dir = root().join("tests/fixtures/mixtral");
    let tmp = tempfile::tempdir().unwrap();
    let whole = std::fs::read(dir.join("weights.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&whole).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(3)).enumerate() {
        let file = format!("model-0000{}-of-00003.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = chunk
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &tmp.path().join(&file)).unwrap();
        for n in chunk {
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let g = lower_for_case(&case);
    let inputs = read_tensors(&dir.join("input.safetensors")).unwrap();
    let one = bind(
        &g.weights,
        &WeightSource::open(&dir.join("weights.safetensors")).unwrap(),
    )
    .unwrap();
    let sharded = bind(&g.weights, &WeightSource::open(tmp.path()).unwrap()).unwrap();
    assert_eq!(one, sharded);
    let a = interp::run(&g, &one, &inputs).unwrap();
    let b = interp::run(&g, &sharded, &inputs).unwrap();
    assert_eq!(a, b);
}
