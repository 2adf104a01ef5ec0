//! The added cost per map call as an SVG bar chart, written by hand (no plotting crate):
//! one group of bars per phase, one bar per traced mode, on a linear scale sized for the floor
//! and gomaptrace (the headline is their ratio). Bars beyond the scale (bpftrace's, whose entry
//! probes the kernel must single-step) are cut and marked, with their value written out.

use std::fmt::Write as _;

use super::run::Mode;
use super::summary::Summary;

const WIDTH: f64 = 960.0;
const LABEL_WIDTH: f64 = 190.0;
const RIGHT_MARGIN: f64 = 90.0;
const BAR_HEIGHT: f64 = 13.0;
const GROUP_GAP: f64 = 14.0;
const TOP: f64 = 64.0;

/// Fill colour and name of each traced mode.
const SERIES: [(Mode, &str, &str); 3] = [
    (
        Mode::Floor,
        "#9e9e9e",
        "b: floor (empty programs, same sites)",
    ),
    (Mode::Gomaptrace, "#1f77b4", "c: gomaptrace"),
    (Mode::Bpftrace, "#d62728", "d: bpftrace (entry probes)"),
];

/// Renders the chart. `title` goes on top.
pub fn svg(summary: &Summary, title: &str) -> String {
    let largest = summary
        .phases
        .iter()
        .flat_map(|phase| {
            [Mode::Floor, Mode::Gomaptrace]
                .into_iter()
                .filter_map(|mode| phase.added_ns_per_call.get(mode.name()).copied())
        })
        .fold(100.0_f64, f64::max);
    let scale_max = nice_ceiling(largest * 1.3);
    let plot_width = WIDTH - LABEL_WIDTH - RIGHT_MARGIN;
    let x_of = |ns: f64| LABEL_WIDTH + (ns / scale_max).clamp(0.0, 1.0) * plot_width;
    let group_height = SERIES.len() as f64 * BAR_HEIGHT + GROUP_GAP;
    let height = TOP + summary.phases.len() as f64 * group_height + 40.0;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="20" font-size="15" font-weight="bold">{}</text>"#,
        LABEL_WIDTH,
        escape(title)
    );
    let mut legend_x = LABEL_WIDTH;
    for (_, colour, name) in SERIES {
        let _ = writeln!(
            svg,
            r#"<rect x="{legend_x}" y="32" width="12" height="12" fill="{colour}"/><text x="{}" y="42">{}</text>"#,
            legend_x + 16.0,
            escape(name)
        );
        legend_x += 16.0 + name.len() as f64 * 6.6 + 20.0;
    }
    // Grid lines and their labels.
    let bottom = TOP + summary.phases.len() as f64 * group_height;
    let step = scale_max / 5.0;
    for tick in 0..=5 {
        let ns = step * tick as f64;
        let x = x_of(ns);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            TOP - 8.0,
            bottom + 16.0,
            format_ns(ns)
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">added time per map call (bars past the right edge are cut: ≫)</text>"##,
        LABEL_WIDTH + plot_width / 2.0,
        bottom + 32.0
    );
    for (index, phase) in summary.phases.iter().enumerate() {
        let y = TOP + index as f64 * group_height;
        let weight = if phase.name == "all" {
            "bold"
        } else {
            "normal"
        };
        let ratio = phase
            .gomaptrace_over_floor
            .map(|ratio| format!("(c−a)/(b−a) = {ratio:.2}"))
            .unwrap_or_default();
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{:.1}" text-anchor="end" font-weight="{weight}">{}</text><text x="{}" y="{:.1}" text-anchor="end" fill="#555" font-size="11">{}</text>"##,
            LABEL_WIDTH - 8.0,
            y + BAR_HEIGHT + 2.0,
            escape(&phase.name),
            LABEL_WIDTH - 8.0,
            y + 2.0 * BAR_HEIGHT + 2.0,
            escape(&ratio)
        );
        for (row, (mode, colour, _)) in SERIES.iter().enumerate() {
            let Some(&added) = phase.added_ns_per_call.get(mode.name()) else {
                continue;
            };
            let bar_y = y + row as f64 * BAR_HEIGHT;
            let end = x_of(added);
            let cut = if added > scale_max { "≫ " } else { "" };
            let _ = writeln!(
                svg,
                r#"<rect x="{LABEL_WIDTH}" y="{bar_y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="11">{cut}{}</text>"#,
                (end - LABEL_WIDTH).max(0.5),
                BAR_HEIGHT - 2.0,
                end + 4.0,
                bar_y + BAR_HEIGHT - 3.0,
                format_ns(added)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) that is
/// at least `value`.
fn nice_ceiling(value: f64) -> f64 {
    let power = 10f64.powf(value.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|factor| factor * power)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * power)
}

fn format_ns(ns: f64) -> String {
    if ns.abs() >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
