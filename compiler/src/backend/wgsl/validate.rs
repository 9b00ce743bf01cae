//! naga's WGSL front end and validator over every generated module, so a bad
//! kernel is caught at compile time (and in tests, with no adapter at all).

use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Parses and validates `source`; an error is a compiler bug, named by kernel.
pub(super) fn check(name: &str, source: &str, f16: bool) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| {
        format!(
            "internal compiler error: kernel `{name}` is not valid WGSL:\n{}",
            e.emit_to_string(source)
        )
    })?;
    let capabilities = if f16 {
        Capabilities::SHADER_FLOAT16
    } else {
        Capabilities::empty()
    };
    Validator::new(ValidationFlags::all(), capabilities)
        .validate(&module)
        .map_err(|e| {
            format!(
                "internal compiler error: kernel `{name}` fails validation:\n{}",
                e.emit_to_string(source)
            )
        })?;
    Ok(())
}
