//! The report: what the model learned, as JSON for tools and as text for people.
//!
//! The JSON shape is a contract (fields are added, never renamed or removed); `addr` is the
//! string Go's `fmt.Sprintf("%p", m)` prints for the map, so users can match it to their own
//! logs.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::Path;

use serde::Serialize;

use crate::model::{MapRecord, Model};

/// The whole report of one trace.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// Which process was traced.
    pub target: TargetInfo,
    /// How long the probes were attached, in seconds.
    pub duration_s: f64,
    /// Event delivery: anything lost makes the per-map numbers a lower bound.
    pub events: EventStats,
    /// Every map seen, in order of first sighting.
    pub maps: Vec<MapReport>,
}

/// The traced process.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TargetInfo {
    /// Its pid.
    pub pid: u32,
    /// Its executable, as the process sees it.
    pub exe: String,
    /// The Go version it was built with, e.g. `go1.24.11`.
    pub go_version: String,
    /// It exited before the trace ended.
    pub exited: bool,
}

/// Event delivery counters.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventStats {
    /// Events read from the ring buffer.
    pub received: u64,
    /// Events the BPF side could not deliver (ring buffer full).
    pub lost: u64,
    /// Events received but not understood (a BPF/userspace version mismatch).
    pub malformed: u64,
}

/// One map.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MapReport {
    /// `%p` of the map.
    pub addr: String,
    /// Entries at the end of the trace: what `len(m)` returned then.
    pub live: u64,
    /// Most entries seen at once.
    pub peak: u64,
    /// Assignments that added a key.
    pub inserts: u64,
    /// Assignments to a key already present.
    pub overwrites: u64,
    /// Deletes that removed a present key.
    pub deletes: u64,
    /// `clear(m)` / range-delete calls.
    pub clears: u64,
    /// Times the map started to grow.
    pub grows: u64,
    /// Made by `maps.Clone`, starting with the source's entries.
    pub cloned: bool,
    /// First event, seconds after the probes were attached.
    pub first_seen_s: f64,
    /// Last event, seconds after the probes were attached.
    pub last_seen_s: f64,
    /// Seen being created (false: it existed before, or was made without a create call).
    pub created: bool,
    /// Verdicts on the map's behaviour; empty when nothing stands out.
    pub verdicts: Vec<String>,
    /// Known to be freed: a later map was created at the same address.
    pub released: bool,
    /// Count changes no observed operation explains; 0 means the counts are exact.
    pub unexplained: u64,
    /// The last operation's effect was never seen (the map or the target was gone first).
    pub unsettled: u64,
}

impl MapReport {
    fn new(record: &MapRecord, start_ns: u64) -> MapReport {
        MapReport {
            addr: format!("{:#x}", record.addr),
            live: record.live,
            peak: record.peak,
            inserts: record.inserts,
            overwrites: record.overwrites,
            deletes: record.deletes,
            clears: record.clears,
            grows: record.grows,
            cloned: record.cloned,
            first_seen_s: seconds_since(start_ns, record.first_seen_ns),
            last_seen_s: seconds_since(start_ns, record.last_seen_ns),
            created: record.created,
            verdicts: Vec::new(),
            released: record.released,
            unexplained: record.unexplained,
            unsettled: record.unsettled,
        }
    }
}

fn seconds_since(start_ns: u64, at_ns: u64) -> f64 {
    at_ns.saturating_sub(start_ns) as f64 / 1e9
}

impl Report {
    /// Builds the report from a finished model. `start_ns` is the monotonic time at attach.
    pub fn new(
        target: TargetInfo,
        duration_s: f64,
        model: &Model,
        lost: u64,
        start_ns: u64,
    ) -> Report {
        Report {
            target,
            duration_s,
            events: EventStats {
                received: model.received(),
                lost,
                malformed: model.malformed(),
            },
            maps: model
                .maps()
                .into_iter()
                .map(|record| MapReport::new(record, start_ns))
                .collect(),
        }
    }

    /// Writes the JSON report to `path` atomically: readers see the old file or the whole new
    /// one, never a partial file.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        let file_name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the JSON path names no file")
        })?;
        let mut temporary_name = std::ffi::OsString::from(".");
        temporary_name.push(file_name);
        temporary_name.push(format!(".tmp{}", std::process::id()));
        let temporary = path.with_file_name(temporary_name);
        let written = (|| {
            let mut file = std::fs::File::create(&temporary)?;
            serde_json::to_writer_pretty(&mut file, self)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }

    /// The report for a person: a summary line, then the maps holding the most entries.
    pub fn render_text(&self, max_rows: usize) -> String {
        let mut text = String::new();
        let target = &self.target;
        let _ = writeln!(
            text,
            "gomaptrace: pid {} ({}, {}){}: {:.1} s, {} maps, {} events, {} lost",
            target.pid,
            target.exe,
            target.go_version,
            if target.exited { ", exited" } else { "" },
            self.duration_s,
            self.maps.len(),
            self.events.received,
            self.events.lost,
        );
        if self.events.lost > 0 {
            let _ = writeln!(
                text,
                "warning: {} events were lost; per-map counts are incomplete",
                self.events.lost
            );
        }
        let (released, alive): (Vec<&MapReport>, Vec<&MapReport>) =
            self.maps.iter().partition(|map| map.released);
        let mut by_size = alive;
        by_size.sort_by(|a, b| b.live.cmp(&a.live).then(b.peak.cmp(&a.peak)));
        let _ = writeln!(
            text,
            "{:<18} {:>9} {:>9} {:>9} {:>10} {:>9} {:>6}  seen",
            "map", "live", "peak", "inserts", "overwrites", "deletes", "clears"
        );
        for map in by_size.iter().take(max_rows) {
            let _ = writeln!(
                text,
                "{:<18} {:>9} {:>9} {:>9} {:>10} {:>9} {:>6}  {}{}",
                map.addr,
                map.live,
                map.peak,
                map.inserts,
                map.overwrites,
                map.deletes,
                map.clears,
                if map.created {
                    "created"
                } else {
                    "already in use"
                },
                if map.unexplained > 0 {
                    " (inexact)"
                } else {
                    ""
                },
            );
        }
        if by_size.len() > max_rows {
            let _ = writeln!(text, "… and {} smaller maps", by_size.len() - max_rows);
        }
        if !released.is_empty() {
            let inserts: u64 = released.iter().map(|map| map.inserts).sum();
            let _ = writeln!(
                text,
                "{} maps were released during the trace (another map took their address), \
                 after {inserts} inserts in all",
                released.len()
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{kind, MapEvent};

    fn sample() -> Report {
        let mut model = Model::new();
        for (time, (kind, count)) in [(kind::CREATE, 0), (kind::ASSIGN, 0), (kind::ASSIGN, 1)]
            .into_iter()
            .enumerate()
        {
            model
                .observe(&MapEvent {
                    ktime_ns: 1_000_000_000 + time as u64 * 500_000_000,
                    map: 0x00c0_000a_0000,
                    count,
                    seed: 7,
                    kind,
                    flags: 0,
                    _pad: [0; 2],
                })
                .unwrap();
        }
        model.settle(0x00c0_000a_0000, crate::model::Header { count: 2, seed: 7 });
        let target = TargetInfo {
            pid: 42,
            exe: "/srv/app".into(),
            go_version: "go1.24.11".into(),
            exited: false,
        };
        Report::new(target, 2.0, &model, 0, 1_000_000_000)
    }

    #[test]
    fn json_has_the_documented_shape() {
        let json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        let map = &json["maps"][0];
        assert_eq!(map["addr"], "0xc0000a0000");
        assert_eq!(
            (map["live"].as_u64(), map["inserts"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(map["last_seen_s"].as_f64(), Some(1.0));
        assert_eq!(map["created"], true);
        assert!(map["verdicts"].as_array().unwrap().is_empty());
        assert_eq!(json["target"]["go_version"], "go1.24.11");
        assert_eq!(json["events"]["received"], 3);
    }

    #[test]
    fn json_is_written_whole_and_in_place() {
        let dir = std::env::temp_dir().join(format!("gomaptrace-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.json");
        sample().write_json(&path).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file remains");
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back["maps"][0]["peak"], 2);
        assert!(sample()
            .write_json(&dir.join("missing/report.json"))
            .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_leads_with_a_summary_and_the_biggest_maps() {
        let text = sample().render_text(10);
        assert!(text.starts_with(
            "gomaptrace: pid 42 (/srv/app, go1.24.11): 2.0 s, 1 maps, 3 events, 0 lost"
        ));
        assert!(text.contains("0xc0000a0000"));
    }
}
