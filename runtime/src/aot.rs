//! Standalone executables (`moec build`): the description of the scheduled graph
//! stored in one ([`Artifact`]), and the entry point its `main` calls
//! ([`moec_aot_main`], defined in the runtime's static library).
//!
//! `moec build` serializes an [`Artifact`] (serde JSON) into an object file beside
//! the kernels, their address table and their names
//! (`moec_compiler::backend::clif::object`), and links it against
//! `libmoec_runtime.a`. The executable then needs no parser and no pass: the
//! entry parses its own command line (`--weights W --input X --output Y
//! [--threads N]`), binds the weights and reads the inputs with the code and the
//! errors of `moec run`, checks that the graph and the linked kernels agree, and
//! runs [`CpuModel`] on the linked kernels, so its outputs are those of
//! `moec run --backend cpu`.
//!
//! The agreement check, before any kernel runs: the artifact was written by this
//! version of moec, every matmul node of the graph maps to a linked kernel, and
//! that kernel's name (which spells out its whole `MatmulShape`) is the name of
//! the node's shape. Every failure is a message on stderr and exit status 1.

use crate::cpu::{CpuModel, KernelFn};
use crate::io::{read_tensors, write_tensors};
use crate::weights::{bind, WeightSource};
use moec_compiler::backend::clif::{self, Program};
use moec_compiler::ir::{Graph, NodeIndex};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// What an artifact's `format` must be for this runtime to read it.
const FORMAT: &str = concat!("moec-aot ", env!("CARGO_PKG_VERSION"));

/// The scheduled graph an executable runs, and which linked kernel each matmul calls.
#[derive(Serialize, Deserialize)]
pub struct Artifact {
    /// The format (and moec version) that wrote it.
    format: String,
    graph: Graph,
    /// `(matmul node, index into the kernel table)`, by node.
    kernel_of: Vec<(NodeIndex, usize)>,
}

impl Artifact {
    /// Describes `g`, whose kernels `program` (`clif::lower` of `g`) holds.
    pub fn new(g: &Graph, program: &Program) -> Artifact {
        let mut kernel_of: Vec<_> = program.by_node.iter().map(|(&n, &k)| (n, k)).collect();
        kernel_of.sort();
        Artifact {
            format: FORMAT.to_string(),
            graph: g.clone(),
            kernel_of,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("graphs serialize")
    }

    /// Reads an artifact and checks it against the linked functions' `names` (one
    /// per table entry, in order); returns the graph and each matmul node's kernel.
    fn load(bytes: &[u8], names: &[&str]) -> Result<(Graph, HashMap<NodeIndex, usize>), String> {
        let mismatch = |what: String| {
            format!("this executable is inconsistent ({what}); rebuild it with `moec build`")
        };
        let a: Artifact = serde_json::from_slice(bytes)
            .map_err(|e| mismatch(format!("its graph does not read: {e}")))?;
        if a.format != FORMAT {
            return Err(mismatch(format!(
                "written as `{}`, this runtime reads `{FORMAT}`",
                a.format
            )));
        }
        let g = a.graph;
        let kernel_of: HashMap<NodeIndex, usize> = a.kernel_of.into_iter().collect();
        for n in g.g.node_indices() {
            let want = clif::matmul_shape(&g, n).map(|s| s.function_names());
            let linked = kernel_of.get(&n).map(|&k| {
                let per = want.as_ref().map_or(1, |w| w.len());
                names.get(k * per..(k + 1) * per).unwrap_or_default()
            });
            match (&want, linked) {
                (None, None) => {}
                (Some(want), Some(linked)) if want == linked => {}
                (want, linked) => {
                    let list = |l: &[&str]| {
                        if l.is_empty() {
                            "missing".into()
                        } else {
                            l.join(", ")
                        }
                    };
                    return Err(mismatch(format!(
                        "node {} needs kernel {}, the linked one is {}",
                        n.index(),
                        want.as_ref().map_or("none".into(), |w| w.join(", ")),
                        linked.map_or("none".into(), list)
                    )));
                }
            }
        }
        Ok((g, kernel_of))
    }
}

/// The executable's options.
struct Options {
    weights: PathBuf,
    input: PathBuf,
    output: PathBuf,
    threads: Option<usize>,
}

fn usage(program: &str) -> String {
    format!(
        "usage: {program} --weights FILE --input FILE --output FILE [--threads N]\n\
         Runs the MoE graph built into this executable (`moec build`) on the CPU:\n\
         weights: a safetensors file, a sharded `model.safetensors.index.json`, or a directory;\n\
         input: a safetensors file with one tensor per input; the outputs are written to --output."
    )
}

/// Parses `args` (without the program name).
fn parse(program: &str, args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let (mut weights, mut input, mut output, mut threads) = (None, None, None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let slot = match flag.as_str() {
            "--weights" => &mut weights,
            "--input" => &mut input,
            "--output" => &mut output,
            "--threads" => &mut threads,
            _ => return Err(format!("unknown argument `{flag}`\n{}", usage(program))),
        };
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage(program)))?;
        *slot = Some(value);
    }
    let need = |v: Option<String>, flag: &str| {
        v.map(PathBuf::from)
            .ok_or_else(|| format!("missing {flag} FILE\n{}", usage(program)))
    };
    let threads = threads
        .map(|t| {
            t.parse::<usize>()
                .map_err(|_| format!("--threads: expected a number, found `{t}`"))
        })
        .transpose()?;
    Ok(Options {
        weights: need(weights, "--weights")?,
        input: need(input, "--input")?,
        output: need(output, "--output")?,
        threads,
    })
}

/// Runs the executable: `code` is the linked table, `names` its functions' names.
fn run(code: &[KernelFn], names: &str, artifact: &[u8]) -> Result<(), String> {
    let mut args = std::env::args();
    let program = args.next().unwrap_or_else(|| "moec-built".into());
    let args: Vec<String> = args.collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", usage(&program));
        return Ok(());
    }
    let opts = parse(&program, args)?;
    let names: Vec<&str> = names.lines().collect();
    let (g, kernel_of) = Artifact::load(artifact, &names)?;
    let source = WeightSource::open(&opts.weights).map_err(|e| e.to_string())?;
    let weights = bind(&g.weights, &source).map_err(|e| e.to_string())?;
    let inputs = read_tensors(&opts.input).map_err(|e| e.to_string())?;
    // SAFETY: `Artifact::load` checked that every matmul node maps to a kernel
    // whose table entries are named after its shape's functions, and `moec build`
    // emitted the table and the names from the same `Program`, in the same order.
    let model = unsafe { CpuModel::linked(&g, &weights, kernel_of, code) }?;
    let model = match opts.threads {
        Some(t) => model.with_threads(t),
        None => model,
    };
    let outputs = model
        .run(&inputs)
        .map_err(|e| format!("{}: {e}", opts.input.display()))?;
    write_tensors(&opts.output, &outputs).map_err(|e| e.to_string())?;
    println!("wrote {}", opts.output.display());
    Ok(())
}

/// The entry point of an executable built by `moec build` (see
/// `backend::clif::object::ENTRY`): its `main` passes the table of the kernels'
/// functions, their names (`names_len` bytes, a line each) and the artifact. Returns the
/// exit status: 0, 1 on any error (reported on stderr), 101 on a panic.
///
/// # Safety
/// `table` must hold one `KernelFn` per line of `names`, and the byte ranges must
/// be valid for the life of the process (they are the object's read-only data).
#[no_mangle]
pub unsafe extern "C" fn moec_aot_main(
    table: *const KernelFn,
    names: *const u8,
    names_len: usize,
    artifact: *const u8,
    artifact_len: usize,
) -> i32 {
    // SAFETY: the caller's contract above.
    let (names, artifact) = unsafe {
        (
            std::slice::from_raw_parts(names, names_len),
            std::slice::from_raw_parts(artifact, artifact_len),
        )
    };
    let names = String::from_utf8_lossy(names);
    // SAFETY: one table entry per name (the caller's contract).
    let code = unsafe { std::slice::from_raw_parts(table, names.lines().count()) };
    match std::panic::catch_unwind(|| run(code, &names, artifact)) {
        Ok(Ok(())) => 0,
        Ok(Err(message)) => {
            eprintln!("{}", message.trim_end());
            1
        }
        Err(_) => 101,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moec_compiler::backend::clif::Target;
    use moec_compiler::lower::lower_source;
    use moec_compiler::passes::{run_pipeline, Upto};
    use moec_compiler::print;

    #[test]
    fn artifact_round_trips_and_must_agree_with_the_linked_kernels() {
        let sets = [("hidden_size", "16"), ("intermediate_size", "32")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let source = include_str!("../../examples/mixtral.moe");
        let mut g = lower_source(source, &sets).unwrap().graph;
        run_pipeline(&mut g, Upto::All, true).unwrap();
        let program = clif::lower(&g, &Target::default());
        let bytes = Artifact::new(&g, &program).to_bytes();
        let names: Vec<String> = program
            .kernels
            .iter()
            .flat_map(|k| k.shape.function_names())
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(names.len() >= 2, "{names:?}");

        let (back, kernel_of) = Artifact::load(&bytes, &names).unwrap();
        assert_eq!(print::text(&back), print::text(&g));
        assert_eq!(kernel_of, program.by_node);

        let reversed: Vec<&str> = names.iter().rev().copied().collect();
        let fewer = &names[..names.len() - 1];
        let stale = String::from_utf8(bytes.clone())
            .unwrap()
            .replace(FORMAT, "moec-aot 0.0.0");
        for (bytes, names, says) in [
            (&bytes[..], &reversed[..], "needs kernel matmul_"),
            (&bytes[..], fewer, "the linked one is missing"),
            (stale.as_bytes(), &names[..], "moec-aot 0.0.0"),
            (b"{", &names[..], "does not read"),
        ] {
            let err = Artifact::load(bytes, names).err().unwrap();
            assert!(err.contains(says) && err.contains("moec build"), "{err}");
        }
    }
}
