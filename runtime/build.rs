//! Sets `MOEC_ABI_HASH`: a hash of the sources that fix what an executable built by
//! `moec build` shares with the runtime library it links — the kernels' calling
//! convention and table (`backend/clif`), the packed weight layout they read
//! (`clif/pack.rs`, the runtime's packing and calls in `cpu/`), and the artifact
//! itself (`aot.rs`). The artifact format string carries it, so a library from a
//! build whose kernels or packing differ refuses the artifact, even at one version.

use std::path::Path;

const SOURCES: &[&str] = &[
    "../compiler/src/backend/clif/mod.rs",
    "../compiler/src/backend/clif/matmul.rs",
    "../compiler/src/backend/clif/pack.rs",
    "../compiler/src/backend/clif/object.rs",
    "src/cpu/jit.rs",
    "src/cpu/matmul.rs",
    "src/aot.rs",
];

fn main() {
    // FNV-1a, 64-bit: stable across Rust releases, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
        let bytes = std::fs::read(Path::new(source))
            .unwrap_or_else(|e| panic!("{source}: {e} (the ABI hash reads it)"));
        for b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=MOEC_ABI_HASH={hash:016x}");
}
