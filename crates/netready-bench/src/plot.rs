//! `--plot`: latency CDFs of every pod timing, a histogram of network-ready latency, and
//! network-ready throughput over time, as SVG (or one HTML page holding the SVGs).

use std::path::Path;

use plotters::prelude::*;

use crate::records::Run;
use crate::report::Report;

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The extension is not one netready draws.
    #[error("{0}: plots are written as .svg, .png or .html")]
    Format(String),
    /// Drawing failed.
    #[error("drawing {0}: {1}")]
    Draw(&'static str, String),
    /// Writing failed.
    #[error("{0}: {1}")]
    Write(String, std::io::Error),
}

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Draw(what, e.to_string())
}

type Area<'a, DB> = DrawingArea<DB, plotters::coord::Shift>;

fn cdf_svg(run: &Run) -> Result<String, Error> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 500)).into_drawing_area();
        draw_cdf(&root, run)?;
        root.present().map_err(err("cdf"))?;
    }
    Ok(svg)
}

fn histogram_svg(run: &Run) -> Result<String, Error> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 400)).into_drawing_area();
        draw_histogram(&root, run)?;
        root.present().map_err(err("histogram"))?;
    }
    Ok(svg)
}

fn throughput_svg(report: &Report) -> Result<String, Error> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 400)).into_drawing_area();
        draw_throughput(&root, report)?;
        root.present().map_err(err("throughput"))?;
    }
    Ok(svg)
}

/// Where PNG text gets its glyphs (Debian's fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the font every format lays its text out with (once per process).
fn ensure_font() -> Result<(), Error> {
    static FONT_BYTES: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT_BYTES
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| {
                format!("plots need a TrueType font at {FONT} (Debian fonts-dejavu-core): {e}")
            })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT} is not a usable font"))
        })
        .clone()
        .map_err(|e| Error::Draw("font", e))
}

fn png(run: &Run, report: &Report, path: &Path) -> Result<(), Error> {
    let root = BitMapBackend::new(path, (900, 1300)).into_drawing_area();
    let (top, rest) = root.split_vertically(500);
    let (middle, bottom) = rest.split_vertically(400);
    draw_cdf(&top, run)?;
    draw_histogram(&middle, run)?;
    draw_throughput(&bottom, report)?;
    root.present().map_err(err("png"))
}

fn draw_cdf<DB: DrawingBackend>(root: &Area<'_, DB>, run: &Run) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let names: Vec<String> = run
        .timing_names()
        .into_iter()
        .filter(|n| !n.starts_with("check."))
        .collect();
    let max_ms = names
        .iter()
        .flat_map(|n| run.samples(n))
        .fold(0.0f64, f64::max)
        * 1e3;
    {
        root.fill(&WHITE).map_err(err("cdf"))?;
        let mut chart = ChartBuilder::on(root)
            .caption("Latency CDF", ("sans-serif", 22))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..(max_ms * 1.05).max(1.0), 0.0..1.0)
            .map_err(err("cdf"))?;
        chart
            .configure_mesh()
            .x_desc("milliseconds")
            .y_desc("fraction of pods")
            .draw()
            .map_err(err("cdf"))?;
        for (i, name) in names.iter().enumerate() {
            let mut s = run.samples(name);
            s.sort_by(f64::total_cmp);
            let n = s.len() as f64;
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.iter()
                        .enumerate()
                        .map(|(k, x)| (x * 1e3, (k + 1) as f64 / n)),
                    color,
                ))
                .map_err(err("cdf"))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err("cdf"))?;
    }
    Ok(())
}

fn draw_histogram<DB: DrawingBackend>(root: &Area<'_, DB>, run: &Run) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let s: Vec<f64> = run
        .samples("network_ready")
        .iter()
        .map(|x| x * 1e3)
        .collect();
    let max = s.iter().copied().fold(0.0f64, f64::max).max(1.0);
    let bins = 40usize;
    let width = max / bins as f64;
    let mut counts = vec![0u32; bins + 1];
    for x in &s {
        counts[((x / width) as usize).min(bins)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    {
        root.fill(&WHITE).map_err(err("histogram"))?;
        let mut chart = ChartBuilder::on(root)
            .caption("network_ready histogram", ("sans-serif", 22))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max * 1.05, 0u32..top + 1)
            .map_err(err("histogram"))?;
        chart
            .configure_mesh()
            .x_desc("milliseconds")
            .y_desc("pods")
            .draw()
            .map_err(err("histogram"))?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, c)| {
                let x0 = i as f64 * width;
                Rectangle::new([(x0, 0), (x0 + width, *c)], BLUE.filled())
            }))
            .map_err(err("histogram"))?;
    }
    Ok(())
}

fn draw_throughput<DB: DrawingBackend>(root: &Area<'_, DB>, report: &Report) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let last = report.throughput.len().max(1) as u64;
    let top = report
        .throughput
        .iter()
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(1)
        .max(1) as u32;
    {
        root.fill(&WHITE).map_err(err("throughput"))?;
        let mut chart = ChartBuilder::on(root)
            .caption("network-ready pods per second", ("sans-serif", 22))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0u64..last, 0u32..top + 1)
            .map_err(err("throughput"))?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first network-ready pod")
            .y_desc("pods/s")
            .draw()
            .map_err(err("throughput"))?;
        chart
            .draw_series(LineSeries::new(
                report.throughput.iter().map(|(t, n)| (*t, *n as u32)),
                RED,
            ))
            .map_err(err("throughput"))?;
    }
    Ok(())
}

/// Writes the plots to `path` (`.svg`: the CDF; `.png` and `.html`: all three).
pub fn write(run: &Run, report: &Report, path: &Path) -> Result<(), Error> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "svg" | "png" | "html") {
        ensure_font()?;
    }
    let body = match ext {
        "svg" => cdf_svg(run)?,
        "html" => format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>netready report</title></head>\
             <body><h1>netready report</h1><p>{} pods, {} network-ready ({:.1}%)</p>{}{}{}</body></html>\n",
            report.pods,
            report.ready,
            report.success_ratio * 100.0,
            cdf_svg(run)?,
            histogram_svg(run)?,
            throughput_svg(report)?
        ),
        "png" => return png(run, report, path),
        _ => return Err(Error::Format(path.display().to_string())),
    };
    std::fs::write(path, body).map_err(|e| Error::Write(path.display().to_string(), e))
}
