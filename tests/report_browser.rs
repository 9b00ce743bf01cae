//! The report in a real browser: headless Chromium (Debian's `chromium`
//! package) opens `index.html` from disk, logs no console message (no script
//! error, no CSP or resource complaint), renders the page (its DOM has the
//! token grid and the figures, every image a file next to the page) and takes
//! a screenshot, kept at `target/tmp/report-screenshot.png`.
//!
//! Without Chromium the tests say so on the terminal and pass, unless
//! `MOEC_REQUIRE_CHROMIUM=1` (set by `.ci/run`), where they fail.

mod report_common;

use report_common::{moec, trace_fixture};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Chromium's path, or `None` after saying why (failing when it is required).
fn chromium() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)));
    let found = on_path
        .chain([PathBuf::from("/usr/bin/chromium")])
        .find(|p| p.is_file());
    if found.is_none() {
        let why = "chromium is not installed (Debian: apt-get install chromium): the report's browser test did not run";
        assert!(
            std::env::var("MOEC_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "{why}, and MOEC_REQUIRE_CHROMIUM=1 requires it"
        );
        // Straight to the terminal: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
    }
    found
}

/// What Chromium made of a page.
struct Loaded {
    /// The console messages it logged (`INFO:CONSOLE` lines of its log).
    console: Vec<String>,
    /// The page's DOM after loading.
    dom: String,
}

/// Opens `page` headless twice: once logging to stderr while taking a
/// screenshot into `screenshot`, once dumping the DOM.
fn load(browser: &Path, page: &Path, screenshot: &Path) -> Loaded {
    let url = format!("file://{}", page.display());
    let shot = format!("--screenshot={}", screenshot.display());
    let (_, log) = run(browser, &["--enable-logging=stderr", "--v=0", &shot, &url]);
    let console = log
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect();
    // The DOM is stdout alone: Chromium's stderr warnings must not land inside it.
    let (dom, _) = run(browser, &["--dump-dom", &url]);
    Loaded { console, dom }
}

/// Runs headless Chromium with `args`, stopped after a minute; its stdout and stderr.
fn run(browser: &Path, args: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let (out, err) = (
        tempfile::NamedTempFile::new().unwrap(),
        tempfile::NamedTempFile::new().unwrap(),
    );
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chromium {args:?} ran for over a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let read = |f: &tempfile::NamedTempFile| std::fs::read_to_string(f.path()).unwrap();
    (read(&out), read(&err))
}

#[test]
fn the_report_loads_in_chromium_without_console_errors() {
    let Some(browser) = chromium() else { return };
    let (dir, trace) = trace_fixture();
    let report = dir.path().join("report");
    let o = moec(&[
        "report".as_ref(),
        trace.as_os_str(),
        "-o".as_ref(),
        report.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);
    let loaded = load(&browser, &report.join("index.html"), &screenshot);
    assert!(loaded.console.is_empty(), "console: {:#?}", loaded.console);
    let png = std::fs::read(&screenshot).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    assert!(
        loaded.dom.contains("<h1>Routing report</h1>"),
        "{}",
        loaded.dom
    );
    assert!(loaded.dom.contains("<table class=\"tokens\">"));
    let images: Vec<&str> = loaded
        .dom
        .split("<img src=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(images.len(), 3, "{images:?}");
    for src in images {
        assert!(
            report.join(src).is_file(),
            "the page shows `{src}`, not a file next to it"
        );
    }
    let _ = writeln!(std::io::stderr(), "screenshot: {}", screenshot.display());
}

#[test]
fn a_console_error_fails_the_check() {
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("index.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><title>x</title><script>console.error('boom'); nope();</script>",
    )
    .unwrap();
    let loaded = load(&browser, &page, &dir.path().join("shot.png"));
    assert_eq!(loaded.console.len(), 2, "{:#?}", loaded.console);
    assert!(
        loaded.console[1].contains("Uncaught ReferenceError"),
        "{:#?}",
        loaded.console
    );
}
