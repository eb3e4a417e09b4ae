//! `compare`: several runs side by side. Prints a table with each run's
//! figures and its ratio to the first run, and plots the latency percentile
//! curves on HdrHistogram's plotter axes: x is 1/(1-percentile) on a log
//! scale, labelled 90%, 99%, 99.9%, ...; y is latency in milliseconds.
//! Solid lines are corrected latency, pale lines uncorrected.
//!
//! Text is rendered with a TrueType font read at run time (plotters'
//! `ab_glyph` backend, no fontconfig): `$SLUICE_LOAD_FONT`, or DejaVu Sans
//! from Debian's `fonts-dejavu-core`, or Liberation Sans.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::hgrm::Point;
use crate::report::{Report, Summary};

/// Fonts tried in order when `$SLUICE_LOAD_FONT` is unset.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
/// Chart size in pixels.
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 600;
/// Percentiles closer to 1 than this are not plotted (the 100% row has
/// 1/(1-p) = infinity).
const PERCENTILE_MAX: f64 = 1.0 - 1e-7;

/// A loaded run and its label.
pub struct Run {
    pub label: String,
    pub report: Report,
}

pub fn load_runs(paths: &[PathBuf]) -> Result<Vec<Run>> {
    if paths.is_empty() {
        bail!("compare needs at least one run");
    }
    paths
        .iter()
        .map(|p| {
            let report = Report::load(p)?;
            let dir = if p.is_dir() {
                p.clone()
            } else {
                p.parent().map(Path::to_path_buf).unwrap_or_default()
            };
            let label = dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| report.workload.name.clone());
            Ok(Run { label, report })
        })
        .collect()
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The side-by-side table: one column per run, then one ratio column per
/// run after the first (run / first).
/// Extracts one figure from a report (None: not measured).
type Figure<'a> = &'a dyn Fn(&Report) -> Option<f64>;

pub fn table(runs: &[Run]) -> String {
    let mut rows: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    let mut add = |name: &str, f: Figure| {
        rows.push((
            name.to_string(),
            runs.iter().map(|r| f(&r.report)).collect(),
        ));
    };
    add("target msgs/s", &|r| Some(r.target_msgs_per_s));
    add("produce msgs/s", &|r| Some(r.produce.msgs_per_s));
    add("produce MB/s", &|r| Some(r.produce.mb_per_s));
    add("consume msgs/s", &|r| Some(r.consume.msgs_per_s));
    let lat_rows =
        |prefix: &str, get: fn(&Report) -> Option<&Summary>, add: &mut dyn FnMut(&str, Figure)| {
            for (i, (label, _)) in Summary::default().rows().iter().enumerate() {
                add(&format!("{prefix} {label} ms"), &move |r: &Report| {
                    get(r).filter(|s| s.count > 0).map(|s| s.rows()[i].1)
                });
            }
        };
    lat_rows(
        "publish",
        |r| r.publish_latency.as_ref().map(|l| &l.corrected),
        &mut add,
    );
    lat_rows(
        "e2e",
        |r| r.end_to_end_latency.as_ref().map(|l| &l.corrected),
        &mut add,
    );
    add("errors", &|r| Some(r.delivery.produce_errors as f64));
    add("exactly once (1=yes)", &|r| {
        r.delivery.exactly_once.map(|b| if b { 1.0 } else { 0.0 })
    });

    let name_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    let col_w = runs
        .iter()
        .map(|r| r.label.len())
        .max()
        .unwrap_or(8)
        .clamp(10, 28);
    let mut s = format!("{:<name_w$}", "");
    for r in runs {
        s += &format!(" {:>col_w$}", r.label);
    }
    for r in runs.iter().skip(1) {
        s += &format!(
            " {:>10}",
            format!("{}/1st", &r.label[..r.label.len().min(6)])
        );
    }
    s += "\n";
    for (name, vals) in &rows {
        s += &format!("{name:<name_w$}");
        for v in vals {
            s += &format!(" {:>col_w$}", v.map_or("-".to_string(), fmt_value));
        }
        for v in vals.iter().skip(1) {
            let ratio = match (vals[0], v) {
                (Some(a), Some(b)) if a != 0.0 => format!("{:.2}x", b / a),
                _ => "-".to_string(),
            };
            s += &format!(" {ratio:>10}");
        }
        s += "\n";
    }
    s
}

/// Load a TrueType font for chart text, once per process.
pub fn register_font() -> Result<PathBuf> {
    static FONT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("SLUICE_LOAD_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
            .collect();
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(path);
                }
            }
        }
        Err(format!(
            "no TrueType font found for chart text: install Debian's fonts-dejavu-core, \
             or set SLUICE_LOAD_FONT to a .ttf file (tried {FONT_CANDIDATES:?})"
        ))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// x coordinate of a percentile: log10(1/(1-p)).
pub fn percentile_x(p: f64) -> f64 {
    (1.0 / (1.0 - p.min(PERCENTILE_MAX))).log10()
}

/// Axis label of x = log10(1/(1-p)): 0 -> "0%", 1 -> "90%", 3 -> "99.9%".
pub fn percentile_label(x: f64) -> String {
    if x.fract().abs() > 1e-9 {
        return String::new();
    }
    let n = x.round() as i32;
    match n {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        _ => format!("99.{}%", "9".repeat((n - 2) as usize)),
    }
}

type Curve = (String, Vec<(f64, f64)>, bool);

fn curves(runs: &[Run], publish: bool) -> Vec<Curve> {
    let mut out = Vec::new();
    for r in runs {
        let lat = if publish {
            r.report.publish_latency.as_ref()
        } else {
            r.report.end_to_end_latency.as_ref()
        };
        let Some(l) = lat else { continue };
        let pts = |c: &[Point]| -> Vec<(f64, f64)> {
            c.iter()
                .filter(|p| p.percentile <= PERCENTILE_MAX)
                .map(|p| (percentile_x(p.percentile), p.value_ms))
                .collect()
        };
        out.push((r.label.clone(), pts(&l.corrected_curve), true));
        out.push((
            format!("{} (uncorrected)", r.label),
            pts(&l.uncorrected_curve),
            false,
        ));
    }
    out
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    curves: &[Curve],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let x_max = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .fold(2.0f64, f64::max)
        .ceil();
    let y_max = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.1))
        .fold(0.001f64, f64::max)
        * 1.08;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow!("chart: {e:?}"))?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .y_label_formatter(&|y| fmt_value(*y))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("mesh: {e:?}"))?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    for (i, (label, pts, corrected)) in curves.iter().enumerate() {
        let color = palette[(i / 2) % palette.len()];
        let style = if *corrected {
            color.stroke_width(2)
        } else {
            color.mix(0.35).stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|e| anyhow!("series: {e:?}"))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("legend: {e:?}"))?;
    Ok(())
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, runs: &[Run]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow!("fill: {e:?}"))?;
    let panels = root.split_evenly((1, 2));
    draw_panel(
        &panels[0],
        "Publish latency (send to ack)",
        &curves(runs, true),
    )?;
    draw_panel(
        &panels[1],
        "End-to-end latency (send to consume)",
        &curves(runs, false),
    )?;
    root.present().map_err(|e| anyhow!("present: {e:?}"))?;
    Ok(())
}

/// Print the table and write `<prefix>.svg` and `<prefix>.png`.
pub fn compare(paths: &[PathBuf], prefix: &Path) -> Result<(PathBuf, PathBuf)> {
    let runs = load_runs(paths)?;
    println!("{}", table(&runs));
    register_font()?;
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let svg = prefix.with_extension("svg");
    let png = prefix.with_extension("png");
    draw(
        SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area(),
        &runs,
    )
    .with_context(|| format!("draw {}", svg.display()))?;
    draw(
        BitMapBackend::new(&png, (WIDTH, HEIGHT)).into_drawing_area(),
        &runs,
    )
    .with_context(|| format!("draw {}", png.display()))?;
    Ok((svg, png))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(4.0), "99.99%");
        assert_eq!(percentile_label(2.5), "");
        assert!((percentile_x(0.999) - 3.0).abs() < 1e-9);
        assert!(percentile_x(1.0).is_finite());
    }
}
