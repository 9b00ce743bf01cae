//! The parser on damaged specs: every bundled example and error case, cut short and
//! edited at random, parses to an AST or to a syntax error whose span lies inside
//! the text on char boundaries. It never panics.

mod mutate;

use proptest::prelude::*;
use std::path::Path;
use std::sync::LazyLock;

static SEEDS: LazyLock<mutate::Seeds> =
    LazyLock::new(|| mutate::seeds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")));

proptest! {
    #![proptest_config(ProptestConfig { cases: mutate::cases(), ..ProptestConfig::default() })]

    #[test]
    fn damaged_specs_parse_or_fail_cleanly(damage in mutate::damage(&SEEDS)) {
        let source = damage.apply(&SEEDS);
        if let Err(e) = moec_grammar::parse(&source) {
            prop_assert!(e.span.start <= e.span.end && e.span.end <= source.len(), "span {:?} outside the text", e.span);
            prop_assert!(
                source.is_char_boundary(e.span.start) && source.is_char_boundary(e.span.end),
                "span {:?} splits a char", e.span
            );
            prop_assert!(!e.message.is_empty());
        }
    }
}

/// Every example parses as it is, so the damage above starts from real specs.
#[test]
fn examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = moec_grammar::parse(&source) {
            panic!("{}: {e:?}", path.display());
        }
    }
}

/// Nesting is refused with an error long before it could overflow a stack.
#[test]
fn absurd_nesting_is_an_error_not_a_crash() {
    for (open, close) in [("-", ""), ("(", ")"), ("[", "]"), ("f(", ")")] {
        for depth in [300, 100_000] {
            let source = format!(
                "model m {{ param a = {}1{} }}",
                open.repeat(depth),
                close.repeat(depth)
            );
            assert!(moec_grammar::parse(&source).is_err(), "{open} x {depth}");
        }
    }
    let long = format!("model m {{ param a = 1{} }}", " + 1".repeat(100_000));
    assert!(moec_grammar::parse(&long).is_err());
}

/// Calls to names that start with `if` (`ifx(...)`), nested and left unclosed, are
/// parsed once per level, not twice (as `if` then a condition, and again as a call:
/// a spec the fuzzer found took 40 s at a few dozen levels): the error is the
/// ordinary syntax error, well inside the parser's step limit.
#[test]
fn names_starting_with_if_do_not_make_parsing_exponential() {
    let source = format!("model m {{ param a = {}x, }}", "ifx(".repeat(40));
    let e = moec_grammar::parse(&source).unwrap_err();
    assert!(
        e.message.starts_with("expected"),
        "{}: {}",
        e.message,
        e.label
    );
}

/// A parse that would take more than the parser's step limit stops with a located
/// error that says so (here a list of three million numbers, not a slow path).
#[test]
fn the_parser_step_limit_is_a_located_error() {
    let source = format!("model m {{ param a = [{}1] }}", "1, ".repeat(3_000_000));
    let e = moec_grammar::parse(&source).unwrap_err();
    assert!(
        e.message.contains("too deeply nested or too long"),
        "{}",
        e.message
    );
    assert!(e.span.end <= source.len());
}
