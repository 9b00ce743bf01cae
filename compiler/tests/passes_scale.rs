//! The pipeline at scale, and the fast paths that keep it linear. A 61-layer ×
//! 64-expert stack compiles (verified after every step) into a graph that grows
//! with layers, not layers × experts, beyond its weights; no time is asserted (the
//! speed is measured, see `benches/README.md`). The fast paths equal their plain
//! definitions: topological order is Kahn's, lowest index first, also on graphs
//! that reuse removed nodes' slots; one `canonicalize` reaches its fixed point;
//! buffer plans are first-fit over live intervals.

mod common;

use common::small_examples;
use moec_compiler::ir::{BinaryOp, Graph, NodeIndex, Op, Value};
use moec_compiler::lower::lower_source;
use moec_compiler::passes::memory::plan;
use moec_compiler::passes::{canonicalize, run_pipeline, Upto, PIPELINE};
use moec_compiler::{print, stats, verify};
use petgraph::Direction;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

fn lower(source: &str, sets: &[(&str, &str)]) -> Graph {
    let sets: Vec<(String, String)> = sets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    lower_source(source, &sets)
        .unwrap_or_else(|d| panic!("{}", d.render("test.moe", source)))
        .graph
}

fn count(g: &Graph, f: impl Fn(&Op) -> bool) -> usize {
    g.g.node_weights().filter(|n| f(&n.op)).count()
}

#[test]
fn a_61_layer_64_expert_stack_compiles_to_one_sparse_group_per_layer() {
    let (layers, experts) = (61, 64);
    let source = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/mixtral_stack.moe"),
    )
    .unwrap();
    let dense = lower(
        &source,
        &[
            ("num_hidden_layers", "61"),
            ("num_local_experts", "64"),
            ("num_experts_per_tok", "8"),
            ("hidden_size", "16"),
            ("intermediate_size", "8"),
        ],
    );
    let mut g = dense.clone();
    run_pipeline(&mut g, Upto::All, true).unwrap();
    verify::verify(&g).unwrap();
    // Per layer: the norm and the router's weights, and three per expert.
    assert_eq!(g.weights.len(), layers * (2 + 3 * experts));
    assert_eq!(count(&g, |o| matches!(o, Op::Router(_))), layers);
    assert_eq!(count(&g, |o| matches!(o, Op::Dispatch { .. })), layers);
    assert_eq!(
        count(&g, |o| matches!(o, Op::GroupedLinear { .. })),
        2 * layers
    );
    assert_eq!(count(&g, |o| *o == Op::DenseCombine), 0);
    assert_eq!(count(&g, |o| matches!(o, Op::Linear { .. })), layers);
    // Beyond the weights, a bounded number of nodes per layer (15 today).
    let others = g.g.node_count() - g.weights.len();
    assert!(
        others <= 20 * layers,
        "{others} nodes besides the weights for {layers} layers"
    );
    let (scheduled, dense) = (stats::stats(&g, 4), stats::stats(&dense, 4));
    assert!(scheduled.flops * 4 < dense.flops && scheduled.kernels < dense.kernels);
}

/// Kahn's algorithm taking the lowest ready index first, as plainly as possible.
fn kahn_lowest_index_first(g: &Graph) -> Vec<NodeIndex> {
    let mut pending: HashMap<NodeIndex, usize> =
        g.g.node_indices()
            .map(|n| (n, g.g.edges_directed(n, Direction::Incoming).count()))
            .collect();
    let mut ready: BTreeSet<NodeIndex> = pending
        .iter()
        .filter(|(_, c)| **c == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut order = Vec::new();
    while let Some(n) = ready.pop_first() {
        order.push(n);
        for m in g.g.neighbors_directed(n, Direction::Outgoing) {
            let c = pending.get_mut(&m).unwrap();
            *c -= 1;
            if *c == 0 {
                ready.insert(m);
            }
        }
    }
    order
}

proptest! {
    /// Graphs built by adding and removing nodes at random: new nodes take removed
    /// nodes' slots, so edges also run from higher indices to lower ones.
    #[test]
    fn topo_order_is_kahns_lowest_index_first(
        steps in prop::collection::vec((0u8..4, any::<u16>(), any::<u16>()), 1..150)
    ) {
        let mut g = Graph::new("t");
        let mut nodes: Vec<NodeIndex> = Vec::new();
        for (step, a, b) in steps {
            let pick = |x: u16| nodes[x as usize % nodes.len()];
            match step {
                0 => nodes.push(g.add_constant(1.0).node),
                1 if !nodes.is_empty() => {
                    let i = a as usize % nodes.len();
                    g.g.remove_node(nodes.swap_remove(i));
                }
                _ if !nodes.is_empty() => {
                    let operands: [Value; 2] = [pick(a).into(), pick(b).into()];
                    nodes.push(g.add(Op::Binary(BinaryOp::Add), &operands, None).unwrap());
                }
                _ => {}
            }
        }
        prop_assert_eq!(g.topo_order(), kahn_lowest_index_first(&g));
    }
}

/// `canonicalize` stops after the first round that rewrites and merges nothing;
/// running it again must find nothing more, after it and after the whole pipeline.
#[test]
fn canonicalize_reaches_its_fixed_point_in_one_run() {
    for (name, lowered) in small_examples() {
        for upto in [Upto::After("canonicalize"), Upto::All] {
            let mut g = lowered.clone();
            run_pipeline(&mut g, upto, true).unwrap();
            let before = print::text(&g);
            assert!(
                !canonicalize::run(&mut g).unwrap(),
                "{name}: canonicalize found more after {upto:?}"
            );
            assert_eq!(print::text(&g), before, "{name}");
        }
    }
}

/// First-fit as plainly as possible: each buffer `((def, last), size)`, in order of
/// definition, goes to the lowest offset clear of the earlier buffers still live
/// at `def` (a buffer is freed after the allocations at its last position);
/// returns the offsets in one coordinate and the peak.
fn first_fit(buffers: &[((usize, usize), u64)]) -> (Vec<u64>, u64) {
    let mut offsets = Vec::new();
    let mut peak = 0;
    for (i, &((def, _), size)) in buffers.iter().enumerate() {
        let mut live: Vec<(u64, u64)> = buffers[..i]
            .iter()
            .zip(&offsets)
            .filter(|(((_, last), size), _)| *last >= def && *size > 0)
            .map(|((_, size), at)| (*at, at + size))
            .collect();
        live.sort();
        let mut at = 0;
        if size > 0 {
            for (start, end) in live {
                if start >= at + size {
                    break;
                }
                at = at.max(end);
            }
            peak = peak.max(at + size);
        }
        offsets.push(at);
    }
    (offsets, peak)
}

#[test]
fn buffer_plans_are_first_fit() {
    for (name, lowered) in small_examples() {
        for (step, _) in PIPELINE {
            let mut g = lowered.clone();
            run_pipeline(&mut g, Upto::After(step), true).unwrap();
            let p = plan(&g);
            let mut values: Vec<Value> = p.offsets.keys().copied().collect();
            values.sort_by_key(|v| (p.live[v].0, v.port));
            for (coordinate, peak) in [(0, p.peak_per_token), (1, p.peak_fixed)] {
                let pick = |pair: (u64, u64)| if coordinate == 0 { pair.0 } else { pair.1 };
                let buffers: Vec<((usize, usize), u64)> = values
                    .iter()
                    .map(|v| (p.live[v], pick(p.footprints[v])))
                    .collect();
                let (offsets, want_peak) = first_fit(&buffers);
                let got: Vec<u64> = values.iter().map(|v| pick(p.offsets[v])).collect();
                assert_eq!(got, offsets, "{name} after {step}: coordinate {coordinate}");
                assert_eq!(
                    peak, want_peak,
                    "{name} after {step}: coordinate {coordinate}"
                );
            }
        }
    }
}
