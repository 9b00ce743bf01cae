//! Lowering on damaged specs and odd `--set` values: every bundled example and error
//! case, cut short and edited at random (the grammar's fuzz mutations), lowers to a
//! graph or to a diagnostic that renders with its span inside the text. It never panics.

#[path = "../../grammar/tests/mutate/mod.rs"]
mod mutate;

use moec_compiler::lower::lower_source;
use moec_compiler::verify;
use proptest::prelude::*;
use std::path::Path;
use std::sync::LazyLock;

static SEEDS: LazyLock<mutate::Seeds> =
    LazyLock::new(|| mutate::seeds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")));

/// Lowers and checks the outcome: a verified graph, or a diagnostic pointing inside the text.
fn check(source: &str, overrides: &[(String, String)]) -> Result<(), TestCaseError> {
    match lower_source(source, overrides) {
        Ok(lowered) => {
            if let Err(e) = verify::verify(&lowered.graph) {
                return Err(TestCaseError::fail(format!(
                    "lowered graph fails to verify: {e}"
                )));
            }
        }
        Err(d) => {
            for (span, _) in d.span.iter().chain(&d.related) {
                prop_assert!(
                    span.start <= span.end && span.end <= source.len(),
                    "span {span:?} outside the text"
                );
                prop_assert!(
                    source.is_char_boundary(span.start) && source.is_char_boundary(span.end)
                );
            }
            prop_assert!(!d.render("fuzz.moe", source).is_empty());
        }
    }
    Ok(())
}

/// A `--set` value: small ints around the edges (0, negatives), floats, bools, junk.
fn override_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (-2i64..=9).prop_map(|v| v.to_string()),
        prop::sample::select(vec![
            "16", "0.5", "2.5", "-1.0", "1e-9", "true", "false", "nan", "inf", "", "x"
        ])
        .prop_map(String::from),
    ]
}

/// The names of a spec's params, as `--set` would name them.
fn param_names(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("param "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(String::from)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: mutate::cases(), ..ProptestConfig::default() })]

    #[test]
    fn damaged_specs_lower_or_fail_cleanly(damage in mutate::damage(&SEEDS)) {
        check(&damage.apply(&SEEDS), &[])?;
    }

    /// Undamaged specs with up to three params set to odd values (small ones only: a
    /// billion experts is a valid request that takes a long time, not a crash).
    #[test]
    fn odd_overrides_lower_or_fail_cleanly(
        seed in prop_oneof![0..SEEDS.examples, 0..SEEDS.texts.len()],
        picks in prop::collection::vec((any::<prop::sample::Index>(), override_value()), 1..4),
    ) {
        let source = &SEEDS.texts[seed];
        let names = param_names(source);
        prop_assume!(!names.is_empty());
        let overrides: Vec<(String, String)> =
            picks.into_iter().map(|(i, v)| (i.get(&names).clone(), v)).collect();
        check(source, &overrides)?;
    }
}

/// Expressions just inside the parser's depth limit lower on a test thread's stack.
#[test]
fn deep_but_legal_expressions_lower() {
    for (open, close) in [("-", ""), ("(", ")")] {
        let depth = 250;
        let source = format!(
            "model m {{ param d = {}8{} input x: f32[tokens, d] output y = x }}",
            open.repeat(depth),
            close.repeat(depth)
        );
        let lowered = lower_source(&source, &[]);
        assert!(
            lowered.is_ok(),
            "{open} x {depth}: {:?}",
            lowered.err().map(|d| d.message)
        );
    }
}
