//! Choosing the next token from one row of logits: greedy (argmax, ties to the lower id) or a draw
//! shaped the way transformers' `generate` shapes it — temperature, then top-k, then top-p, then
//! softmax, then one draw from a SplitMix64 stream seeded by the caller, so a seed repeats its
//! draws exactly.
//!
//! Top-k keeps exactly `k` tokens, ties at the k-th logit going to the lower ids (transformers keeps
//! every token tied with the k-th); top-p keeps the smallest set of most likely tokens whose
//! probability is at least `p`, and always at least one. `-inf` logits (masked tokens) are never
//! drawn; NaN or `+inf` logits, or a row with nothing but `-inf`, are errors. Probabilities are
//! computed in f64 from `(logit - max) / temperature`, so a tiny temperature cannot overflow.
//! Nothing here knows about models or tokenizers.

use std::cmp::Ordering;
use std::error::Error;
use std::fmt;

use crate::rng::SplitMix64;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token; ties go to the lower id.
    Greedy,
    /// A draw from the logits' softmax at `temperature`, restricted to the `top_k` most likely
    /// tokens and then to the smallest most likely set of probability at least `top_p`.
    Sample {
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        seed: u64,
    },
}

/// A bad sampling setting or a logits row no token can be chosen from.
#[derive(Clone, Debug, PartialEq)]
pub enum SamplingError {
    /// The temperature is not a finite number above zero.
    Temperature(f32),
    /// `top_k` is zero.
    TopK,
    /// `top_p` is not in (0, 1].
    TopP(f32),
    /// The row has no logits.
    Empty,
    /// A logit is NaN or `+inf`.
    BadLogit { id: usize, value: f32 },
    /// Every logit is `-inf`.
    AllMasked,
    /// The row is wider than token ids (i32) reach.
    TooWide(usize),
}

impl Sampling {
    /// Checks the settings: a finite temperature above zero, `top_k` ≥ 1, `top_p` in (0, 1].
    pub fn validate(&self) -> Result<(), SamplingError> {
        let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = *self
        else {
            return Ok(());
        };
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(SamplingError::Temperature(temperature));
        }
        if top_k == Some(0) {
            return Err(SamplingError::TopK);
        }
        match top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => Err(SamplingError::TopP(p)),
            _ => Ok(()),
        }
    }
}

/// Validated settings and, for `Sample`, the random stream its draws come from.
pub struct Sampler {
    sampling: Sampling,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler for `sampling`, once its settings check out.
    pub fn new(sampling: Sampling) -> Result<Sampler, SamplingError> {
        sampling.validate()?;
        let seed = match sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Ok(Sampler {
            sampling,
            rng: SplitMix64(seed),
        })
    }

    /// The next token id from one row of logits (one per vocabulary id).
    pub fn next(&mut self, logits: &[f32]) -> Result<i32, SamplingError> {
        let max = check(logits)?;
        let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = self.sampling
        else {
            return Ok(id(argmax(logits)));
        };
        // (id, (logit - max) / temperature): every value finite and ≤ 0, the best ones exactly 0.
        let t = f64::from(temperature);
        let mut candidates: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| l != f32::NEG_INFINITY)
            .map(|(i, &l)| (i, (f64::from(l) - f64::from(max)) / t))
            .collect();
        if let Some(k) = top_k.filter(|&k| k < candidates.len()) {
            candidates.select_nth_unstable_by(k - 1, more_likely);
            candidates.truncate(k);
        }
        let mut weights: Vec<(usize, f64)> = candidates
            .into_iter()
            .map(|(i, scaled)| (i, scaled.exp()))
            .collect();
        if let Some(p) = top_p {
            weights.sort_unstable_by(more_likely);
            let total: f64 = weights.iter().map(|w| w.1).sum();
            let mut kept = 0.0;
            let keep = weights
                .iter()
                .position(|w| {
                    kept += w.1;
                    kept >= f64::from(p) * total
                })
                .map_or(weights.len(), |last| last + 1);
            weights.truncate(keep);
        }
        Ok(id(draw(&weights, self.rng.unit())))
    }
}

/// The largest logit, once the row is known to be non-empty, no wider than i32 ids reach, free of
/// NaN and `+inf`, and not all `-inf`.
fn check(logits: &[f32]) -> Result<f32, SamplingError> {
    let mut max = f32::NEG_INFINITY;
    for (id, &value) in logits.iter().enumerate() {
        if value.is_nan() || value == f32::INFINITY {
            return Err(SamplingError::BadLogit { id, value });
        }
        max = max.max(value);
    }
    match logits.len() {
        0 => Err(SamplingError::Empty),
        n if n - 1 > i32::MAX as usize => Err(SamplingError::TooWide(n)),
        _ if max == f32::NEG_INFINITY => Err(SamplingError::AllMasked),
        _ => Ok(max),
    }
}

/// The first index of the largest value (no NaN in `logits`).
fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// More likely first; equally likely, the lower id first.
fn more_likely(a: &(usize, f64), b: &(usize, f64)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

/// The id whose cumulative weight first exceeds `unit` × the total. `weights` holds the most likely
/// token (weight 1), so the total is at least 1; rounding past the end picks the last id of
/// non-zero weight.
fn draw(weights: &[(usize, f64)], unit: f64) -> usize {
    let total: f64 = weights.iter().map(|w| w.1).sum();
    let x = unit * total;
    let mut cumulative = 0.0;
    for &(i, w) in weights {
        cumulative += w;
        if x < cumulative {
            return i;
        }
    }
    weights.iter().rev().find(|w| w.1 > 0.0).map_or(0, |w| w.0)
}

/// Token ids are i32 (the models' input type); `check` has bounded the row's width.
fn id(index: usize) -> i32 {
    index as i32
}

impl fmt::Display for SamplingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplingError::Temperature(t) => {
                write!(f, "the temperature must be a number above 0, found {t}")
            }
            SamplingError::TopK => write!(f, "top-k must be at least 1"),
            SamplingError::TopP(p) => {
                write!(f, "top-p must be above 0 and at most 1, found {p}")
            }
            SamplingError::Empty => write!(f, "the model returned an empty row of logits"),
            SamplingError::BadLogit { id, value } => {
                write!(f, "the model's logit for token {id} is {value}")
            }
            SamplingError::AllMasked => {
                write!(f, "every logit is -inf: no token can be chosen")
            }
            SamplingError::TooWide(n) => {
                write!(
                    f,
                    "the model returned {n} logits per token; token ids stop at 2^31"
                )
            }
        }
    }
}

impl Error for SamplingError {}
