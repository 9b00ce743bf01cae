//! Every bad input in `tests/cases/errors/` fails to lower, without panicking, and
//! its rendered diagnostic (file:line:col, source snippet, labels, help) matches
//! the snapshot. A case that needs `--set` says so on its first line:
//! `// args: --set hiden_size=3`.

use moec_compiler::lower::lower_source;
use std::path::Path;

#[test]
fn errors_render_with_their_location() {
    insta::glob!("../../tests/cases/errors", "*.moe", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let file = repo_relative(path);
        let overrides = overrides(&source, &file);
        let diagnostic = match lower_source(&source, &overrides) {
            Ok(_) => panic!("{file} lowered without an error"),
            Err(d) => d,
        };
        // Only a bad `--set` may fail without pointing into the source.
        assert!(
            diagnostic.span.is_some() || !overrides.is_empty(),
            "{file}: the error has no location: {}",
            diagnostic.message
        );
        for (span, _) in diagnostic.span.iter().chain(&diagnostic.related) {
            assert!(
                span.start <= span.end && span.end <= source.len(),
                "{file}: span {span:?} is outside the file"
            );
        }
        let rendered = diagnostic.render(&file, &source);
        assert!(
            rendered.contains(&file),
            "{file}: the rendering does not name the file:\n{rendered}"
        );
        insta::assert_snapshot!(rendered);
    });
}

/// `tests/cases/errors/NAME.moe`, the path as a user at the repository root types it.
fn repo_relative(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    format!("tests/cases/errors/{name}")
}

/// The `--set name=value` pairs of a first line `// args: --set a=1 --set b=2`.
fn overrides(source: &str, file: &str) -> Vec<(String, String)> {
    let Some(args) = source
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("// args:"))
    else {
        return Vec::new();
    };
    let mut words = args.split_whitespace();
    let mut out = Vec::new();
    while let Some(flag) = words.next() {
        assert_eq!(
            flag, "--set",
            "{file}: only `--set name=value` is supported in `// args:`"
        );
        let pair = words
            .next()
            .unwrap_or_else(|| panic!("{file}: `--set` without a value"));
        let (name, value) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("{file}: `--set {pair}` is not name=value"));
        out.push((name.to_string(), value.to_string()));
    }
    out
}
