//! Tensor files: reading every supported dtype, writing f32 and i32, and errors.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{bits16, f32s, write, Raw};
use moec_compiler::tensor::Tensor;
use moec_runtime::{read_tensors, write_tensors, IoErrorKind};
use safetensors::tensor::Dtype;
use tempfile::TempDir;

fn ints(name: &str, dtype: Dtype, values: &[i64]) -> Raw {
    let bytes = match dtype {
        Dtype::I64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => values
            .iter()
            .flat_map(|&v| (v as i32).to_le_bytes())
            .collect(),
    };
    Raw {
        name: name.into(),
        dtype,
        shape: vec![values.len()],
        bytes,
    }
}

#[test]
fn round_trips_f32_and_i32() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("out.safetensors");
    let tensors = BTreeMap::from([
        (
            "y".to_string(),
            Tensor::f32(
                vec![2, 3],
                vec![0.5, -1.0, 3.25, f32::MIN_POSITIVE, 1e30, -0.0],
            ),
        ),
        (
            "counts".to_string(),
            Tensor::i32(vec![4], vec![0, -7, i32::MAX, i32::MIN]),
        ),
        ("loss".to_string(), Tensor::f32(vec![], vec![0.125])),
        ("empty".to_string(), Tensor::f32(vec![0, 4], vec![])),
    ]);
    write_tensors(&path, &tensors).unwrap();
    assert_eq!(read_tensors(&path).unwrap(), tensors);
    // Writing again replaces the file.
    let fewer = BTreeMap::from([("y".to_string(), Tensor::f32(vec![1], vec![2.0]))]);
    write_tensors(&path, &fewer).unwrap();
    assert_eq!(read_tensors(&path).unwrap(), fewer);
}

#[test]
fn reads_half_precision_and_integers() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("in.safetensors");
    write(
        &path,
        &[
            f32s("f", &[1], &[2.5]),
            bits16("h", Dtype::F16, &[1], &[0x3C00]),
            bits16("b", Dtype::BF16, &[1], &[0xC049]),
            ints("i", Dtype::I32, &[3, -4]),
            ints("l", Dtype::I64, &[5, -6]),
        ],
    );
    let got = read_tensors(&path).unwrap();
    assert_eq!(got["f"].as_f32(), &[2.5]);
    assert_eq!(got["h"].as_f32(), &[1.0]);
    assert_eq!(got["b"].as_f32(), &[-3.140625]);
    assert_eq!(got["i"], Tensor::i32(vec![2], vec![3, -4]));
    assert_eq!(got["l"], Tensor::i32(vec![2], vec![5, -6]));
}

#[test]
fn unreadable_tensors_are_errors_naming_file_and_tensor() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("in.safetensors");
    write(&path, &[ints("big", Dtype::I64, &[1 << 40])]);
    let error = read_tensors(&path).unwrap_err();
    assert!(matches!(
        error.kind,
        IoErrorKind::OutOfRange {
            value: 1099511627776,
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        format!(
            "{}: tensor \"big\" holds 1099511627776, which does not fit in i32",
            path.display()
        )
    );

    let raw = Raw {
        name: "d".into(),
        dtype: Dtype::F64,
        shape: vec![1],
        bytes: vec![0; 8],
    };
    write(&path, &[raw]);
    let error = read_tensors(&path).unwrap_err();
    assert!(
        error.to_string().contains("tensor \"d\" has dtype F64"),
        "{error}"
    );
}

#[test]
fn corrupt_and_missing_files_are_errors() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("in.safetensors");
    fs::write(&path, b"\x02\0\0\0\0\0\0\0{").unwrap();
    let error = read_tensors(&path).unwrap_err();
    assert!(matches!(error.kind, IoErrorKind::Corrupt(_)));
    assert!(error
        .to_string()
        .starts_with(&format!("{}: not a valid safetensors file", path.display())));
    let error = read_tensors(&dir.path().join("absent.safetensors")).unwrap_err();
    assert!(matches!(error.kind, IoErrorKind::Io(_)));
    let error = write_tensors(
        &dir.path().join("no/such/dir/out.safetensors"),
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("no/such/dir/out.safetensors"),
        "{error}"
    );
}
