//! Which instruction set the matmuls' inner loops use, chosen once when a model
//! is loaded (an executable built by `moec build` chooses when it starts).
//!
//! - [`MatmulIsa::Portable`]: the Cranelift kernels (128-bit vectors, any host
//!   Cranelift supports), with the `gemm` crate for segments of many rows;
//! - [`MatmulIsa::Avx512`]: the `std::arch` AVX-512 tiles of `avx512/` for every
//!   segment, weights packed 16 columns wide, followed by the Cranelift epilogue
//!   kernel (bias, activation, GLU, row weights);
//! - [`MatmulIsa::Amx`]: the AVX-512 tiles, and AMX-BF16 tiles for segments of
//!   many rows with bf16 weights, whose activations are then rounded to bf16 (as
//!   transformers' and llama.cpp's bf16 matmuls round them). Never the default:
//!   asked for by name (`--matmul-isa amx`).
//!
//! The first two compute the same sums in f32 (bf16 weights widened exactly),
//! so they differ only in the order of additions.

/// The inner loops of the CPU backend's matmuls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulIsa {
    Portable,
    Avx512,
    Amx,
}

impl MatmulIsa {
    /// The fastest exact choice this host runs (not [`MatmulIsa::Amx`], which
    /// rounds activations).
    pub fn host() -> MatmulIsa {
        if avx512_supported() {
            MatmulIsa::Avx512
        } else {
            MatmulIsa::Portable
        }
    }

    /// Every choice this host can run (tests run them all).
    pub fn available() -> Vec<MatmulIsa> {
        let mut isas = vec![MatmulIsa::Portable];
        if avx512_supported() {
            isas.push(MatmulIsa::Avx512);
            if super::avx512::amx::supported() {
                isas.push(MatmulIsa::Amx);
            }
        }
        isas
    }

    /// Its name in `moec bench` output and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            MatmulIsa::Portable => "portable (cranelift 128-bit + gemm crate)",
            MatmulIsa::Avx512 => "avx512",
            MatmulIsa::Amx => "avx512 + amx-bf16 (bf16 activations)",
        }
    }
}

/// Whether the host has AVX-512F (the detection is cached by std).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn avx512_supported() -> bool {
    false
}

/// Whether the host has AVX512-VNNI (with AVX-512F/BW), which the integer
/// tiles of q8_0 / q4_0 weights need.
#[cfg(target_arch = "x86_64")]
pub(crate) fn vnni_supported() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bw") && has!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn vnni_supported() -> bool {
    false
}
