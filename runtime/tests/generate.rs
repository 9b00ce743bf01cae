//! The generation loop on a fake model whose logits are a fixed function of the last id and its
//! position: one prefill, then one token per step, and each way of stopping or failing.

use moec_runtime::generate::{
    generate, BoxError, Decoder, GenerateError, GenerateOptions, Generated, Sampling,
    SamplingError, StopReason,
};

/// The logits after `id` at `position`, `vocab` wide.
type Rule = fn(id: i32, position: usize, vocab: usize) -> Vec<f32>;

struct Fake {
    vocab: usize,
    max_positions: usize,
    cache: Vec<i32>,
    /// How many ids each `forward` ran.
    calls: Vec<usize>,
    rule: Rule,
}

impl Fake {
    fn new(vocab: usize, max_positions: usize, rule: Rule) -> Fake {
        Fake {
            vocab,
            max_positions,
            cache: Vec::new(),
            calls: Vec::new(),
            rule,
        }
    }
}

impl Decoder for Fake {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn max_positions(&self) -> usize {
        self.max_positions
    }
    fn position(&self) -> usize {
        self.cache.len()
    }
    fn reset(&mut self) {
        self.cache.clear();
    }
    fn forward(&mut self, ids: &[i32]) -> Result<Vec<f32>, BoxError> {
        if ids.is_empty() || self.cache.len() + ids.len() > self.max_positions {
            return Err(format!("cannot run {} ids at {}", ids.len(), self.cache.len()).into());
        }
        self.calls.push(ids.len());
        let mut logits = Vec::new();
        for &id in ids {
            logits = (self.rule)(id, self.cache.len(), self.vocab);
            self.cache.push(id);
        }
        Ok(logits)
    }
}

/// The next id is the last one plus one.
fn count_up(id: i32, _: usize, vocab: usize) -> Vec<f32> {
    let mut row = vec![0.0; vocab];
    row[(id as usize + 1) % vocab] = 1.0;
    row
}

/// Every id equally likely.
fn uniform(_: i32, _: usize, vocab: usize) -> Vec<f32> {
    vec![0.0; vocab]
}

fn greedy(max_new_tokens: usize, eos_ids: &[i32]) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Greedy,
        eos_ids: eos_ids.to_vec(),
    }
}

fn run(
    model: &mut Fake,
    prompt: &[i32],
    opts: &GenerateOptions,
) -> Result<Generated, GenerateError> {
    generate(model, prompt, opts, &mut |_| Ok(()))
}

#[test]
fn prefills_once_then_runs_one_token_per_step() {
    let mut model = Fake::new(10, 100, count_up);
    let mut seen = Vec::new();
    let out = generate(&mut model, &[1, 2], &greedy(4, &[]), &mut |id| {
        seen.push(id);
        Ok(())
    })
    .unwrap();
    assert_eq!(out.ids, [3, 4, 5, 6]);
    assert_eq!(seen, out.ids);
    assert_eq!(out.prompt_tokens, 2);
    assert_eq!(out.stop, StopReason::MaxNewTokens);
    // The last new id is never run.
    assert_eq!(model.calls, [2, 1, 1, 1]);
    assert_eq!(model.cache, [1, 2, 3, 4, 5]);
}

#[test]
fn an_eos_id_stops_generation_and_is_kept() {
    let mut model = Fake::new(10, 100, count_up);
    let out = run(&mut model, &[1], &greedy(32, &[9, 5])).unwrap();
    assert_eq!(out.ids, [2, 3, 4, 5]);
    assert_eq!(out.stop, StopReason::Eos);
}

#[test]
fn the_sequence_stops_at_the_position_limit() {
    let mut model = Fake::new(10, 6, count_up);
    let out = run(&mut model, &[0, 1, 2], &greedy(32, &[])).unwrap();
    assert_eq!(out.ids, [3, 4, 5]);
    assert_eq!(out.stop, StopReason::PositionLimit);
    assert_eq!(model.cache.len(), 5);
}

#[test]
fn a_full_prompt_or_no_token_budget_runs_nothing() {
    let mut model = Fake::new(10, 3, count_up);
    let out = run(&mut model, &[0, 1, 2], &greedy(32, &[])).unwrap();
    assert_eq!((out.ids.len(), out.stop), (0, StopReason::PositionLimit));
    let out = run(&mut model, &[0], &greedy(0, &[])).unwrap();
    assert_eq!((out.ids.len(), out.stop), (0, StopReason::MaxNewTokens));
    assert!(model.calls.is_empty());
    assert_eq!(out.prefill_tokens_per_s(), None);
    assert_eq!(out.decode_tokens_per_s(), None);
}

#[test]
fn the_cache_is_emptied_before_each_generation() {
    let mut model = Fake::new(10, 8, count_up);
    let first = run(&mut model, &[1, 2, 3], &greedy(5, &[])).unwrap();
    let second = run(&mut model, &[1, 2, 3], &greedy(5, &[])).unwrap();
    assert_eq!(first.ids, second.ids);
    assert_eq!(second.stop, StopReason::MaxNewTokens);
}

#[test]
fn rates_come_from_the_timings() {
    let mut model = Fake::new(10, 100, count_up);
    let out = run(&mut model, &[1, 2], &greedy(3, &[])).unwrap();
    let prefill = out.prefill_tokens_per_s().unwrap();
    assert!((prefill - 2.0 / out.prefill_secs).abs() <= 1e-9 * prefill);
    let decode = out.decode_tokens_per_s().unwrap();
    assert!((decode - 2.0 / out.decode_secs).abs() <= 1e-9 * decode);
    let one = run(&mut model, &[1, 2], &greedy(1, &[])).unwrap();
    assert_eq!(one.decode_tokens_per_s(), None);
}

#[test]
fn prompts_are_checked_against_the_model() {
    let mut model = Fake::new(10, 4, count_up);
    let message = |prompt: &[i32]| {
        let e = run(&mut Fake::new(10, 4, count_up), prompt, &greedy(1, &[])).unwrap_err();
        e.to_string()
    };
    assert!(matches!(
        run(&mut model, &[], &greedy(1, &[])),
        Err(GenerateError::EmptyPrompt)
    ));
    assert_eq!(
        message(&[1, 2, 3, 4, 5]),
        "the prompt has 5 tokens; this model holds at most 4 positions (max_position_embeddings)"
    );
    assert_eq!(
        message(&[1, 10, 2]),
        "prompt token 1 is id 10, outside the model's vocabulary of 10 ids (0..10)"
    );
    assert!(message(&[1, 2, -3]).contains("prompt token 2 is id -3"));
    assert!(model.calls.is_empty());
}

#[test]
fn bad_settings_are_reported_before_the_model_runs() {
    let mut model = Fake::new(10, 100, count_up);
    let opts = GenerateOptions {
        max_new_tokens: 4,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.0),
            seed: 0,
        },
        eos_ids: vec![],
    };
    assert!(matches!(
        run(&mut model, &[1], &opts),
        Err(GenerateError::Sampling(SamplingError::TopP(_)))
    ));
    assert!(model.calls.is_empty());
}

#[test]
fn model_failures_are_errors() {
    fn nan(_: i32, _: usize, vocab: usize) -> Vec<f32> {
        vec![f32::NAN; vocab]
    }
    let e = run(&mut Fake::new(4, 100, nan), &[1], &greedy(4, &[])).unwrap_err();
    assert!(matches!(
        e,
        GenerateError::Sampling(SamplingError::BadLogit { id: 0, .. })
    ));

    struct Failing(usize);
    impl Decoder for Failing {
        fn vocab_size(&self) -> usize {
            4
        }
        fn max_positions(&self) -> usize {
            100
        }
        fn position(&self) -> usize {
            self.0
        }
        fn reset(&mut self) {
            self.0 = 0;
        }
        fn forward(&mut self, ids: &[i32]) -> Result<Vec<f32>, BoxError> {
            self.0 += ids.len();
            match self.0 {
                n if n < 4 => Ok(vec![0.0; 4]),
                4 => Ok(vec![0.0; 3]),
                _ => Err("out of memory".into()),
            }
        }
    }
    let e = run_on(&mut Failing(0), &[1, 2], 8).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the model returned 3 logits for the last token of a 4-id vocabulary (expected 4)"
    );
    let e = run_on(&mut Failing(0), &[1, 2, 3, 0, 1], 8).unwrap_err();
    assert_eq!(
        e.to_string(),
        "running the model at position 0: out of memory"
    );
}

fn run_on(
    model: &mut dyn Decoder,
    prompt: &[i32],
    max_new_tokens: usize,
) -> Result<Generated, GenerateError> {
    generate(model, prompt, &greedy(max_new_tokens, &[]), &mut |_| Ok(()))
}

#[test]
fn a_failing_callback_stops_generation() {
    let mut model = Fake::new(10, 100, count_up);
    let mut calls = 0;
    let e = generate(&mut model, &[1], &greedy(8, &[]), &mut |_| {
        calls += 1;
        if calls == 3 {
            Err("stdout closed".into())
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(matches!(e, GenerateError::OnToken(_)));
    assert_eq!(e.to_string(), "stdout closed");
    assert_eq!(model.calls, [1, 1, 1]);
}

#[test]
fn sampled_generation_repeats_for_a_seed() {
    let opts = |seed| GenerateOptions {
        max_new_tokens: 20,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed,
        },
        eos_ids: vec![],
    };
    let mut model = Fake::new(50, 100, uniform);
    let a = run(&mut model, &[1], &opts(11)).unwrap();
    let b = run(&mut model, &[1], &opts(11)).unwrap();
    let c = run(&mut model, &[1], &opts(12)).unwrap();
    assert_eq!(a.ids, b.ids);
    assert_ne!(a.ids, c.ids);
    assert_eq!(a.ids.len(), 20);
}

#[test]
fn stop_reasons_have_stable_names() {
    assert_eq!(StopReason::Eos.name(), "eos");
    assert_eq!(StopReason::MaxNewTokens.name(), "max_new_tokens");
    assert_eq!(StopReason::PositionLimit.name(), "position_limit");
}
