//! The AVX-512 and AMX tiles against sums straight from the definition.

use super::*;
use moec_compiler::backend::clif::pack::column;
use moec_compiler::backend::clif::WeightDType;
use moec_compiler::ir::{Epilogue, UnaryOp};
use moec_compiler::quant::{dequantize, round_activations, BLOCK};
use moec_compiler::tensor::Tensor;

/// The sums of every JIT panel slot, straight from the definition: slot `j`
/// of panel `p` is `Σ_k x[r, k]·w[e, column(p, j), k]` (0 for no column).
fn plain(shape: &MatmulShape, w: &[f32], e: usize, x: &[f32], rows: usize) -> Vec<f32> {
    let (n, k) = (shape.n, shape.k);
    let cols = panels(shape) * LANES;
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for s in 0..cols {
            if let Some(c) = column(shape, s / PANEL, s % PANEL) {
                let row = &w[(e * n + c) * k..(e * n + c + 1) * k];
                let dot: f64 = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(row[i]))
                    .sum();
                out[r * cols + s] = dot as f32;
            }
        }
    }
    out
}

/// Every format (the quantized ones against the dequantized weights and
/// activations rounded to 8-bit blocks, on hosts with AVX512-VNNI) and every
/// remainder: K odd and even (bf16 and q4_0 pairs), K past one slice and not a
/// whole number of blocks, an odd panel count (a last panel paired with zeros),
/// GLU columns, rows that are not whole tiles, and blocks that start past the
/// first panel.
#[test]
fn tiles_give_the_plain_sums() {
    if !crate::cpu::isa::avx512_supported() {
        eprintln!("skipped: this host has no AVX-512F");
        return;
    }
    let mut seed = 7u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        // bf16 values (low 16 bits zero) in [-1, 1), so both dtypes see the same weights.
        f32::from_bits(
            ((seed >> 9) as f32 / (1u32 << 23) as f32 * 2.0 - 1.0).to_bits() & 0xFFFF_0000,
        )
    };
    for (k, n, epilogue) in [
        (7, 24, Epilogue::None),
        (16, 40, Epilogue::Glu(UnaryOp::Silu)),
        (33, 8, Epilogue::None),
        (1, 50, Epilogue::Glu(UnaryOp::Silu)),
        // Several k slices, the last one odd.
        (601, 40, Epilogue::None),
    ] {
        for format in [
            WeightFormat::F32,
            WeightFormat::Bf16,
            WeightFormat::Q8_0,
            WeightFormat::Q4_0,
        ] {
            let dtype = if format == WeightFormat::Bf16 {
                WeightDType::Bf16
            } else {
                WeightDType::F32
            };
            let shape = MatmulShape {
                k,
                n,
                epilogue,
                bias: false,
                weighted: false,
                weights: dtype,
            };
            let experts = 2;
            let w: Vec<f32> = (0..experts * n * k).map(|_| next()).collect();
            let packed = Wide::pack(&shape, &w, format);
            let dequantized = dequantize(format, Tensor::f32(vec![experts * n, k], w.clone()));
            let cols = panels(&shape) * LANES;
            for rows in [1, 2, 3, 5, 12, 13, 30] {
                let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
                // Quantized weights: sums of the activations in 8-bit blocks.
                let mut rounded = x.clone();
                if format.is_quantized() {
                    round_activations(&mut rounded, k);
                }
                let want = plain(&shape, dequantized.as_f32(), 1, &rounded, rows);
                let mut tiled = vec![f32::NAN; x.len()];
                tile_order(&x, k, &mut tiled);
                let per_row = k.div_ceil(BLOCK);
                let mut quant = vec![ActBlock::default(); rows * per_row];
                for (row, out) in x.chunks(k).zip(quant.chunks_mut(per_row)) {
                    quantize_row(row, out);
                }
                for q0 in 0..panels(&shape) {
                    let q1 = panels(&shape);
                    let ld = (q1 - q0) * LANES + 3;
                    let mut acc = vec![f32::NAN; rows * ld];
                    if format.is_quantized() {
                        if !crate::cpu::isa::vnni_supported() {
                            continue;
                        }
                        let b = Block {
                            expert: 1,
                            panels: (q0, q1),
                            x: &quant[..],
                            rows,
                            acc: &mut acc,
                            ld,
                        };
                        qsums(&shape, &packed, b);
                    } else {
                        let b = Block {
                            expert: 1,
                            panels: (q0, q1),
                            x: &tiled[..],
                            rows,
                            acc: &mut acc,
                            ld,
                        };
                        sums(&shape, &packed, b);
                    }
                    for r in 0..rows {
                        for s in 0..(q1 - q0) * LANES {
                            let (got, want) = (acc[r * ld + s], want[r * cols + q0 * LANES + s]);
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "k {k} n {n} {format:?} rows {rows} panels {q0}..{q1}: \
                                 row {r} sum {s}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The AMX tiles give the plain sums of the activations rounded to bf16
/// (products of bf16 values are exact in f32; only the order of additions
/// differs): several k slices, an odd wide panel count, rows past one pair
/// of tiles, blocks starting past the first panel.
#[test]
fn amx_tiles_give_the_plain_sums_of_bf16_activations() {
    if !amx::supported() {
        eprintln!("skipped: this host cannot run AMX tiles");
        return;
    }
    let mut seed = 11u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 9) as f32 / (1u32 << 23) as f32 * 2.0 - 1.0
    };
    for (k, n) in [(32, 40), (2112, 24)] {
        let shape = MatmulShape {
            k,
            n,
            epilogue: Epilogue::None,
            bias: false,
            weighted: false,
            weights: WeightDType::Bf16,
        };
        let w: Vec<f32> = (0..2 * n * k)
            .map(|_| f32::from_bits(next().to_bits() & 0xFFFF_0000))
            .collect();
        let packed = Wide::pack(&shape, &w, WeightFormat::Bf16);
        let cols = panels(&shape) * LANES;
        for rows in [16, 48] {
            let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            let xb: Vec<u16> = x.iter().map(|v| amx::to_bf16(*v)).collect();
            let rounded: Vec<f32> = xb
                .iter()
                .map(|b| f32::from_bits(u32::from(*b) << 16))
                .collect();
            let want = plain(&shape, &w, 1, &rounded, rows);
            for q0 in [0, 1] {
                let q1 = panels(&shape);
                let ld = (q1 - q0) * LANES;
                let mut acc = vec![f32::NAN; rows * ld];
                let b = Block {
                    expert: 1,
                    panels: (q0, q1),
                    x: &xb[..],
                    rows,
                    acc: &mut acc,
                    ld,
                };
                amx_sums(&shape, &packed, b);
                for r in 0..rows {
                    for s in 0..ld {
                        let (got, want) = (acc[r * ld + s], want[r * cols + q0 * LANES + s]);
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "k {k} n {n} rows {rows} panels {q0}..{q1}: row {r} sum {s}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_rounding_is_to_nearest_even() {
    let bf = |v: f32| f32::from_bits(u32::from(amx::to_bf16(v)) << 16);
    assert_eq!(bf(1.0), 1.0);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even 1.
    assert_eq!(bf(1.0 + 1.0 / 256.0), 1.0);
    assert_eq!(bf(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    assert_eq!(bf(-1.0 - 1.5 / 256.0), -1.0 - 2.0 / 256.0);
    assert!(bf(f32::NAN).is_nan());
    assert_eq!(bf(f32::INFINITY), f32::INFINITY);
}

/// The vector bf16 rounding of activation rows (`amx::round_row`) is the scalar
/// one bit for bit: ties both ways, NaNs of every payload, infinities,
/// subnormals, values that round up to infinity, and a row that is not a whole
/// number of vectors.
#[test]
fn bf16_rows_round_as_the_scalar_rounding_does() {
    let mut bits: Vec<u32> = vec![
        0x3F80_8000, // a tie to even (down)
        0x3F81_8000, // a tie to even (up)
        0x7F7F_FFFF, // rounds up to infinity
        0x7F80_0000,
        0xFF80_0000,
        0x7FC0_0000,
        0x7F80_0001, // a signalling NaN
        0xFFFF_FFFF,
        0x0000_0001, // subnormals
        0x8000_8000,
        0,
        0x8000_0000,
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    bits.extend((0..1000).map(|_| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 32) as u32
    }));
    let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
    let mut out = vec![0u16; x.len()];
    amx::round_row(&x, &mut out);
    for (i, (&v, &got)) in x.iter().zip(&out).enumerate() {
        assert_eq!(got, amx::to_bf16(v), "value {i}: {:#010x}", v.to_bits());
    }
}

/// The vector quantizer gives what the interpreter's `quantize_activations`
/// gives, bit for bit: random blocks, blocks of exact halves (rounded away
/// from zero), a short last block, zeros.
#[test]
fn activation_blocks_quantize_as_the_interpreter_does() {
    use moec_compiler::quant::quantize_activations;
    let mut seed = 5u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 4.0
    };
    let mut rows: Vec<Vec<f32>> = (0..50).map(|_| (0..70).map(|_| next()).collect()).collect();
    // max 127: every value x/1 exactly, halves included.
    rows.push(
        (0..64)
            .map(|i| (i as f32 - 31.5) * 0.5)
            .chain([127.0])
            .collect(),
    );
    rows.push(vec![0.0; 40]);
    // Blocks too small to scale (1/d would overflow), a subnormal one, and ones with
    // infinities or NaNs.
    rows.push(vec![-1e-37, 3e-38, 1e-40, -1e-45, 0.0, 2e-38]);
    rows.push(vec![1.0, f32::INFINITY, -2.0, f32::NAN, f32::NEG_INFINITY]);
    for row in rows {
        let mut got = vec![ActBlock::default(); row.len().div_ceil(BLOCK)];
        quantize_row(&row, &mut got);
        for (chunk, block) in row.chunks(BLOCK).zip(&got) {
            let (d, q, s) = quantize_activations(chunk);
            let want = ActBlock { q, d, s };
            // (`d` by its bits: an infinite block has d = inf.)
            assert_eq!(
                (block.q, block.s, block.d.to_bits()),
                (want.q, want.s, want.d.to_bits()),
                "{chunk:?}"
            );
        }
    }
}
