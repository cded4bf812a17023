//! Server-rendered SVG gauges and line charts (no JavaScript): the
//! console's view of the metric archives. Colours come from the style
//! sheet by class; the page's CSP allows no inline style.

use maud::{html, Markup};

use lifeboat_core::model::{Cf, MetricKind, SeriesSet, Timeframe, Unit};

/// A value with its unit, short: `42.0 %`, `1.5 GiB`, `12.0 MiB/s`.
pub fn format_value(v: f64, unit: Unit) -> String {
    let scaled = |v: f64, suffix: &str| {
        const PREFIXES: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
        let mut v = v;
        let mut i = 0;
        while v.abs() >= 1024.0 && i < PREFIXES.len() - 1 {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 && v.abs() < 10.0 && v.fract() != 0.0 {
            format!("{v:.2} {suffix}")
        } else if i == 0 {
            format!("{v:.0} {suffix}")
        } else {
            format!("{v:.1} {}{suffix}", PREFIXES[i])
        }
    };
    match unit {
        Unit::Percent => format!("{v:.1} %"),
        Unit::Load => format!("{v:.2}"),
        Unit::Bytes => scaled(v, "B"),
        Unit::BytesPerSecond => scaled(v, "B/s"),
        Unit::PerSecond => format!("{v:.1} /s"),
    }
}

/// Which band a share falls in, for the gauge's colour.
fn level_class(percent: f64) -> &'static str {
    match percent {
        p if p >= 90.0 => "level-high",
        p if p >= 70.0 => "level-mid",
        _ => "level-low",
    }
}

/// A half-circle gauge of a share (0–100 %), its label and a line of detail.
pub fn gauge(label: &str, percent: Option<f64>, detail: &str) -> Markup {
    // The arc runs from (10,60) over the top to (110,60), radius 50.
    let arc = |p: f64| {
        let angle = std::f64::consts::PI * (1.0 - p.clamp(0.0, 100.0) / 100.0);
        let (x, y) = (60.0 + 50.0 * angle.cos(), 60.0 - 50.0 * angle.sin());
        format!("M 10 60 A 50 50 0 0 1 {x:.2} {y:.2}")
    };
    let text = percent.map_or("no data".to_string(), |p| format!("{p:.0} %"));
    html! {
        figure.gauge {
            svg viewBox="0 0 120 72" width="150" height="90" role="img" aria-label={(label) ": " (text)} {
                title { (label) ": " (text) }
                path.track d="M 10 60 A 50 50 0 0 1 110 60" fill="none" stroke-width="10" {}
                @if let Some(p) = percent {
                    @if p > 0.0 {
                        path class={"value " (level_class(p))} d=(arc(p)) fill="none" stroke-width="10" {}
                    }
                }
                text.reading x="60" y="56" text-anchor="middle" { (text) }
            }
            figcaption { strong { (label) } br; span.muted { (detail) } }
        }
    }
}

/// One line of a chart.
pub struct Line<'a> {
    pub label: &'a str,
    /// Style class: `s0`, `s1`, … (and `max` for a maximum).
    pub class: &'static str,
    pub points: Vec<(u64, Option<f64>)>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// A step on the value axis that gives 3–6 ticks: 1, 2 or 5 × 10ⁿ (for
/// byte units, × 1024ⁿ would read oddly in decimal; the labels scale).
fn nice_step(max: f64) -> f64 {
    let raw = max / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn time_label(t: u64, span_secs: u64) -> String {
    let format = if span_secs <= 2 * 86_400 {
        "[hour]:[minute]"
    } else if span_secs <= 400 * 86_400 {
        "[month repr:short] [day padding:none]"
    } else {
        "[year]"
    };
    let Ok(fmt) = time::format_description::parse_borrowed::<2>(format) else {
        return t.to_string();
    };
    time::OffsetDateTime::from_unix_timestamp(t as i64)
        .ok()
        .and_then(|d| d.format(&fmt).ok())
        .unwrap_or_default()
}

/// An SVG line chart over `[start, end)` with labelled axes (UTC).
pub fn line_chart(title: &str, unit: Unit, start: u64, end: u64, lines: &[Line]) -> Markup {
    let values = lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(|p| p.1));
    let max = values.fold(0.0f64, f64::max);
    let top = match unit {
        Unit::Percent => 100.0f64.max(max),
        _ if max <= 0.0 => 1.0,
        _ => max * 1.1,
    };
    let step = nice_step(top);
    let top = (top / step).ceil() * step;
    let span = end.saturating_sub(start).max(1);
    let x = |t: u64| LEFT + (t.saturating_sub(start) as f64 / span as f64) * (WIDTH - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v / top) * (HEIGHT - TOP - BOTTOM);
    let ticks: Vec<f64> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|v| *v <= top + step / 2.0)
        .collect();
    let time_ticks: Vec<u64> = (0..=4).map(|i| start + span * i / 4).collect();
    // A gap in the data breaks the line: one path segment per run.
    let path = |points: &[(u64, Option<f64>)]| {
        let mut d = String::new();
        let mut pen_down = false;
        for (t, v) in points {
            match v {
                Some(v) => {
                    let cmd = if pen_down { 'L' } else { 'M' };
                    d.push_str(&format!("{cmd}{:.1} {:.1} ", x(*t), y(*v)));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        d
    };
    let has_data = lines.iter().any(|l| l.points.iter().any(|p| p.1.is_some()));
    html! {
        figure.chart {
            figcaption {
                strong { (title) }
                @for l in lines { " " span class={"key " (l.class)} { "■" } " " (l.label) }
            }
            svg viewBox={"0 0 " (WIDTH) " " (HEIGHT)} width="100%" role="img" aria-label=(title) {
                title { (title) }
                g.axis {
                    line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) {}
                    line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH - RIGHT) y2=(HEIGHT - BOTTOM) {}
                    @for v in &ticks {
                        line.grid x1=(LEFT) y1=(format!("{:.1}", y(*v))) x2=(WIDTH - RIGHT) y2=(format!("{:.1}", y(*v))) {}
                        text.ytick x=(LEFT - 6.0) y=(format!("{:.1}", y(*v) + 4.0)) text-anchor="end" { (format_value(*v, unit)) }
                    }
                    @for (n, t) in time_ticks.iter().enumerate() {
                        @let anchor = match n { 0 => "start", 4 => "end", _ => "middle" };
                        text.xtick x=(format!("{:.1}", x(*t))) y=(HEIGHT - 6.0) text-anchor=(anchor) { (time_label(*t, span)) }
                    }
                }
                @for l in lines {
                    path class={"line " (l.class)} d=(path(&l.points)) fill="none" {}
                }
                @if !has_data {
                    text.nodata x=(WIDTH / 2.0) y=(HEIGHT / 2.0) text-anchor="middle" { "no data yet" }
                }
            }
        }
    }
}

/// The charts of a host or VM page: each archived metric group over the
/// timeframe, averages solid and maxima dotted.
pub fn object_charts(set: &SeriesSet, timeframe: Timeframe) -> Markup {
    let kind = set.kind;
    let groups: &[(&str, &[&str])] = match kind {
        MetricKind::Host => &[
            ("CPU", &["cpu"]),
            ("Load", &["load"]),
            ("Memory", &["memory_used", "swap_used"]),
            ("Disk throughput", &["disk_read", "disk_write"]),
            ("Disk operations", &["disk_read_iops", "disk_write_iops"]),
            ("Network", &["net_rx", "net_tx"]),
            ("VM storage free", &["storage_free"]),
        ],
        MetricKind::Vm => &[
            ("CPU", &["cpu"]),
            ("Memory", &["memory_used"]),
            ("Disk throughput", &["disk_read", "disk_write"]),
            ("Disk operations", &["disk_read_iops", "disk_write_iops"]),
            ("Network", &["net_rx", "net_tx"]),
        ],
    };
    let end = set.start + set.step * set.rows.len() as u64;
    const CLASSES: [(&str, &str); 2] = [("s0", "s0 max"), ("s1", "s1 max")];
    html! {
        section.charts {
            @for (title, keys) in groups {
                @let lines: Vec<Line> = keys.iter().enumerate().filter_map(|(n, key)| {
                    let (i, m) = kind.metric(key)?;
                    Some([
                        Line { label: m.label, class: CLASSES[n % 2].0, points: set.points(i, Cf::Avg) },
                        Line { label: "max", class: CLASSES[n % 2].1, points: set.points(i, Cf::Max) },
                    ])
                }).flatten().collect();
                @let unit = keys.first().and_then(|k| kind.metric(k)).map_or(Unit::Percent, |(_, m)| m.unit);
                (line_chart(&format!("{title} — last {}", timeframe.as_str()), unit, set.start, end, &lines))
            }
        }
    }
}

/// Links to the same page over each timeframe.
pub fn timeframe_links(base: &str, current: Timeframe) -> Markup {
    html! {
        nav.timeframes {
            "Show: "
            @for t in Timeframe::ALL {
                @if t == current { strong { (t.as_str()) } } @else {
                    a href={(base) "?timeframe=" (t.as_str())} { (t.as_str()) }
                }
                " "
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_with_their_units() {
        assert_eq!(format_value(42.04, Unit::Percent), "42.0 %");
        assert_eq!(
            format_value(1536.0 * 1024.0 * 1024.0, Unit::Bytes),
            "1.5 GiB"
        );
        assert_eq!(format_value(500.0, Unit::BytesPerSecond), "500 B/s");
        assert_eq!(format_value(1.234, Unit::Load), "1.23");
    }

    #[test]
    fn axis_steps_are_round() {
        assert_eq!(nice_step(100.0), 50.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(3e6), 1e6);
    }

    #[test]
    fn a_chart_has_axes_ticks_and_breaks_at_gaps() {
        let points = vec![
            (0, Some(10.0)),
            (60, Some(20.0)),
            (120, None),
            (180, Some(30.0)),
        ];
        let svg = line_chart(
            "CPU",
            Unit::Percent,
            0,
            240,
            &[Line {
                label: "CPU",
                class: "s0",
                points,
            }],
        )
        .into_string();
        assert!(svg.contains("<g class=\"axis\">"), "{svg}");
        assert!(svg.contains(">100.0 %</text>"), "{svg}");
        let d = svg.split("class=\"line s0\" d=\"").nth(1).unwrap();
        let d = &d[..d.find('"').unwrap()];
        assert_eq!(d.matches('M').count(), 2, "two runs: {d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
        assert!(!svg.contains("no data yet"));
        let empty = line_chart("CPU", Unit::Percent, 0, 240, &[]).into_string();
        assert!(empty.contains("no data yet"));
    }

    #[test]
    fn a_gauge_shows_its_reading() {
        let g = gauge("CPU", Some(95.0), "4 hosts").into_string();
        assert!(g.contains("95 %") && g.contains("level-high"), "{g}");
        let none = gauge("CPU", None, "").into_string();
        assert!(none.contains("no data") && !none.contains("class=\"value"));
    }
}
