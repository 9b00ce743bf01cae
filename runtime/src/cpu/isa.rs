//! Which instruction set the matmuls' inner loops use, chosen once when a model
//! is loaded (an executable built by `moec build` chooses when it starts).
//!
//! - [`MatmulIsa::Portable`]: the Cranelift kernels (128-bit vectors, any host
//!   Cranelift supports), with the `gemm` crate for segments of many rows;
//! - [`MatmulIsa::Avx512`]: the `std::arch` AVX-512 tiles of `avx512/` for every
//!   segment, weights packed 16 columns wide, followed by the Cranelift epilogue
//!   kernel (bias, activation, GLU, row weights).
//!
//! Both compute the same sums in f32 (bf16 weights widened exactly), so they
//! differ only in the order of additions.

/// The inner loops of the CPU backend's matmuls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulIsa {
    Portable,
    Avx512,
}

impl MatmulIsa {
    /// The fastest this host runs.
    pub fn host() -> MatmulIsa {
        MatmulIsa::available()
            .last()
            .copied()
            .unwrap_or(MatmulIsa::Portable)
    }

    /// Every choice this host can run, slowest first (tests run them all).
    pub fn available() -> Vec<MatmulIsa> {
        let mut isas = vec![MatmulIsa::Portable];
        if avx512_supported() {
            isas.push(MatmulIsa::Avx512);
        }
        isas
    }

    /// Its name in `moec bench` output and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            MatmulIsa::Portable => "portable (cranelift 128-bit + gemm crate)",
            MatmulIsa::Avx512 => "avx512",
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
