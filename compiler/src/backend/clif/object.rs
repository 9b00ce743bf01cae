//! Ahead-of-time output (`moec build`): every kernel of a [`Program`] compiled
//! into one relocatable object file with cranelift-object, ready to be linked
//! into a standalone executable against the runtime's static library.
//!
//! Besides the kernels' functions (`Kernel::functions`: local symbols named after
//! their shapes) the object holds three local data objects and one exported function:
//! - the table: the functions' addresses, kernel by kernel in `program.kernels`
//!   order, each kernel's in `Kernel::functions` order;
//! - the names: each function's name on its own line, in the same order — the
//!   fingerprint the runtime checks the graph against before calling any kernel;
//! - the artifact: bytes the caller supplies (the runtime's serialized description
//!   of the graph), opaque here;
//! - `main()`, which calls [`ENTRY`]`(table, names, names_len, artifact,
//!   artifact_len)` and returns its status. [`ENTRY`] is the only symbol the object
//!   needs from outside; the runtime library defines it.
//!
//! What it does not do: choose the ISA (the caller passes it; position-independent
//! for a PIE executable) or link (the CLI runs the system linker).

use super::Program;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, DataDescription, DataId, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};

/// The function of the runtime library that the object's `main` calls:
/// `i32 ENTRY(table, names, names_len, artifact, artifact_len)`, every argument pointer-sized.
pub const ENTRY: &str = "moec_aot_main";

/// Compiles `program`'s kernels for `isa` into an object file holding them, their
/// table and names, `artifact`, and a `main` that hands all of them to [`ENTRY`].
pub fn emit(program: &Program, isa: OwnedTargetIsa, artifact: &[u8]) -> Result<Vec<u8>, String> {
    let ptr = isa.pointer_type();
    let err = |what: &str, e: &dyn std::fmt::Display| format!("cranelift: {what}: {e}");
    let builder = ObjectBuilder::new(isa, "moec_kernels", default_libcall_names())
        .map_err(|e| err("object", &e))?;
    let mut module = ObjectModule::new(builder);

    let mut table = DataDescription::new();
    let slot = ptr.bytes() as usize;
    // One slot at least: an empty data object may have no address of its own.
    let functions: Vec<_> = program.kernels.iter().flat_map(|k| k.functions()).collect();
    table.define(vec![0; slot * functions.len().max(1)].into_boxed_slice());
    table.set_align(slot as u64);
    let mut names = String::new();
    for (i, (name, func)) in functions.into_iter().enumerate() {
        let id = module
            .declare_function(&name, Linkage::Local, &func.signature)
            .map_err(|e| err(&name, &e))?;
        let mut ctx = module.make_context();
        ctx.func = func.clone();
        module
            .define_function(id, &mut ctx)
            .map_err(|e| format!("cranelift: {name}: {e:?}"))?;
        let f = module.declare_func_in_data(id, &mut table);
        table.write_function_addr((i * slot) as u32, f);
        names.push_str(&name);
        names.push('\n');
    }
    let table = define_data(&mut module, "moec_kernel_table", table)?;
    let names_len = names.len();
    let names = define_bytes(&mut module, "moec_kernel_names", names.into_bytes())?;
    let artifact_len = artifact.len();
    let artifact = define_bytes(&mut module, "moec_artifact", artifact.to_vec())?;

    let mut entry_sig = module.make_signature();
    entry_sig.params.extend([AbiParam::new(ptr); 5]);
    entry_sig.returns.push(AbiParam::new(types::I32));
    let entry = module
        .declare_function(ENTRY, Linkage::Import, &entry_sig)
        .map_err(|e| err(ENTRY, &e))?;
    let mut main_sig = module.make_signature();
    main_sig.returns.push(AbiParam::new(types::I32));
    let main = module
        .declare_function("main", Linkage::Export, &main_sig)
        .map_err(|e| err("main", &e))?;
    let mut ctx = module.make_context();
    ctx.func.signature = main_sig;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let block = b.create_block();
    b.switch_to_block(block);
    b.seal_block(block);
    let mut args = Vec::new();
    for (data, len) in [
        (table, None),
        (names, Some(names_len)),
        (artifact, Some(artifact_len)),
    ] {
        let gv = module.declare_data_in_func(data, b.func);
        args.push(b.ins().symbol_value(ptr, gv));
        if let Some(len) = len {
            args.push(b.ins().iconst(ptr, len as i64));
        }
    }
    let callee = module.declare_func_in_func(entry, b.func);
    let call = b.ins().call(callee, &args);
    let status = b.inst_results(call)[0];
    b.ins().return_(&[status]);
    b.finalize(module.isa().frontend_config());
    module
        .define_function(main, &mut ctx)
        .map_err(|e| format!("cranelift: main: {e:?}"))?;
    module.finish().emit().map_err(|e| err("object", &e))
}

/// Defines a local read-only data object `name` with contents `data`.
fn define_data(
    module: &mut ObjectModule,
    name: &str,
    data: DataDescription,
) -> Result<DataId, String> {
    let err = |e: cranelift_module::ModuleError| format!("cranelift: {name}: {e}");
    let id = module
        .declare_data(name, Linkage::Local, false, false)
        .map_err(err)?;
    module.define_data(id, &data).map_err(err)?;
    Ok(id)
}

/// Defines a local read-only byte string (never empty: a NUL is appended).
fn define_bytes(
    module: &mut ObjectModule,
    name: &str,
    mut bytes: Vec<u8>,
) -> Result<DataId, String> {
    bytes.push(0);
    let mut data = DataDescription::new();
    data.define(bytes.into_boxed_slice());
    define_data(module, name, data)
}
