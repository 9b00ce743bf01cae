//! `moec report` as a user runs it, on the trace `moec trace` writes for the
//! Mixtral fixture: the files, the figures (SVG that parses as XML, one cell
//! per value), the page's token grid against the top experts transformers
//! chose (`tests/fixtures/make_trace_fixtures.py`), token text escaped, and
//! located errors for files that are not traces (made by rewriting a trace). The page in a real browser is
//! `tests/report_browser.rs`.

mod report_common;

use report_common::{moec, root, trace_fixture};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn svg_rects(path: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let doc =
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(doc.root_element().has_tag_name("svg"));
    doc.descendants().filter(|n| n.has_tag_name("rect")).count()
}

#[test]
fn report_writes_a_page_and_figures_with_transformers_top_experts() {
    let (dir, trace) = trace_fixture();
    let out = dir.path().join("report");
    let o = moec(&[
        "report".as_ref(),
        trace.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = moec_runtime::io::read_tensors(
        &root().join("tests/fixtures/models/mixtral/trace.safetensors"),
    )
    .unwrap();
    let (selected, weights) = (&want["selected_experts"], &want["routing_weights"]);
    let (layers, tokens, k) = (selected.shape[0], selected.shape[1], selected.shape[2]);
    let experts = want["router_logits"].shape[2];
    for name in [
        "index.html",
        "expert_load.svg",
        "router_entropy.svg",
        "co_selection.svg",
    ] {
        assert!(out.join(name).is_file(), "{name}");
    }
    // The background, one cell per value, the colour scale.
    let steps = moec_report::SCALE_STEPS;
    assert_eq!(
        svg_rects(&out.join("expert_load.svg")),
        1 + layers * experts + steps
    );
    assert_eq!(
        svg_rects(&out.join("co_selection.svg")),
        1 + experts * experts + steps
    );
    svg_rects(&out.join("router_entropy.svg"));

    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    for figure in ["expert_load.svg", "router_entropy.svg", "co_selection.svg"] {
        assert!(page.contains(&format!("<img src=\"{figure}\"")), "{figure}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page reaches out"
    );
    // The token grid: blocks in rows, tokens in columns, each cell's expert in <small>.
    let grid: Vec<usize> = page
        .split("<small>")
        .skip(1)
        .map(|s| s[..s.find("</small>").unwrap()].parse().unwrap())
        .collect();
    assert_eq!(grid.len(), layers * tokens);
    let (selected, weights) = (i32s(selected), f32s(weights));
    for (l, t) in (0..layers).flat_map(|l| (0..tokens).map(move |t| (l, t))) {
        let slots = (l * tokens + t) * k..(l * tokens + t + 1) * k;
        let top = slots
            .max_by(|a, b| weights[*a].total_cmp(&weights[*b]))
            .unwrap();
        assert_eq!(
            grid[l * tokens + t],
            selected[top] as usize,
            "block {l} token {t}"
        );
    }
}

#[test]
fn token_text_is_escaped_in_the_page() {
    let (dir, trace) = trace_fixture();
    let evil = dir.path().join("evil.safetensors");
    rewrite(&trace, &evil, |_, meta| {
        let tokens: Vec<String> = serde_json::from_str(&meta["tokens"]).unwrap();
        let mut tokens = tokens;
        tokens[0] = "<script>alert(1)</script>".into();
        tokens[1] = "\"><img src=x onerror=alert(2)>".into();
        meta.insert("tokens".into(), serde_json::to_string(&tokens).unwrap());
    });
    let out = dir.path().join("report");
    let o = moec(&[
        "report".as_ref(),
        evil.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(!page.contains("<script"), "a script in the page");
    assert!(
        !page.contains("<img src=x"),
        "an injected element in the page"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("&quot;&gt;&lt;img␣src=x"));
}

/// The error `moec report FILE` gives, with the temporary directory's path replaced.
fn report_error(file: &std::path::Path, dir: &std::path::Path) -> String {
    let out = dir.join("report");
    let o = moec(&[
        "report".as_ref(),
        file.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "a report was written for a bad trace");
    err.replace(&dir.display().to_string(), "[dir]")
}

#[test]
fn files_that_are_not_traces_are_located_errors() {
    let (dir, trace) = trace_fixture();
    let d = dir.path();
    insta::assert_snapshot!(
        "missing",
        report_error("no/such/trace.safetensors".as_ref(), d)
    );
    let weights = std::path::Path::new("tests/fixtures/models/mixtral/model.safetensors");
    insta::assert_snapshot!("weights_file", report_error(weights, d));
    let text = d.join("text.safetensors");
    std::fs::write(&text, "hello").unwrap();
    insta::assert_snapshot!("not_safetensors", report_error(&text, d));

    let cases: [(&str, Edit); 5] = [
        ("other_format", &|_, m| {
            m.insert("format".into(), "moec-trace-0".into());
        }),
        ("entropy_shape", &|t, _| {
            let (_, shape, bytes) = t.get_mut("router_entropy").unwrap();
            shape[1] += 1;
            bytes.extend(vec![0; shape[0] * 4]);
        }),
        ("weights_dtype", &|t, _| {
            t.get_mut("routing_weights").unwrap().0 = Dtype::I32;
        }),
        ("expert_out_of_range", &|t, _| {
            t.get_mut("routed_experts").unwrap().2[..4].copy_from_slice(&9i32.to_le_bytes());
        }),
        ("tokens_count", &|_, m| {
            m.insert("tokens".into(), "[\"a\"]".into());
        }),
    ];
    for (name, edit) in cases {
        let bad = d.join(format!("{name}.safetensors"));
        rewrite(&trace, &bad, edit);
        insta::assert_snapshot!(name, report_error(&bad, d));
    }
}

type Edit<'a> = &'a dyn Fn(&mut Tables, &mut HashMap<String, String>);

fn i32s(t: &moec_compiler::tensor::Tensor) -> &[i32] {
    match &t.data {
        moec_compiler::tensor::TensorData::I32(v) => v,
        _ => panic!("expected i32"),
    }
}

fn f32s(t: &moec_compiler::tensor::Tensor) -> &[f32] {
    match &t.data {
        moec_compiler::tensor::TensorData::F32(v) => v,
        _ => panic!("expected f32"),
    }
}

/// A trace's tensors by name: dtype, shape, little-endian bytes.
pub type Tables = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// Writes `to`: the trace `from` after `edit` changed its tensors and metadata.
pub fn rewrite(
    from: &Path,
    to: &Path,
    edit: impl FnOnce(&mut Tables, &mut HashMap<String, String>),
) {
    let bytes = std::fs::read(from).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap_or_default();
    let mut tables: Tables = file
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tables, &mut meta);
    let views = tables.iter().map(|(name, (dtype, shape, data))| {
        (name, TensorView::new(*dtype, shape.clone(), data).unwrap())
    });
    safetensors::serialize_to_file(views, Some(meta), to).unwrap();
}
