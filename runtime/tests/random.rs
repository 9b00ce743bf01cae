//! Random weights: deterministic, per-key, and in the documented ranges.

mod common;

use common::decl;
use moec_runtime::random_weights;

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let decls = [
        decl("experts[0].gate", "g", &[8, 16]),
        decl("norm", "n", &[16]),
    ];
    assert_eq!(random_weights(&decls, 7), random_weights(&decls, 7));
    assert_ne!(random_weights(&decls, 7), random_weights(&decls, 8));
}

#[test]
fn values_depend_on_the_key_not_the_order() {
    let a = decl("layers.0.gate.logits", "a", &[4, 8]);
    let b = decl("layers.0.experts.1.up", "b", &[16, 8]);
    let forward = random_weights(&[a.clone(), b.clone()], 3);
    let backward = random_weights(&[b, a.clone()], 3);
    assert_eq!(forward[0], backward[1]);
    assert_eq!(forward[1], backward[0]);
    assert_eq!(forward[0], random_weights(&[a], 3)[0]);
    assert_ne!(forward[0].as_f32(), &forward[1].as_f32()[..32]);
}

#[test]
fn ranges_follow_the_kind_of_weight() {
    let decls = [
        decl("w", "w", &[64, 256]),
        decl("norm", "n", &[256]),
        decl("gate.logits.bias", "b", &[256]),
        decl("gate.selection_bias", "s", &[256]),
    ];
    let got = random_weights(&decls, 1);
    let within = |values: &[f32], lo: f32, hi: f32| values.iter().all(|v| (lo..=hi).contains(v));
    let bound = 1.0 / 16.0;
    assert!(within(got[0].as_f32(), -bound, bound));
    assert!(
        got[0].as_f32().iter().any(|v| v.abs() > bound / 2.0),
        "values spread over the range"
    );
    assert!(within(got[1].as_f32(), 0.9, 1.1));
    assert!(within(got[2].as_f32(), -0.1, 0.1));
    assert!(within(got[3].as_f32(), -0.1, 0.1));
    assert_eq!(got[0].shape, vec![64, 256]);
}
