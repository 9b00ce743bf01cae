//! Expert parallelism (`passes::partition`): every example's optimized graph, partitioned
//! for 1, 2 and 3 ranks (contiguous and interleaved placements), verified, and run as all
//! its ranks at once by the interpreter's simulation (`interp::simulate`); every rank's
//! outputs must be bit-identical to the unpartitioned graph's, for token counts that
//! leave some ranks without a token (1), divide unevenly (7) or not at all.

mod common;

use common::{example_sources, inputs, small_example, weights};
use moec_compiler::interp::{self, State};
use moec_compiler::ir::{Graph, Op};
use moec_compiler::passes::partition::{self, Placement};
use moec_compiler::passes::{run_pipeline, Upto};
use moec_compiler::{print, verify};

fn optimized(file: &str) -> Graph {
    let mut g = small_example(file);
    run_pipeline(&mut g, Upto::All, true).unwrap();
    g
}

fn partitioned(g: &Graph, ranks: usize, placement: &Placement) -> Result<Vec<Graph>, String> {
    (0..ranks)
        .map(|rank| {
            let mut p = g.clone();
            partition::run(&mut p, ranks, rank, placement)?;
            verify::verify(&p).map_err(|e| format!("rank {rank}: {e}"))?;
            Ok(p)
        })
        .collect()
}

fn experts_of(g: &Graph) -> Vec<u64> {
    g.g.node_weights()
        .filter_map(|n| match n.op {
            Op::Dispatch { experts } => Some(experts),
            _ => None,
        })
        .collect()
}

/// Runs the ranks' graphs together and checks each rank's outputs against `g`'s, bit for bit.
fn check_bit_identical(g: &Graph, ranks: &[Graph], tokens: usize, what: &str) {
    let x = inputs(g, tokens, 7);
    let want = interp::run(g, &weights(g, 7), &x).unwrap_or_else(|e| panic!("{what}: {e}"));
    let w: Vec<_> = ranks.iter().map(|p| weights(p, 7)).collect();
    let mut states: Vec<State> = ranks.iter().map(State::new).collect();
    let got = interp::simulate(ranks, &w, &x, &mut states)
        .unwrap_or_else(|e| panic!("{what}, {tokens} tokens: {e}"));
    for (rank, out) in got.iter().enumerate() {
        assert_eq!(
            out, &want,
            "{what}, {tokens} tokens: rank {rank} differs from one process"
        );
    }
}

fn examples_with_scheduled_layers() -> Vec<String> {
    example_sources()
        .into_iter()
        .map(|(file, _)| file)
        .filter(|f| !experts_of(&optimized(f)).is_empty())
        .collect()
}

#[test]
fn every_example_is_bit_identical_on_1_2_and_3_ranks() {
    let files = examples_with_scheduled_layers();
    assert!(files.len() > 10, "too few scheduled examples: {files:?}");
    for file in files {
        let g = optimized(&file);
        let fewest = *experts_of(&g).iter().min().unwrap() as usize;
        for ranks in (1..=3).filter(|r| *r <= fewest) {
            let parts = partitioned(&g, ranks, &Placement::Contiguous)
                .unwrap_or_else(|e| panic!("{file} on {ranks} ranks: {e}"));
            for tokens in [1, 2, 7] {
                check_bit_identical(&g, &parts, tokens, &format!("{file} on {ranks} ranks"));
            }
        }
    }
}

#[test]
fn an_interleaved_placement_is_bit_identical() {
    let g = optimized("mixtral.moe");
    let experts = experts_of(&g)[0] as usize;
    let map: Vec<String> = (0..experts).map(|e| (e % 2).to_string()).collect();
    let placement = Placement::parse(&map.join(",")).unwrap();
    let parts = partitioned(&g, 2, &placement).unwrap();
    for tokens in [0, 1, 5] {
        check_bit_identical(&g, &parts, tokens, "mixtral, interleaved");
    }
}

#[test]
fn each_rank_keeps_only_its_experts_weights() {
    let g = optimized("mixtral.moe");
    let parts = partitioned(&g, 3, &Placement::Contiguous).unwrap();
    let expert_weights = |g: &Graph| {
        g.weights
            .iter()
            .filter(|w| w.key.contains("experts"))
            .count()
    };
    let per_rank: Vec<usize> = parts.iter().map(expert_weights).collect();
    assert_eq!(per_rank.iter().sum::<usize>(), expert_weights(&g));
    let experts = experts_of(&g)[0] as usize;
    let per_expert = expert_weights(&g) / experts;
    let sizes: Vec<usize> = (0..3)
        .map(|r| (r + 1) * experts / 3 - r * experts / 3)
        .collect();
    let mut want: Vec<usize> = sizes.iter().map(|s| s * per_expert).collect();
    want.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(per_rank, want);
}

#[test]
fn placements_name_every_rank_and_only_real_ones() {
    let contiguous = Placement::Contiguous.ranks_of(8, 3).unwrap();
    assert_eq!(contiguous, [0, 0, 0, 1, 1, 1, 2, 2]);
    assert_eq!(Placement::Contiguous.ranks_of(4, 4).unwrap(), [0, 1, 2, 3]);
    let err = |p: &Placement, e, r| p.ranks_of(e, r).unwrap_err();
    assert!(err(&Placement::Contiguous, 2, 3).contains("rank 2 would hold none"));
    let explicit = Placement::parse("0,0,1").unwrap();
    assert!(err(&explicit, 4, 2).contains("names 3 experts, the layer has 4"));
    assert!(err(&explicit, 3, 3).contains("rank 2 would hold none"));
    assert!(err(&Placement::parse("0,2").unwrap(), 2, 2).contains("rank 2 of 2"));
    assert!(Placement::parse("0,x").unwrap_err().contains("`x`"));
}

#[test]
fn a_rank_outside_the_count_is_an_error() {
    let mut g = optimized("mixtral.moe");
    let e = partition::run(&mut g, 2, 2, &Placement::Contiguous).unwrap_err();
    assert!(e.contains("rank 2 of 2"), "{e}");
}

#[test]
fn a_graph_for_other_ranks_fails_instead_of_hanging() {
    let g = optimized("mixtral.moe");
    let parts = partitioned(&g, 2, &Placement::Contiguous).unwrap();
    let x = inputs(&g, 3, 1);
    // One rank's graph run alone: its collectives find one rank, not two.
    let w = vec![weights(&parts[0], 1)];
    let e = interp::simulate(&parts[..1], &w, &x, &mut [State::new(&parts[0])]).unwrap_err();
    assert!(e.contains("partitioned for 2 ranks, the run has 1"), "{e}");
}

/// The partitioned IR of one rank, reviewed: the exchanges and the local experts.
#[test]
fn ir_of_rank_0_of_2() {
    let g = optimized("mixtral.moe");
    let parts = partitioned(&g, 2, &Placement::Contiguous).unwrap();
    insta::assert_snapshot!(print::text(&parts[0]));
}
