//! Writing one WGSL module: the params uniform, storage bindings, helper
//! functions and token-dependent sizes, all through `fmt::Write` as the text is
//! produced (no templates, no editing of text already written).

use super::plan::{Access, Elem};
use crate::ir::{Dim, UnaryOp};
use std::fmt::{self, Write};

/// A kernel's source under construction. Binding 0 is always the params uniform.
pub(super) struct Module {
    pub text: String,
    /// Storage bindings declared so far (binding 0, the uniform, excluded).
    pub access: Vec<Access>,
    f16: bool,
}

/// One storage binding of a kernel.
#[derive(Clone, Copy)]
pub(super) struct Binding<'a> {
    pub name: &'a str,
    pub elem: Elem,
    pub writable: bool,
}

pub(super) fn read<'a>(name: &'a str, elem: Elem) -> Binding<'a> {
    Binding {
        name,
        elem,
        writable: false,
    }
}

pub(super) fn write<'a>(name: &'a str, elem: Elem) -> Binding<'a> {
    Binding {
        name,
        elem,
        writable: true,
    }
}

impl Module {
    /// Starts a module: `f16` enables half floats; `doc` is its opening comment.
    pub fn new(doc: &str, f16: bool) -> Result<Module, fmt::Error> {
        let mut m = Module {
            text: String::new(),
            access: Vec::new(),
            f16,
        };
        writeln!(m.text, "// {doc}")?;
        if f16 {
            writeln!(m.text, "enable f16;")?;
        }
        writeln!(
            m.text,
            "\nstruct Params {{\n    tokens: u32,\n    capacity: u32,\n    past: u32,\n    source: u32,\n}}\n"
        )?;
        writeln!(m.text, "@group(0) @binding(0) var<uniform> params: Params;")?;
        Ok(m)
    }

    pub fn uses_f16(&self) -> bool {
        self.f16
    }

    /// Declares the next storage binding.
    pub fn bind(&mut self, b: Binding) -> fmt::Result {
        let access = if b.writable { "read_write" } else { "read" };
        writeln!(
            self.text,
            "@group(0) @binding({}) var<storage, {access}> {}: array<{}>;",
            self.access.len() + 1,
            b.name,
            b.elem.wgsl()
        )?;
        self.access.push(if b.writable {
            Access::ReadWrite
        } else {
            Access::Read
        });
        Ok(())
    }

    pub fn bind_all(&mut self, bs: &[Binding]) -> fmt::Result {
        bs.iter().try_for_each(|b| self.bind(*b))
    }

    /// `fn act(x: f32) -> f32` for `u` (exact gelu through an erf approximation
    /// with absolute error below 1.5e-7, Abramowitz & Stegun 7.1.26).
    pub fn activation(&mut self, u: UnaryOp) -> fmt::Result {
        let body = match u {
            UnaryOp::Silu => "return x / (1.0 + exp(-x));",
            UnaryOp::Sigmoid => "return 1.0 / (1.0 + exp(-x));",
            UnaryOp::Relu => "return max(x, 0.0);",
            UnaryOp::GeluTanh => {
                "let u = clamp(0.7978845608 * (x + 0.044715 * x * x * x), -15.0, 15.0);\n    return 0.5 * x * (1.0 + tanh(u));"
            }
            UnaryOp::Gelu => {
                "let z = abs(x) * 0.7071067811865476;\n    let t = 1.0 / (1.0 + 0.3275911 * z);\n    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));\n    let erf_abs = 1.0 - poly * exp(-z * z);\n    return 0.5 * x * (1.0 + sign(x) * erf_abs);"
            }
        };
        writeln!(self.text, "\nfn act(x: f32) -> f32 {{\n    {body}\n}}")
    }

    /// Opens `main` with `tokens` bound; `size` is the workgroup size.
    pub fn main(&mut self, size: (u32, u32)) -> fmt::Result {
        writeln!(
            self.text,
            "\n@compute @workgroup_size({}, {})\nfn main(\n    @builtin(global_invocation_id) gid: vec3<u32>,\n    @builtin(local_invocation_id) lid: vec3<u32>,\n    @builtin(local_invocation_index) lix: u32,\n    @builtin(workgroup_id) wid: vec3<u32>,\n    @builtin(num_workgroups) groups: vec3<u32>,\n) {{\n    let tokens = params.tokens;",
            size.0, size.1
        )
    }

    /// Opens `main` as a grid-stride loop over `items` invocations (index `i`).
    pub fn stride_loop(&mut self, items: Dim, size: u32) -> fmt::Result {
        self.main((size, 1))?;
        writeln!(
            self.text,
            "    let count = {};\n    for (var i = gid.x; i < count; i += groups.x * {size}u) {{",
            dim(items)
        )
    }

    /// Closes a grid-stride loop and `main`.
    pub fn end_loop(&mut self) -> fmt::Result {
        writeln!(self.text, "    }}\n}}")
    }

    /// Closes `main`.
    pub fn end(&mut self) -> fmt::Result {
        writeln!(self.text, "}}")
    }

    /// `fn NAME(row: u32, k: u32) -> f32`: element `k` of row `row` of a matrix
    /// whose rows are split across the bindings `chunks`, `rows_per_chunk` whole
    /// rows of `row_len` elements each (the plan's weight split).
    pub fn chunk_reader(
        &mut self,
        name: &str,
        chunks: &[String],
        rows_per_chunk: u64,
        row_len: u64,
    ) -> fmt::Result {
        writeln!(self.text, "\nfn {name}(row: u32, k: u32) -> f32 {{")?;
        if chunks.len() == 1 {
            return writeln!(
                self.text,
                "    return f32({}[row * {row_len}u + k]);\n}}",
                chunks[0]
            );
        }
        writeln!(
            self.text,
            "    let chunk = row / {rows_per_chunk}u;\n    let at = (row - chunk * {rows_per_chunk}u) * {row_len}u + k;\n    switch chunk {{"
        )?;
        for (c, chunk) in chunks.iter().enumerate() {
            let label = if c + 1 == chunks.len() {
                "default".to_string()
            } else {
                format!("case {c}u")
            };
            writeln!(
                self.text,
                "        {label}: {{\n            return f32({chunk}[at]);\n        }}"
            )?;
        }
        writeln!(self.text, "    }}\n}}")
    }

    /// Appends lines as they are.
    pub fn line(&mut self, s: &str) -> fmt::Result {
        writeln!(self.text, "{s}")
    }
}

impl Write for Module {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.text.write_str(s)
    }
}

/// A dim as a WGSL `u32` expression of `tokens`, `params.past` (the positions the
/// KV caches held before this call) and `params.source` (an encoder-decoder
/// model's source length, which a decoder's encoder inputs have as rows).
pub(super) fn dim(d: Dim) -> String {
    let by_tokens = match (d.per_token, d.fixed) {
        (0, n) => format!("{n}u"),
        (1, 0) => "tokens".into(),
        (p, 0) => format!("({p}u * tokens)"),
        (1, n) => format!("(tokens + {n}u)"),
        (p, n) => format!("({p}u * tokens + {n}u)"),
    };
    let with_past = match d.per_past {
        0 => by_tokens,
        1 => format!("(params.past + {by_tokens})"),
        p => format!("({p}u * params.past + {by_tokens})"),
    };
    match (d.per_source, d.per_token, d.per_past, d.fixed) {
        (0, ..) => with_past,
        (1, 0, 0, 0) => "params.source".into(),
        (s, 0, 0, 0) => format!("({s}u * params.source)"),
        (1, ..) => format!("(params.source + {with_past})"),
        (s, ..) => format!("({s}u * params.source + {with_past})"),
    }
}

/// A float literal WGSL accepts for any finite f32 (`-inf` becomes the lowest finite value).
pub(super) fn float(v: f32) -> String {
    if v.is_finite() {
        format!("{v:?}")
    } else if v > 0.0 {
        "3.4028235e38".into()
    } else {
        "-3.4028235e38".into()
    }
}
