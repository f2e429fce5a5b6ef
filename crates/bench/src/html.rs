//! A self-contained HTML report: summary tables and inline SVG plots generated here (no scripts,
//! no style sheets or fonts from elsewhere, no external references).

use crate::report::Report;
use std::fmt::Write;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// Width and height of every plot's viewBox.
const W: f64 = 640.0;
const H: f64 = 300.0;
/// The plotting area inside the viewBox.
const LEFT: f64 = 72.0;
const RIGHT: f64 = W - 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = H - 40.0;
/// Highest "nines" on the percentile axis: 5 = 99.999 %; the maximum (100 %) is drawn one step further.
const MAX_NINES: f64 = 5.0;
/// Most points drawn for the throughput timeline (longer timelines are averaged down).
const MAX_TIMELINE_POINTS: usize = 1_200;

/// A linear map from a data interval onto a pixel interval; values outside are clamped.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Scale {
    pub fn new(domain: (f64, f64), range: (f64, f64)) -> Self {
        Scale {
            d0: domain.0,
            d1: domain.1,
            r0: range.0,
            r1: range.1,
        }
    }

    pub fn map(&self, v: f64) -> f64 {
        let span = self.d1 - self.d0;
        let t = if span.abs() < f64::EPSILON || !v.is_finite() {
            0.0
        } else {
            ((v - self.d0) / span).clamp(0.0, 1.0)
        };
        self.r0 + t * (self.r1 - self.r0)
    }
}

/// Position of `percentile` (0..=100) on the "nines" axis: 0 → 0, 90 → 1, 99 → 2, 99.9 → 3, …;
/// 100 % (the maximum) is one step past [`MAX_NINES`].
pub fn nines(percentile: f64) -> f64 {
    if !percentile.is_finite() || percentile >= 100.0 {
        return MAX_NINES + 1.0;
    }
    let rest = 1.0 - percentile.max(0.0) / 100.0;
    (-rest.log10()).clamp(0.0, MAX_NINES + 1.0)
}

/// A "nice" upper bound and tick step for an axis from 0 to `max`.
fn nice_ticks(max: f64) -> (f64, f64) {
    if !max.is_finite() || max <= 0.0 {
        return (1.0, 0.2);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil().max(1.0) * step, step)
}

/// One line plot.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    /// Data points (x, y), drawn in order.
    points: Vec<(f64, f64)>,
    /// X domain.
    x_domain: (f64, f64),
    /// X ticks: position and label.
    x_ticks: Vec<(f64, String)>,
    /// How y tick values are printed.
    y_fmt: fn(f64) -> String,
    /// Draw a marker per point with this class (and a tooltip per point).
    markers: Option<(&'a str, Vec<String>)>,
}

impl Chart<'_> {
    fn svg(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}">"#,
            t = escape(self.title)
        );
        let _ = write!(
            s,
            r#"<text x="{x}" y="18" class="title">{t}</text>"#,
            x = W / 2.0,
            t = escape(self.title)
        );
        if self.points.is_empty() {
            let _ = write!(
                s,
                r#"<text x="{x}" y="{y}" class="title">no data</text></svg>"#,
                x = W / 2.0,
                y = H / 2.0
            );
            return s;
        }
        let y_max = self.points.iter().map(|p| p.1).fold(0.0, f64::max);
        let (y_top, y_step) = nice_ticks(y_max);
        let xs = Scale::new(self.x_domain, (LEFT, RIGHT));
        let ys = Scale::new((0.0, y_top), (BOTTOM, TOP));
        // Grid and y ticks.
        let mut v = 0.0;
        while v <= y_top + y_step / 2.0 {
            let y = ys.map(v);
            let _ = write!(
                s,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" class="grid"/><text x="{tx}" y="{ty:.1}" class="ytick">{l}</text>"#,
                tx = LEFT - 6.0,
                ty = y + 4.0,
                l = escape(&(self.y_fmt)(v))
            );
            v += y_step;
        }
        for (xv, label) in &self.x_ticks {
            let x = xs.map(*xv);
            let _ = write!(
                s,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{BOTTOM}" class="grid"/><text x="{x:.1}" y="{ty}" class="xtick">{l}</text>"#,
                ty = BOTTOM + 16.0,
                l = escape(label)
            );
        }
        let _ = write!(
            s,
            r#"<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" class="axis"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}" class="axis"/>"#
        );
        let _ = write!(
            s,
            r#"<text x="{x}" y="{y}" class="xlabel">{l}</text><text x="14" y="{yy}" class="ylabel" transform="rotate(-90 14 {yy})">{yl}</text>"#,
            x = (LEFT + RIGHT) / 2.0,
            y = H - 6.0,
            l = escape(self.x_label),
            yy = (TOP + BOTTOM) / 2.0,
            yl = escape(self.y_label)
        );
        s.push_str(r#"<polyline class="line" points=""#);
        for (i, (x, y)) in self.points.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            let _ = write!(s, "{:.1},{:.1}", xs.map(*x), ys.map(*y));
        }
        s.push_str(r#""/>"#);
        if let Some((class, tips)) = &self.markers {
            for (i, (x, y)) in self.points.iter().enumerate() {
                let _ = write!(
                    s,
                    r#"<circle class="{c}" cx="{cx:.1}" cy="{cy:.1}" r="3"><title>{t}</title></circle>"#,
                    c = escape(class),
                    cx = xs.map(*x),
                    cy = ys.map(*y),
                    t = escape(tips.get(i).map_or("", String::as_str))
                );
            }
        }
        s.push_str("</svg>");
        s
    }
}

/// A latency axis label: µs below 1 ms, then ms, then s, without trailing zeros.
fn fmt_us(v: f64) -> String {
    let trim = |x: f64| {
        let t = format!("{x:.2}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if v < 1_000.0 {
        format!("{}µs", trim(v))
    } else if v < 1_000_000.0 {
        format!("{}ms", trim(v / 1_000.0))
    } else {
        format!("{}s", trim(v / 1_000_000.0))
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The latency distribution against percentile on a log "nines" axis.
fn distribution_chart(r: &Report) -> String {
    let points = r
        .latency_distribution
        .iter()
        .map(|p| (nines(p.percentile), p.value_us as f64))
        .collect();
    let tips = r
        .latency_distribution
        .iter()
        .map(|p| format!("p{} = {} µs", p.percentile, p.value_us))
        .collect();
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "max"];
    Chart {
        title: "Latency by percentile",
        x_label: "percentile",
        y_label: "latency",
        points,
        x_domain: (0.0, MAX_NINES + 1.0),
        x_ticks: labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i as f64, (*l).to_string()))
            .collect(),
        y_fmt: fmt_us,
        markers: Some(("dist", tips)),
    }
    .svg()
}

/// Ticks at "nice" steps from 0 to `max`.
fn linear_ticks(max: f64, min_step: f64, unit: &str) -> Vec<(f64, String)> {
    let (top, step) = nice_ticks(max);
    let step = step.max(min_step);
    let mut ticks = Vec::new();
    let mut v = 0.0;
    while v <= top + step / 2.0 && ticks.len() < 50 {
        ticks.push((v, format!("{}{unit}", fmt_num(v))));
        v += step;
    }
    ticks
}

/// Requests per second over the measured period.
fn timeline_chart(r: &Report) -> String {
    let bucket_s = r.timeline_bucket_ms.max(1) as f64 / 1000.0;
    let group = r.timeline.len().div_ceil(MAX_TIMELINE_POINTS).max(1);
    let points: Vec<(f64, f64)> = r
        .timeline
        .chunks(group)
        .enumerate()
        .map(|(i, c)| {
            let mean = c.iter().sum::<u64>() as f64 / c.len() as f64;
            // Each point at the end of its span.
            (((i * group) + c.len()) as f64 * bucket_s, mean / bucket_s)
        })
        .collect();
    let span = r.timeline.len() as f64 * bucket_s;
    Chart {
        title: "Throughput over time",
        x_label: "seconds into the measured period",
        y_label: "requests/s",
        points,
        x_domain: (0.0, span),
        x_ticks: linear_ticks(span, 0.1, "s"),
        y_fmt: fmt_num,
        markers: None,
    }
    .svg()
}

/// Throughput and p99 across the recorded runs (oldest first).
fn trend_charts(runs: &[Report]) -> String {
    let n = runs.len();
    let x_domain = (1.0, n.max(2) as f64);
    let step = (n as f64 / 10.0).ceil().max(1.0) as usize;
    let x_ticks: Vec<(f64, String)> = (1..=n)
        .step_by(step)
        .map(|i| (i as f64, i.to_string()))
        .collect();
    let tip =
        |i: usize, r: &Report, what: String| format!("run {} ({}): {what}", i + 1, r.unix_time_s);
    let throughput = Chart {
        title: "Throughput by run",
        x_label: "run",
        y_label: "requests/s",
        points: runs
            .iter()
            .enumerate()
            .map(|(i, r)| ((i + 1) as f64, r.throughput_rps))
            .collect(),
        x_domain,
        x_ticks: x_ticks.clone(),
        y_fmt: fmt_num,
        markers: Some((
            "trend-throughput",
            runs.iter()
                .enumerate()
                .map(|(i, r)| tip(i, r, format!("{:.1} req/s", r.throughput_rps)))
                .collect(),
        )),
    };
    let p99 = Chart {
        title: "p99 latency by run",
        x_label: "run",
        y_label: "p99",
        points: runs
            .iter()
            .enumerate()
            .map(|(i, r)| ((i + 1) as f64, r.latency.p99_us as f64))
            .collect(),
        x_domain,
        x_ticks,
        y_fmt: fmt_us,
        markers: Some((
            "trend-p99",
            runs.iter()
                .enumerate()
                .map(|(i, r)| tip(i, r, format!("p99 {} µs", r.latency.p99_us)))
                .collect(),
        )),
    };
    format!("{}\n{}", throughput.svg(), p99.svg())
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:0 0 1.5em}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
svg.plot{display:block;margin:0 0 1.5em;background:#fff;border:1px solid #ddd}\
.grid{stroke:#eee}.axis{stroke:#444}\
.line{fill:none;stroke:#1f77b4;stroke-width:1.5}\
circle{fill:#1f77b4}\
text{font-size:11px;fill:#333}.title{font-size:13px;text-anchor:middle}\
.ytick{text-anchor:end}.xtick,.xlabel,.ylabel{text-anchor:middle}";

fn row(s: &mut String, name: &str, value: &str) {
    let class = if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        "num"
    } else {
        "text"
    };
    let _ = write!(
        s,
        r#"<tr><th>{}</th><td class="{class}">{}</td></tr>"#,
        escape(name),
        escape(value)
    );
}

/// The whole report page. `history` is the recorded runs for the trend plots (oldest first,
/// normally ending with `report` itself); `None` leaves the trend section out.
pub fn render(report: &Report, history: Option<&[Report]>) -> String {
    let r = report;
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>otlp-mesh bench: {}</title><style>{STYLE}</style></head><body>\n",
        escape(&r.url)
    );
    let _ = writeln!(s, "<h1>otlp-mesh bench</h1>");
    let _ = writeln!(s, "<h2>Summary</h2><table>");
    row(&mut s, "URL", &r.url);
    row(
        &mut s,
        "run",
        &format!(
            "{} loop, {:?}, {} connections, {} workers, {:.1} s{}",
            r.mode,
            r.protocol,
            r.connections,
            r.workers,
            r.duration_s,
            r.target_rate
                .map(|t| format!(", target {t:.0} req/s"))
                .unwrap_or_default()
        ),
    );
    row(&mut s, "requests", &r.requests.to_string());
    row(&mut s, "ok", &r.ok.to_string());
    row(
        &mut s,
        "throughput (req/s)",
        &format!("{:.1}", r.throughput_rps),
    );
    let e = &r.errors;
    row(&mut s, "errors", &e.total().to_string());
    for (k, v) in [
        ("errors: connect", e.connect),
        ("errors: timeout", e.timeout),
        ("errors: 4xx", e.status_4xx),
        ("errors: 5xx", e.status_5xx),
        ("errors: other", e.other),
        ("errors: grpc-status", e.grpc_status),
    ] {
        row(&mut s, k, &v.to_string());
    }
    s.push_str("</table>\n");

    let _ = writeln!(
        s,
        "<h2>Latency (µs){}</h2>",
        if r.latency_uncorrected.is_some() {
            ", from the scheduled start (coordinated-omission corrected)"
        } else {
            ""
        }
    );
    s.push_str("<table><tr><th></th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th><th>mean</th></tr>");
    let mut lat_row = |name: &str, l: &crate::histogram::Percentiles| {
        let _ = write!(s, "<tr><th>{}</th>", escape(name));
        for v in [
            l.p50_us, l.p90_us, l.p95_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us,
        ] {
            let _ = write!(s, r#"<td class="num">{v}</td>"#);
        }
        let _ = write!(s, r#"<td class="num">{:.1}</td></tr>"#, l.mean_us);
    };
    lat_row("latency", &r.latency);
    if let Some(u) = &r.latency_uncorrected {
        lat_row("uncorrected", u);
    }
    s.push_str("</table>\n");

    if !r.processes.is_empty() {
        s.push_str("<h2>Processes</h2><table><tr><th>pid</th><th>name</th><th>CPU s</th><th>CPU µs/req</th><th>RSS peak (MiB)</th></tr>");
        for p in &r.processes {
            let _ = write!(
                s,
                r#"<tr><td class="num">{}</td><td>{}</td><td class="num">{:.2}</td><td class="num">{:.1}</td><td class="num">{:.1}</td></tr>"#,
                p.pid,
                escape(&p.name),
                p.cpu_seconds,
                p.cpu_us_per_request,
                p.rss_peak_bytes as f64 / 1_048_576.0
            );
        }
        s.push_str("</table>\n");
    }

    s.push_str("<h2>Latency distribution</h2>\n");
    s.push_str(&distribution_chart(r));
    s.push_str("\n<h2>Throughput over time</h2>\n");
    s.push_str(&timeline_chart(r));
    if let Some(runs) = history {
        let _ = writeln!(s, "\n<h2>Trend over {} recorded runs</h2>", runs.len());
        s.push_str(&trend_charts(runs));
    }
    s.push_str("\n</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{Latency, Percentiles};
    use crate::report::{Errors, ProcessUsage};
    use std::time::Duration;

    fn report() -> Report {
        let mut h = Latency::new();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        Report {
            url: "http://127.0.0.1:1/<x>?a=1&b=\"2\"".into(),
            protocol: crate::Protocol::Http1,
            mode: "closed".into(),
            connections: 2,
            workers: 2,
            duration_s: 1.0,
            target_rate: None,
            pace_us: None,
            requests: 12_345,
            ok: 12_300,
            errors: Errors {
                status_5xx: 45,
                ..Errors::default()
            },
            throughput_rps: 12_345.0,
            latency: h.summary(),
            latency_uncorrected: Some(Percentiles::default()),
            processes: vec![ProcessUsage {
                pid: 7,
                name: "<evil>".into(),
                cpu_seconds: 0.5,
                cpu_us_per_request: 40.5,
                rss_peak_bytes: 10 << 20,
            }],
            unix_time_s: 1,
            timeline_bucket_ms: 100,
            timeline: vec![1200, 1300, 1250, 1100, 0, 1500, 1234, 1300, 1200, 1261],
            latency_distribution: h.distribution(),
        }
    }

    /// Every number pair of `points="…"` and every circle centre in `svg`.
    fn coordinates(svg: &str) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for part in svg.split("points=\"").skip(1) {
            let list = &part[..part.find('"').unwrap()];
            for pair in list.split(' ') {
                let (x, y) = pair.split_once(',').unwrap();
                out.push((x.parse().unwrap(), y.parse().unwrap()));
            }
        }
        for part in svg.split("<circle").skip(1) {
            let num = |attr: &str| -> f64 {
                let at = part.find(attr).unwrap() + attr.len();
                let rest = &part[at..];
                rest[..rest.find('"').unwrap()].parse().unwrap()
            };
            out.push((num("cx=\""), num("cy=\"")));
        }
        out
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain µs"), "plain µs");
        let html = render(&report(), None);
        assert!(!html.contains("<evil>"));
        assert!(html.contains("&lt;evil&gt;"));
        assert!(html.contains("/&lt;x&gt;?a=1&amp;b=&quot;2&quot;"));
    }

    #[test]
    fn latency_axis_labels() {
        assert_eq!(fmt_us(0.0), "0µs");
        assert_eq!(fmt_us(500.0), "500µs");
        assert_eq!(fmt_us(5_000.0), "5ms");
        assert_eq!(fmt_us(2_500.0), "2.5ms");
        assert_eq!(fmt_us(1_500_000.0), "1.5s");
    }

    #[test]
    fn scale_maps_and_clamps() {
        let s = Scale::new((0.0, 10.0), (100.0, 0.0));
        assert_eq!(s.map(0.0), 100.0);
        assert_eq!(s.map(5.0), 50.0);
        assert_eq!(s.map(10.0), 0.0);
        assert_eq!(s.map(20.0), 0.0);
        assert_eq!(s.map(-1.0), 100.0);
        assert_eq!(s.map(f64::NAN), 100.0);
        assert_eq!(Scale::new((3.0, 3.0), (1.0, 2.0)).map(3.0), 1.0);
    }

    #[test]
    fn percentile_axis_is_monotone_in_nines() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert!((nines(99.999) - 5.0).abs() < 1e-6);
        assert_eq!(nines(100.0), MAX_NINES + 1.0);
        let ps: Vec<f64> = report()
            .latency_distribution
            .iter()
            .map(|p| p.percentile)
            .collect();
        let xs: Vec<f64> = ps.iter().map(|p| nines(*p)).collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "{xs:?}");
        assert!(xs.iter().all(|x| (0.0..=MAX_NINES + 1.0).contains(x)));
    }

    #[test]
    fn plotted_points_stay_inside_the_viewbox() {
        let r = report();
        let mut runs = vec![r.clone(), r.clone(), r.clone()];
        runs[1].throughput_rps = 0.0;
        runs[2].latency.p99_us = u64::MAX / 2;
        for svg in [
            distribution_chart(&r),
            timeline_chart(&r),
            trend_charts(&runs),
        ] {
            let pts = coordinates(&svg);
            assert!(!pts.is_empty());
            for (x, y) in pts {
                assert!(
                    (LEFT..=RIGHT).contains(&x) && (TOP..=BOTTOM).contains(&y),
                    "({x}, {y})"
                );
            }
        }
        // A single run still plots (inside the area), and no data shows a note.
        assert_eq!(coordinates(&trend_charts(&runs[..1])).len(), 2 + 2);
        let mut empty = r.clone();
        empty.timeline.clear();
        empty.latency_distribution.clear();
        assert!(distribution_chart(&empty).contains("no data"));
        assert!(timeline_chart(&empty).contains("no data"));
    }

    #[test]
    fn the_distribution_x_axis_increases_with_the_percentile() {
        let svg = distribution_chart(&report());
        let xs: Vec<f64> = coordinates(&svg)
            .into_iter()
            .take(report().latency_distribution.len())
            .map(|p| p.0)
            .collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "{xs:?}");
    }

    #[test]
    fn long_timelines_are_averaged_down() {
        let mut r = report();
        r.timeline = vec![10; 36_000];
        let pts = coordinates(&timeline_chart(&r));
        assert!(pts.len() <= MAX_TIMELINE_POINTS, "{}", pts.len());
        // 10 per 100 ms = 100 req/s everywhere: one horizontal line.
        assert!(pts.windows(2).all(|w| (w[0].1 - w[1].1).abs() < 0.01));
    }

    #[test]
    fn page_has_the_summary_and_trend_points_and_no_external_references() {
        let r = report();
        let runs = vec![r.clone(), r.clone()];
        let html = render(&r, Some(&runs));
        for needle in [
            ">12345<",
            ">12345.0<",
            ">45<",
            ">40.5<",
            ">10.0<",
            "Trend over 2",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        let p99 = format!(">{}<", r.latency.p99_us);
        assert!(html.contains(&p99));
        assert_eq!(html.matches(r#"class="trend-throughput""#).count(), 2);
        assert_eq!(html.matches(r#"class="trend-p99""#).count(), 2);
        let without_url = html.replace(&escape(&r.url), "");
        assert!(!without_url.contains("http://") && !without_url.contains("https://"));
        assert!(!html.contains("<script") && !html.contains("src="));
        assert!(!render(&r, None).contains("Trend"));
    }
}
