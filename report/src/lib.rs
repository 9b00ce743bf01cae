//! Routing reports (`moec report TRACE -o DIR`, `docs/trace.md`): a routing
//! trace written by `moec trace` turned into a page a person reads in a
//! browser — `DIR/index.html` (self-contained, opens from disk with no
//! network) and the SVG figures it shows, next to it.
//!
//! `trace.rs` reads and checks the file, `stats.rs` derives what the page
//! shows (top experts, entropy spreads, co-selection, drops, frequent tokens),
//! `figures.rs` draws the figures with plotters, `html.rs` writes the page.
//!
//! A crate of its own so that the runtime, which `moec build` links into every
//! executable, carries no drawing code; it only reads the trace's format
//! string from it.

mod figures;
mod html;
mod stats;
mod trace;

pub use figures::SCALE_STEPS;
pub use trace::RoutingTrace;

use std::path::{Path, PathBuf};

/// What [`write`] wrote.
#[derive(Debug)]
pub struct Written {
    /// `index.html` first, then the figures.
    pub files: Vec<PathBuf>,
    pub tokens: usize,
    pub blocks: usize,
}

/// Reads the trace at `trace` and writes the report into `dir` (created if missing).
/// Errors name the file they are about.
pub fn write(trace: &Path, dir: &Path) -> Result<Written, String> {
    let at = |what: &Path, e: String| format!("{}: {e}", what.display());
    let bytes = std::fs::read(trace).map_err(|e| at(trace, format!("cannot read it ({e})")))?;
    let routing = RoutingTrace::from_bytes(&bytes).map_err(|e| at(trace, e))?;
    let figures = figures::draw(&routing)?;
    std::fs::create_dir_all(dir).map_err(|e| at(dir, format!("cannot create it ({e})")))?;
    let source = trace.file_name().map_or_else(
        || trace.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let page = html::page(&routing, &source, &figures);
    let mut files = vec![(dir.join("index.html"), page)];
    files.extend(figures.into_iter().map(|f| (dir.join(f.file), f.svg)));
    for (path, text) in &files {
        std::fs::write(path, text).map_err(|e| at(path, format!("cannot write it ({e})")))?;
    }
    Ok(Written {
        files: files.into_iter().map(|(p, _)| p).collect(),
        tokens: routing.token_count(),
        blocks: routing.layers(),
    })
}
