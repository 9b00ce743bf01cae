//! JIT-compiling the CLIF kernels for the host with cranelift-jit.

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use moec_compiler::backend::clif::{Program, Target};

/// The kernel ABI (see `moec_compiler::backend::clif::matmul`): pointers and
/// pointer-sized integers, strides in floats.
pub type KernelFn = unsafe extern "C" fn(
    x: *const f32,
    ldx: isize,
    w: *const f32,
    bias: *const f32,
    rw: *const f32,
    ldrw: isize,
    out: *mut f32,
    ldo: isize,
    rows: isize,
    p_begin: isize,
    p_end: isize,
);

/// The host ISA, optimising for speed, with its features detected (FMA, SSE4.1, AVX);
/// `pic`: position-independent code, for an object linked into an executable.
pub fn host_isa(pic: bool) -> Result<OwnedTargetIsa, String> {
    let mut flags = settings::builder();
    let pic = if pic { "true" } else { "false" };
    for (k, v) in [
        ("opt_level", "speed"),
        ("use_colocated_libcalls", "false"),
        ("is_pic", pic),
    ] {
        flags
            .set(k, v)
            .map_err(|e| format!("cranelift flag {k}: {e}"))?;
    }
    cranelift_native::builder()
        .map_err(|e| format!("the CPU backend does not support this host: {e}"))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| format!("cranelift: {e}"))
}

/// What the codegen may assume about `isa`.
pub fn target(isa: &OwnedTargetIsa) -> Target {
    Target {
        pointer: isa.pointer_type(),
        call_conv: isa.default_call_conv(),
        fma: isa.has_native_fma(),
    }
}

/// Compiled kernels; the module owns their code, so it lives as long as they do.
pub struct Jit {
    _module: JITModule,
    /// The matmul kernels, in `program.kernels` order.
    pub kernels: Vec<KernelFn>,
    /// Their epilogue kernels, in the same order.
    pub epilogues: Vec<KernelFn>,
}

/// Compiles every kernel of `program`, and its epilogue kernel, for `isa`.
pub fn compile(program: &Program, isa: OwnedTargetIsa) -> Result<Jit, String> {
    let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
    let mut ids = Vec::new();
    let functions = program.kernels.iter().flat_map(|k| k.functions());
    for (name, func) in functions {
        let id = module
            .declare_function(&name, Linkage::Local, &func.signature)
            .map_err(|e| format!("cranelift: {name}: {e}"))?;
        let mut ctx = module.make_context();
        ctx.func = func.clone();
        module
            .define_function(id, &mut ctx)
            .map_err(|e| format!("cranelift: {name}: {e:?}"))?;
        ids.push(id);
    }
    module
        .finalize_definitions()
        .map_err(|e| format!("cranelift: {e}"))?;
    let code: Vec<KernelFn> = ids
        .into_iter()
        .map(|id| {
            let code = module.get_finalized_function(id);
            // SAFETY: `code` is the finalized machine code of a function built by
            // `matmul::build` or `matmul::build_epilogue`, whose signature is
            // exactly `KernelFn`'s.
            unsafe { std::mem::transmute::<*const u8, KernelFn>(code) }
        })
        .collect();
    let (kernels, epilogues) = by_kernel(&code);
    Ok(Jit {
        _module: module,
        kernels,
        epilogues,
    })
}

/// Splits the code of every kernel's functions (in `Kernel::functions` order:
/// matmul, epilogue) into the matmul kernels and their epilogue kernels.
pub fn by_kernel(code: &[KernelFn]) -> (Vec<KernelFn>, Vec<KernelFn>) {
    let kernels = code.iter().step_by(2).copied().collect();
    let epilogues = code.iter().skip(1).step_by(2).copied().collect();
    (kernels, epilogues)
}
