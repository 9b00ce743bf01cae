//! `moec build SPEC -o EXE`: a standalone executable, compiled ahead of time.
//!
//! Runs the pass pipeline (`--passes none` skips it), compiles the CPU backend's
//! kernels for this machine's CPU (its features, like `-march=native`) into an
//! object file together with the serialized scheduled graph
//! (`backend::clif::object`, `moec_runtime::aot`), and links that with the
//! system C compiler (`$CC`, else `cc`) against the runtime's static library
//! `libmoec_runtime.a`. The executable runs `EXE --weights W --input X --output Y`
//! with the code of `moec run --backend cpu`, without the parser or the passes.
//!
//! With `--weights DIR`, the checkpoint's config.json supplies params and its
//! weight files' headers (no tensor is read) which matmuls it holds in bf16: those
//! keep bf16 panels and kernels (`keep_checkpoint_bf16`, as `moec generate` packs
//! them), and the executable refuses a checkpoint that does not hold them in bf16
//! (`aot`). A directory without weight files gives f32 kernels.
//!
//! The library is `--runtime-lib FILE`, else `$MOEC_RUNTIME_LIB`, else the one of
//! `libmoec_runtime.a` and `deps/libmoec_runtime-*.a` beside the `moec` executable
//! (where cargo puts it when it builds moec) that comes from moec's own build: it
//! must hold this moec's artifact format string (`aot::FORMAT`: the version and a
//! hash of every source of the runtime library), so it is built from the same
//! sources as this moec: it reads the artifact it is linked with and runs the same
//! code as `moec run`. A library from another build (an older checkout's, say) is
//! refused by name, not linked.

use super::{ConfigArgs, PassArgs, SpecArgs};
use moec_compiler::backend::clif::{self, object};
use moec_compiler::ir::Graph;
use moec_runtime::aot::{Artifact, FORMAT};
use moec_runtime::cpu::{host_isa, target};
use moec_runtime::weights::{keep_checkpoint_bf16, WeightErrorKind, WeightSource};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    passes: PassArgs,
    /// The executable to write.
    #[arg(short = 'o', long = "output", value_name = "EXE")]
    output: PathBuf,
    /// The runtime library to link (default: $MOEC_RUNTIME_LIB, else libmoec_runtime.a beside moec).
    #[arg(long, value_name = "FILE")]
    runtime_lib: Option<PathBuf>,
}

/// The libraries a Rust static library needs from the system
/// (`rustc --print native-static-libs`), and dropping unused sections.
#[cfg(target_os = "macos")]
const SYSTEM_LIBS: &[&str] = &["-lSystem", "-lc", "-lm", "-Wl,-dead_strip"];
#[cfg(not(target_os = "macos"))]
const SYSTEM_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
    "-Wl,--gc-sections",
];

const LIB: &str = "libmoec_runtime.a";

pub fn main(args: Args) -> Result<(), String> {
    let upto = super::upto(args.passes.passes, None)?;
    let mut g = super::compile(&args.spec, args.config.weights.as_deref(), upto)?.graph;
    if let Some(dir) = &args.config.weights {
        keep_checkpoint_formats(&mut g, dir)?;
    }
    let lib = runtime_lib(args.runtime_lib)?;
    let isa = host_isa(true)?;
    let program = clif::lower(&g, &target(&isa));
    let artifact = Artifact::new(&g, &program).to_bytes();
    let bytes = object::emit(&program, isa, &artifact)?;
    let exe = &args.output;
    let obj = PathBuf::from(format!("{}.o", exe.display()));
    std::fs::write(&obj, bytes).map_err(|e| format!("{}: {e}", obj.display()))?;
    let linked = link(&obj, &lib, exe);
    // The object is only an intermediate; a failure to remove it changes nothing.
    let _ = std::fs::remove_file(&obj);
    linked?;
    let size = std::fs::metadata(exe).map_or(0, |m| m.len());
    println!(
        "built {} ({} kernel{}, {:.1} MiB)",
        exe.display(),
        program.kernels.len(),
        if program.kernels.len() == 1 { "" } else { "s" },
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Stores as bf16 the matmuls whose weights the checkpoint at `dir` holds in bf16
/// (headers only); nothing when `dir` has no weight files.
fn keep_checkpoint_formats(g: &mut Graph, dir: &Path) -> Result<(), String> {
    match WeightSource::open(dir) {
        Ok(source) => keep_checkpoint_bf16(g, &source).map_err(|e| e.to_string()),
        Err(e) if matches!(*e.kind, WeightErrorKind::NoCheckpoint) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Links `obj` and `lib` into `exe` with `$CC` (split at whitespace) or `cc`.
fn link(obj: &Path, lib: &Path, exe: &Path) -> Result<(), String> {
    let cc = std::env::var("CC")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| "cc".into());
    let mut words = cc.split_whitespace();
    let program = words.next().expect("not blank");
    let output = Command::new(program)
        .args(words)
        .arg(obj)
        .arg(lib)
        .arg("-o")
        .arg(exe)
        .args(SYSTEM_LIBS)
        .output()
        .map_err(|e| {
            format!(
                "cannot run the linker `{cc}`: {e}\n\
                 moec build links with the system C compiler: install one (`cc`), or set CC to it"
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "linking {} with `{cc}` failed ({}):\n{}",
            exe.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ));
    }
    Ok(())
}

/// Finds the runtime library (see the module doc).
fn runtime_lib(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let hint = "build it with `cargo build --release -p moec-runtime`";
    let given = given.or_else(|| std::env::var_os("MOEC_RUNTIME_LIB").map(PathBuf::from));
    if let Some(lib) = given {
        return match own_build(&lib) {
            Ok(true) => Ok(lib),
            Ok(false) => Err(format!(
                "{}: this runtime library is from another moec build (it does not read \
                 `{FORMAT}`); {hint}, or give the one built with this moec",
                lib.display()
            )),
            Err(e) => Err(format!("{}: {e}; {hint}", lib.display())),
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate moec itself: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let mut candidates = vec![dir.join(LIB)];
    if let Ok(entries) = std::fs::read_dir(dir.join("deps")) {
        let hashed = |name: &OsString| {
            let name = name.to_string_lossy();
            name.starts_with("libmoec_runtime-") && name.ends_with(".a")
        };
        candidates.extend(
            entries
                .flatten()
                .filter(|e| hashed(&e.file_name()))
                .map(|e| e.path()),
        );
    }
    let found: Vec<&PathBuf> = candidates.iter().filter(|p| p.is_file()).collect();
    found
        .iter()
        .find(|p| own_build(p).unwrap_or(false))
        .map(|p| (*p).clone())
        .ok_or_else(|| {
            let looked = if found.is_empty() {
                format!(
                    "none is in {} or {}",
                    dir.display(),
                    dir.join("deps").display()
                )
            } else {
                let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
                format!("{} are from other builds", names.join(", "))
            };
            format!(
                "cannot find the runtime library {LIB} of this moec build ({looked}); \
                 {hint}, or give --runtime-lib FILE (or set MOEC_RUNTIME_LIB)"
            )
        })
}

/// Whether the library at `path` holds this build's artifact format string.
fn own_build(path: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let needle = FORMAT.as_bytes();
    Ok(bytes.windows(needle.len()).any(|w| w == needle))
}
