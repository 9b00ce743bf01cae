//! Binding safetensors checkpoints to weight decls: dtypes, slicing, transposition, shards,
//! and the errors for missing, misshapen, mistyped and corrupt tensors.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use moec_compiler::ir::WeightFormat;
use moec_compiler::tensor::Tensor;
use moec_runtime::{bind, unused, WeightErrorKind, WeightErrors, WeightSource};
use safetensors::tensor::Dtype;
use tempfile::TempDir;

fn single(dir: &TempDir, tensors: &[Raw]) -> std::path::PathBuf {
    let path = dir.path().join("model.safetensors");
    write(&path, tensors);
    path
}

fn open(path: &Path) -> WeightSource {
    WeightSource::open(path).unwrap()
}

fn bind_err(
    decls: &[moec_compiler::ir::weight::WeightDecl],
    source: &WeightSource,
) -> WeightErrors {
    bind(decls, source).expect_err("bind should fail")
}

#[test]
fn reads_f32() {
    let dir = TempDir::new().unwrap();
    let path = single(&dir, &[f32s("w", &[2, 2], &[1.0, -2.5, 0.0, 7.25])]);
    let got = bind(&[decl("w", "w", &[2, 2])], &open(&path)).unwrap();
    assert_eq!(
        got,
        vec![Tensor::f32(vec![2, 2], vec![1.0, -2.5, 0.0, 7.25])]
    );
}

#[test]
fn widens_f16_exactly() {
    let dir = TempDir::new().unwrap();
    // 1.0, -5.0, the smallest subnormal 2^-24, 65504 (the largest finite f16).
    let path = single(
        &dir,
        &[bits16(
            "w",
            Dtype::F16,
            &[4],
            &[0x3C00, 0xC500, 0x0001, 0x7BFF],
        )],
    );
    let got = bind(&[decl("w", "w", &[4])], &open(&path)).unwrap();
    assert_eq!(got[0].as_f32(), &[1.0, -5.0, 2f32.powi(-24), 65504.0]);
}

#[test]
fn widens_bf16_bit_exactly() {
    let dir = TempDir::new().unwrap();
    // 0x3FC0 = 1.5; 0xC049 = -(1 + 73/128) · 2 = -3.140625; 0x0001 = the smallest subnormal.
    let bits = [0x3FC0, 0xC049, 0x0001, 0xFF80];
    let path = single(&dir, &[bits16("w", Dtype::BF16, &[4], &bits)]);
    let got = bind(&[decl("w", "w", &[4])], &open(&path)).unwrap();
    let values = got[0].as_f32();
    assert_eq!(values[0], 1.5);
    assert_eq!(values[1], -3.140625);
    assert_eq!(values[3], f32::NEG_INFINITY);
    for (v, b) in values.iter().zip(bits) {
        assert_eq!(v.to_bits(), u32::from(b) << 16);
    }
}

#[test]
fn slices_one_expert_of_a_stacked_tensor() {
    let dir = TempDir::new().unwrap();
    let path = single(&dir, &[iota("experts.w1", &[3, 2, 2])]);
    let decls = [
        expert(decl("experts[2].gate", "experts.w1", &[2, 2]), 2),
        expert(decl("experts[0].gate", "experts.w1", &[2, 2]), 0),
    ];
    let got = bind(&decls, &open(&path)).unwrap();
    assert_eq!(got[0].as_f32(), &[8.0, 9.0, 10.0, 11.0]);
    assert_eq!(got[1].as_f32(), &[0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn transposes_in_out_storage() {
    let dir = TempDir::new().unwrap();
    // The file stores [in = 2, out = 3]; the graph wants [out, in].
    let path = single(&dir, &[iota("w", &[2, 3])]);
    let got = bind(&[transposed(decl("w", "w", &[3, 2]))], &open(&path)).unwrap();
    assert_eq!(got[0].shape, vec![3, 2]);
    assert_eq!(got[0].as_f32(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn slices_then_transposes() {
    let dir = TempDir::new().unwrap();
    // Stacked [E = 2, in = 2, out = 3].
    let path = single(&dir, &[iota("experts.down", &[2, 2, 3])]);
    let d = transposed(expert(decl("experts[1].down", "experts.down", &[3, 2]), 1));
    let got = bind(&[d], &open(&path)).unwrap();
    assert_eq!(got[0].as_f32(), &[6.0, 9.0, 7.0, 10.0, 8.0, 11.0]);
}

#[test]
fn interleaved_columns_of_a_stacked_transposed_tensor() {
    let dir = TempDir::new().unwrap();
    // GPT-OSS: gate_up_proj [E = 2, in = 2, 2·out = 6], columns gate, up, gate, up, ...;
    // its bias [E, 6] interleaved the same way.
    let path = single(
        &dir,
        &[iota("gate_up", &[2, 2, 6]), iota("gate_up_bias", &[2, 6])],
    );
    let gate = |e| columns(transposed(expert(decl("g", "gate_up", &[3, 2]), e)), 0, 2);
    let up = |e| columns(transposed(expert(decl("u", "gate_up", &[3, 2]), e)), 1, 2);
    let bias = |e, start| columns(expert(decl("b", "gate_up_bias", &[3]), e), start, 2);
    let got = bind(
        &[gate(1), up(1), bias(1, 0), bias(1, 1), gate(0)],
        &open(&path),
    )
    .unwrap();
    // Expert 1 is 12..24: row 0 = 12..18, row 1 = 18..24; gate = columns 0, 2, 4.
    assert_eq!(got[0].shape, vec![3, 2]);
    assert_eq!(got[0].as_f32(), &[12.0, 18.0, 14.0, 20.0, 16.0, 22.0]);
    assert_eq!(got[1].as_f32(), &[13.0, 19.0, 15.0, 21.0, 17.0, 23.0]);
    assert_eq!(got[2].as_f32(), &[6.0, 8.0, 10.0]);
    assert_eq!(got[3].as_f32(), &[7.0, 9.0, 11.0]);
    assert_eq!(got[4].as_f32(), &[0.0, 6.0, 2.0, 8.0, 4.0, 10.0]);
}

#[test]
fn columns_of_bf16_and_of_a_plain_matrix() {
    let dir = TempDir::new().unwrap();
    // [2, 4] bf16: 1, 2, 3, 4 / 5, 6, 7, 8; the last two columns, untransposed.
    let bits = [
        0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0, 0x4100,
    ];
    let path = single(&dir, &[bits16("w", Dtype::BF16, &[2, 4], &bits)]);
    let got = bind(&[columns(decl("w", "w", &[2, 2]), 2, 1)], &open(&path)).unwrap();
    assert_eq!(got[0].as_f32(), &[3.0, 4.0, 7.0, 8.0]);
}

#[test]
fn shape_errors_describe_columns() {
    let dir = TempDir::new().unwrap();
    let path = single(&dir, &[iota("gate_up", &[4, 2, 5])]);
    // Entries 1, 3, 5 of a last axis of 5.
    let d = columns(
        transposed(expert(decl("experts[0].up", "gate_up", &[3, 2]), 0)),
        1,
        2,
    );
    let errors = bind_err(&[d], &open(&path));
    let file = path.display();
    assert_eq!(
        errors.to_string(),
        format!("{file}: tensor \"gate_up\" has shape [4, 2, 5], expected [E, 2, ≥6] with E > 0 (`experts[0].up`, columns 1::2, stored transposed)")
    );
}

#[test]
fn rows_of_a_concatenated_stacked_tensor() {
    let dir = TempDir::new().unwrap();
    // GraniteMoE/JetMoE: input_linear [E = 2, 2·out = 4, in = 3], gate rows 0..2, up rows 2..4.
    let path = single(&dir, &[iota("input_linear", &[2, 4, 3])]);
    let gate = |e| rows(expert(decl("g", "input_linear", &[2, 3]), e), 0, 1);
    let up = |e| rows(expert(decl("u", "input_linear", &[2, 3]), e), 2, 1);
    let got = bind(&[gate(1), up(1), up(0)], &open(&path)).unwrap();
    // Expert 1 is 12..24, its rows 12..15, 15..18, 18..21, 21..24.
    assert_eq!(got[0].as_f32(), &[12.0, 13.0, 14.0, 15.0, 16.0, 17.0]);
    assert_eq!(got[1].as_f32(), &[18.0, 19.0, 20.0, 21.0, 22.0, 23.0]);
    assert_eq!(got[2].as_f32(), &[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
}

#[test]
fn rows_of_experts_stacked_without_an_axis_transposed() {
    let dir = TempDir::new().unwrap();
    // DBRX: w2 [E·F = 2·2, D = 3], expert e's rows e·F..(e+1)·F stored [F, D]; the graph's
    // down weight is [D, F].
    let path = single(&dir, &[iota("w2", &[4, 3])]);
    let down = |e: usize| rows(transposed(decl("d", "w2", &[3, 2])), 2 * e, 1);
    let got = bind(&[down(1), down(0)], &open(&path)).unwrap();
    // Rows 2, 3 are 6 7 8 / 9 10 11; transposed: 6 9 / 7 10 / 8 11.
    assert_eq!(got[0].shape, vec![3, 2]);
    assert_eq!(got[0].as_f32(), &[6.0, 9.0, 7.0, 10.0, 8.0, 11.0]);
    assert_eq!(got[1].as_f32(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn leading_unit_axes_are_ignored() {
    let dir = TempDir::new().unwrap();
    // Ernie 4.5's e_score_correction_bias [1, E] for an [E] weight; a [2, E] one is an error.
    let path = single(&dir, &[iota("bias", &[1, 4]), iota("two", &[2, 4])]);
    let got = bind(&[decl("b", "bias", &[4])], &open(&path)).unwrap();
    assert_eq!(got[0].as_f32(), &[0.0, 1.0, 2.0, 3.0]);
    let errors = bind_err(&[decl("t", "two", &[4])], &open(&path));
    assert!(
        errors
            .to_string()
            .contains("has shape [2, 4], expected [4]"),
        "{errors}"
    );
}

#[test]
fn a_fused_tensor_mismatched_for_every_expert_is_one_error_with_the_flat_layout() {
    let dir = TempDir::new().unwrap();
    // DBRX's w1 [E·F = 3·2, D = 4] bound as if it had an expert axis.
    let path = single(&dir, &[iota("w1", &[6, 4])]);
    let mut decls = Vec::new();
    for e in 0..3 {
        let mut d = expert(
            decl(&format!("layers.0.y.experts.{e}.gate"), "w1", &[2, 4]),
            e,
        );
        d.pattern = "experts[e].gate".into();
        decls.push(d);
    }
    let errors = bind_err(&decls, &open(&path));
    assert_eq!(errors.0.len(), 1, "{errors}");
    let file = path.display();
    assert_eq!(
        errors.to_string(),
        format!("{file}: tensor \"w1\" has shape [6, 4], expected [E, 2, 4] with E > 2 (`experts[e].gate`: layers.0.y.experts.0.gate); the file holds 3 experts one after another along the first axis, without an axis of their own: bind each expert's rows, keying the binding `experts[e].gate` and writing `rows(e * 2, 1)` after the tensor name")
    );
}

#[test]
fn shape_errors_describe_rows() {
    let dir = TempDir::new().unwrap();
    let path = single(&dir, &[iota("input_linear", &[2, 3, 4])]);
    let d = rows(expert(decl("u", "input_linear", &[2, 4]), 1), 2, 1);
    let errors = bind_err(&[d], &open(&path));
    let file = path.display();
    assert_eq!(
        errors.to_string(),
        format!("{file}: tensor \"input_linear\" has shape [2, 3, 4], expected [E, ≥4, 4] with E > 1 (`u`, rows 2::1)")
    );
}

#[test]
fn a_bias_the_spec_does_not_read_is_an_error() {
    let dir = TempDir::new().unwrap();
    // JetMoE-like: a linear's weight is read, its bias in the checkpoint is not.
    let path = single(&dir, &[iota("up.weight", &[2, 3]), iota("up.bias", &[2])]);
    let mut d = decl("layers.0.y.experts.0.up", "up.weight", &[2, 3]);
    d.pattern = "experts[e].up".into();
    let errors = bind_err(&[d.clone(), d.clone()], &open(&path));
    let file = path.display();
    assert_eq!(
        errors.to_string(),
        format!("{file}: the checkpoint has a bias \"up.bias\" for \"up.weight\" (`experts[e].up`: layers.0.y.experts.0.up), which the spec reads without one; give its linear `bias = true` (and bind the bias if its name differs)")
    );
    let bias = decl("layers.0.y.experts.0.up.bias", "up.bias", &[2]);
    assert!(bind(&[d, bias], &open(&path)).is_ok());
}

/// A sharded checkpoint: `a` in shard 1, `b` in shard 2, `c` in a corrupt shard 3 and `d` in
/// a shard that does not exist.
fn sharded(dir: &TempDir) -> std::path::PathBuf {
    write(
        &dir.path().join("model-00001-of-00003.safetensors"),
        &[f32s("a", &[2], &[1.0, 2.0])],
    );
    write(
        &dir.path().join("model-00002-of-00003.safetensors"),
        &[f32s("b", &[1], &[3.0])],
    );
    fs::write(
        dir.path().join("model-00003-of-00003.safetensors"),
        b"\x10\0\0\0\0\0\0\0{not json",
    )
    .unwrap();
    let index = r#"{"metadata": {"total_size": 12}, "weight_map": {
        "a": "model-00001-of-00003.safetensors",
        "b": "model-00002-of-00003.safetensors",
        "c": "model-00003-of-00003.safetensors",
        "d": "model-00004-of-00003.safetensors"}}"#;
    let path = dir.path().join("model.safetensors.index.json");
    fs::write(&path, index).unwrap();
    path
}

#[test]
fn reads_a_tensor_from_each_shard_without_opening_the_others() {
    let dir = TempDir::new().unwrap();
    let index = sharded(&dir);
    for path in [index.as_path(), dir.path()] {
        let source = open(path);
        assert_eq!(
            source.tensor_names().collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        let got = bind(&[decl("a", "a", &[2]), decl("b", "b", &[1])], &source).unwrap();
        assert_eq!(got[0].as_f32(), &[1.0, 2.0]);
        assert_eq!(got[1].as_f32(), &[3.0]);
    }
}

#[test]
fn a_needed_corrupt_or_missing_shard_is_an_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let source = open(&sharded(&dir));
    let decls = [
        decl("c", "c", &[1]),
        decl("c2", "c", &[1]),
        decl("d", "d", &[1]),
    ];
    let errors = bind_err(&decls, &source).0;
    // The corrupt shard is reported once, not once per tensor in it.
    assert_eq!(errors.len(), 2, "{}", WeightErrors(errors));
    assert!(matches!(*errors[0].kind, WeightErrorKind::Corrupt(_)));
    assert!(errors[0]
        .to_string()
        .contains("model-00003-of-00003.safetensors: not a valid safetensors file"));
    assert!(matches!(
        *errors[1].kind,
        WeightErrorKind::MissingShard { .. }
    ));
    let message = errors[1].to_string();
    assert!(
        message.contains("model-00004-of-00003.safetensors: shard does not exist"),
        "{message}"
    );
    assert!(
        message.contains("model.safetensors.index.json"),
        "{message}"
    );
}

#[test]
fn bad_index_json_is_an_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.safetensors.index.json");
    for text in [
        r#"{"weight_map": 3}"#,
        "{",
        r#"{"weight_map": {"a": "../elsewhere.safetensors"}}"#,
    ] {
        fs::write(&path, text).unwrap();
        let error = WeightSource::open(&path).err().expect("a bad index");
        assert!(
            matches!(*error.kind, WeightErrorKind::BadIndex(_)),
            "{error}"
        );
        assert!(error.to_string().starts_with(&format!(
            "{}: not a valid safetensors index",
            path.display()
        )));
    }
}

#[test]
fn a_directory_without_a_checkpoint_is_an_error() {
    let dir = TempDir::new().unwrap();
    let error = WeightSource::open(dir.path()).err().unwrap();
    assert!(matches!(*error.kind, WeightErrorKind::NoCheckpoint));
    let error = WeightSource::open(&dir.path().join("nope.safetensors"))
        .err()
        .unwrap();
    assert!(matches!(*error.kind, WeightErrorKind::Io(_)));
}

const MIXTRAL: &str = "model.layers.0.block_sparse_moe";

#[test]
fn missing_tensor_suggests_close_names() {
    let dir = TempDir::new().unwrap();
    let names = [
        "experts.3.w1.weight",
        "experts.3.w2.weight",
        "experts.3.w3.weight",
        "gate.weight",
    ];
    let tensors: Vec<Raw> = names
        .iter()
        .map(|n| iota(&format!("{MIXTRAL}.{n}"), &[1]))
        .chain([iota("lm_head.weight", &[1])])
        .collect();
    let path = single(&dir, &tensors);
    let wanted = format!("{MIXTRAL}.experts.3.w1.weights");
    let errors = bind_err(&[decl("experts[3].gate", &wanted, &[1])], &open(&path)).0;
    let WeightErrorKind::MissingTensor { suggestions, .. } = &*errors[0].kind else {
        panic!("{}", errors[0])
    };
    assert_eq!(suggestions.len(), 3);
    assert_eq!(suggestions[0], format!("{MIXTRAL}.experts.3.w1.weight"));
    assert!(!suggestions.contains(&"lm_head.weight".to_string()));
    let message = errors[0].to_string();
    assert!(message.starts_with(&format!("{}: no tensor \"{wanted}\" (`experts[3].gate`); did you mean \"{MIXTRAL}.experts.3.w1.weight\" or", path.display())), "{message}");
}

#[test]
fn missing_tensor_with_nothing_close_suggests_nothing() {
    let dir = TempDir::new().unwrap();
    let path = single(&dir, &[iota("lm_head.weight", &[1])]);
    let errors = bind_err(
        &[decl("k", "model.layers.0.mlp.gate.weight", &[1])],
        &open(&path),
    )
    .0;
    let WeightErrorKind::MissingTensor { suggestions, .. } = &*errors[0].kind else {
        panic!()
    };
    assert!(suggestions.is_empty());
}

#[test]
fn reports_every_problem_at_once() {
    let dir = TempDir::new().unwrap();
    let w1 = format!("{MIXTRAL}.experts.3.w1.weight");
    let path = single(
        &dir,
        &[
            iota(&w1, &[32, 16]),
            bits16("gate", Dtype::F16, &[2], &[0, 0]),
            iota("ok", &[1]),
            Raw {
                name: "step".into(),
                dtype: Dtype::I64,
                shape: vec![1],
                bytes: vec![0; 8],
            },
        ],
    );
    let decls = [
        decl("layers.0.y.experts.3.gate", &w1, &[64, 16]),
        stored_as(decl("gate.logits", "gate", &[2]), WeightFormat::Bf16),
        decl("ok", "ok", &[1]),
        decl("missing", "absent", &[1]),
        decl("step", "step", &[1]),
    ];
    let errors = bind_err(&decls, &open(&path));
    let file = path.display();
    let expected = [
        format!("{file}: tensor \"{w1}\" has shape [32, 16], expected [64, 16] (`layers.0.y.experts.3.gate`)"),
        format!("{file}: tensor \"gate\" is stored as f16, expected bf16 (`gate.logits`)"),
        format!("{file}: no tensor \"absent\" (`missing`)"),
        format!("{file}: tensor \"step\" has dtype I64; weights must be F32, F16 or BF16 (`step`)"),
    ];
    assert_eq!(errors.to_string(), expected.join("\n"));
}

#[test]
fn storage_dtype_that_matches_is_accepted() {
    let dir = TempDir::new().unwrap();
    let path = single(&dir, &[bits16("g", Dtype::BF16, &[1], &[0x3F80])]);
    let got = bind(
        &[stored_as(decl("g", "g", &[1]), WeightFormat::Bf16)],
        &open(&path),
    )
    .unwrap();
    assert_eq!(got[0].as_f32(), &[1.0]);
}

#[test]
fn shape_errors_describe_slices_and_transposition() {
    let dir = TempDir::new().unwrap();
    let path = single(&dir, &[iota("stack", &[2, 4, 3]), iota("t", &[4, 3])]);
    let decls = [
        expert(decl("experts[2].up", "stack", &[4, 3]), 2),
        transposed(decl("down", "t", &[4, 3])),
    ];
    let errors = bind_err(&decls, &open(&path));
    let file = path.display();
    let expected = [
        format!("{file}: tensor \"stack\" has shape [2, 4, 3], expected [E, 4, 3] with E > 2 (`experts[2].up`)"),
        format!("{file}: tensor \"t\" has shape [4, 3], expected [3, 4] (`down`, stored transposed)"),
    ];
    assert_eq!(errors.to_string(), expected.join("\n"));
}

#[test]
fn truncated_files_are_errors() {
    let dir = TempDir::new().unwrap();
    let bytes = serialize(&[iota("a", &[4]), iota("b", &[2, 3])]);
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let path = dir.path().join("cut.safetensors");
    let cuts = [
        0,
        1,
        7,
        8,
        9,
        header_end / 2,
        header_end - 1,
        header_end,
        header_end + 5,
        bytes.len() - 1,
    ];
    for cut in cuts {
        fs::write(&path, &bytes[..cut]).unwrap();
        let error = match WeightSource::open(&path) {
            Err(e) => e,
            Ok(source) => bind(&[decl("a", "a", &[4])], &source)
                .unwrap_err()
                .0
                .remove(0),
        };
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}: not a valid safetensors file", path.display())),
            "cut at {cut}: {error}"
        );
    }
}

#[test]
fn corrupt_headers_are_errors() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bad.safetensors");
    let huge = usize::MAX / 8;
    let headers = [
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]".to_string(),
        "[1, 2, 3]".to_string(),
        "{\"a\": {\"dtype\": \"F99\", \"shape\": [1], \"data_offsets\": [0, 4]}}".to_string(),
        // Offsets past the end of the file, and sizes that overflow.
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4000]}}".to_string(),
        format!("{{\"a\": {{\"dtype\": \"U8\", \"shape\": [{huge}], \"data_offsets\": [0, {huge}]}}}}"),
        format!("{{\"a\": {{\"dtype\": \"F64\", \"shape\": [{huge}, {huge}], \"data_offsets\": [0, 8]}}}}"),
    ];
    for header in headers {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend([0; 4]);
        fs::write(&path, &bytes).unwrap();
        let error = WeightSource::open(&path)
            .err()
            .unwrap_or_else(|| panic!("{header} should fail"));
        assert!(
            matches!(*error.kind, WeightErrorKind::Corrupt(_)),
            "{error}"
        );
    }
    // A header length far past the end of the file.
    fs::write(&path, u64::MAX.to_le_bytes()).unwrap();
    let error = WeightSource::open(&path).err().unwrap();
    assert!(
        error.to_string().contains("runs past the end of the file"),
        "{error}"
    );
}

#[test]
fn unused_tensors_next_to_used_ones_are_reported() {
    let dir = TempDir::new().unwrap();
    let names = [
        "model.layers.0.block_sparse_moe.gate.weight",
        "model.layers.0.block_sparse_moe.gate.bias",
        "model.layers.0.block_sparse_moe.experts.0.w1.weight",
        "model.layers.0.block_sparse_moe.experts.0.w2.weight",
        "model.layers.0.block_sparse_moe.experts.0.w3.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.block_sparse_moe.gate.weight",
        "model.embed_tokens.weight",
    ];
    let tensors: Vec<Raw> = names.iter().map(|n| iota(n, &[1])).collect();
    let path = single(&dir, &tensors);
    let decls: Vec<_> = [0, 2, 3, 5]
        .iter()
        .map(|&i| decl(names[i], names[i], &[1]))
        .collect();
    assert_eq!(unused(&decls, &open(&path)), [names[4], names[1]]);
}

#[test]
fn suggestions_in_a_large_checkpoint_come_from_the_same_layer_and_expert() {
    // Over 4096 names: only names with the same numeric components are compared.
    let dir = TempDir::new().unwrap();
    let mut map = Vec::new();
    for layer in 0..40 {
        for e in 0..40 {
            for w in ["w1", "w2", "w3"] {
                let name = format!("model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight");
                map.push(format!("\"{name}\": \"model-00001-of-00001.safetensors\""));
            }
        }
    }
    let path = dir.path().join("model.safetensors.index.json");
    fs::write(&path, format!("{{\"weight_map\": {{{}}}}}", map.join(","))).unwrap();
    let wanted = "model.layers.7.block_sparse_moe.experts.3.w1.wieght";
    let errors = bind_err(&[decl("experts[3].gate", wanted, &[1])], &open(&path)).0;
    let WeightErrorKind::MissingTensor { suggestions, .. } = &*errors[0].kind else {
        panic!()
    };
    assert_eq!(
        suggestions,
        &["w1", "w2", "w3"]
            .map(|w| format!("model.layers.7.block_sparse_moe.experts.3.{w}.weight"))
    );
}
