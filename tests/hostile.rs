//! Hostile but plausible inputs, as a new user would type them (issue 11's table):
//! each exits 1 within seconds with a message that says what is wrong and where —
//! never a panic, an abort, a hang or a silently wrong value. The messages are
//! snapshots; memory plans are checked against `--max-memory 1GiB`, so the numbers
//! do not depend on the machine.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// What each row runs, named for its snapshot.
const ROWS: &[(&str, &[&str])] = &[
    (
        "rem_overflow",
        &["check", "tests/cases/errors/rem_overflow.moe"],
    ),
    (
        "negate_overflow",
        &["check", "tests/cases/errors/negate_overflow.moe"],
    ),
    (
        "float_literal_infinite",
        &["check", "tests/cases/errors/float_literal_infinite.moe"],
    ),
    (
        "eps_rounds_to_zero",
        &["check", "tests/cases/errors/eps_rounds_to_zero.moe"],
    ),
    (
        "layers_past_the_limit",
        &[
            "check",
            "examples/mixtral_stack.moe",
            "--set",
            "num_hidden_layers=100000000",
        ],
    ),
    (
        "experts_past_the_limit",
        &[
            "check",
            "examples/mixtral_stack.moe",
            "--set",
            "num_local_experts=50000000",
        ],
    ),
    (
        "nodes_past_the_limit",
        &[
            "check",
            "examples/mixtral_stack.moe",
            "--set",
            "num_hidden_layers=1000",
            "--set",
            "num_local_experts=4000",
        ],
    ),
    (
        "weights_past_memory",
        &[
            "run",
            "examples/mixtral_stack.moe",
            "--random-weights",
            "1",
            "--tokens",
            "1",
            "--set",
            "hidden_size=1000000",
            "--max-memory",
            "1GiB",
        ],
    ),
    (
        "tokens_past_memory",
        &[
            "run",
            "examples/mixtral.moe",
            "--random-weights",
            "1",
            "--tokens",
            "4000000000",
            "--set",
            "hidden_size=16",
            "--set",
            "intermediate_size=32",
            "--max-memory",
            "1GiB",
        ],
    ),
    (
        "tokens_past_64_bits",
        &[
            "run",
            "examples/mixtral.moe",
            "--random-weights",
            "1",
            "--tokens",
            "18446744073709551615",
            "--set",
            "hidden_size=16",
            "--set",
            "intermediate_size=32",
            "--max-memory",
            "1GiB",
        ],
    ),
    (
        "tensor_past_the_limit",
        &[
            "check",
            "examples/mixtral.moe",
            "--set",
            "hidden_size=4611686018427387904",
        ],
    ),
];

#[test]
fn hostile_inputs_exit_1_within_seconds_with_a_message() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (name, args) in ROWS {
        let start = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_moec"))
            .args(*args)
            .current_dir(&root)
            .output()
            .expect("moec runs");
        let took = start.elapsed();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{name}: expected exit 1, got {:?}\n{err}",
            o.status
        );
        assert!(!err.contains("panicked"), "{name}: panic:\n{err}");
        assert!(o.stdout.is_empty(), "{name}: printed a result");
        // Release builds take well under a second; the bound leaves room for a busy machine.
        assert!(
            took < Duration::from_secs(20),
            "{name}: took {took:?}\n{err}"
        );
        insta::assert_snapshot!(*name, err);
    }
}
