//! The PNG of `mt-tools reward-signals`: each reward term's share over iterations (lines, with
//! the dominance threshold), each term's mean weighted value over iterations, and the turnover when
//! the run logs it; one legend strip on the right names the colours and each term's alarms.
//!
//! Drawn with plotters' bitmap backend into memory; text through `ab_glyph` with DejaVu Sans Mono
//! (`assets/DejaVuSansMono.ttf`, Bitstream Vera licence, `assets/DejaVuSansMono.LICENSE`) compiled
//! into the binary, so no system font is needed; encoded with `png` and written atomically.

use std::io::BufWriter;
use std::path::Path;

use marl_trade::error::{Error, ErrorKind};
use marl_trade::train::signals::SignalReport;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

/// Image size in pixels.
const W: u32 = 1400;
const H: u32 = 1100;
const LEGEND_W: u32 = 260;

/// Tableau 10, one colour per term in `COMPONENT_NAMES` order.
const COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),  // pnl: blue
    RGBColor(255, 127, 14),  // cost: orange
    RGBColor(44, 160, 44),   // timing: green
    RGBColor(214, 39, 40),   // sharpe: red
    RGBColor(148, 103, 189), // drawdown: purple
    RGBColor(140, 86, 75),   // util: brown
    RGBColor(227, 119, 194), // divers: pink
];

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Draw `report` of the run `name` and write it as a PNG at `path` (atomically).
pub fn write_png(report: &SignalReport, name: &str, path: &Path) -> marl_trade::Result<()> {
    let mut buf = vec![255u8; (W * H * 3) as usize];
    draw(report, name, &mut buf).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("drawing the chart: {e}"),
        )
        .with_file(path)
    })?;
    marl_trade::atomic::write_with(path, |tmp| {
        let f = std::fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
        let mut enc = png::Encoder::new(BufWriter::new(f), W, H);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let encoded = enc
            .write_header()
            .and_then(|mut w| w.write_image_data(&buf).and_then(|_| w.finish()));
        encoded.map_err(|e| {
            Error::new(ErrorKind::Io, format!("encoding the PNG: {e}"))
                .with_file(path)
                .with_source(e)
        })
    })
}

/// The iteration axis (integer ticks), one unit wider than a single iteration.
fn x_range(its: &[usize]) -> (i64, i64) {
    let (a, b) = (
        its.first().copied().unwrap_or(0) as i64,
        its.last().copied().unwrap_or(1) as i64,
    );
    if b > a { (a, b) } else { (a - 1, b + 1) }
}

/// The symmetric log scale of the values panel: `sign(v) * log10(1 + |v| / lin)`, linear within
/// `±lin`, so that terms four orders of magnitude apart (pnl and sharpe on the default weights)
/// are all visible.
#[derive(Clone, Copy)]
struct SymLog {
    lin: f64,
}

impl SymLog {
    /// `lin` the power of ten at or below a tenth of the smallest non-zero |value| (at least 1e-9
    /// of the largest).
    fn of(values: impl Iterator<Item = f64>) -> Self {
        let (mut small, mut big) = (f64::INFINITY, 0.0f64);
        for v in values.map(f64::abs).filter(|v| *v > 0.0 && v.is_finite()) {
            small = small.min(v);
            big = big.max(v);
        }
        // a power of ten, so that the axis' integer ticks fall on decades
        let lin = if small.is_finite() {
            10f64.powf((0.1 * small).max(1e-9 * big).log10().floor())
        } else {
            1.0
        };
        Self { lin }
    }
    fn fwd(self, v: f64) -> f64 {
        v.signum() * (1.0 + v.abs() / self.lin).log10()
    }
    fn inv(self, y: f64) -> f64 {
        y.signum() * self.lin * (10f64.powf(y.abs()) - 1.0)
    }
}

fn draw(report: &SignalReport, name: &str, buf: &mut [u8]) -> DrawResult<()> {
    // Registering twice (a second call in one process) replaces the same font: harmless.
    register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| "the bundled font is invalid")?;
    let root = BitMapBackend::with_buffer(buf, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let n_alarms = report.alarms.len();
    let title = format!(
        "reward signals of {name}: {} iterations, {} with reward terms, {}",
        report.iterations_read,
        report.points(),
        match n_alarms {
            0 => "no alarm".to_string(),
            1 => "1 ALARM".to_string(),
            k => format!("{k} ALARMS"),
        }
    );
    let root = root.titled(&title, (FAMILY, 24))?;
    let (plots, legend) = root.split_horizontally(W - LEGEND_W);
    let its = &report.iterations;
    // One x range for every panel: the iterations with reward terms and those with turnover.
    let mut all: Vec<usize> = its
        .iter()
        .copied()
        .chain(report.turnover.iter().map(|t| t.0))
        .collect();
    all.sort_unstable();
    let (x0, x1) = x_range(&all);
    let has_turnover = !report.turnover.is_empty();
    let panels = plots.split_evenly((if has_turnover { 3 } else { 2 }, 1));
    let label_style = (FAMILY, 15);
    let desc_style = (FAMILY, 16);

    // 1. Shares, with the dominance threshold.
    let d = report.thresholds.dominance;
    let mut chart = ChartBuilder::on(&panels[0])
        .caption(
            "share of the reward's magnitude per term (reward_share.<term>)",
            (FAMILY, 18),
        )
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("share")
        .label_style(label_style)
        .axis_desc_style(desc_style)
        .y_label_formatter(&|v| format!("{:.0}%", 100.0 * v))
        .x_labels(12)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let grey = RGBColor(90, 90, 90);
    chart.draw_series(DashedLineSeries::new(
        vec![(x0, d), (x1, d)],
        8,
        6,
        grey.stroke_width(2),
    ))?;
    chart.draw_series(std::iter::once(Text::new(
        format!("dominance {:.0}%", 100.0 * d),
        (x0, d + 0.07),
        (FAMILY, 14).into_font().color(&grey),
    )))?;
    for (k, t) in report.terms.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        let pts: Vec<(i64, f64)> = its
            .iter()
            .map(|&i| i as i64)
            .zip(t.shares.iter().copied())
            .collect();
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }

    // 2. Mean weighted value per symbol-step, on a symmetric log scale.
    let sl = SymLog::of(report.terms.iter().flat_map(|t| t.values.iter().copied()));
    let (lo, hi) = report
        .terms
        .iter()
        .flat_map(|t| t.values.iter().map(|&v| sl.fwd(v)))
        .fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = if hi > lo { 0.06 * (hi - lo) } else { 1.0 };
    let caption = format!(
        "mean weighted term per symbol-step (reward.<term>), symmetric log scale, linear within ±{:.0e}",
        sl.lin
    );
    let mut chart = ChartBuilder::on(&panels[1])
        .caption(caption, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("value")
        .label_style(label_style)
        .axis_desc_style(desc_style)
        .y_labels(9)
        .y_label_formatter(&|y| {
            let v = sl.inv(*y);
            if v.abs() < 0.5 * sl.lin {
                "0".to_string()
            } else {
                format!("{v:.0e}")
            }
        })
        .x_labels(12)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(LineSeries::new(
        vec![(x0, 0.0), (x1, 0.0)],
        BLACK.stroke_width(1),
    ))?;
    for (k, t) in report.terms.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        let pts: Vec<(i64, f64)> = its
            .iter()
            .map(|&i| i as i64)
            .zip(t.values.iter().map(|&v| sl.fwd(v)))
            .collect();
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }

    // 3. Turnover, when logged (every iteration, not only those with reward terms).
    if has_turnover {
        let hi = report.turnover.iter().map(|t| t.1).fold(0.0f64, f64::max);
        let hi = if hi > 0.0 { 1.1 * hi } else { 1.0 };
        let mut chart = ChartBuilder::on(&panels[2])
            .caption(
                "turnover: traded notional / equity per symbol-step",
                (FAMILY, 18),
            )
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, 0.0..hi)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc("turnover")
            .label_style(label_style)
            .axis_desc_style(desc_style)
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .x_labels(12)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let pts: Vec<(i64, f64)> = report
            .turnover
            .iter()
            .map(|&(i, v)| (i as i64, v))
            .collect();
        chart.draw_series(LineSeries::new(pts.clone(), BLACK.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLACK.filled())))?;
    }

    // Legend strip: colour, term, weight, its alarms.
    let font = (FAMILY, 17).into_font();
    let small = (FAMILY, 14).into_font();
    let mut y = 70;
    legend.draw(&Text::new("terms", (16, y - 40), (FAMILY, 19).into_font()))?;
    for (k, t) in report.terms.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        legend.draw(&PathElement::new(vec![(16, y), (46, y)], c.stroke_width(4)))?;
        legend.draw(&Circle::new((31, y), 4, c.filled()))?;
        let w = t.weight.map_or(String::new(), |w| format!(" (w {w})"));
        legend.draw(&Text::new(
            format!("{}{w}", t.term),
            (56, y - 9),
            font.clone(),
        ))?;
        let kinds: Vec<&str> = report
            .alarms
            .iter()
            .filter(|a| a.term == t.term)
            .map(|a| a.kind.name())
            .collect();
        if !kinds.is_empty() {
            legend.draw(&Text::new(
                format!("ALARM {}", kinds.join(", ")),
                (56, y + 10),
                small.clone().color(&RGBColor(200, 0, 0)),
            ))?;
        }
        y += 50;
    }
    legend.draw(&PathElement::new(
        vec![(16, y), (46, y)],
        grey.stroke_width(2),
    ))?;
    legend.draw(&Text::new("dominance", (56, y - 9), font.clone()))?;
    if has_turnover {
        y += 40;
        legend.draw(&PathElement::new(
            vec![(16, y), (46, y)],
            BLACK.stroke_width(3),
        ))?;
        legend.draw(&Text::new("turnover", (56, y - 9), font.clone()))?;
    }
    y += 50;
    let wi = report.iterations.len() - report.window_points.min(report.iterations.len());
    if let (Some(a), Some(b)) = (report.iterations.get(wi), report.iterations.last()) {
        legend.draw(&Text::new(
            format!("window: iterations {a}..={b}"),
            (16, y),
            small.clone(),
        ))?;
    }
    root.present()?;
    Ok(())
}
