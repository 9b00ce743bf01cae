//! The report's figures as SVG text, drawn with plotters' SVG backend: the
//! per-block expert load and the expert co-selection matrix (one heat-map
//! drawing with a colour scale), and router entropy per block (mean with the
//! min–max range across tokens, against the uniform router's ln E).
//!
//! Text is left to the viewer: the SVG backend writes `<text>` elements in a
//! generic `sans-serif` family, so no font file or font library is read here.
//! It does not write files or HTML (`lib.rs`, `html.rs`).

use crate::stats::{self, Spread};
use crate::trace::RoutingTrace;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use std::ops::Range;

/// The font of axis labels and legends (plotters scales the size down by about 1.5 in SVG).
const LABELS: (&str, u32) = ("sans-serif", 17);

/// Steps of a heat map's colour scale (each one `<rect>` next to the cells).
pub const SCALE_STEPS: usize = 24;

/// One figure of the report: its file name in the report's directory, its caption, its SVG text.
pub struct Figure {
    pub file: &'static str,
    pub caption: &'static str,
    pub svg: String,
}

/// Every figure of the report, in page order.
pub fn draw(trace: &RoutingTrace) -> Result<Vec<Figure>, String> {
    let spreads = stats::entropy_per_block(trace);
    Ok(vec![
        Figure {
            file: "expert_load.svg",
            caption: "Tokens each expert took at each block (after capacity).",
            svg: expert_load(trace)?,
        },
        Figure {
            file: "router_entropy.svg",
            caption: "Entropy of each token's router distribution: mean and range over the tokens, per block.",
            svg: router_entropy(trace, &spreads)?,
        },
        Figure {
            file: "co_selection.svg",
            caption: "How often two experts were selected for the same token at the same block, summed over blocks.",
            svg: co_selection(trace, &stats::co_selection(trace))?,
        },
    ])
}

/// Blocks in rows (block 0 on top), experts in columns: tokens each expert took.
fn expert_load(trace: &RoutingTrace) -> Result<String, String> {
    let values: Vec<f64> = trace.expert_counts.iter().map(|c| *c as f64).collect();
    heat_map(&Grid {
        title: "Expert load (tokens per expert)",
        x_desc: "expert",
        y_desc: "block",
        rows: trace.layers(),
        cols: trace.experts,
        values: &values,
    })
}

/// `[E, E]`: how often two experts were selected for one token at one block.
fn co_selection(trace: &RoutingTrace, matrix: &[u32]) -> Result<String, String> {
    let values: Vec<f64> = matrix.iter().map(|c| *c as f64).collect();
    heat_map(&Grid {
        title: "Expert co-selection (all blocks)",
        x_desc: "expert",
        y_desc: "expert",
        rows: trace.experts,
        cols: trace.experts,
        values: &values,
    })
}

/// Router entropy per block: the mean over tokens, a bar from min to max, and ln E.
fn router_entropy(trace: &RoutingTrace, spreads: &[Spread]) -> Result<String, String> {
    let uniform = (trace.experts.max(1) as f64).ln();
    let top = spreads
        .iter()
        .map(|s| s.max as f64)
        .fold(uniform, f64::max)
        .max(1e-3)
        * 1.45;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width(spreads.len()), 380)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Router entropy per block (nats)", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(Categories(spreads.len()), 0f64..top)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_max_light_lines(1)
            .label_style(LABELS)
            .axis_desc_style(LABELS)
            .x_desc("block")
            .y_desc("entropy")
            .draw()
            .map_err(drawing)?;
        let centre = |l: usize| l as f64 + 0.5;
        chart
            .draw_series(LineSeries::new(
                [(0.0, uniform), (spreads.len() as f64, uniform)],
                GREEN.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(format!(
                "uniform router: ln {} = {uniform:.2}",
                trace.experts
            ))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], GREEN.stroke_width(2)));
        chart
            .draw_series(spreads.iter().enumerate().map(|(l, s)| {
                ErrorBar::new_vertical(
                    centre(l),
                    s.min as f64,
                    s.mean as f64,
                    s.max as f64,
                    BLUE.stroke_width(2),
                    10,
                )
            }))
            .map_err(drawing)?
            .label("min–max over tokens")
            .legend(|(x, y)| PathElement::new([(x + 8, y - 6), (x + 8, y + 6)], BLUE));
        chart
            .draw_series(LineSeries::new(
                spreads
                    .iter()
                    .enumerate()
                    .map(|(l, s)| (centre(l), s.mean as f64)),
                RED.stroke_width(2),
            ))
            .map_err(drawing)?
            .label("mean")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(LABELS)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// A row-major table of values to draw as coloured cells.
struct Grid<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    rows: usize,
    cols: usize,
    values: &'a [f64],
}

/// One `<rect>` per cell (row 0 on top), viridis from the smallest value to the
/// largest, and a colour scale of [`SCALE_STEPS`] rects on the right.
fn heat_map(grid: &Grid) -> Result<String, String> {
    let lo = grid
        .values
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let hi = grid.values.iter().copied().fold(lo, f64::max).max(lo + 1.0);
    let colour = |v: f64| ViridisRGB::get_color_normalized(v, lo, hi);
    let (w, h) = (
        width(grid.cols) + 90,
        (grid.rows as u32 * 16).clamp(160, 1100) + 110,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (plot, scale) = root.split_horizontally(w - 90);
        let mut chart = ChartBuilder::on(&plot)
            .caption(grid.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(Categories(grid.cols), Categories(grid.rows))
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .label_style(LABELS)
            .axis_desc_style(LABELS)
            .x_desc(grid.x_desc)
            .y_desc(grid.y_desc)
            .y_label_formatter(&|y| (grid.rows - 1 - category(*y)).to_string())
            .draw()
            .map_err(drawing)?;
        let cells = (0..grid.rows).flat_map(|r| (0..grid.cols).map(move |c| (r, c)));
        chart
            .draw_series(cells.map(|(r, c)| {
                let (x, y) = (c as f64, (grid.rows - 1 - r) as f64);
                Rectangle::new(
                    [(x, y + 1.0), (x + 1.0, y)],
                    colour(grid.values[r * grid.cols + c]).filled(),
                )
            }))
            .map_err(drawing)?;
        let mut bar = ChartBuilder::on(&scale)
            .margin_top(44)
            .margin_bottom(52)
            .margin_right(12)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..1.0, lo..hi)
            .map_err(drawing)?;
        bar.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .label_style(LABELS)
            .y_labels(6)
            .y_label_formatter(&|v| format!("{:.*}", usize::from(hi - lo < 10.0), v))
            .draw()
            .map_err(drawing)?;
        let step = (hi - lo) / SCALE_STEPS as f64;
        bar.draw_series((0..SCALE_STEPS).map(|i| {
            let from = lo + step * i as f64;
            Rectangle::new(
                [(0.0, from), (1.0, from + step)],
                colour(from + step / 2.0).filled(),
            )
        }))
        .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// `n` categories (blocks, experts) as an axis: the unit intervals of 0..n,
/// each labelled with its number at its centre (all up to 40, then evenly fewer).
struct Categories(usize);

impl Ranged for Categories {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, x: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.range()).map(x, limit)
    }

    fn key_points<H: KeyPointHint>(&self, _: H) -> Vec<f64> {
        let stride = self.0.div_ceil(40).max(1);
        (0..self.0)
            .step_by(stride)
            .map(|i| i as f64 + 0.5)
            .collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.0 as f64
    }
}

impl ValueFormatter<f64> for Categories {
    fn format(x: &f64) -> String {
        category(*x).to_string()
    }
}

/// The category whose unit interval holds `x`.
fn category(x: f64) -> usize {
    x.max(0.0) as usize
}

/// A plot width that gives `n` categories room, within a page's width.
fn width(n: usize) -> u32 {
    (n as u32 * 28).clamp(360, 1000) + 80
}

fn drawing(e: impl std::fmt::Display) -> String {
    format!("drawing a figure: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::tests::small;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}\n{svg}"))
    }

    fn rects(svg: &str) -> usize {
        let doc = parse(svg);
        doc.descendants().filter(|n| n.has_tag_name("rect")).count()
    }

    #[test]
    fn heat_maps_have_a_cell_per_value_and_a_scale() {
        let t = small();
        // The background, the cells, the scale.
        assert_eq!(rects(&expert_load(&t).unwrap()), 1 + 2 * 3 + SCALE_STEPS);
        let m = stats::co_selection(&t);
        assert_eq!(
            rects(&co_selection(&t, &m).unwrap()),
            1 + 3 * 3 + SCALE_STEPS
        );
    }

    #[test]
    fn one_block_still_draws_a_row_of_cells() {
        let mut t = small();
        t.blocks.truncate(1);
        t.routed_experts = vec![0, 1, 0, 2];
        t.routing_weights = vec![0.7, 0.3, 0.6, 0.4];
        t.dropped = vec![false; 4];
        t.router_entropy = vec![0.1, 0.3];
        t.expert_counts = vec![2, 1, 1];
        (t.aux_loss, t.z_loss) = (vec![1.0], vec![0.2]);
        let svg = expert_load(&t).unwrap();
        let doc = parse(&svg);
        let size = |n: roxmltree::Node, a| n.attribute(a).unwrap().parse::<f64>().unwrap();
        let cells: Vec<(f64, f64)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .map(|n| (size(n, "width"), size(n, "height")))
            .collect();
        assert_eq!(cells.len(), 1 + 3 + SCALE_STEPS);
        // The cells (after the background) are as tall as a whole plot row.
        assert!(
            cells[1..4].iter().all(|(w, h)| *w > 50.0 && *h > 100.0),
            "{cells:?}"
        );
    }

    #[test]
    fn figures_carry_their_text() {
        let t = small();
        let svg = router_entropy(&t, &stats::entropy_per_block(&t)).unwrap();
        let doc = parse(&svg);
        let text: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        assert!(
            text.contains(&"Router entropy per block (nats)"),
            "{text:?}"
        );
        assert!(text.contains(&"mean"), "{text:?}");
        assert!(
            text.iter().any(|s| s.starts_with("uniform router: ln 3")),
            "{text:?}"
        );
    }
}
