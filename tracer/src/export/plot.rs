//! `--plot PATH.svg`: live entries and estimated bytes over time of the top suspects and the
//! top sites, named by their code, redrawn from the interval data at every interval.
//!
//! Memory is bounded: at most [`MAX_SERIES`] series are followed (the first that reach the
//! top), each with at most [`MAX_POINTS`] points (every other point is dropped when full, so
//! an hours-long trace keeps its whole span at a coarser step).

use std::collections::BTreeMap;
use std::path::PathBuf;

use plotters::prelude::*;

use super::{short_site, Export, ExportError, Snapshot};
use crate::report::{Report, SiteKind};

/// Series followed at most.
pub const MAX_SERIES: usize = 32;
/// Points kept per series at most.
pub const MAX_POINTS: usize = 2048;
/// Series drawn: the ones holding the most bytes.
pub const DRAWN: usize = 8;
/// Suspects and sites that become series at each interval.
const TOP: usize = 5;

/// One named line: time, live entries, estimated bytes.
#[derive(Default)]
struct Series {
    name: String,
    /// A suspect map's line: drawn wider, under its site's, so that both show.
    suspect: bool,
    points: Vec<(f64, f64, f64)>,
}

/// The plot and the series it is drawn from, by id: a site's name, or a suspect map's
/// address (never shown: a suspect is named by its verdict, type and site).
pub struct Plot {
    path: PathBuf,
    series: BTreeMap<String, Series>,
}

impl Plot {
    /// A plot written to `path`.
    pub fn new(path: PathBuf) -> Plot {
        Plot {
            path,
            series: BTreeMap::new(),
        }
    }

    /// Adds the values at this snapshot: every series followed gets a point (a suspect map
    /// keeps its line after its verdict goes, until it is released), and the top suspects
    /// and sites not followed yet start a series while there is room.
    fn sample(&mut self, report: &Report, at_s: f64) {
        let mut candidates: Vec<(String, String, bool)> = report
            .verdicts
            .iter()
            .take(TOP)
            .map(|suspect| (suspect.addr.clone(), suspect_name(suspect), true))
            .collect();
        let mut sites: Vec<&crate::report::SiteReport> = report.sites.iter().collect();
        sites.sort_by_key(|site| {
            (
                std::cmp::Reverse(site.est_bytes.unwrap_or(0)),
                std::cmp::Reverse(site.live_entries),
            )
        });
        candidates.extend(sites.iter().take(TOP).map(|site| {
            let name = site_name(site);
            (name.clone(), name, false)
        }));
        for (id, name, suspect) in candidates {
            if self.series.len() < MAX_SERIES && !self.series.contains_key(&id) {
                let points = Vec::new();
                let series = Series {
                    name,
                    suspect,
                    points,
                };
                self.series.insert(id, series);
            }
        }
        let current = current_values(report);
        for (id, series) in &mut self.series {
            let (entries, bytes) = current.get(id).copied().unwrap_or((0, Some(0)));
            // Unknown bytes (no type read yet, or a sum beyond what the target ever had
            // resident) are NaN: left out of the line, not drawn as zero.
            let bytes = bytes.map_or(f64::NAN, |bytes| bytes as f64);
            series.points.push((at_s, entries as f64, bytes));
            if series.points.len() > MAX_POINTS {
                let mut index = 0;
                series.points.retain(|_| {
                    index += 1;
                    index % 2 == 1
                });
            }
        }
    }

    fn draw(&self) -> Result<String, String> {
        let mut drawn: Vec<(&String, &Series)> = self
            .series
            .values()
            .map(|series| (&series.name, series))
            .collect();
        drawn.sort_by(|a, b| {
            let peak = |series: &Series| {
                series
                    .points
                    .iter()
                    .map(|point| point.2)
                    .fold(0.0, f64::max)
            };
            peak(b.1).total_cmp(&peak(a.1)).then(a.0.cmp(b.0))
        });
        drawn.truncate(DRAWN);
        drawn.sort_by_key(|(_, series)| !series.suspect);
        let end_s = self
            .series
            .values()
            .flat_map(|series| series.points.last())
            .map(|point| point.0)
            .fold(1.0, f64::max);
        let max_of = |pick: fn(&(f64, f64, f64)) -> f64| {
            drawn
                .iter()
                .flat_map(|(_, series)| series.points.iter().map(pick))
                .fold(1.0, f64::max)
                * 1.05
        };
        let max_entries = max_of(|point| point.1);
        let max_bytes = max_of(|point| point.2);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (1200, 900)).into_drawing_area();
            root.fill(&WHITE).map_err(|error| error.to_string())?;
            let (upper, lower) = root.split_vertically(450);
            let panels = [
                (upper, "Live entries", max_entries, 1usize),
                (lower, "Estimated bytes held", max_bytes, 2usize),
            ];
            for (area, caption, max_y, column) in panels {
                let mut chart = ChartBuilder::on(&area)
                    .caption(caption, ("sans-serif", 22))
                    .margin(12)
                    .x_label_area_size(36)
                    .y_label_area_size(90)
                    .build_cartesian_2d(0f64..end_s, 0f64..max_y)
                    .map_err(|error| error.to_string())?;
                chart
                    .configure_mesh()
                    .x_desc("seconds since attach")
                    .y_label_formatter(&|value| {
                        if column == 2 {
                            human_bytes(*value)
                        } else {
                            format!("{value:.0}")
                        }
                    })
                    .draw()
                    .map_err(|error| error.to_string())?;
                for (index, (name, series)) in drawn.iter().enumerate() {
                    let color = Palette99::pick(index).to_rgba();
                    let width = if series.suspect { 6 } else { 2 };
                    let points = series
                        .points
                        .iter()
                        .map(|point| (point.0, if column == 1 { point.1 } else { point.2 }))
                        .filter(|point| !point.1.is_nan());
                    chart
                        .draw_series(LineSeries::new(points, color.stroke_width(width)))
                        .map_err(|error| error.to_string())?
                        .label(name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                        });
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 13))
                    .draw()
                    .map_err(|error| error.to_string())?;
            }
            root.present().map_err(|error| error.to_string())?;
        }
        Ok(svg)
    }
}

/// How a suspect's line is named: verdict, type and where it comes from.
fn suspect_name(suspect: &crate::report::Suspect) -> String {
    let place = match (&suspect.site, &suspect.written_at) {
        (Some(site), _) => short_site(site),
        (None, Some(writer)) => format!("written at {}", short_site(writer)),
        (None, None) => "created before the trace".to_string(),
    };
    format!(
        "{} {} {place}",
        suspect.verdict.name(),
        suspect.map_type.as_deref().unwrap_or("map")
    )
}

/// How a site's line is named.
fn site_name(site: &crate::report::SiteReport) -> String {
    match (&site.site, site.by) {
        (Some(location), SiteKind::Creation) => format!("site {}", short_site(location)),
        (Some(location), SiteKind::Writer) => format!("site {} (written)", short_site(location)),
        (None, _) => "site unknown".to_string(),
    }
}

/// Live entries and estimated bytes now (`None`: unknown), by series id: every site, and
/// every map not known released (by address).
fn current_values(report: &Report) -> BTreeMap<String, (u64, Option<u64>)> {
    let mut values: BTreeMap<String, (u64, Option<u64>)> = BTreeMap::new();
    for map in report.maps.iter().filter(|map| !map.released) {
        values.insert(map.addr.clone(), (map.live, map.peak_est_bytes));
    }
    for site in &report.sites {
        let value = values.entry(site_name(site)).or_insert((0, Some(0)));
        value.0 += site.live_entries;
        value.1 = value.1.zip(site.est_bytes).map(|(sum, bytes)| sum + bytes);
    }
    values
}

fn human_bytes(value: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = value;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl Export for Plot {
    fn write(&mut self, snapshot: &Snapshot<'_>) -> Result<(), ExportError> {
        self.sample(snapshot.report, snapshot.at_s);
        let svg = self.draw().map_err(|reason| ExportError::Draw {
            path: self.path.clone(),
            reason,
        })?;
        crate::report::write_atomically(&self.path, svg.as_bytes())
            .map_err(|source| ExportError::write(&self.path, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keep_their_span_within_the_point_bound() {
        let mut plot = Plot::new(PathBuf::from("unused.svg"));
        plot.series.insert("a".to_string(), Series::default());
        let report = crate::export::json::tests::empty_report();
        for step in 0..(MAX_POINTS * 3) {
            plot.sample(&report, step as f64);
        }
        let points = &plot.series["a"].points;
        assert!(points.len() <= MAX_POINTS);
        assert_eq!(points[0].0, 0.0);
        assert!(points.last().unwrap().0 >= (MAX_POINTS * 2) as f64);
    }

    #[test]
    fn unknown_bytes_are_left_out_not_zero() {
        let mut report = crate::export::json::tests::empty_report();
        let site = crate::report::SiteReport {
            site: None,
            by: SiteKind::Creation,
            maps_created: 1,
            maps_created_estimated: None,
            live_maps: 1,
            live_entries: 7,
            est_bytes: None,
            suspects: 0,
        };
        report.sites.push(site);
        let mut plot = Plot::new(PathBuf::from("unused.svg"));
        plot.sample(&report, 1.0);
        let point = plot.series["site unknown"].points[0];
        assert_eq!(point.1, 7.0);
        assert!(point.2.is_nan());
        assert!(plot.draw().unwrap().contains("site unknown"));
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }
}
