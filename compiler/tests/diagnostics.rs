//! Diagnostics that are not errors: a spec in `tests/cases/notes/` lowers, and
//! each of its notes and warnings renders with its severity (`note:`, `warning:`),
//! never as an error (`×`).

use moec_compiler::diagnostic::{Diagnostic, Severity};
use moec_compiler::lower::lower_source;

#[test]
fn notes_render_as_notes() {
    insta::glob!("../../tests/cases/notes", "*.moe", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let file = format!("tests/cases/notes/{name}");
        let lowered = lower_source(&source, &[])
            .unwrap_or_else(|d| panic!("{file}: {}", d.render(&file, &source)));
        assert!(!lowered.notes.is_empty(), "{file}: no notes");
        let mut rendered = String::new();
        for note in &lowered.notes {
            assert_ne!(note.severity, Severity::Error, "{file}: {}", note.message);
            let text = note.render(&file, &source);
            assert!(!text.contains('×'), "{file}: rendered as an error:\n{text}");
            rendered.push_str(&text);
        }
        insta::assert_snapshot!(rendered);
    });
}

#[test]
fn a_warning_without_a_span_names_its_file() {
    let text = Diagnostic::warning("1 tensor in the file is not an input: `extra`")
        .render("in.safetensors", "");
    assert_eq!(
        text.trim_end(),
        "in.safetensors: warning: 1 tensor in the file is not an input: `extra`"
    );
}
