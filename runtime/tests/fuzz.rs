//! Property tests: random byte mutations and truncations of a valid checkpoint never make
//! `WeightSource::open` or `bind` panic; and bf16 widening is exact for every bit pattern.

mod common;

use common::*;
use moec_runtime::{bind, WeightSource};
use proptest::prelude::*;
use safetensors::tensor::Dtype;
use tempfile::TempDir;

fn valid_file() -> Vec<u8> {
    serialize(&[
        iota("experts.w1", &[2, 3, 2]),
        bits16("norm", Dtype::BF16, &[3], &[0x3F80, 0x4000, 0xC049]),
        bits16("gate", Dtype::F16, &[2, 3], &[0x3C00; 6]),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = valid_file();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(source) = WeightSource::open(&path) {
            let decls = [
                expert(decl("experts[1].gate", "experts.w1", &[3, 2]), 1),
                transposed(expert(decl("experts[0].down", "experts.w1", &[2, 3]), 0)),
                decl("norm", "norm", &[3]),
                decl("gate.logits", "gate", &[2, 3]),
            ];
            if let Err(errors) = bind(&decls, &source) {
                prop_assert!(!errors.0.is_empty());
                prop_assert!(!errors.to_string().is_empty());
            }
        }
    }

    #[test]
    fn bf16_widening_is_exact(bits in any::<u16>()) {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("model.safetensors");
        write(&path, &[bits16("x", Dtype::BF16, &[1], &[bits])]);
        let got = bind(&[decl("x", "x", &[1])], &WeightSource::open(&path).unwrap()).unwrap();
        let value = got[0].as_f32()[0];
        if value.is_nan() {
            prop_assert!(f32::from_bits(u32::from(bits) << 16).is_nan());
        } else {
            prop_assert_eq!(value.to_bits(), u32::from(bits) << 16);
        }
    }
}
