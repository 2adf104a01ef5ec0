//! `--json PATH` with `--max-maps N`: the JSON report, bounded and kept fresh.
//!
//! The JSON lists every suspect's map, the top `N` other maps by memory (what they hold,
//! then live entries) and every site; the rest are counted in `maps_unlisted` (they still
//! count in `sites` and `histograms`). It is rewritten atomically at every interval, so a
//! reader of an hours-long trace always has a recent, whole file.

use std::path::PathBuf;

use super::{Export, ExportError, Snapshot};
use crate::report::Report;

/// `--max-maps` when not given.
pub const DEFAULT_MAX_MAPS: usize = 1000;

/// The report with `maps` cut to the suspects and the `max_maps` biggest others, in their
/// original order (first sighting).
pub fn limited(report: &Report, max_maps: usize) -> Report {
    let mut others: Vec<usize> = (0..report.maps.len())
        .filter(|&index| report.maps[index].verdicts.is_empty())
        .collect();
    if others.len() <= max_maps {
        return report.clone();
    }
    others.sort_by_key(|&index| {
        let map = &report.maps[index];
        (
            std::cmp::Reverse(map.peak_est_bytes.unwrap_or(0)),
            std::cmp::Reverse(map.live),
            index,
        )
    });
    let mut keep = vec![false; report.maps.len()];
    for (index, map) in report.maps.iter().enumerate() {
        keep[index] = !map.verdicts.is_empty();
    }
    for &index in others.iter().take(max_maps) {
        keep[index] = true;
    }
    let maps: Vec<_> = report
        .maps
        .iter()
        .zip(&keep)
        .filter(|(_, &kept)| kept)
        .map(|(map, _)| map.clone())
        .collect();
    // Field by field, so that only the listed maps are copied (a report of an hours-long
    // trace is mostly maps).
    Report {
        mode: report.mode,
        sampling: report.sampling.clone(),
        target: report.target.clone(),
        duration_s: report.duration_s,
        events: report.events.clone(),
        verdicts: report.verdicts.clone(),
        sites: report.sites.clone(),
        histograms: report.histograms.clone(),
        entries: report.entries.clone(),
        released_unlisted: report.released_unlisted,
        maps_unlisted: report.maps_unlisted + (report.maps.len() - maps.len()) as u64,
        inventory: report.inventory.clone(),
        release_detection: report.release_detection,
        maps,
    }
}

/// The JSON report, rewritten at every interval.
pub struct Json {
    path: PathBuf,
    max_maps: usize,
}

impl Json {
    /// A JSON report at `path` listing at most `max_maps` maps besides the suspects'.
    pub fn new(path: PathBuf, max_maps: usize) -> Json {
        Json { path, max_maps }
    }
}

impl Export for Json {
    /// Every interval but the last: the final JSON is written with the text report, the same
    /// way for a live trace and a replay.
    fn write(&mut self, snapshot: &Snapshot<'_>) -> Result<(), ExportError> {
        if snapshot.last {
            return Ok(());
        }
        limited(snapshot.report, self.max_maps)
            .write_json(&self.path)
            .map_err(|source| ExportError::write(&self.path, source))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Limits, Model};
    use crate::plan::MapImplementation;
    use crate::report::{ReportContext, Resolved, TargetInfo};
    use crate::verdict::{Thresholds, Window};

    /// A report of a trace that saw nothing.
    pub(crate) fn empty_report() -> Report {
        let model = Model::new(MapImplementation::Swiss, Limits::default());
        let resolved = Resolved::default();
        let context = ReportContext {
            target: TargetInfo {
                pid: 1,
                exe: "/bin/app".to_string(),
                go_version: "go1.24.11".to_string(),
                exited: false,
                peak_rss_bytes: None,
                container: None,
                ns_pid: None,
            },
            window: Window {
                start_ns: 0,
                end_ns: 1_000_000_000,
            },
            lost: 0,
            implementation: MapImplementation::Swiss,
            thresholds: Thresholds::default(),
            sample_one_in: 64,
            resolved: &resolved,
        };
        Report::new(&model, &context)
    }

    /// A report listing maps holding `bytes` each, the one at `suspect` flagged.
    pub(crate) fn with_maps(bytes: &[u64], suspect: usize) -> Report {
        let mut report = empty_report();
        let template = crate::report::MapReport {
            addr: String::new(),
            map_type: None,
            site: None,
            stack: Vec::new(),
            writers: Vec::new(),
            live: 0,
            peak: 0,
            inserts: 0,
            overwrites: 0,
            deletes: 0,
            clears: 0,
            grows: 0,
            reorganisations: 0,
            cloned: false,
            est_bytes: None,
            peak_est_bytes: None,
            first_seen_s: 0.0,
            last_seen_s: 0.0,
            lifetime_s: 0.0,
            created: true,
            seen: crate::model::Seen::Creation,
            idle: false,
            capacity: None,
            reclaimable_bytes: None,
            held_by: String::new(),
            verdicts: Vec::new(),
            growth_per_s: 0.0,
            projected_growth_1h: 0.0,
            confidence: None,
            released: false,
            unexplained: 0,
            unsettled: 0,
        };
        for (index, &held) in bytes.iter().enumerate() {
            let mut map = template.clone();
            map.addr = format!("{index:#x}");
            map.peak_est_bytes = Some(held);
            if index == suspect {
                map.verdicts = vec![crate::verdict::Verdict::NeverReleased];
            }
            report.maps.push(map);
        }
        report
    }

    #[test]
    fn suspects_and_the_biggest_maps_are_listed_in_their_order() {
        let report = with_maps(&[10, 500, 1, 300, 200, 7], 2);
        let listed = limited(&report, 2);
        let addrs: Vec<&str> = listed.maps.iter().map(|map| map.addr.as_str()).collect();
        assert_eq!(addrs, ["0x1", "0x2", "0x3"]);
        assert_eq!(listed.maps_unlisted, 3);
        assert_eq!(listed.sites, report.sites);
    }

    #[test]
    fn a_report_within_the_bound_is_unchanged() {
        let report = with_maps(&[10, 500], 9);
        assert_eq!(limited(&report, 2), report);
    }
}
