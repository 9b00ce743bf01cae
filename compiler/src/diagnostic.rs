//! Errors as plain data with spans, and their rendering with a source snippet.
//!
//! Everything that can go wrong with a spec becomes a [`Diagnostic`]; it is
//! rendered (by miette, without colour, so tests can compare the text) only at
//! the API boundary. A diagnostic has a [`Severity`]: errors stop the command,
//! warnings and notes are told and the command goes on; the rendering opens with
//! `×` for an error, `warning:` or `note:` otherwise.

use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource, Report,
};
use moec_grammar::{ParseError, Span};

/// How much a diagnostic matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The input is wrong; nothing is produced.
    Error,
    /// The input is accepted but probably not what was meant (extra tensors in a
    /// file, weights that overflow f16).
    Warning,
    /// Worth knowing; nothing is wrong (a training-only field ignored).
    Note,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// The primary location and what to say there.
    pub span: Option<(Span, String)>,
    /// Other places worth showing (e.g. the first definition of a duplicate).
    pub related: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: None,
            related: Vec::new(),
            help: None,
        }
    }
    pub fn at(span: Span, message: impl Into<String>, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span: Some((span, label.into())),
            ..Diagnostic::error(message)
        }
    }
    /// A warning with no location (a runtime input, not the spec).
    pub fn warning(message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(message).with_severity(Severity::Warning)
    }
    pub fn with_severity(mut self, severity: Severity) -> Diagnostic {
        self.severity = severity;
        self
    }
    pub fn with_related(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.related.push((span, label.into()));
        self
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Renders with the file name, `line:col` and a snippet of `source`.
    pub fn render(&self, file: &str, source: &str) -> String {
        let mut diag =
            MietteDiagnostic::new(self.message.clone()).with_severity(match self.severity {
                Severity::Error => miette::Severity::Error,
                Severity::Warning => miette::Severity::Warning,
                Severity::Note => miette::Severity::Advice,
            });
        let mut labels = Vec::new();
        if let Some((span, label)) = &self.span {
            labels.push(LabeledSpan::new_primary_with_span(
                Some(label.clone()),
                to_miette(*span, source),
            ));
        }
        for (span, label) in &self.related {
            labels.push(LabeledSpan::new_with_span(
                Some(label.clone()),
                to_miette(*span, source),
            ));
        }
        diag = diag.with_labels(labels);
        if let Some(help) = &self.help {
            diag = diag.with_help(help.clone());
        }
        let report = Report::new(diag).with_source_code(NamedSource::new(file, source.to_string()));
        let mut out = String::new();
        let mut theme = GraphicalTheme::unicode_nocolor();
        theme.characters.warning = "warning:".into();
        theme.characters.advice = "note:".into();
        let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
        if handler.render_report(&mut out, report.as_ref()).is_err() {
            out = format!("{}: {}", self.severity, self.message);
        }
        // When there is no span, still say which file the error is about.
        if self.span.is_none() {
            out = format!("{file}: {}", out.trim_start());
        }
        out
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        })
    }
}

impl From<ParseError> for Diagnostic {
    fn from(e: ParseError) -> Diagnostic {
        Diagnostic::at(e.span, e.message, e.label)
    }
}

fn to_miette(span: Span, source: &str) -> miette::SourceSpan {
    let start = span.start.min(source.len());
    let len = span.len().min(source.len() - start);
    (start, len).into()
}
