//! The CLIF backend's codegen: every kernel of every example (and of a sweep of
//! shapes covering each epilogue, bias, row weights, k tails and partial panels)
//! passes Cranelift's verifier, the text of each example's kernels (what `moec
//! compile --target clif` writes) is snapshotted, and the packed layout puts each
//! weight where the kernel reads it.

mod common;

use common::{example_sources, small_dims};
use cranelift_codegen::settings;
use cranelift_codegen::verify_function;
use moec_compiler::backend::clif::pack::{pack_bias, pack_weights, pack_weights_bf16, PANEL};
use moec_compiler::backend::clif::{clif_text, lower, matmul, MatmulShape, Target, WeightDType};
use moec_compiler::ir::{Epilogue, F32Bits, UnaryOp};
use moec_compiler::lower::lower_source;
use moec_compiler::passes::{run_pipeline, Upto};

/// The matmul kernel and the epilogue kernel of `shape` pass the verifier.
fn verify(shape: &MatmulShape, target: &Target) {
    let flags = settings::Flags::new(settings::builder());
    for func in [
        matmul::build(shape, target),
        matmul::build_epilogue(shape, target),
    ] {
        if let Err(e) = verify_function(&func, &flags) {
            panic!("{}: {e}\n{}", shape.name(), func.display());
        }
    }
}

#[test]
fn example_kernels_verify() {
    let mut count = 0;
    for (name, source) in example_sources() {
        for upto in [Upto::None, Upto::All] {
            let mut g = lower_source(&source, &small_dims(&source)).unwrap().graph;
            run_pipeline(&mut g, upto, true).unwrap();
            let program = lower(&g, &Target::default());
            assert!(!program.kernels.is_empty(), "{name}");
            for k in &program.kernels {
                verify(&k.shape, &Target::default());
                count += 1;
            }
        }
    }
    assert!(count > 0);
}

/// The CLIF of every kernel of each example after the whole pipeline, at small dims
/// and for `Target::default()` (FMA on, so the text does not depend on the host):
/// one snapshot per example, each kernel under a `; kernel NAME` header. The same
/// kernels pass the verifier in `example_kernels_verify`.
#[test]
fn example_kernels_text() {
    insta::glob!("../../examples", "*.moe", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let mut g = lower_source(&source, &small_dims(&source)).unwrap().graph;
        run_pipeline(&mut g, Upto::All, true).unwrap();
        let kernels = clif_text(&g, &Target::default());
        assert!(!kernels.is_empty(), "{}", path.display());
        let text: String = kernels
            .iter()
            .map(|(name, text)| format!("; kernel {name}\n{text}\n"))
            .collect();
        insta::assert_snapshot!(text);
    });
}

#[test]
fn shape_sweep_verifies() {
    let epilogues = [
        Epilogue::None,
        Epilogue::Act(UnaryOp::Relu),
        Epilogue::Act(UnaryOp::Gelu),
        Epilogue::Glu(UnaryOp::Silu),
        Epilogue::Glu(UnaryOp::GeluTanh),
        Epilogue::Act(UnaryOp::Sigmoid),
        Epilogue::ClampedGlu {
            alpha: F32Bits::new(1.702),
            limit: F32Bits::new(7.0),
        },
    ];
    for epilogue in epilogues {
        for (k, n) in [(1, 2), (3, 6), (8, 16), (13, 22)] {
            for (bias, weighted) in [(false, false), (true, true)] {
                for (fma, weights) in [
                    (false, WeightDType::F32),
                    (true, WeightDType::F32),
                    (true, WeightDType::Bf16),
                ] {
                    let target = Target {
                        fma,
                        ..Target::default()
                    };
                    let shape = MatmulShape {
                        k,
                        n,
                        epilogue,
                        bias,
                        weighted,
                        weights,
                    };
                    verify(&shape, &target);
                }
            }
        }
    }
}

#[test]
fn glu_packing_pairs_gate_and_up_columns() {
    // One expert, N = 10 (H = 5 gate + 5 up), K = 2: w[c, k] = 10c + k.
    let shape = MatmulShape {
        k: 2,
        n: 10,
        epilogue: Epilogue::Glu(UnaryOp::Silu),
        bias: true,
        weighted: false,
        weights: WeightDType::F32,
    };
    let w: Vec<f32> = (0..10)
        .flat_map(|c| (0..2).map(move |k| (10 * c + k) as f32))
        .collect();
    let packed = pack_weights(&shape, &w);
    assert_eq!(shape.panels(), 2);
    assert_eq!(packed.len(), 2 * 2 * PANEL);
    // Panel 0, k = 1: gate columns 0..4, then up columns 5..9.
    assert_eq!(
        &packed[PANEL..2 * PANEL],
        &[1.0, 11.0, 21.0, 31.0, 51.0, 61.0, 71.0, 81.0]
    );
    // Panel 1, k = 0: gate column 4, up column 9, zeros past the end.
    assert_eq!(
        &packed[2 * PANEL..3 * PANEL],
        &[40.0, 0.0, 0.0, 0.0, 90.0, 0.0, 0.0, 0.0]
    );
    let b: Vec<f32> = (0..10).map(|c| c as f32).collect();
    assert_eq!(
        pack_bias(&shape, &b)[PANEL..],
        [4.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0]
    );
}

/// bf16 panels hold the f32 layout's slots as high halves, slots 0..4 in the
/// even positions and 4..8 in the odd ones (the kernel's shift and mask).
#[test]
fn bf16_packing_interleaves_the_two_vectors() {
    let shape = MatmulShape {
        k: 2,
        n: 8,
        epilogue: Epilogue::None,
        bias: false,
        weighted: false,
        weights: WeightDType::Bf16,
    };
    // w[c, k] = c + 8k + 1, all exact in bf16.
    let w: Vec<f32> = (0..8)
        .flat_map(|c| (0..2).map(move |k| (c + 8 * k + 1) as f32))
        .collect();
    let packed = pack_weights_bf16(&shape, &w);
    assert_eq!(packed.len(), 2 * PANEL);
    let k0: Vec<f32> = packed[..PANEL]
        .iter()
        .map(|&b| f32::from_bits(u32::from(b) << 16))
        .collect();
    assert_eq!(k0, [1.0, 5.0, 2.0, 6.0, 3.0, 7.0, 4.0, 8.0]);
    let f32_shape = MatmulShape {
        weights: WeightDType::F32,
        ..shape
    };
    assert_eq!(
        pack_weights(&f32_shape, &w)[PANEL..],
        [9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0]
    );
}
