//! Small server-rendered SVG charts: an environment's health over time, and a deployment's
//! monitor probes. No chart library; the numbers are also written out as text.

use maud::{Markup, html};

use crate::store::Probe;

const W: f64 = 600.0;
const H: f64 = 120.0;
/// Room under the plot for the failure marks.
const FOOT: f64 = 12.0;

fn time_of(p: &Probe) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(&p.at)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Response times as a line (ok probes) with a red mark under each failed probe, over the
/// last `hours`, newest on the right.
pub fn health(probes: &[Probe], hours: i64) -> Markup {
    let end = chrono::Utc::now().timestamp_millis();
    let start = end - hours * 3_600_000;
    let x = |t: i64| (t - start) as f64 / (end - start) as f64 * W;
    summary_and_chart(
        probes,
        hours,
        |p| time_of(p).map(x),
        &format!("{hours} h ago"),
        "now",
    )
}

/// A deployment's monitor probes, one step apart.
pub fn sparkline(probes: &[Probe]) -> Markup {
    let n = probes.len().max(2) as f64 - 1.0;
    let index = |p: &Probe| probes.iter().position(|q| std::ptr::eq(p, q));
    summary_and_chart(
        probes,
        0,
        |p| index(p).map(|i| i as f64 / n * W),
        "first probe",
        "last",
    )
}

fn summary_and_chart(
    probes: &[Probe],
    hours: i64,
    x: impl Fn(&Probe) -> Option<f64>,
    left: &str,
    right: &str,
) -> Markup {
    if probes.is_empty() {
        return html! { p.hint { "No probes recorded" @if hours > 0 { " in the last " (hours) " h" } "." } };
    }
    let ok: Vec<&Probe> = probes.iter().filter(|p| p.ok).collect();
    let failed = probes.len() - ok.len();
    let mut times: Vec<f64> = ok.iter().map(|p| p.response_ms).collect();
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let top = times.last().copied().unwrap_or(0.0).max(1.0) * 1.1;
    let plot = H - FOOT;
    let y = |ms: f64| plot - (ms / top * (plot - 4.0));
    let line: Vec<String> = ok
        .iter()
        .filter_map(|p| Some(format!("{:.1},{:.1}", x(p)?, y(p.response_ms))))
        .collect();
    let marks: Vec<f64> = probes.iter().filter(|p| !p.ok).filter_map(&x).collect();
    let label = format!(
        "{} probes, {} failed; median {:.0} ms, slowest {:.0} ms",
        probes.len(),
        failed,
        median,
        times.last().copied().unwrap_or(0.0)
    );
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(label) preserveAspectRatio="none" {
                title { (label) }
                line.axis x1="0" y1=(plot) x2=(W) y2=(plot) {}
                @if line.len() == 1 {
                    @let (cx, cy) = line[0].split_once(',').unwrap_or(("0", "0"));
                    circle.point cx=(cx) cy=(cy) r="3" {}
                } @else {
                    polyline.latency points=(line.join(" ")) {}
                }
                @for m in &marks {
                    rect.fail x=(format!("{:.1}", (m - 1.5).max(0.0))) y=(plot + 2.0) width="3" height=(FOOT - 3.0) {}
                }
            }
            figcaption {
                span { (left) } span { (label) "; top of chart " (format!("{top:.0}")) " ms" } span { (right) }
            }
        }
    }
}
