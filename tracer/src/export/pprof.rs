//! `--pprof PATH`: the live maps as a gzipped pprof `profile.proto`, for `go tool pprof`,
//! Pyroscope and Parca.
//!
//! One sample per distinct (program stack, map type, verdict): the creation stack from the
//! creation site outwards, or, for a map made before the trace, the stack of its main writer.
//! Sample types: `inuse_space`/`bytes` (the default: what the maps hold, sized for their
//! peak since Go never shrinks a map), `entries`/`count` (live entries) and `maps`/`count`.
//! The runtime's own frames are left out, so that pprof's flat view leads with the
//! program's line that made (or fills) the maps.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;

use prost::Message as _;

use super::{Export, ExportError, Snapshot};
use crate::report::{MapReport, Report, SourceFrame};

/// The types generated from pprof's `proto/profile.proto` by build.rs.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

/// Writes the profile to a file, replaced atomically at every interval.
pub struct Pprof {
    path: PathBuf,
}

impl Pprof {
    /// A profile written to `path`.
    pub fn new(path: PathBuf) -> Pprof {
        Pprof { path }
    }
}

impl Export for Pprof {
    /// At every interval, and at the end unless the target exited: its maps are all released
    /// then, and the last interval's profile is the one worth keeping.
    fn write(&mut self, snapshot: &Snapshot<'_>) -> Result<(), ExportError> {
        if snapshot.last && snapshot.report.target.exited {
            return Ok(());
        }
        let bytes = gzipped(&profile(snapshot.report, unix_now_ns()))
            .map_err(|source| ExportError::write(&self.path, source))?;
        crate::report::write_atomically(&self.path, &bytes)
            .map_err(|source| ExportError::write(&self.path, source))
    }
}

/// The one mapping: the target's executable, already symbolized (so pprof does not try to).
const MAPPING_ID: u64 = 1;

/// The function that names a map with no creation stack and no writer stack seen.
pub const UNKNOWN_STACK: &str = "[created before the trace; no write seen]";

/// Interns strings, functions and locations as `profile.proto` wants them: by index into
/// tables whose index 0 (strings) or id 0 (functions, locations) means "none".
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<proto::Location>,
    location_ids: HashMap<SourceFrame, u64>,
}

impl Tables {
    fn new() -> Tables {
        let mut tables = Tables::default();
        tables.string("");
        tables
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(text.to_string());
        self.string_ids.insert(text.to_string(), id);
        id
    }

    fn location(&mut self, frame: &SourceFrame) -> u64 {
        if let Some(&id) = self.location_ids.get(frame) {
            return id;
        }
        let key = (frame.function.clone(), frame.file.clone());
        let function_id = match self.function_ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.functions.len() as u64 + 1;
                let name = self.string(&frame.function);
                let filename = self.string(&frame.file);
                self.functions.push(proto::Function {
                    id,
                    name,
                    system_name: name,
                    filename,
                    start_line: 0,
                });
                self.function_ids.insert(key, id);
                id
            }
        };
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id: MAPPING_ID,
            address: 0,
            line: vec![proto::Line {
                function_id,
                line: i64::from(frame.line),
                column: 0,
            }],
            is_folded: false,
        });
        self.location_ids.insert(frame.clone(), id);
        id
    }
}

/// The frames pprof shows for a map, innermost first: its creation stack from the creation
/// site outwards, else its main writer's stack from the write site outwards; `None` when it
/// has neither. Borrowed from the report: a profile of many maps copies no stack per map.
fn program_stack(map: &MapReport) -> Option<(&[SourceFrame], &'static str)> {
    fn from_site<'a>(stack: &'a [SourceFrame], site: &SourceFrame) -> &'a [SourceFrame] {
        let start = stack.iter().position(|frame| frame == site).unwrap_or(0);
        &stack[start..]
    }
    if let Some(site) = &map.site {
        return Some((from_site(&map.stack, site), "creation"));
    }
    let site = map.main_writer_site()?;
    map.writers
        .iter()
        .find(|writer| writer.site.as_ref().is_some_and(|s| std::ptr::eq(s, site)))
        .map(|writer| (from_site(&writer.stack, site), "writer"))
}

/// The profile of the maps in `report` not known released, stamped `time_nanos`.
pub fn profile(report: &Report, time_nanos: i64) -> proto::Profile {
    let mut tables = Tables::new();
    let unknown = [SourceFrame {
        function: UNKNOWN_STACK.to_string(),
        file: String::new(),
        line: 0,
    }];
    type Key<'a> = (&'a [SourceFrame], &'a str, &'static str, String);
    let mut totals: HashMap<Key, [i64; 3]> = HashMap::new();
    let mut order: Vec<Key> = Vec::new();
    for map in report.maps.iter().filter(|map| !map.released) {
        let (stack, by) = program_stack(map).unwrap_or((&unknown, "none"));
        let verdicts: Vec<&str> = map.verdicts.iter().map(|verdict| verdict.name()).collect();
        let key = (
            stack,
            map.map_type.as_deref().unwrap_or_default(),
            by,
            verdicts.join(","),
        );
        let values = totals.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            [0; 3]
        });
        values[0] += map.peak_est_bytes.unwrap_or(0) as i64;
        values[1] += map.live as i64;
        values[2] += 1;
    }
    let value_type = |tables: &mut Tables, kind: &str, unit: &str| proto::ValueType {
        r#type: tables.string(kind),
        unit: tables.string(unit),
    };
    let sample_type = vec![
        value_type(&mut tables, "inuse_space", "bytes"),
        value_type(&mut tables, "entries", "count"),
        value_type(&mut tables, "maps", "count"),
    ];
    let period_type = Some(value_type(&mut tables, "maps", "count"));
    let mut samples = Vec::with_capacity(order.len());
    for key in order {
        let values = totals[&key];
        let (stack, map_type, by, verdicts) = key;
        let location_id = stack.iter().map(|frame| tables.location(frame)).collect();
        let mut label = vec![
            string_label(&mut tables, "type", map_type),
            string_label(&mut tables, "site_kind", by),
        ];
        if !verdicts.is_empty() {
            label.push(string_label(&mut tables, "verdict", &verdicts));
        }
        samples.push(proto::Sample {
            location_id,
            value: values.to_vec(),
            label,
        });
    }
    let default_sample_type = tables.string("inuse_space");
    let mapping = vec![proto::Mapping {
        id: MAPPING_ID,
        memory_start: 0,
        memory_limit: 0,
        file_offset: 0,
        filename: tables.string(&report.target.exe),
        build_id: 0,
        has_functions: true,
        has_filenames: true,
        has_line_numbers: true,
        has_inline_frames: true,
    }];
    let mut comment = vec![tables.string(&format!(
        "gomaptrace: pid {} ({}, {})",
        report.target.pid, report.target.exe, report.target.go_version
    ))];
    if let Some(line) = crate::sampled::text_line(report) {
        comment.push(tables.string(&line));
    }
    proto::Profile {
        sample_type,
        sample: samples,
        mapping,
        location: tables.locations,
        function: tables.functions,
        string_table: tables.strings,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos,
        duration_nanos: (report.duration_s * 1e9) as i64,
        period_type,
        period: 1,
        comment,
        default_sample_type,
        doc_url: 0,
    }
}

fn string_label(tables: &mut Tables, key: &str, value: &str) -> proto::Label {
    proto::Label {
        key: tables.string(key),
        str: tables.string(value),
        num: 0,
        num_unit: 0,
    }
}

/// The profile encoded and gzipped, as pprof reads it.
pub fn gzipped(profile: &proto::Profile) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&profile.encode_to_vec())?;
    encoder.finish()
}

fn unix_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::WriterReport;

    fn frame(function: &str, line: u32) -> SourceFrame {
        SourceFrame {
            function: function.to_string(),
            file: "app/main.go".to_string(),
            line,
        }
    }

    fn decoded(profile: &proto::Profile) -> Vec<(Vec<String>, Vec<i64>)> {
        let name = |id: u64| {
            let location = &profile.location[id as usize - 1];
            let function = &profile.function[location.line[0].function_id as usize - 1];
            profile.string_table[function.name as usize].clone()
        };
        profile
            .sample
            .iter()
            .map(|sample| {
                let stack = sample.location_id.iter().map(|&id| name(id)).collect();
                (stack, sample.value.clone())
            })
            .collect()
    }

    #[test]
    fn live_maps_are_summed_per_program_stack_from_their_site() {
        let mut report = crate::export::json::tests::with_maps(&[100, 200, 400, 800], 9);
        let runtime = frame("runtime.makemap_small", 1);
        let site = frame("main.newCache", 30);
        for map in &mut report.maps[..2] {
            map.stack = vec![runtime.clone(), site.clone(), frame("main.main", 60)];
            map.site = Some(site.clone());
            map.live = 5;
        }
        let writer = frame("main.store", 44);
        report.maps[2].writers = vec![WriterReport {
            site: Some(writer.clone()),
            stack: vec![
                frame("runtime.mapassign", 1),
                writer,
                frame("main.main", 70),
            ],
            inserts: 3,
            deletes: 0,
        }];
        report.maps[3].released = true;
        let profile = profile(&report, 0);
        assert_eq!(
            decoded(&profile),
            vec![
                (
                    vec!["main.newCache".into(), "main.main".into()],
                    vec![300, 10, 2]
                ),
                (
                    vec!["main.store".into(), "main.main".into()],
                    vec![400, 0, 1]
                ),
            ]
        );
        let default = &profile.string_table[profile.default_sample_type as usize];
        assert_eq!(default, "inuse_space");
        let bytes = gzipped(&profile).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
    }

    #[test]
    fn a_map_with_no_stack_is_named_so() {
        let report = crate::export::json::tests::with_maps(&[10], 9);
        let profile = profile(&report, 0);
        assert_eq!(decoded(&profile)[0].0, vec![UNKNOWN_STACK.to_string()]);
    }
}
