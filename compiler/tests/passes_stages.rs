//! The split of an encoder-decoder graph into its encoder and decoder programs
//! (`passes::stages`), on `models/switch_transformers.moe` with the fixture's
//! config: both programs verify, the encoder is stateless over `tokens` (the
//! source sequence), only the decoder's carried inputs have `source` rows, the
//! programs' interfaces are the snapshot, and running the encoder and then the
//! decoder on its outputs gives exactly the whole graph's outputs, as lowered
//! and optimized. A decoder-only model is not split.

mod common;

use common::weights;
use moec_compiler::driver::Compiler;
use moec_compiler::interp::{self, State};
use moec_compiler::ir::{Graph, Op};
use moec_compiler::passes::stages::{self, Stages};
use moec_compiler::passes::Upto;
use moec_compiler::tensor::Tensor;
use moec_compiler::verify::verify;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compile(model: &str, upto: Upto) -> Graph {
    Compiler::new()
        .checkpoint(root().join("tests/fixtures/models").join(model))
        .upto(upto)
        .compile_file(&root().join("models").join(format!("{model}.moe")))
        .unwrap_or_else(|e| panic!("{model}: {e}"))
        .graph
}

/// A program's inputs and outputs with their types, its states and size.
fn interface(g: &Graph) -> String {
    let mut s = format!(
        "{}: {} nodes, {} weights, {} states\n",
        g.name,
        g.g.node_count(),
        g.weights.len(),
        g.states.len()
    );
    for &n in &g.inputs {
        if let Op::Input { name, ty } = &g.node(n).op {
            writeln!(s, "  input  {name}: {ty}").unwrap();
        }
    }
    for (name, v) in &g.outputs {
        writeln!(s, "  output {name}: {}", g.value_type(*v)).unwrap();
    }
    s
}

fn ids(name: &str, n: usize, seed: i32) -> (String, Tensor) {
    let v = (0..n as i32).map(|i| (i * 37 + seed) % 320).collect();
    (name.to_string(), Tensor::i32(vec![n], v))
}

#[test]
fn switch_transformers_splits_into_an_encoder_and_a_decoder() {
    let g = compile("switch_transformers", Upto::All);
    let s = stages::split(&g)
        .unwrap()
        .expect("an encoder-decoder graph");
    verify(&s.encoder).unwrap();
    verify(&s.decoder).unwrap();
    assert!(s.encoder.states.is_empty() && s.encoder.max_positions.is_none());
    for n in s.encoder.g.node_indices() {
        let node = s.encoder.node(n);
        assert!(!matches!(node.op, Op::Positions | Op::CacheAppend { .. }));
        assert!(node
            .outputs
            .iter()
            .all(|t| t.shape.iter().all(|d| !d.uses_source())));
    }
    assert_eq!(
        s.decoder.states.len(),
        2 * 4,
        "a k and a v cache per decoder layer"
    );
    // Each decoder layer's cross-attention keys and values, computed once by the encoder.
    assert_eq!(s.carried.len(), 2 * 4);
    assert_eq!(s.source_input(), Some("input_ids"));
    insta::assert_snapshot!(format!(
        "{}\n{}",
        interface(&s.encoder),
        interface(&s.decoder)
    ));
}

#[test]
fn the_encoder_then_the_decoder_compute_the_whole_graph() {
    for upto in [Upto::None, Upto::All] {
        let g = compile("switch_transformers", upto);
        let Stages {
            encoder,
            decoder,
            carried,
            ..
        } = stages::split(&g).unwrap().unwrap();
        let (source, target) = (ids("input_ids", 13, 5), ids("decoder_input_ids", 6, 11));
        let whole = interp::run(
            &g,
            &weights(&g, 1),
            &BTreeMap::from([source.clone(), target.clone()]),
        )
        .unwrap();
        let mut encoded =
            interp::run(&encoder, &weights(&encoder, 1), &BTreeMap::from([source])).unwrap();
        let mut inputs: BTreeMap<String, Tensor> = carried
            .iter()
            .map(|name| (name.clone(), encoded.remove(name).unwrap()))
            .collect();
        inputs.extend([target]);
        let decoded = interp::run_with_state(
            &decoder,
            &weights(&decoder, 1),
            &inputs,
            &mut State::new(&decoder),
        )
        .unwrap();
        let mut both = encoded;
        both.extend(decoded);
        assert_eq!(both, whole, "{upto:?}");
    }
}

#[test]
fn a_decoder_only_model_is_not_split() {
    let g = compile("mixtral", Upto::All);
    assert!(stages::split(&g).unwrap().is_none());
}

/// A decoder deeper than its encoder: the encoder program keeps none of the
/// decoder's probes or stored formats, even those on nodes past the last one it
/// keeps (the split indexed them out of bounds; found by the spec fuzzer).
#[test]
fn a_decoder_deeper_than_its_encoder_splits() {
    for upto in [Upto::None, Upto::All] {
        let mut g = Compiler::new()
            .checkpoint(root().join("tests/fixtures/models/switch_transformers"))
            .sets([
                ("num_layers".to_string(), "1".to_string()),
                ("num_decoder_layers".to_string(), "4".to_string()),
            ])
            .upto(upto)
            .compile_file(&root().join("models/switch_transformers.moe"))
            .unwrap()
            .graph;
        moec_compiler::storage::Storage::matmuls(moec_compiler::ir::WeightFormat::Q8_0)
            .apply(&mut g);
        assert!(!g.probes.is_empty() && !g.stored.is_empty());
        let s = stages::split(&g)
            .unwrap()
            .expect("an encoder-decoder graph");
        verify(&s.encoder).unwrap();
        verify(&s.decoder).unwrap();
        assert_eq!(
            s.encoder.stored.len() + s.decoder.stored.len(),
            g.stored.len(),
            "every stored matmul is in one program"
        );
    }
}
