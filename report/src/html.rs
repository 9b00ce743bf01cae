//! The report's page: one self-contained HTML file (inline CSS, no script, no
//! network) that shows the trace's summary, the prompt's tokens coloured by
//! their top expert at every block, the figures (as `<img>` of the SVG files
//! next to it), the per-block losses, the dropped slots and each expert's most
//! frequent tokens. Every string from the trace (token text, block names, the
//! spec's path) goes through [`escape`]; nothing is drawn here (`figures.rs`).

use crate::figures::Figure;
use crate::stats::{self, Spread};
use crate::trace::RoutingTrace;
use std::fmt::Write;

/// Most frequent tokens listed per expert and block.
const FREQUENT: usize = 5;
/// Dropped slots listed before the rest are only counted.
const DROPS_LISTED: usize = 200;

/// Text made safe as HTML element content and as a double- or single-quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A token's text with its whitespace made visible, escaped.
fn token(text: &str) -> String {
    if text.is_empty() {
        return "∅".into();
    }
    let visible: String = text
        .chars()
        .map(|c| match c {
            ' ' => '␣',
            '\n' => '↵',
            '\t' => '⇥',
            c => c,
        })
        .collect();
    escape(&visible)
}

/// Expert `e`'s colour: hues a golden angle apart, so neighbours differ.
fn colour(e: usize) -> String {
    format!("hsl({:.0}, 65%, 74%)", (e as f64 * 137.508) % 360.0)
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-width: 100%; }
table.tokens td { text-align: center; white-space: pre; padding: 1px 4px; }
table.tokens td small { display: block; color: #333; font-size: 10px; }
table.tokens td.dropped { outline: 2px dashed #b00; outline-offset: -2px; }
table.tokens th { font-weight: normal; color: #555; white-space: nowrap; }
.swatch { display: inline-block; min-width: 1.8em; margin: 1px; padding: 0 3px; text-align: center; font-size: 12px; }
code, .tok { font-family: ui-monospace, monospace; }
.tok { white-space: pre; background: #f2f2f2; padding: 0 2px; }
figure { margin: 12px 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
";

/// The whole page for `trace`, read from the file named `source`, showing `figures`
/// (files next to it).
pub fn page(trace: &RoutingTrace, source: &str, figures: &[Figure]) -> String {
    let mut h = String::new();
    let spreads = stats::entropy_per_block(trace);
    let drops = stats::drops(trace);
    // Writing to a String cannot fail.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Routing report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(source)
    );
    summary(&mut h, trace, source);
    token_grid(&mut h, trace);
    for f in figures {
        let (file, caption) = (escape(f.file), escape(f.caption));
        let _ = writeln!(
            h,
            "<figure><img src=\"{file}\" alt=\"{caption}\"><figcaption>{caption}</figcaption></figure>"
        );
    }
    losses(&mut h, trace, &spreads, &drops);
    drop_list(&mut h, trace, &drops);
    frequent_tokens(&mut h, trace);
    h.push_str("</body>\n</html>\n");
    h
}

fn summary(h: &mut String, trace: &RoutingTrace, source: &str) {
    let _ = write!(
        h,
        "<h1>Routing report</h1>\n<p>Trace <code>{}</code>{}: {} tokens, {} MoE blocks, {} experts, top-{} routing.</p>\n",
        escape(source),
        trace
            .spec
            .as_deref()
            .map(|s| format!(" of <code>{}</code>", escape(s)))
            .unwrap_or_default(),
        trace.token_count(),
        trace.layers(),
        trace.experts,
        trace.k
    );
    let text: String = trace
        .tokens
        .iter()
        .map(|t| token(t))
        .collect::<Vec<_>>()
        .join("</span> <span class=\"tok\">");
    let _ = writeln!(h, "<p>Tokens: <span class=\"tok\">{text}</span></p>");
}

/// Blocks in rows, tokens in columns; each cell coloured by the token's top expert.
fn token_grid(h: &mut String, trace: &RoutingTrace) {
    h.push_str("<h2>Tokens by top expert</h2>\n<p>Each cell is a token at a block, coloured by the expert with the largest routing weight (its number below the token; a dashed outline when capacity dropped it); hover for every selected expert and its weight.</p>\n<p>");
    for e in 0..trace.experts {
        let _ = write!(
            h,
            "<span class=\"swatch\" style=\"background: {}\">{e}</span>",
            colour(e)
        );
    }
    h.push_str("</p>\n<div class=\"scroll\"><table class=\"tokens\">\n<tr><th>block</th>");
    for t in 0..trace.token_count() {
        let _ = write!(h, "<th>{t}</th>");
    }
    h.push_str("</tr>\n");
    for l in 0..trace.layers() {
        let _ = write!(h, "<tr><th title=\"{}\">{l}</th>", escape(&trace.blocks[l]));
        for (t, text) in trace.tokens.iter().enumerate() {
            let chosen: Vec<String> = trace
                .slots(t, l)
                .filter(|(e, _, _)| *e >= 0)
                .map(|(e, w, dropped)| {
                    format!("{e}: {w:.3}{}", if dropped { " (dropped)" } else { "" })
                })
                .collect();
            let title = escape(&format!("token {t}, block {l}: {}", chosen.join(", ")));
            let dropped = trace.slots(t, l).next().is_some_and(|(_, _, d)| d);
            match stats::top_expert(trace, t, l) {
                Some(e) => {
                    let _ = write!(
                        h,
                        "<td{} style=\"background: {}\" title=\"{title}\">{}<small>{e}</small></td>",
                        if dropped { " class=\"dropped\"" } else { "" },
                        colour(e),
                        token(text)
                    );
                }
                None => {
                    let _ = write!(
                        h,
                        "<td title=\"{title}\">{}<small>–</small></td>",
                        token(text)
                    );
                }
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table></div>\n");
}

fn losses(h: &mut String, trace: &RoutingTrace, spreads: &[Spread], drops: &[stats::Drop]) {
    h.push_str(
        "<h2>Blocks</h2>\n<table>\n<tr><th>block</th><th>name</th><th>aux loss</th><th>z-loss</th>\
         <th>entropy mean</th><th>entropy min–max</th><th>drops</th></tr>\n",
    );
    for (l, name) in trace.blocks.iter().enumerate() {
        let s = spreads[l];
        let _ = writeln!(
            h,
            "<tr><td class=\"num\">{l}</td><td><code>{}</code></td><td class=\"num\">{:.4}</td>\
             <td class=\"num\">{:.4}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}–{:.3}</td>\
             <td class=\"num\">{}</td></tr>",
            escape(name),
            trace.aux_loss[l],
            trace.z_loss[l],
            s.mean,
            s.min,
            s.max,
            drops.iter().filter(|d| d.block == l).count()
        );
    }
    h.push_str(
        "</table>\n<p>Aux loss: Switch's load-balancing loss E·Σ f·P (1 when balanced); \
         z-loss: mean of logsumexp(router logits)².</p>\n",
    );
}

fn drop_list(h: &mut String, trace: &RoutingTrace, drops: &[stats::Drop]) {
    h.push_str("<h2>Drops</h2>\n");
    if drops.is_empty() {
        h.push_str("<p>No drops: every selected expert ran.</p>\n");
        return;
    }
    let _ = writeln!(
        h,
        "<p>{} selected slots were dropped by capacity (the expert was chosen, then not run).</p>",
        drops.len()
    );
    h.push_str("<table>\n<tr><th>block</th><th>token</th><th>text</th><th>expert</th><th>weight</th></tr>\n");
    for d in drops.iter().take(DROPS_LISTED) {
        let _ = writeln!(
            h,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td><span class=\"tok\">{}</span></td>\
             <td class=\"num\">{}</td><td class=\"num\">{:.3}</td></tr>",
            d.block,
            d.token,
            token(&trace.tokens[d.token]),
            d.expert,
            d.weight
        );
    }
    h.push_str("</table>\n");
    if drops.len() > DROPS_LISTED {
        let _ = writeln!(h, "<p>… and {} more.</p>", drops.len() - DROPS_LISTED);
    }
}

fn frequent_tokens(h: &mut String, trace: &RoutingTrace) {
    let _ = writeln!(
        h,
        "<h2>Most frequent tokens per expert</h2>\n<p>The {FREQUENT} token strings each expert ran most often, per block.</p>"
    );
    for (l, experts) in stats::frequent_tokens(trace, FREQUENT).iter().enumerate() {
        let _ = writeln!(
            h,
            "<details{}><summary>block {l} <code>{}</code></summary>\n<table>\n\
             <tr><th>expert</th><th>tokens taken</th><th>most frequent</th></tr>",
            if l == 0 { " open" } else { "" },
            escape(&trace.blocks[l])
        );
        for (e, list) in experts.iter().enumerate() {
            let listed: Vec<String> = list
                .iter()
                .map(|(text, n)| format!("<span class=\"tok\">{}</span> ×{n}", token(text)))
                .collect();
            let _ = writeln!(
                h,
                "<tr><td class=\"num\"><span class=\"swatch\" style=\"background: {}\">{e}</span></td>\
                 <td class=\"num\">{}</td><td>{}</td></tr>",
                colour(e),
                trace.expert_counts[l * trace.experts + e],
                listed.join(", ")
            );
        }
        h.push_str("</table>\n</details>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::tests::small;

    #[test]
    fn token_text_cannot_inject_markup() {
        let mut t = small();
        t.tokens = vec![
            "<script>alert(1)</script>".into(),
            "\" onmouseover=\"x' <img src=x onerror=y>".into(),
        ];
        t.blocks[0] = "</code><b>".into();
        let page = page(&t, "<a>.safetensors", &[]);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(!page.contains("\" onmouseover"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("&lt;a&gt;.safetensors"), "{page}");
    }

    #[test]
    fn the_page_lists_drops_and_frequent_tokens() {
        let page = page(&small(), "t.safetensors", &[]);
        assert!(page.contains("1 selected slots were dropped"), "{page}");
        // Block 1, token 1, expert 1, weight 0.1.
        assert!(page.contains("<td class=\"num\">1</td><td class=\"num\">1</td><td><span class=\"tok\">a</span></td><td class=\"num\">1</td><td class=\"num\">0.100</td>"), "{page}");
        assert!(page.contains("<span class=\"tok\">a</span> ×2"), "{page}");
        let mut none = small();
        none.dropped = vec![false; 8];
        assert!(super::page(&none, "t", &[]).contains("No drops"));
    }

    #[test]
    fn whitespace_in_tokens_is_visible() {
        assert_eq!(token(" e\n"), "␣e↵");
        assert_eq!(token(""), "∅");
    }
}
