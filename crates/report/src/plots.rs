//! Charts, each written as `<stem>.svg` and `<stem>.png`.
//!
//! Categories (configs) run down the y axis so that long names stay readable. Text is drawn with
//! ab_glyph from a TrueType font found on the system (DejaVu Sans or Liberation Sans; override with
//! `UNETLAB_FONT=/path/to/font.ttf`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::files::atomic_write;
use crate::ReportError;

/// One named series of values, one per category.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// One value per category.
    pub values: Vec<f64>,
}

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system font for plot text once per process.
fn ensure_font() -> Result<(), String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("UNETLAB_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
            .collect();
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            "no TrueType font found for plot text: install fonts-dejavu-core or set UNETLAB_FONT".to_string()
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        for style in [FontStyle::Normal, FontStyle::Bold] {
            plotters::style::register_font("sans-serif", style, bytes)
                .map_err(|_| format!("{}: not a usable TrueType font", path.display()))?;
        }
        Ok(())
    })
    .clone()
}

/// Something that can draw itself on any plotters backend.
trait Chart {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws `chart` to `stem.svg` and `stem.png`, each atomically.
fn render(stem: &Path, chart: &impl Chart) -> Result<(), ReportError> {
    let fail = |message: String| ReportError::Plot {
        path: stem.display().to_string(),
        message,
    };
    ensure_font().map_err(fail)?;
    let size = chart.size();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        chart.draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    atomic_write(&stem.with_extension("svg"), |out| {
        use std::io::Write;
        out.write_all(svg.as_bytes())
            .map_err(|source| ReportError::Io {
                path: stem.display().to_string(),
                source,
            })
    })?;

    // Drawn into memory and encoded here, so the PNG goes through the same atomic writer.
    let (width, height) = size;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        chart.draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    atomic_write(&stem.with_extension("png"), |out| {
        let encoder = image::codecs::png::PngEncoder::new(out);
        image::ImageEncoder::write_image(
            encoder,
            &rgb,
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| fail(e.to_string()))
    })
}

/// The series colours (matplotlib's tab10), repeated past ten series.
const PALETTE: [RGBColor; 10] = [
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

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn plot_err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The series legend every chart uses, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(plot_err)
}

/// Charts of points or rows need at least one.
fn not_empty<T>(stem: &Path, items: &[T]) -> Result<(), ReportError> {
    if items.is_empty() {
        return Err(ReportError::Plot {
            path: stem.display().to_string(),
            message: "nothing to plot".into(),
        });
    }
    Ok(())
}

/// Bar charts need at least one category and one value per category in every series.
fn check_shape(stem: &Path, categories: &[String], series: &[Series]) -> Result<(), ReportError> {
    let bad = |message: String| {
        Err(ReportError::Plot {
            path: stem.display().to_string(),
            message,
        })
    };
    if categories.is_empty() || series.is_empty() {
        return bad("nothing to plot".into());
    }
    match series.iter().find(|s| s.values.len() != categories.len()) {
        Some(s) => bad(format!(
            "series `{}` has {} values for {} categories",
            s.name,
            s.values.len(),
            categories.len()
        )),
        None => Ok(()),
    }
}

/// Segment of category `i` of `n`: the first category at the top.
fn row(i: usize, n: usize) -> usize {
    n - 1 - i
}

/// The name shown at a y segment.
fn category_label(categories: &[String], v: &SegmentValue<usize>) -> String {
    match v {
        SegmentValue::CenterOf(p) if *p < categories.len() => {
            categories[row(*p, categories.len())].clone()
        }
        _ => String::new(),
    }
}

/// Tick labels without spurious decimals.
fn tick(top: f64) -> impl Fn(&f64) -> String {
    move |v| {
        if top >= 20.0 {
            format!("{v:.0}")
        } else if top >= 2.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    }
}

/// Tick labels for an axis over `range`: as many decimals as a tenth of its span needs.
fn span_tick(range: &std::ops::Range<f64>) -> impl Fn(&f64) -> String {
    let step = (range.end - range.start).abs() / 10.0;
    let decimals = if step > 0.0 && step.is_finite() {
        (-step.log10()).ceil().clamp(0.0, 6.0) as usize
    } else {
        2
    };
    move |v| format!("{v:.decimals$}")
}

fn label_width(categories: &[String]) -> u32 {
    (categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(4) as u32
        * 8
        + 16)
        .min(420)
}

/// Horizontal bars: one panel per series, side by side, sharing the categories. `whiskers` (low,
/// high) per category, if given, are drawn on the first panel (e.g. p10–p90).
struct BarPanels<'a> {
    title: &'a str,
    categories: &'a [String],
    panels: &'a [Series],
    whiskers: Option<&'a [(f64, f64)]>,
}

impl Chart for BarPanels<'_> {
    fn size(&self) -> (u32, u32) {
        (
            (label_width(self.categories) + 380 * self.panels.len() as u32).max(900),
            120 + 26 * self.categories.len() as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(plot_err)?;
        let root = root
            .titled(self.title, ("sans-serif", 20))
            .map_err(plot_err)?;
        let (w, _) = root.dim_in_pixel();
        let labels = label_width(self.categories);
        let panel_w = (w - labels) / self.panels.len() as u32;
        let n = self.categories.len();
        for (p, series) in self.panels.iter().enumerate() {
            let x0 = if p == 0 {
                0
            } else {
                labels + panel_w * p as u32
            };
            let x1 = labels + panel_w * (p as u32 + 1);
            let area = root.margin(0, 0, x0 as i32, (w - x1) as i32);
            let top = series
                .values
                .iter()
                .copied()
                .chain(
                    self.whiskers
                        .filter(|_| p == 0)
                        .into_iter()
                        .flatten()
                        .map(|w| w.1),
                )
                .fold(0.0f64, f64::max)
                .max(f64::MIN_POSITIVE)
                * 1.1;
            let mut chart = ChartBuilder::on(&area)
                .margin(8)
                .x_label_area_size(36)
                .y_label_area_size(if p == 0 { labels } else { 0 })
                .build_cartesian_2d(0.0..top, (0..n - 1).into_segmented())
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .x_desc(series.name.as_str())
                .x_label_formatter(&tick(top))
                .y_labels(n)
                .y_label_formatter(&|v| {
                    if p == 0 {
                        category_label(self.categories, v)
                    } else {
                        String::new()
                    }
                })
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(plot_err)?;
            let c = color(p);
            chart
                .draw_series(series.values.iter().enumerate().map(|(i, &v)| {
                    let y = row(i, n);
                    let mut bar = Rectangle::new(
                        [
                            (0.0, SegmentValue::Exact(y)),
                            (v, SegmentValue::Exact(y + 1)),
                        ],
                        c.filled(),
                    );
                    bar.set_margin(4, 4, 0, 0);
                    bar
                }))
                .map_err(plot_err)?;
            if let (0, Some(whiskers)) = (p, self.whiskers) {
                chart
                    .draw_series(whiskers.iter().enumerate().map(|(i, &(lo, hi))| {
                        let y = SegmentValue::CenterOf(row(i, n));
                        PathElement::new(vec![(lo, y.clone()), (hi, y)], BLACK.stroke_width(2))
                    }))
                    .map_err(plot_err)?;
            }
        }
        Ok(())
    }
}

/// Horizontal bars, one panel per series (e.g. parameters and GFLOPs side by side); optional
/// whiskers on the first panel.
pub fn grouped_bars(
    stem: &Path,
    title: &str,
    categories: &[String],
    panels: &[Series],
    whiskers: Option<&[(f64, f64)]>,
) -> Result<(), ReportError> {
    check_shape(stem, categories, panels)?;
    render(
        stem,
        &BarPanels {
            title,
            categories,
            panels,
            whiskers,
        },
    )
}

/// Horizontal stacked bars: each category's bar is the sum of the series, stacked in order.
struct Stacked<'a> {
    title: &'a str,
    x_label: &'a str,
    categories: &'a [String],
    series: &'a [Series],
}

impl Chart for Stacked<'_> {
    fn size(&self) -> (u32, u32) {
        (
            label_width(self.categories) + 720,
            140 + 24 * self.categories.len() as u32 + 18 * self.series.len() as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(plot_err)?;
        let root = root
            .titled(self.title, ("sans-serif", 20))
            .map_err(plot_err)?;
        let n = self.categories.len();
        let totals: Vec<f64> = (0..n)
            .map(|i| self.series.iter().map(|s| s.values[i]).sum())
            .collect();
        // Room on the right for the legend.
        let top = totals
            .iter()
            .copied()
            .fold(0.0f64, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.4;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(label_width(self.categories))
            .build_cartesian_2d(0.0..top, (0..n - 1).into_segmented())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(self.x_label)
            .x_label_formatter(&tick(top))
            .y_labels(n)
            .y_label_formatter(&|v| category_label(self.categories, v))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(plot_err)?;
        let mut start = vec![0.0; n];
        for (k, s) in self.series.iter().enumerate() {
            let c = color(k);
            let bars: Vec<Rectangle<(f64, SegmentValue<usize>)>> = (0..n)
                .map(|i| {
                    let (a, b) = (start[i], start[i] + s.values[i]);
                    start[i] = b;
                    let y = row(i, n);
                    let mut bar = Rectangle::new(
                        [(a, SegmentValue::Exact(y)), (b, SegmentValue::Exact(y + 1))],
                        c.filled(),
                    );
                    bar.set_margin(3, 3, 0, 0);
                    bar
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(s.name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    }
}

/// Horizontal stacked bars with a legend.
pub fn stacked_bars(
    stem: &Path,
    title: &str,
    x_label: &str,
    categories: &[String],
    series: &[Series],
) -> Result<(), ReportError> {
    check_shape(stem, categories, series)?;
    render(
        stem,
        &Stacked {
            title,
            x_label,
            categories,
            series,
        },
    )
}

/// Labelled points.
/// Numeric axes from 0 to `x_max` and `y_max` with a caption and axis labels
/// (`(title, x_label, y_label)`), mesh drawn.
fn xy_axes<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    (title, x_label, y_label): (&str, &str, &str),
    (xs, ys): (std::ops::Range<f64>, std::ops::Range<f64>),
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let (x_tick, y_tick) = (span_tick(&xs), span_tick(&ys));
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(xs, ys)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

struct Scatter<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    points: &'a [Point],
    /// Unlabelled points drawn small and grey beneath the numbered ones.
    background: &'a [(f64, f64)],
    /// Draw the line y = x (predicted against measured).
    diagonal: bool,
}

/// One point of a [`scatter`] plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Shown in the key beside the point's number.
    pub name: String,
    /// x value.
    pub x: f64,
    /// y value.
    pub y: f64,
    /// Half-length of a vertical error bar (e.g. one standard deviation over seeds), if any.
    pub y_err: Option<f64>,
    /// Whether the point is on a Pareto front, drawn as a line through such points.
    pub on_front: bool,
}

impl Point {
    /// A plain point: no error bar, not on a front.
    pub fn new(name: impl Into<String>, x: f64, y: f64) -> Point {
        Point {
            name: name.into(),
            x,
            y,
            y_err: None,
            on_front: false,
        }
    }
}

/// `lo..hi` padded by 8 % of the span (or of the value, for a single value) on each side.
fn fitted(values: impl Iterator<Item = f64> + Clone) -> std::ops::Range<f64> {
    let finite = values.filter(|v| v.is_finite());
    let lo = finite.clone().fold(f64::INFINITY, f64::min);
    let hi = finite.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        0.08 * span
    } else {
        0.08 * lo.abs().max(1e-9)
    };
    (lo - pad)..(hi + pad)
}

impl Chart for Scatter<'_> {
    fn size(&self) -> (u32, u32) {
        (1100, 640)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(plot_err)?;
        let root = root
            .titled(self.title, ("sans-serif", 20))
            .map_err(plot_err)?;
        let key_width = (self
            .points
            .iter()
            .map(|p| p.name.chars().count())
            .max()
            .unwrap_or(4) as u32
            * 8
            + 60)
            .min(420);
        let (w, _) = root.dim_in_pixel();
        let (plot, key) = root.split_horizontally(w.saturating_sub(key_width));
        let err = |p: &Point| p.y_err.unwrap_or(0.0);
        let xs = fitted(
            self.points
                .iter()
                .map(|p| p.x)
                .chain(self.background.iter().map(|b| b.0)),
        );
        let ys = fitted(
            self.points
                .iter()
                .flat_map(|p| [p.y - err(p), p.y + err(p)])
                .chain(self.background.iter().map(|b| b.1)),
        );
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(xs.clone(), ys.clone())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .x_label_formatter(&span_tick(&xs))
            .y_label_formatter(&span_tick(&ys))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(
                self.background
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 2, RGBColor(190, 190, 190).filled())),
            )
            .map_err(plot_err)?;
        if self.diagonal {
            let lo = xs.start.max(ys.start);
            let hi = xs.end.min(ys.end);
            if lo < hi {
                chart
                    .draw_series(LineSeries::new(
                        [(lo, lo), (hi, hi)],
                        RGBColor(120, 120, 120).stroke_width(1),
                    ))
                    .map_err(plot_err)?
                    .label("y = x")
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(120, 120, 120))
                    });
                legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
            }
        }
        let mut front: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter(|p| p.on_front)
            .map(|p| (p.x, p.y))
            .collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        if front.len() > 1 {
            chart
                .draw_series(LineSeries::new(
                    front,
                    RGBColor(120, 120, 120).stroke_width(2),
                ))
                .map_err(plot_err)?
                .label("Pareto front")
                .legend(|(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 18, y)],
                        RGBColor(120, 120, 120).stroke_width(2),
                    )
                });
            legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        chart
            .draw_series(
                self.points.iter().filter(|p| p.y_err.is_some()).map(|p| {
                    PathElement::new(vec![(p.x, p.y - err(p)), (p.x, p.y + err(p))], BLACK)
                }),
            )
            .map_err(plot_err)?;
        chart
            .draw_series(self.points.iter().enumerate().map(|(i, p)| {
                EmptyElement::at((p.x, p.y))
                    + Circle::new((0, 0), 5, color(i).filled())
                    + Text::new(format!("{}", i + 1), (7, -16), ("sans-serif", 13))
            }))
            .map_err(plot_err)?;
        for (i, p) in self.points.iter().enumerate() {
            let y = 40 + 22 * i as i32;
            key.draw(&Circle::new((14, y + 7), 5, color(i).filled()))
                .map_err(plot_err)?;
            let mark = if p.on_front { " (front)" } else { "" };
            key.draw(&Text::new(
                format!("{:>2}  {}{mark}", i + 1, p.name),
                (26, y),
                ("sans-serif", 13),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// A scatter plot of numbered points with a key (names beside their numbers), axes fitted to the
/// data, optional error bars and the Pareto front drawn as a line.
pub fn scatter(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[Point],
) -> Result<(), ReportError> {
    cloud(stem, (title, x_label, y_label), &[], points, false)
}

/// A [`scatter`] of numbered points over a cloud of unlabelled ones (e.g. a search's front over
/// every feasible candidate), optionally with the line y = x (e.g. predicted against measured).
pub fn cloud(
    stem: &Path,
    (title, x_label, y_label): (&str, &str, &str),
    background: &[(f64, f64)],
    points: &[Point],
    diagonal: bool,
) -> Result<(), ReportError> {
    not_empty(stem, points)?;
    render(
        stem,
        &Scatter {
            title,
            x_label,
            y_label,
            points,
            background,
            diagonal,
        },
    )
}

/// One row of an [`effects`] chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    /// The row's label (e.g. "chain-02 · fd").
    pub label: String,
    /// The effect.
    pub value: f64,
    /// Half-width of its interval (e.g. 2σ).
    pub err: f64,
    /// Group (legend entry and colour), e.g. the verdict.
    pub group: String,
    /// The group's colour (RGB); None: the palette's, by order of appearance.
    pub colour: Option<[u8; 3]>,
}

struct Effects<'a> {
    title: &'a str,
    x_label: &'a str,
    rows: &'a [Effect],
    /// Vertical reference lines (value, legend entry).
    marks: &'a [(f64, String)],
}

impl Chart for Effects<'_> {
    fn size(&self) -> (u32, u32) {
        let labels: Vec<String> = self.rows.iter().map(|r| r.label.clone()).collect();
        (
            (label_width(&labels) + 700).max(900),
            140 + 26 * self.rows.len() as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(plot_err)?;
        let labels: Vec<String> = self.rows.iter().map(|r| r.label.clone()).collect();
        let n = self.rows.len();
        let xs = fitted(
            self.rows
                .iter()
                .flat_map(|r| [r.value - r.err, r.value + r.err])
                .chain(self.marks.iter().map(|m| m.0)),
        );
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(label_width(&labels))
            .build_cartesian_2d(xs.clone(), (0..n - 1).into_segmented())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(self.x_label)
            .x_label_formatter(&tick(xs.end.abs().max(xs.start.abs())))
            .y_labels(n)
            .y_label_formatter(&|v| category_label(&labels, v))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(plot_err)?;
        let top = SegmentValue::Exact(n);
        for (k, (x, name)) in self.marks.iter().enumerate() {
            let style = RGBColor(150, 150, 150).stroke_width(1 + k as u32);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(*x, SegmentValue::Exact(0)), (*x, top.clone())],
                    style,
                )))
                .map_err(plot_err)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        let mut groups: Vec<&str> = Vec::new();
        for r in self.rows {
            if !groups.contains(&r.group.as_str()) {
                groups.push(&r.group);
            }
        }
        for (g, group) in groups.iter().enumerate() {
            let c = self
                .rows
                .iter()
                .find(|r| r.group == *group)
                .and_then(|r| r.colour)
                .map_or(color(g), |[r, g, b]| RGBColor(r, g, b));
            let rows = || {
                self.rows
                    .iter()
                    .enumerate()
                    .filter(move |(_, r)| r.group == *group)
            };
            chart
                .draw_series(rows().map(|(i, r)| {
                    let y = SegmentValue::CenterOf(row(i, n));
                    PathElement::new(
                        vec![(r.value - r.err, y.clone()), (r.value + r.err, y)],
                        c.stroke_width(2),
                    )
                }))
                .map_err(plot_err)?;
            chart
                .draw_series(rows().map(|(i, r)| {
                    Circle::new((r.value, SegmentValue::CenterOf(row(i, n))), 5, c.filled())
                }))
                .map_err(plot_err)?
                .label(group.to_string())
                .legend(move |(x, y)| Circle::new((x + 9, y), 5, c.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    }
}

/// Effects with intervals, one row each (the first at the top), coloured by group, with
/// vertical reference lines (e.g. at zero).
pub fn effects(
    stem: &Path,
    title: &str,
    x_label: &str,
    rows: &[Effect],
    marks: &[(f64, String)],
) -> Result<(), ReportError> {
    not_empty(stem, rows)?;
    render(
        stem,
        &Effects {
            title,
            x_label,
            rows,
            marks,
        },
    )
}

/// Series of at most this many points mark each point on their line.
const MARKED_POINTS: usize = 64;

/// Named lines of (x, y) points.
struct Lines<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: &'a [(String, Vec<(f64, f64)>)],
}

impl Lines<'_> {
    /// Width of the key beside the plot: the swatch and the longest name (about 8 pixels a
    /// character at 13 px), at least 240 pixels.
    fn key_width(&self) -> u32 {
        let longest = self.series.iter().map(|(name, _)| name.chars().count());
        (46 + 8 * longest.max().unwrap_or(0) as u32).max(240)
    }
}

impl Chart for Lines<'_> {
    fn size(&self) -> (u32, u32) {
        (960 + self.key_width(), 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(plot_err)?;
        // The key sits beside the plot, so that no line is hidden under it.
        let (plot, key) = root.split_horizontally(self.size().0 - self.key_width());
        let root = &plot;
        // Axes fitted to the data, so that curves close together stay apart.
        let points = || self.series.iter().flat_map(|(_, p)| p.iter());
        let ranges = (fitted(points().map(|p| p.0)), fitted(points().map(|p| p.1)));
        let labels = (self.title, self.x_label, self.y_label);
        let mut chart = xy_axes(root, labels, ranges)?;
        for (i, (name, line)) in self.series.iter().enumerate() {
            let colour = color(i);
            let style = colour.stroke_width(2);
            // A short series marks its points (a single point is nothing but its mark); past
            // the palette, colours repeat, and those series mark their points with triangles.
            let repeated = i >= PALETTE.len();
            let marked = repeated || line.len() <= MARKED_POINTS;
            let mark = |p: (i32, i32)| -> DynElement<'static, DB, (i32, i32)> {
                if repeated {
                    TriangleMarker::new(p, 6, colour.filled()).into_dyn()
                } else {
                    Circle::new(p, 4, colour.filled()).into_dyn()
                }
            };
            chart
                .draw_series(LineSeries::new(line.iter().copied(), style))
                .map_err(plot_err)?;
            if marked {
                chart
                    .draw_series(line.iter().map(|&p| EmptyElement::at(p) + mark((0, 0))))
                    .map_err(plot_err)?;
            }
            // Its key entry: rows of at most 20 pixels, closer when many series share the height.
            let row = (20.min((self.size().1 as usize - 60) / self.series.len().max(1))) as i32;
            let y = 48 + i as i32 * row;
            key.draw(&PathElement::new(vec![(8, y), (30, y)], style))
                .map_err(plot_err)?;
            if marked {
                key.draw(&mark((19, y))).map_err(plot_err)?;
            }
            key.draw(&Text::new(
                name.clone(),
                (38, y - 7),
                ("sans-serif", 13).into_font(),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// A line chart of named series (e.g. loss curves).
pub fn lines(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), ReportError> {
    render(
        stem,
        &Lines {
            title,
            x_label,
            y_label,
            series,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chart_writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let cats: Vec<String> = ["sd15", "mobilediffusion"].map(String::from).to_vec();
        let a = Series {
            name: "params (M)".into(),
            values: vec![859.5, 387.7],
        };
        let b = Series {
            name: "GFLOPs".into(),
            values: vec![803.3, 358.8],
        };
        grouped_bars(
            &dir.path().join("bars"),
            "t",
            &cats,
            &[a.clone(), b.clone()],
            Some(&[(800.0, 810.0), (350.0, 360.0)]),
        )
        .unwrap();
        stacked_bars(&dir.path().join("stack"), "t", "x", &cats, &[a, b]).unwrap();
        scatter(
            &dir.path().join("scatter"),
            "t",
            "x",
            "y",
            &[
                Point::new("sd15", 1.0, 2.0),
                Point {
                    y_err: Some(0.5),
                    on_front: true,
                    ..Point::new("mobilediffusion", 0.5, 2.5)
                },
                Point {
                    on_front: true,
                    ..Point::new("md-lite", 0.4, 3.0)
                },
            ],
        )
        .unwrap();
        assert!(scatter(&dir.path().join("bad"), "t", "x", "y", &[]).is_err());
        effects(
            &dir.path().join("effects"),
            "t",
            "x",
            &[
                Effect {
                    label: "chain-02 · fd".into(),
                    value: 0.3,
                    err: 0.1,
                    group: "reproduced".into(),
                    colour: Some([40, 150, 60]),
                },
                Effect {
                    label: "chain-04 · fd".into(),
                    value: -0.05,
                    err: 0.2,
                    group: "unresolved".into(),
                    colour: None,
                },
            ],
            &[(0.0, "no effect".into())],
        )
        .unwrap();
        assert!(effects(&dir.path().join("bad"), "t", "x", &[], &[]).is_err());
        lines(
            &dir.path().join("lines"),
            "t",
            "step",
            "loss",
            &[("train".into(), vec![(1.0, 1.0), (2.0, 0.5)])],
        )
        .unwrap();
        for stem in ["bars", "stack", "scatter", "effects", "lines"] {
            let svg = std::fs::read_to_string(dir.path().join(format!("{stem}.svg"))).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.contains("<rect"),
                "{stem}.svg"
            );
            let png = std::fs::read(dir.path().join(format!("{stem}.png"))).unwrap();
            assert_eq!(&png[1..4], b"PNG", "{stem}.png");
        }
        assert!(std::fs::read_to_string(dir.path().join("bars.svg"))
            .unwrap()
            .contains("mobilediffusion"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            10,
            "no temporary files remain"
        );
        let short = Series {
            name: "short".into(),
            values: vec![1.0],
        };
        assert!(stacked_bars(&dir.path().join("bad"), "t", "x", &cats, &[short]).is_err());
        assert!(grouped_bars(&dir.path().join("bad"), "t", &[], &[], None).is_err());
    }

    #[test]
    fn short_series_and_those_past_the_palette_mark_their_points() {
        let dir = tempfile::tempdir().unwrap();
        let series = |n: usize, points: usize| -> Vec<(String, Vec<(f64, f64)>)> {
            (0..n)
                .map(|i| {
                    let line = (0..points).map(|x| (x as f64, i as f64 + 0.01 * x as f64));
                    (format!("run {i}"), line.collect())
                })
                .collect()
        };
        // (circles, triangles) in the SVG of these series.
        let marks = |stem: &str, series: &[(String, Vec<(f64, f64)>)]| {
            let stem = dir.path().join(stem);
            lines(&stem, "t", "x", "y", series).unwrap();
            let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
            (
                svg.matches("<circle").count(),
                svg.matches("<polygon").count(),
            )
        };
        // Long curves in distinct colours: plain lines.
        assert_eq!(
            marks("long", &series(PALETTE.len(), MARKED_POINTS + 1)),
            (0, 0)
        );
        // A series of one point is its mark, on the plot and in the key.
        assert_eq!(marks("one", &series(1, 1)), (2, 0));
        // Short curves: each point and key entry a circle; the eleventh series repeats the
        // first colour and marks its two points and key entry with triangles.
        let eleven = series(PALETTE.len() + 1, 2);
        assert_eq!(marks("eleven", &eleven), (3 * PALETTE.len(), 3));
        // A long curve past the palette is marked too.
        let mut past = series(PALETTE.len(), MARKED_POINTS + 1);
        past.push(("run 10".into(), vec![(0.0, 1.0), (1.0, 2.0)]));
        past.push((
            "run 11".into(),
            (0..MARKED_POINTS + 1).map(|x| (x as f64, 3.0)).collect(),
        ));
        assert_eq!(marks("past", &past), (0, 3 + MARKED_POINTS + 2));
        // Every series is named in the key beside the plot.
        let svg = std::fs::read_to_string(dir.path().join("eleven.svg")).unwrap();
        for i in 0..=PALETTE.len() {
            assert!(svg.contains(&format!(">\nrun {i}\n<")), "run {i}");
        }
    }

    #[test]
    fn line_axes_fit_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("fit");
        let series = [("a".to_string(), vec![(16_000.0, 0.44), (64_000.0, 0.80)])];
        lines(&stem, "t", "images", "y", &series).unwrap();
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        let label = |v: &str| svg.contains(&format!(">\n{v}\n<"));
        // 0.44-0.80 padded by 8 %: ticks every 0.05 with two decimals, and no zero.
        assert!(label("0.50") && label("0.75"), "{svg}");
        assert!(!label("0.00") && !label("0.0") && !label("0"), "{svg}");
        // Images seen, 12,160-67,840: whole numbers.
        assert!(label("20000") && !label("20000.0"), "{svg}");
    }

    #[test]
    fn a_long_name_widens_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let width = |name: &str| {
            let stem = dir.path().join("key");
            let series = [(name.to_string(), vec![(1.0, 1.0), (2.0, 2.0)])];
            lines(&stem, "t", "x", "y", &series).unwrap();
            let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
            let open = svg.find("width=\"").unwrap() + 7;
            let digits = svg[open..].find('"').unwrap();
            svg[open..open + digits].parse::<u32>().unwrap()
        };
        assert_eq!(width("short"), 960 + 240);
        let long = "an-experiment-name-of-fifty-characters-in-all-0123";
        assert_eq!(long.len(), 50);
        // The key holds the swatch (46 px) and 8 px a character.
        assert_eq!(width(long), 960 + 46 + 8 * 50);
    }
}
