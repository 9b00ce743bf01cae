//! AMX-BF16 tiles for matmuls with bf16 weights and many rows (`MatmulIsa::Amx`):
//! `tdpbf16ps` multiplies 16 rows × 32 k of bf16 activations by 32 k × 16
//! columns of bf16 weight pairs into 16 × 16 f32 sums. The wide bf16 layout
//! (`mod.rs`) is already the B-tile layout: 16 consecutive steps of a wide panel
//! (64 bytes each) are one B tile.
//!
//! Activations are rounded to bf16 (to nearest, ties to even) first, as
//! transformers' bf16 models and llama.cpp's bf16 matmuls do: this path is
//! therefore not exact against f32 activations, and is chosen only on request.
//! Sums accumulate in f32 inside the tiles.
//!
//! A block is covered like the AVX-512 tiles (`tiles.rs`): k in slices of `KC`,
//! then pairs of wide panels, then pairs of 16-row tiles, four sum tiles
//! (tmm0–3) resumed from the block's sums after the first slice; activations in
//! tmm4–5, weights in tmm6–7; the first row tiles prefetch the next panel
//! pair's weights. The instructions are emitted with `asm!` (the AMX
//! intrinsics are not stable Rust); Linux must first grant the process the
//! tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).

#[cfg(target_arch = "x86_64")]
use std::arch::asm;
use std::sync::OnceLock;

/// Rows of an A (activation) tile and of a sum tile.
pub const TILE_ROWS: usize = 16;
/// k-steps of one `tdpbf16ps`: 16 pairs.
pub const TILE_K: usize = 32;
/// k-steps per slice: as long as a row pair's activations and a panel pair's
/// weights (128 KB each) stay in L2, so that the sums, which do not, are
/// reloaded seldom (512 took 7% longer over a 512-token prefill, on a
/// Sapphire Rapids-class VM).
const KC: usize = 2048;

/// Whether this process can run AMX-BF16 tiles: the CPU has AMX-TILE and
/// AMX-BF16 and the kernel granted the tile state (asked once).
pub fn supported() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| cpu_has_amx() && request_tile_state())
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx() -> bool {
    // CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call reads only its two integer arguments;
    // the kernel clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn request_tile_state() -> bool {
    false
}

/// `v` rounded to the nearest bf16 (ties to even), as bits; NaN stays NaN.
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16 into `out` (as many values as both hold), each as [`to_bf16`]
/// rounds it: 16 at a time with AVX-512 integer operations where the host has AVX-512F
/// (every AMX host does), bit for bit the same.
pub fn round_row(x: &[f32], out: &mut [u16]) {
    let n = x.len().min(out.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        done = n - n % 16;
        // SAFETY: the host has AVX-512F; both slices hold `done` values.
        unsafe { round_vectors(&x[..done], &mut out[..done]) };
    }
    for (d, v) in out[done..n].iter_mut().zip(&x[done..n]) {
        *d = to_bf16(*v);
    }
}

/// [`round_row`] on whole vectors of 16.
///
/// # Safety
/// AVX-512F; `x.len() == out.len()`, a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_vectors(x: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    for (xs, os) in x.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
        let bits = _mm512_loadu_si512(xs.as_ptr().cast());
        let high = _mm512_srli_epi32::<16>(bits);
        // Ties to even: add 0x7FFF plus the lowest kept bit, keep the high half.
        let odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
        let sum = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), odd);
        let rounded = _mm512_srli_epi32::<16>(sum);
        // NaN stays NaN: its high half with the quiet bit set.
        let v = _mm512_castsi512_ps(bits);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        let quiet = _mm512_or_si512(high, _mm512_set1_epi32(0x40));
        let halves = _mm512_mask_mov_epi32(rounded, nan, quiet);
        _mm256_storeu_si256(os.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(halves));
    }
}

#[cfg(target_arch = "x86_64")]
/// The tile configuration (`ldtilecfg`'s 64 bytes): palette 1; tmm0–3 sums
/// (16 rows × 64 bytes), tmm4–5 activations (16 rows × 64 bytes), tmm6–7
/// weights (16 pair rows × 64 bytes).
#[repr(C, align(64))]
struct Config([u8; 64]);

#[cfg(target_arch = "x86_64")]
impl Config {
    fn new() -> Config {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = TILE_ROWS as u8;
        }
        Config(c)
    }
}

/// Where a block's operands are.
#[cfg(target_arch = "x86_64")]
pub struct Block {
    /// Rows in bf16 (`rows` of them, a multiple of 16, `k` values each; zero rows pad).
    pub x: *const u16,
    pub rows: usize,
    /// k-steps (a multiple of `TILE_K`).
    pub k: usize,
    /// The block's first wide panel (bf16 pairs) and the elements between panels.
    pub w: *const u32,
    pub stride: usize,
    pub panels: usize,
    /// The block's sums: `rows` rows of `panels·16` floats, `ldacc` apart.
    pub acc: *mut f32,
    pub ldacc: usize,
}

/// Prefetches the B tiles of two panels at `w` (`stride` elements apart): 16
/// rows of 64 bytes each.
#[cfg(target_arch = "x86_64")]
unsafe fn prefetch_tiles(w: *const u32, stride: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for panel in [w, w.wrapping_add(stride)] {
        for row in 0..TILE_ROWS {
            _mm_prefetch::<_MM_HINT_T0>(panel.wrapping_add(row * 16).cast());
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// Computes a block's sums.
///
/// # Safety
/// [`supported`] returned true; `b` describes readable activations and panels
/// and writable sums of the sizes its fields give; `rows` and `k` are multiples
/// of 16 and `TILE_K`.
pub unsafe fn sums(b: &Block) {
    let config = Config::new();
    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    for k0 in (0..b.k).step_by(KC) {
        let k1 = (k0 + KC).min(b.k);
        for q in (0..b.panels).step_by(2) {
            // The first row tiles fetch the next panel pair's slice into cache.
            let next = (q + 2 < b.panels).then(|| b.w.add((q + 2) * b.stride));
            for r in (0..b.rows).step_by(2 * TILE_ROWS) {
                step(b, (k0, k1), q, r, next.filter(|_| r == 0));
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// One pair of 16-row tiles (`r`) by one pair of wide panels (`q`) over k-steps `k0..k1`:
/// resumed from (or zeroed at k 0) and stored back to the block's sums; `next`, the tiles
/// to prefetch alongside (offset by the same k-steps).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn step(b: &Block, (k0, k1): (usize, usize), q: usize, r: usize, next: Option<*const u32>) {
    let xs = b.k * 2; // bytes between activation rows
    let cs = b.ldacc * 4; // bytes between rows of sums
    let two = q + 1 < b.panels;
    let rows2 = r + TILE_ROWS < b.rows;
    let c = |i: usize, j: usize| b.acc.add((r + i * TILE_ROWS) * b.ldacc + (q + j) * 16);
    if k0 == 0 {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    } else {
        asm!("tileloadd tmm0, [{} + {}*1]", in(reg) c(0, 0), in(reg) cs, options(nostack, readonly));
        if two {
            asm!("tileloadd tmm1, [{} + {}*1]", in(reg) c(0, 1), in(reg) cs, options(nostack, readonly));
        }
        if rows2 {
            asm!("tileloadd tmm2, [{} + {}*1]", in(reg) c(1, 0), in(reg) cs, options(nostack, readonly));
            if two {
                asm!("tileloadd tmm3, [{} + {}*1]", in(reg) c(1, 1), in(reg) cs, options(nostack, readonly));
            }
        }
    }
    for kk in (k0..k1).step_by(TILE_K) {
        let a = b.x.add(r * b.k + kk);
        let w = b.w.add(q * b.stride + kk / 2 * 16);
        if let Some(next) = next {
            prefetch_tiles(next.wrapping_add(kk / 2 * 16), b.stride);
        }
        asm!("tileloadd tmm4, [{} + {}*1]", in(reg) a, in(reg) xs, options(nostack, readonly));
        asm!("tileloadd tmm6, [{} + {}*1]", in(reg) w, in(reg) 64usize, options(nostack, readonly));
        asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem));
        if two {
            let w1 = w.add(b.stride);
            asm!("tileloadd tmm7, [{} + {}*1]", in(reg) w1, in(reg) 64usize, options(nostack, readonly));
            asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem));
        }
        if rows2 {
            let a1 = a.add(TILE_ROWS * b.k);
            asm!("tileloadd tmm5, [{} + {}*1]", in(reg) a1, in(reg) xs, options(nostack, readonly));
            asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem));
            if two {
                asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
            }
        }
    }
    asm!("tilestored [{} + {}*1], tmm0", in(reg) c(0, 0), in(reg) cs, options(nostack));
    if two {
        asm!("tilestored [{} + {}*1], tmm1", in(reg) c(0, 1), in(reg) cs, options(nostack));
    }
    if rows2 {
        asm!("tilestored [{} + {}*1], tmm2", in(reg) c(1, 0), in(reg) cs, options(nostack));
        if two {
            asm!("tilestored [{} + {}*1], tmm3", in(reg) c(1, 1), in(reg) cs, options(nostack));
        }
    }
}
