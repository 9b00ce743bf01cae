//! Verified means runnable: a graph of one routing or scheduling op, with random
//! attributes (0 and out-of-range values included) on random operand types, either
//! fails `verify` or runs in the interpreter — on index inputs that may hold any
//! value — to outputs or to an error. It never panics.

use moec_compiler::interp;
use moec_compiler::ir::{
    CapacityLimit, Dim, DropPolicy, F32Bits, F64Bits, Graph, GroupScore, Op, Renorm, RouterAttrs,
    Score, TensorType, Value,
};
use moec_compiler::tensor::Tensor;
use moec_compiler::verify::verify;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// One op with attributes drawn from `a` (small numbers, 0 included).
fn op(which: u8, a: [u64; 3], flag: bool) -> Op {
    let groups = (flag || a[2].is_multiple_of(2)).then_some((a[0], a[1], GroupScore::Top2Sum));
    match which % 15 {
        0 => Op::GroupMask {
            groups: a[0],
            keep: a[1],
            score: if flag {
                GroupScore::Max
            } else {
                GroupScore::Top2Sum
            },
        },
        1 => Op::TopK { k: a[0] },
        2 => Op::Gather,
        3 => Op::Capacity {
            experts: a[0],
            limit: if flag {
                CapacityLimit::Fixed(a[1])
            } else if a[1].is_multiple_of(2) {
                CapacityLimit::Factor(F32Bits::new(a[1] as f32 * 0.5))
            } else {
                CapacityLimit::Fraction(F64Bits::new(a[1] as f64 * 0.25))
            },
            policy: match a[2] % 3 {
                0 => DropPolicy::Arrival,
                1 => DropPolicy::Score,
                _ => DropPolicy::Priority,
            },
        },
        4 => Op::ScatterGates {
            experts: a[0],
            mask: flag,
        },
        5 => Op::ExpertCounts { experts: a[0] },
        6 => Op::AuxLoss,
        7 => Op::Router(RouterAttrs {
            score: if flag { Score::Sigmoid } else { Score::Softmax },
            after_topk: a[2].is_multiple_of(3),
            selection_bias: false,
            groups,
            k: a[2],
            normalize: flag.then(Renorm::sum),
            scale: F32Bits::new(1.0),
        }),
        8 => Op::Dispatch { experts: a[0] },
        9 => Op::GatherRows { k: a[0] },
        10 => Op::ScatterAdd { k: a[0] },
        11 => Op::ExpertChoice {
            factor: F32Bits::new(a[0] as f32 * 0.5),
        },
        12 => Op::PassThrough,
        14 => Op::KeptWeights,
        _ => Op::GatherSlots,
    }
}

/// The operand types an op of kind `which` takes, built from widths `e`, `k`, `d`
/// drawn independently of its attributes (so they may disagree with them).
fn operands(which: u8, [e, k, d]: [u64; 3]) -> Vec<TensorType> {
    let rows = |per_token: u64| Dim {
        per_token,
        ..Dim::fixed(0)
    };
    let f32 = |r: u64, w: u64| TensorType::f32(vec![rows(r), Dim::fixed(w)]);
    let i32 = |r: u64, w: u64| TensorType::i32(vec![rows(r), Dim::fixed(w)]);
    let slots = |r: u64| TensorType::i32(vec![rows(r)]);
    match which % 15 {
        0 | 1 | 7 | 11 => vec![f32(1, e)],
        2 | 6 => vec![f32(1, e), i32(1, k)],
        3 | 4 | 14 => vec![i32(1, k), f32(1, k)],
        5 | 8 => vec![i32(1, k)],
        9 => vec![f32(1, d), slots(k.max(1))],
        10 => vec![f32(k.max(1), d), slots(k.max(1))],
        12 => vec![f32(1, d), i32(1, 1), f32(1, 1)],
        _ => vec![f32(1, k), slots(k.max(1))],
    }
}

/// Random values for an input: f32 in [-2, 2), i32 in -3..9 (so out of every range).
fn input(t: &TensorType, tokens: usize, seed: u64) -> Tensor {
    let shape = t.concrete_shape(tokens);
    let n: usize = shape.iter().product();
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    };
    if t.dtype.to_string() == "i32" {
        Tensor::i32(shape, (0..n).map(|_| (next() % 12) as i32 - 3).collect())
    } else {
        Tensor::f32(
            shape,
            (0..n)
                .map(|_| (next() % 4096) as f32 / 1024.0 - 2.0)
                .collect(),
        )
    }
}

fn graph(op: Op, operands: &[TensorType]) -> Option<Graph> {
    let mut g = Graph::new("one_op");
    let values: Vec<Value> = operands
        .iter()
        .enumerate()
        .map(|(i, t)| g.add_input(&format!("in{i}"), t.clone()))
        .collect::<Result<_, _>>()
        .ok()?;
    let node = g.add(op, &values, None).ok()?;
    for port in 0..g.node(node).outputs.len() {
        g.outputs.push((
            format!("out{port}"),
            Value {
                node,
                port: port as _,
            },
        ));
    }
    Some(g)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn verified_graphs_run_without_panicking(
        which in 0u8..15,
        attrs in proptest::array::uniform3(0u64..7),
        flag: bool,
        widths in proptest::array::uniform3(0u64..6),
        tokens in 0usize..5,
        seed: u64,
    ) {
        let operands = operands(which, widths);
        let op = op(which, attrs, flag);
        let Some(g) = graph(op.clone(), &operands) else { return Ok(()) };
        if verify(&g).is_err() {
            return Ok(());
        }
        let inputs: BTreeMap<String, Tensor> = operands
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("in{i}"), input(t, tokens, seed ^ i as u64)))
            .collect();
        let run = std::panic::catch_unwind(|| interp::run(&g, &[], &inputs).map(|_| ()));
        prop_assert!(run.is_ok(), "{op:?} on {operands:?} at {tokens} tokens panicked");
    }
}

#[test]
fn an_index_outside_the_experts_is_an_error_naming_the_op() {
    let idx = TensorType::i32(vec![Dim::TOKENS, Dim::fixed(1)]);
    let g = graph(Op::ExpertCounts { experts: 2 }, std::slice::from_ref(&idx)).unwrap();
    verify(&g).unwrap();
    let inputs = BTreeMap::from([("in0".to_string(), Tensor::i32(vec![2, 1], vec![1, 5]))]);
    let err = interp::run(&g, &[], &inputs).unwrap_err();
    assert_eq!(
        err,
        "expert_counts: expert 5 is outside 0..2 (or -1, dropped)"
    );
}

#[test]
fn top2_groups_of_one_expert_do_not_verify() {
    let scores = TensorType::f32(vec![Dim::TOKENS, Dim::fixed(4)]);
    let op = Op::GroupMask {
        groups: 4,
        keep: 2,
        score: GroupScore::Top2Sum,
    };
    let err = graph(op, &[scores]).map(|_| ());
    assert!(
        err.is_none(),
        "a top-2 group score over groups of one expert typed"
    );
}
