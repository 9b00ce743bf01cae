//! The WGSL backend on whole models, with no adapter: every spec in `models/`,
//! compiled with the config of its fixture checkpoint (`tests/fixtures/models/`),
//! lowers to kernels that naga validates (inside `wgsl::lower`), with f32 and
//! f16 weights and as the `last_token` graph generation runs; each spec's
//! whole-model kernels (the MoE blocks' are `wgsl.rs`'s) are snapshotted; the KV caches are state buffers of `max_positions`
//! rows that the cache appends write and attention reads; an embedding table
//! larger than one binding is split by rows. Encoder-decoder models lower as
//! their two stages (`passes::stages::split`): the encoder's biased
//! bidirectional attention and the decoder's cross-attention over its `source`
//! inputs are snapshotted too.

use moec_compiler::backend::wgsl::{lower, Contents, Options, Program, Step};
use moec_compiler::driver::Compiler;
use moec_compiler::ir::{Graph, Op};
use moec_compiler::passes::{last_token, stages};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every spec of `models/` with the fixture checkpoint of the same name.
fn specs() -> Vec<(String, Graph)> {
    let mut out: Vec<(String, Graph)> = std::fs::read_dir(root().join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "moe"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name.clone(), compile(&name, &p))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 6, "model specs missing");
    out
}

fn compile(name: &str, spec: &Path) -> Graph {
    Compiler::new()
        .checkpoint(root().join("tests/fixtures/models").join(name))
        .compile_file(spec)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .graph
}

/// The graphs a runtime runs for `g`: its encoder and decoder stages for an
/// encoder-decoder model (named `NAME.encoder`, `NAME.decoder`), else `g` itself.
fn stage_graphs(name: &str, g: &Graph) -> Vec<(String, Graph)> {
    match stages::split(g).unwrap_or_else(|e| panic!("{name}: {e}")) {
        Some(s) => vec![
            (format!("{name}.encoder"), s.encoder),
            (format!("{name}.decoder"), s.decoder),
        ],
        None => vec![(name.to_string(), g.clone())],
    }
}

/// Every spec's stage graphs, as compiled.
fn stage_specs() -> Vec<(String, Graph)> {
    specs()
        .iter()
        .flat_map(|(name, g)| stage_graphs(name, g))
        .collect()
}

fn lower_ok(name: &str, g: &Graph, options: &Options) -> Program {
    lower(g, options).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_model_lowers_and_validates() {
    let mut encoder_decoder = 0;
    for (name, g) in specs() {
        let mut last = g.clone();
        assert!(last_token::run(&mut last).unwrap(), "{name}");
        for graph in [&g, &last] {
            let stages = stage_graphs(&name, graph);
            encoder_decoder += usize::from(stages.len() == 2);
            for (stage, graph) in &stages {
                for f16_weights in [false, true] {
                    let options = Options {
                        f16_weights,
                        ..Options::default()
                    };
                    lower_ok(stage, graph, &options);
                }
            }
        }
    }
    assert!(encoder_decoder >= 2, "no encoder-decoder spec lowered");
}

/// An encoder-decoder graph unsplit computes values over `source`: refused with
/// the reason, not lowered wrongly.
#[test]
fn an_unsplit_encoder_decoder_graph_is_refused() {
    let (name, g) = specs()
        .into_iter()
        .find(|(_, g)| g.decoder_start.is_some())
        .expect("an encoder-decoder spec");
    let Err(err) = lower(&g, &Options::default()) else {
        panic!("{name}: an unsplit encoder-decoder graph lowered");
    };
    assert!(
        err.contains("source sequence") && err.contains("stages::split"),
        "{err}"
    );
}

/// The encoder's attention (bidirectional, with the relative bias read through
/// the compiler's bucket table) and the decoder's cross-attention (keys and
/// values the `source` rows of its encoder inputs, no positions): one reviewed
/// snapshot each.
#[test]
fn encoder_decoder_attention_kernels_snapshot() {
    let (name, g) = specs()
        .into_iter()
        .find(|(n, _)| n == "switch_transformers")
        .expect("models/switch_transformers.moe");
    let split = stages::split(&g).unwrap().expect("two stages");
    let kernels = |stage: &Graph| {
        let p = lower_ok(&name, stage, &Options::default());
        p.plan
            .kernels
            .iter()
            .zip(p.sources)
            .filter(|(k, _)| k.name.starts_with("attention_"))
            .map(|(_, s)| s)
            .collect::<Vec<String>>()
    };
    let encoder = kernels(&split.encoder);
    assert_eq!(
        encoder.len(),
        1,
        "one attention kernel for every encoder layer"
    );
    assert!(encoder[0].contains("buckets") && !encoder[0].contains("params.source"));
    insta::assert_snapshot!("biased_bidirectional_attention", encoder[0]);
    let decoder = kernels(&split.decoder);
    assert_eq!(decoder.len(), 2, "self- and cross-attention");
    let (cross, own): (Vec<&String>, Vec<&String>) =
        decoder.iter().partition(|s| s.contains("params.source"));
    assert_eq!((cross.len(), own.len()), (1, 1));
    assert!(!cross[0].contains("buckets") && own[0].contains("buckets"));
    insta::assert_snapshot!("cross_attention", cross[0]);
}

/// Kernels of the ops only whole models have (norms: the per-head q/k norms).
const WHOLE_MODEL_OPS: &[&str] = &[
    "embedding",
    "positions",
    "rope",
    "cache_append",
    "attention",
    "last_row",
    "slice_cols",
    "concat_cols",
    "rmsnorm",
];

#[test]
fn model_kernels_snapshot() {
    // Encoder-decoder models: `encoder_decoder_attention_kernels_snapshot`.
    for (name, mut g) in specs()
        .into_iter()
        .filter(|(_, g)| g.decoder_start.is_none())
    {
        last_token::run(&mut g).unwrap();
        let p = lower_ok(&name, &g, &Options::default());
        let mut text = String::new();
        for (info, src) in p.plan.kernels.iter().zip(&p.sources) {
            let (op, _) = info.name.rsplit_once('_').unwrap();
            if WHOLE_MODEL_OPS.contains(&op) {
                text.push_str(&format!("// ===== kernel {} =====\n{src}\n", info.name));
            }
        }
        insta::assert_snapshot!(format!("model_kernels@{name}"), text);
    }
}

/// One state buffer per KV cache, `max_positions` rows of its width, written by
/// its cache append and read by attention; nothing else sized by `past`.
#[test]
fn kv_caches_are_state_buffers_of_max_positions_rows() {
    for (name, g) in stage_specs() {
        let p = lower_ok(&name, &g, &Options::default());
        if name.ends_with(".encoder") {
            assert!(g.states.is_empty() && p.plan.max_positions.is_none());
            assert!(p
                .plan
                .buffers
                .iter()
                .all(|b| !matches!(b.contents, Contents::State { .. })));
            continue;
        }
        let positions = g.max_positions.expect("a whole model has a position limit");
        assert_eq!(p.plan.max_positions, Some(positions), "{name}");
        let states: Vec<usize> = (0..p.plan.buffers.len())
            .filter(|&i| matches!(p.plan.buffers[i].contents, Contents::State { .. }))
            .collect();
        assert_eq!(states.len(), g.states.len(), "{name}");
        for &i in &states {
            let b = &p.plan.buffers[i];
            let Contents::State { state, width } = b.contents else {
                unreachable!()
            };
            assert_eq!(width, g.states[state].width, "{name} {}", b.name);
            assert_eq!(b.elements.as_fixed(), Some(positions * width), "{}", b.name);
            let users: Vec<&str> = p
                .plan
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::Kernel { node, buffers, .. } if buffers.contains(&i) => {
                        Some(node.rsplit(' ').next().unwrap())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(users, ["cache_append", "attention"], "{name} {}", b.name);
        }
        assert!(p.plan.buffers.iter().all(|b| !b.elements.uses_past()));
        // Only a decoder's encoder inputs are sized by the source length.
        for b in p.plan.buffers.iter().filter(|b| b.elements.uses_source()) {
            assert!(
                matches!(&b.contents, Contents::Input { name } if name.starts_with("encoder.")),
                "{name}: {}",
                b.name
            );
        }
    }
}

#[test]
fn an_embedding_table_larger_than_a_binding_is_split_by_rows() {
    let (name, g) = specs().into_iter().find(|(n, _)| n == "mixtral").unwrap();
    let table =
        g.g.node_indices()
            .find(|&n| g.node(n).op == Op::Embedding)
            .map(|n| g.value_type(g.operands(n)[1]).clone())
            .unwrap();
    let row_bytes = table.width().unwrap() * 4;
    // Three rows per binding.
    let options = Options {
        max_binding_bytes: 3 * row_bytes,
        f16_weights: false,
    };
    let p = lower_ok(&name, &g, &options);
    let embedding = p
        .plan
        .kernels
        .iter()
        .position(|k| k.name.starts_with("embedding"))
        .unwrap();
    let rows = table.shape[0].as_fixed().unwrap();
    // ids, every chunk of the table, the output.
    assert_eq!(
        p.plan.kernels[embedding].bindings.len() as u64,
        rows.div_ceil(3) + 2
    );
    assert!(p.sources[embedding].contains("switch chunk"));
}
