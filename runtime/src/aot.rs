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
//! The agreement check, before any kernel runs: the artifact was written by a moec
//! built from the same sources as this runtime ([`FORMAT`]), its
//! graph passes the verifier (so the interpreter semantics the CPU model falls
//! back on cannot index out of bounds), every matmul node of the graph maps to a linked kernel, and
//! that kernel's name (which spells out its whole `MatmulShape`) is the name of
//! the node's shape; and every matmul built with bf16 kernels (`moec build
//! --weights` of a bf16 checkpoint) has its weights in bf16 in the checkpoint it is
//! given, so none is silently rounded. Every failure is a message on stderr and
//! exit status 1.

use crate::cpu::{CpuModel, KernelFn};
use crate::generate::command::{self, Request};
use crate::io::{read_tensors, write_tensors};
use crate::session::{open_checkpoint, CpuOptions, Engine, Model};
use crate::weights::{check, Checked};
use moec_compiler::backend::clif::{self, Program};
use moec_compiler::ir::{Graph, NodeIndex, Op, WeightFormat};
use moec_compiler::passes;
use moec_compiler::storage;
use moec_compiler::verify::verify;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// What an artifact's `format` must be for this runtime to read it: the version,
/// and the hash of the sources the runtime library is built from (`build.rs`:
/// kernel ABI, weight packing and everything else). `moec build` also looks for
/// it in a runtime library before linking that library.
pub const FORMAT: &str = concat!(
    "moec-aot ",
    env!("CARGO_PKG_VERSION"),
    " src ",
    env!("MOEC_SOURCE_HASH")
);

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
    pub fn load(
        bytes: &[u8],
        names: &[&str],
    ) -> Result<(Graph, HashMap<NodeIndex, usize>), String> {
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
        verify(&g).map_err(|e| mismatch(format!("its graph does not verify: {e}")))?;
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

/// What the executable was asked to do.
enum Mode {
    /// `--input X --output Y`: outputs for the inputs in a file, like `moec run`.
    Run { input: PathBuf, output: PathBuf },
    /// `--prompt TEXT | --prompt-ids IDS`: text from a language model, like `moec generate`.
    Generate(Request),
}

/// The executable's options.
struct Options {
    weights: PathBuf,
    mode: Mode,
    threads: Option<usize>,
}

fn usage(program: &str) -> String {
    format!(
        "usage: {program} --weights W --input FILE --output FILE [--threads N]\n\
         \x20      {program} --weights DIR (--prompt TEXT | --prompt-ids 1,2,3) [--max-new-tokens N]\n\
         \x20          [--temperature T [--top-k K] [--top-p P] [--seed S]] [--json] [--threads N]\n\
         Runs the model built into this executable (`moec build`) on the CPU, as `moec run` and\n\
         `moec generate` do: weights are a safetensors file, a sharded index or a checkpoint\n\
         directory (with tokenizer.json and generation_config.json for generation); the input\n\
         file holds one tensor per input, and the outputs are written to --output."
    )
}

/// Parses `args` (without the program name).
fn parse(program: &str, args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    const FLAGS: &[&str] = &[
        "--weights",
        "--input",
        "--output",
        "--threads",
        "--prompt",
        "--prompt-ids",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
    ];
    let mut values: HashMap<&str, String> = HashMap::new();
    let mut json = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--json" {
            json = true;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let Some(&known) = FLAGS.iter().find(|f| **f == flag) else {
            return Err(format!("unknown argument `{flag}`\n{}", usage(program)));
        };
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage(program)))?;
        values.insert(known, value);
    }
    fn number<T: std::str::FromStr>(
        values: &HashMap<&str, String>,
        flag: &str,
    ) -> Result<Option<T>, String> {
        values
            .get(flag)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| format!("{flag}: expected a number, found `{v}`"))
            })
            .transpose()
    }
    let path = |flag: &str| {
        values
            .get(flag)
            .map(PathBuf::from)
            .ok_or_else(|| format!("missing {flag} FILE\n{}", usage(program)))
    };
    let weights = path("--weights")?;
    let prompting = values.contains_key("--prompt") || values.contains_key("--prompt-ids");
    let mode = if prompting {
        Mode::Generate(Request {
            weights: weights.clone(),
            prompt: command::prompt(
                values.get("--prompt").cloned(),
                values.get("--prompt-ids").map(String::as_str),
            )?,
            max_new_tokens: number(&values, "--max-new-tokens")?.unwrap_or(32),
            sampling: command::sampling(
                number(&values, "--temperature")?,
                number(&values, "--top-k")?,
                number(&values, "--top-p")?,
                number(&values, "--seed")?.unwrap_or(0),
            )?,
            json,
        })
    } else {
        Mode::Run {
            input: path("--input")?,
            output: path("--output")?,
        }
    };
    Ok(Options {
        weights,
        mode,
        threads: number(&values, "--threads")?,
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
    let engine = Engine::Cpu(CpuOptions {
        threads: opts.threads,
        ..CpuOptions::default()
    });
    // Loads the weights (memory checked first) and prepares the linked kernels.
    let open = |g: &Graph, weights: &Path| -> Result<Model, String> {
        // Read tensor by tensor as the kernels' panels are packed.
        let source = open_checkpoint(g, weights, engine, None).map_err(|e| e.to_string())?;
        let checked = check(&g.weights, &source).map_err(|e| e.to_string())?;
        check_kept_bf16(g, &checked, source.path())?;
        // SAFETY: `Artifact::load` checked that every matmul node maps to a kernel
        // whose table entries are named after its shape's functions, and `moec build`
        // emitted the table and the names from the same `Program`, in the same order.
        // `passes::last_token` keeps node indices, so `kernel_of` holds for its graph too.
        let cpu = unsafe { CpuModel::linked(g, &checked, kernel_of.clone(), code) }?;
        let cpu = match opts.threads {
            Some(t) => cpu.with_threads(t),
            None => cpu,
        };
        Ok(Model::from_cpu(g.clone(), cpu))
    };
    match &opts.mode {
        Mode::Run { input, output } => {
            let inputs = read_tensors(input).map_err(|e| e.to_string())?;
            let model = Rc::new(open(&g, &opts.weights)?);
            let outputs = model
                .session(None)
                .run(&inputs)
                .map_err(|e| format!("{}: {e}", input.display()))?;
            write_tensors(output, &outputs).map_err(|e| e.to_string())?;
            println!("wrote {}", output.display());
        }
        Mode::Generate(request) => {
            let mut last_token = g.clone();
            passes::last_token::run(&mut last_token)?;
            command::run(
                request,
                || {
                    Ok(Box::new(
                        Rc::new(open(&last_token, &request.weights)?).session(None),
                    ))
                },
                &mut std::io::stdout(),
            )?;
        }
    }
    Ok(())
}

/// Refuses the `checked` checkpoint (at `path`) when a matmul `g` stores as bf16 (kept from the
/// bf16 checkpoint it was built with) does not have all its weights in bf16 there:
/// packing them as bf16 would round them.
fn check_kept_bf16(g: &Graph, checked: &Checked, path: &Path) -> Result<(), String> {
    let mut held = g.clone();
    held.stored.clear();
    storage::keep_bf16(&mut held, |id| checked.format(id) == WeightFormat::Bf16);
    let rounded = g
        .stored
        .iter()
        .find(|(n, f)| **f == WeightFormat::Bf16 && held.stored.get(n) != Some(f));
    let Some((&n, _)) = rounded else {
        return Ok(());
    };
    // The first weight under the matmul's weight operand, to name it.
    let mut stack: Vec<NodeIndex> = g.operands(n).get(1).map(|v| v.node).into_iter().collect();
    let mut key = None;
    while let Some(m) = stack.pop() {
        if let Op::Weight { id, .. } = g.node(m).op {
            key = g.weights.get(id).map(|d| d.tensor.clone());
            break;
        }
        stack.extend(g.operands(m).iter().map(|v| v.node));
    }
    Err(format!(
        "{}: this executable was built (`moec build --weights`) for a checkpoint that holds \
         `{}` and the other weights of its matmul in bf16, and this one does not: build it \
         again with --weights pointing at this checkpoint",
        path.display(),
        key.as_deref().unwrap_or("the weights")
    ))
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
        // A damaged graph: the first output reads a port its node does not have.
        let mut damaged = Artifact::new(&g, &program);
        damaged.graph.outputs[0].1.port = 9;
        let unverified = String::from_utf8(damaged.to_bytes()).unwrap();
        for (bytes, names, says) in [
            (&bytes[..], &reversed[..], "needs kernel matmul_"),
            (&bytes[..], fewer, "the linked one is missing"),
            (stale.as_bytes(), &names[..], "moec-aot 0.0.0"),
            (b"{", &names[..], "does not read"),
            (unverified.as_bytes(), &names[..], "does not verify"),
        ] {
            let err = Artifact::load(bytes, names).err().unwrap();
            assert!(err.contains(says) && err.contains("moec build"), "{err}");
        }
    }
}
