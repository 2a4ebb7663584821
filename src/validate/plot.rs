/*!
The report's PNG plots, drawn with plotters' bitmap backend into memory, text through `ab_glyph`
with the DejaVu Sans Mono font that `python-free-tools` ships (`python-free-tools/assets/`,
Bitstream Vera licence beside it) compiled into the library, encoded with `png` and written
atomically. The same plotters version and features as `python-free-tools` (no new dependency
build).

- `equity.png`: out-of-sample equity (normalised to 1 at the start) of the policy (one line per
  seed) and of every baseline, fold boundaries as grey verticals; below, the drawdowns.
- `fold_sharpe.png`: per fold, the policy's Sharpe ratio (mean over seeds, ± one sd as an error
  bar) and each baseline's Sharpe ratio.
- `reward_shares.png`: each reward term's share of the summed |terms| over the training
  iterations, averaged over the runs.
- `actions_costs.png`: the distribution of the policy's requested actions; per fold, the turnover
  and the costs of the policy and of the baselines.
*/

use std::io::BufWriter;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::report::Report;
use crate::error::{Error, ErrorKind, Result};

static FONT: &[u8] = include_bytes!("../../python-free-tools/assets/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Tableau 10.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A baseline's colour (fixed per name so that every plot agrees); policy seeds get shades of
/// blue.
fn color_of(name: &str, seed: usize) -> RGBColor {
    match name {
        "hold" => COLORS[7],
        "equal-weight" => COLORS[1],
        "rebalanced" => COLORS[2],
        "spy" => COLORS[3],
        "momentum" => COLORS[4],
        "random" => COLORS[5],
        _ => {
            let k = (seed % 4) as u8;
            RGBColor(31 + 40 * k, 119 + 20 * k, 180)
        }
    }
}

/// Draw into a `w x h` RGB buffer with `f` and write it as a PNG at `path` (atomically).
fn png(path: &Path, w: u32, h: u32, f: impl FnOnce(&mut [u8]) -> DrawResult<()>) -> Result<()> {
    register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| {
        Error::new(ErrorKind::InvalidArgument, "the bundled font is invalid").with_file(path)
    })?;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    f(&mut buf).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("drawing the chart: {e}"),
        )
        .with_file(path)
    })?;
    crate::atomic::write_with(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
        let mut enc = ::png::Encoder::new(BufWriter::new(file), w, h);
        enc.set_color(::png::ColorType::Rgb);
        enc.set_depth(::png::BitDepth::Eight);
        enc.write_header()
            .and_then(|mut wr| wr.write_image_data(&buf).and_then(|_| wr.finish()))
            .map_err(|e| {
                Error::new(ErrorKind::Io, format!("encoding the PNG: {e}"))
                    .with_file(path)
                    .with_source(e)
            })
    })
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// Write every plot of `r` into `out`; returns the file names.
pub fn write_all(r: &Report, out: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    if !r.curves.is_empty() {
        png(&out.join("equity.png"), 1400, 1000, |b| equity(r, b))?;
        names.push("equity.png".to_string());
    }
    if !r.folds.is_empty() {
        png(&out.join("fold_sharpe.png"), 1200, 700, |b| {
            fold_sharpe(r, b)
        })?;
        names.push("fold_sharpe.png".to_string());
    }
    if !r.reward_shares.is_empty() {
        png(&out.join("reward_shares.png"), 1200, 700, |b| shares(r, b))?;
        names.push("reward_shares.png".to_string());
    }
    png(&out.join("actions_costs.png"), 1400, 1000, |b| {
        actions_costs(r, b)
    })?;
    names.push("actions_costs.png".to_string());
    Ok(names)
}

fn equity(r: &Report, buf: &mut [u8]) -> DrawResult<()> {
    let root = BitMapBackend::with_buffer(buf, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(620);
    let n = r
        .curves
        .iter()
        .map(|c| c.curve.equity.len())
        .max()
        .unwrap_or(1);
    let norm = |c: &super::walkforward::StitchedCurve| -> Vec<f64> {
        let e0 = c.curve.equity[0];
        c.curve.equity.iter().map(|e| e / e0).collect()
    };
    let dds = |e: &[f64]| -> Vec<f64> {
        let mut peak = f64::NEG_INFINITY;
        e.iter()
            .map(|&x| {
                peak = peak.max(x);
                -(1.0 - x / peak)
            })
            .collect()
    };
    let all: Vec<(String, usize, Vec<f64>)> = r
        .curves
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i, norm(c)))
        .collect();
    let (lo, hi) = range(all.iter().flat_map(|(_, _, v)| v.iter().copied()));
    let starts = r.curves[0].fold_starts.clone();
    let first_bar = r.curves[0].bars.first().copied().unwrap_or(0);
    let last_bar = r.curves[0].bars.last().copied().unwrap_or(0);
    let title = format!(
        "{} out-of-sample equity ({}, bars {first_bar}..={last_bar}; grey lines: fold starts)",
        r.kind, r.source
    );
    for (area, draw_dd) in [(&top, false), (&bottom, true)] {
        let (ylo, yhi) = if draw_dd {
            range(all.iter().flat_map(|(_, _, v)| dds(v)).chain([0.0]))
        } else {
            (lo, hi)
        };
        let mut ch = ChartBuilder::on(area)
            .caption(
                if draw_dd {
                    "drawdown from the running peak".to_string()
                } else {
                    title.clone()
                },
                (FAMILY, 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..(n.max(2) - 1) as f64, ylo..yhi)?;
        ch.configure_mesh()
            .x_desc("out-of-sample bar (stitched index)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(if draw_dd {
                "drawdown"
            } else {
                "equity / start"
            })
            .label_style((FAMILY, 14))
            .draw()?;
        for &s in &starts {
            ch.draw_series(LineSeries::new(
                [(s as f64, ylo), (s as f64, yhi)],
                RGBColor(200, 200, 200).stroke_width(1),
            ))?;
        }
        for (name, i, v) in &all {
            let col = color_of(name, *i);
            let series = if draw_dd { dds(v) } else { v.clone() };
            let width = if name.starts_with("ppo") { 2 } else { 1 };
            let s = ch.draw_series(LineSeries::new(
                series.iter().enumerate().map(|(x, y)| (x as f64, *y)),
                col.stroke_width(width),
            ))?;
            if !draw_dd {
                s.label(name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3))
                });
            }
        }
        if !draw_dd {
            ch.configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FAMILY, 14))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

fn fold_sharpe(r: &Report, buf: &mut [u8]) -> DrawResult<()> {
    let root = BitMapBackend::with_buffer(buf, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let nf = r.folds.len();
    let vals = r.folds.iter().flat_map(|f| {
        let sd = if f.sharpe.std.is_finite() {
            f.sharpe.std
        } else {
            0.0
        };
        [f.sharpe.mean - sd, f.sharpe.mean + sd, 0.0]
            .into_iter()
            .chain(f.baselines.iter().map(|b| b.1))
    });
    let (lo, hi) = range(vals);
    let mut ch = ChartBuilder::on(&root)
        .caption(
            "Sharpe ratio per fold: policy mean ± sd over seeds (blue), baselines (dots)",
            (FAMILY, 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..nf as f64 + 0.9, lo..hi)?;
    ch.configure_mesh()
        .x_desc("fold")
        .y_desc("annualised Sharpe")
        .x_labels(2 * (nf + 2))
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 && *x >= 0.0 && (x.round() as usize) < nf {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .label_style((FAMILY, 14))
        .draw()?;
    ch.draw_series(LineSeries::new(
        [(-0.5, 0.0), (nf as f64 + 0.9, 0.0)],
        BLACK.stroke_width(1),
    ))?;
    let blue = color_of("ppo", 0);
    for (i, f) in r.folds.iter().enumerate() {
        let x = i as f64;
        let sd = if f.sharpe.std.is_finite() {
            f.sharpe.std
        } else {
            0.0
        };
        let m = f.sharpe.mean;
        ch.draw_series(LineSeries::new(
            [(x - 0.1, m - sd), (x + 0.1, m - sd)],
            blue.stroke_width(2),
        ))?;
        ch.draw_series(LineSeries::new(
            [(x - 0.1, m + sd), (x + 0.1, m + sd)],
            blue.stroke_width(2),
        ))?;
        ch.draw_series(LineSeries::new(
            [(x, m - sd), (x, m + sd)],
            blue.stroke_width(2),
        ))?;
        let mark = ch.draw_series([Rectangle::new(
            [
                (x - 0.06, m - 0.02 * (hi - lo)),
                (x + 0.06, m + 0.02 * (hi - lo)),
            ],
            blue.filled(),
        )])?;
        if i == 0 {
            mark.label("ppo (mean ± sd over seeds)")
                .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 20, y + 4)], blue.filled()));
        }
        let nb = f.baselines.len().max(1) as f64;
        for (j, b) in f.baselines.iter().enumerate() {
            let bx = x + 0.15 + 0.25 * j as f64 / nb;
            let col = color_of(&b.0, 0);
            let s = ch.draw_series([Circle::new((bx, b.1), 5, col.filled())])?;
            if i == 0 {
                s.label(b.0.clone())
                    .legend(move |(x, y)| Circle::new((x + 10, y), 5, col.filled()));
            }
        }
    }
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn shares(r: &Report, buf: &mut [u8]) -> DrawResult<()> {
    let root = BitMapBackend::with_buffer(buf, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = r
        .reward_shares
        .values()
        .flat_map(|v| v.iter().map(|p| p.0))
        .max()
        .unwrap_or(1);
    let mut ch = ChartBuilder::on(&root)
        .caption(
            format!(
                "reward-term share of sum |terms| per training iteration (mean over {} run(s))",
                r.runs_analysed
            ),
            (FAMILY, 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax.max(1) as f64, 0f64..1.0)?;
    ch.configure_mesh()
        .x_desc("iteration")
        .y_desc("share")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FAMILY, 14))
        .draw()?;
    for (i, t) in crate::reward::COMPONENT_NAMES.iter().enumerate() {
        let Some(v) = r.reward_shares.get(*t) else {
            continue;
        };
        let col = COLORS[i % COLORS.len()];
        ch.draw_series(LineSeries::new(
            v.iter().map(|(x, y)| (*x as f64, *y)),
            col.stroke_width(2),
        ))?
        .label(t.to_string())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3)));
    }
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn actions_costs(r: &Report, buf: &mut [u8]) -> DrawResult<()> {
    let root = BitMapBackend::with_buffer(buf, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let (bl, br) = bottom.split_horizontally(700);
    // Actions.
    let total = r.actions.iter().sum::<u64>().max(1) as f64;
    let shares: Vec<f64> = r.actions.iter().map(|&c| c as f64 / total).collect();
    let names = crate::env::logic::ACTION_NAMES;
    let mut ch = ChartBuilder::on(&top)
        .caption(
            format!(
                "policy's requested symbol actions over the test blocks ({} symbol-steps)",
                total as u64
            ),
            (FAMILY, 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..names.len() as f64 - 0.5, 0f64..1.0)?;
    ch.configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("share")
        .label_style((FAMILY, 13))
        .draw()?;
    ch.draw_series(shares.iter().enumerate().map(|(i, s)| {
        Rectangle::new(
            [(i as f64 - 0.35, 0.0), (i as f64 + 0.35, *s)],
            COLORS[0].filled(),
        )
    }))?;
    ch.draw_series(shares.iter().enumerate().map(|(i, s)| {
        Text::new(
            format!("{:.2}%", 100.0 * s),
            (i as f64 - 0.2, (s + 0.04).min(0.95)),
            (FAMILY, 15),
        )
    }))?;
    // Turnover and costs per fold.
    for (area, costs) in [(&bl, false), (&br, true)] {
        let nf = r.folds.len();
        let pick = |f: &super::report::FoldRow| -> Vec<(String, f64)> {
            let mut v = vec![(
                "ppo".to_string(),
                if costs {
                    100.0 * f.costs_paid.mean
                } else {
                    f.turnover.mean
                },
            )];
            for b in &f.baselines {
                v.push((b.0.clone(), if costs { 100.0 * b.3 } else { b.2 }));
            }
            v
        };
        let rows: Vec<Vec<(String, f64)>> = r.folds.iter().map(pick).collect();
        let (_, hi) = range(rows.iter().flatten().map(|x| x.1).chain([0.0]));
        let mut ch = ChartBuilder::on(area)
            .caption(
                if costs {
                    "costs paid per fold, % of capital"
                } else {
                    "turnover per fold (x / year)"
                },
                (FAMILY, 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..nf as f64 + 0.8, 0f64..hi.max(1e-9))?;
        ch.configure_mesh()
            .disable_x_mesh()
            .x_desc("fold")
            .x_labels(2 * (nf + 2))
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 && *x >= 0.0 && (x.round() as usize) < nf {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .label_style((FAMILY, 13))
            .draw()?;
        for (i, row) in rows.iter().enumerate() {
            let k = row.len().max(1) as f64;
            for (j, (name, v)) in row.iter().enumerate() {
                let x0 = i as f64 - 0.4 + 0.8 * j as f64 / k;
                let col = color_of(name, 0);
                let s = ch.draw_series([Rectangle::new(
                    [(x0, 0.0), (x0 + 0.8 / k, *v)],
                    col.filled(),
                )])?;
                if i == 0 {
                    s.label(name.clone()).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 4), (x + 16, y + 4)], col.filled())
                    });
                }
            }
        }
        ch.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 12))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
