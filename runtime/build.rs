//! Sets `MOEC_SOURCE_HASH`: a hash of every source that goes into the runtime
//! library — the runtime's, the compiler's and the grammar's sources and manifests,
//! and the workspace's `Cargo.lock` (the dependencies' versions). The artifact format
//! string carries it, so `moec build` links only a runtime library built from the
//! same sources as itself (kernel ABI, weight packing, and every fix since), and a
//! library from any other build refuses the artifact.

use std::path::{Path, PathBuf};

/// Directories (walked recursively) and files hashed, relative to the runtime crate.
const SOURCES: &[&str] = &[
    "src",
    "Cargo.toml",
    "../compiler/src",
    "../compiler/Cargo.toml",
    "../grammar/src",
    "../grammar/Cargo.toml",
    "../Cargo.lock",
];

/// Every file under `path` (itself, if a file), sorted.
fn files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e} (the source hash reads it)", path.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            files(&entry, out);
        }
    } else {
        out.push(path.to_path_buf());
    }
}

fn main() {
    let mut all = Vec::new();
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
        files(Path::new(source), &mut all);
    }
    // FNV-1a, 64-bit: stable across Rust releases, unlike std's hasher. Each file's
    // path goes in before its bytes, so moving code between files changes the hash.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in &all {
        let bytes = std::fs::read(file)
            .unwrap_or_else(|e| panic!("{}: {e} (the source hash reads it)", file.display()));
        let name = file.to_string_lossy();
        for b in name.bytes().chain([0]).chain(bytes) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=MOEC_SOURCE_HASH={hash:016x}");
}
