//! Choosing tokens from logits: settings checked, greedy ties, the order temperature → top-k →
//! top-p, repeatable draws, and draws that follow the distribution.

use moec_runtime::generate::{Sampler, Sampling, SamplingError};

fn sample(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> Sampling {
    Sampling::Sample {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

/// How often each id comes up in `n` draws from `logits`, as fractions.
fn frequencies(sampling: Sampling, logits: &[f32], n: usize) -> Vec<f64> {
    let mut sampler = Sampler::new(sampling).unwrap();
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..n {
        counts[sampler.next(logits).unwrap() as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

fn assert_close(found: &[f64], expected: &[f64]) {
    for (f, e) in found.iter().zip(expected) {
        assert!(
            (f - e).abs() < 0.03,
            "frequencies {found:?}, expected {expected:?}"
        );
    }
}

/// Logits whose softmax is (0.5, 0.3, 0.2).
fn three_way() -> Vec<f32> {
    [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect()
}

/// Rows with varied maxima (no ties at the top) to compare against greedy.
fn rows() -> Vec<Vec<f32>> {
    (0..50)
        .map(|r| {
            (0..17)
                .map(|i| ((r * 31 + i * 7) % 23) as f32 * 0.37 - 3.0 + i as f32 * 1e-3)
                .collect()
        })
        .collect()
}

fn greedy(logits: &[f32]) -> i32 {
    Sampler::new(Sampling::Greedy)
        .unwrap()
        .next(logits)
        .unwrap()
}

#[test]
fn bad_settings_are_errors() {
    for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            Sampler::new(sample(t, None, None, 0)),
            Err(SamplingError::Temperature(_))
        ));
    }
    assert!(matches!(
        Sampler::new(sample(1.0, Some(0), None, 0)),
        Err(SamplingError::TopK)
    ));
    for p in [0.0, -0.5, 1.5, f32::NAN] {
        assert!(matches!(
            Sampler::new(sample(1.0, None, Some(p), 0)),
            Err(SamplingError::TopP(_))
        ));
    }
    assert!(Sampler::new(sample(0.7, Some(1), Some(1.0), 0)).is_ok());
    assert_eq!(
        SamplingError::TopP(0.0).to_string(),
        "top-p must be above 0 and at most 1, found 0"
    );
}

#[test]
fn greedy_takes_the_largest_logit_and_ties_go_to_the_lower_id() {
    assert_eq!(greedy(&[0.0, 2.0, 1.0, 2.0]), 1);
    assert_eq!(greedy(&[f32::NEG_INFINITY, -5.0, -7.0]), 1);
    assert_eq!(greedy(&[3.0, 3.0, 3.0]), 0);
}

#[test]
fn unusable_logits_are_errors_not_panics() {
    for sampling in [Sampling::Greedy, sample(1.0, Some(2), Some(0.9), 1)] {
        let mut s = Sampler::new(sampling).unwrap();
        assert!(matches!(
            s.next(&[0.0, f32::NAN]),
            Err(SamplingError::BadLogit { id: 1, .. })
        ));
        assert!(matches!(
            s.next(&[f32::INFINITY, 0.0]),
            Err(SamplingError::BadLogit { id: 0, .. })
        ));
        assert_eq!(
            s.next(&[f32::NEG_INFINITY; 3]),
            Err(SamplingError::AllMasked)
        );
        assert_eq!(s.next(&[]), Err(SamplingError::Empty));
    }
}

#[test]
fn top_k_of_one_is_greedy() {
    for seed in 0..5 {
        let mut s = Sampler::new(sample(1.5, Some(1), None, seed)).unwrap();
        for row in rows() {
            assert_eq!(s.next(&row).unwrap(), greedy(&row));
        }
    }
}

#[test]
fn a_tiny_top_p_is_greedy_ties_included() {
    let mut s = Sampler::new(sample(1.0, None, Some(1e-6), 3)).unwrap();
    for row in rows() {
        assert_eq!(s.next(&row).unwrap(), greedy(&row));
    }
    for _ in 0..100 {
        assert_eq!(s.next(&[1.0, 4.0, 0.0, 4.0]).unwrap(), 1);
    }
}

#[test]
fn a_tiny_temperature_is_greedy_without_overflow() {
    let mut s = Sampler::new(sample(1e-30, None, None, 9)).unwrap();
    for row in rows() {
        assert_eq!(s.next(&row).unwrap(), greedy(&row));
    }
}

#[test]
fn a_seed_repeats_its_draws() {
    let logits = vec![0.0f32; 50];
    let draws = |seed| {
        let mut s = Sampler::new(sample(1.0, None, None, seed)).unwrap();
        (0..100)
            .map(|_| s.next(&logits).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draws(7), draws(7));
    assert_ne!(draws(7), draws(8));
}

#[test]
fn draws_follow_the_softmax() {
    let f = frequencies(sample(1.0, None, None, 1), &three_way(), 10_000);
    assert_close(&f, &[0.5, 0.3, 0.2]);
}

#[test]
fn temperature_flattens_the_distribution() {
    // At temperature 2 the probabilities go as √p.
    let roots = [0.5f64.sqrt(), 0.3f64.sqrt(), 0.2f64.sqrt()];
    let sum: f64 = roots.iter().sum();
    let expected: Vec<f64> = roots.iter().map(|r| r / sum).collect();
    let f = frequencies(sample(2.0, None, None, 2), &three_way(), 10_000);
    assert_close(&f, &expected);
}

#[test]
fn top_k_and_top_p_renormalize_what_they_keep() {
    let f = frequencies(sample(1.0, Some(2), None, 3), &three_way(), 10_000);
    assert_close(&f, &[0.625, 0.375, 0.0]);
    assert_eq!(f[2], 0.0);
    // The smallest set of probability ≥ 0.6 is {0, 1}.
    let f = frequencies(sample(1.0, None, Some(0.6), 4), &three_way(), 10_000);
    assert_close(&f, &[0.625, 0.375, 0.0]);
    assert_eq!(f[2], 0.0);
    let f = frequencies(sample(1.0, None, Some(0.45), 5), &three_way(), 1000);
    assert_eq!(f, [1.0, 0.0, 0.0]);
}

#[test]
fn top_k_comes_before_top_p() {
    // After top-k = 2 the first id has probability 0.625 ≥ 0.6, so top-p keeps it alone; top-p
    // first would keep two ids.
    let f = frequencies(sample(1.0, Some(2), Some(0.6), 6), &three_way(), 1000);
    assert_eq!(f, [1.0, 0.0, 0.0]);
}

#[test]
fn masked_tokens_are_never_drawn() {
    let logits = [0.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
    let f = frequencies(sample(3.0, None, None, 7), &logits, 10_000);
    assert_eq!((f[1], f[3]), (0.0, 0.0));
    assert_close(&f, &[0.5, 0.0, 0.5, 0.0]);
}
