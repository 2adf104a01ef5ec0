//! `gomaptrace inventory --pid N`: the inventory alone, no probes, for a quick look at a
//! service where even a short trace is not wanted.
//!
//! The inventory's maps go through the same pipeline as a trace's (a window of zero length,
//! no events), so the report, its verdicts on idle maps and its JSON are those of a trace:
//! the same entries a trace's inventory finds.

use std::collections::BTreeMap;

use crate::inspect::{self, GoBinary};
use crate::memory::inventory;
use crate::pipeline::{Pipeline, SessionInput, Setup};
use crate::plan::MapImplementation;
use crate::privileges;
use crate::report::{Report, Resolved, TargetInfo};
use crate::session::SessionError;
use crate::target::Target;
use crate::verdict::Thresholds;

/// Takes the inventory of process `pid` and reports it, judged with `thresholds`. The
/// target is never stopped; nothing is attached to it.
pub fn inventory_report(pid: u32, thresholds: Thresholds) -> Result<Report, SessionError> {
    let target = Target::open(pid)?;
    privileges::check()?;
    let exe = target.exe().display().to_string();
    let binary = GoBinary::open(&target.exe_link()).map_err(|source| SessionError::Inspect {
        exe: exe.clone(),
        source,
    })?;
    let implementation = MapImplementation::of(&binary);
    let bias = target.load_bias(|offset| binary.vaddr_of_file_offset(offset))?;
    let start_ns = crate::session::monotonic_ns();
    let taken = inventory::take(
        &target.exe_link(),
        pid,
        bias,
        implementation,
        binary.types_start(),
    );
    let mut pipeline = Pipeline::new(
        Setup {
            target: TargetInfo {
                pid,
                exe,
                go_version: binary.raw_go_version().to_string(),
                exited: false,
                peak_rss_bytes: target.peak_resident_bytes().ok(),
                container: crate::container::of_pid(pid),
                ns_pid: crate::container::ns_pid(pid),
            },
            implementation,
            start_ns,
            thresholds,
            sample_one_in: 0,
            sampling: None,
            probe_links: None,
        },
        None,
    );
    let held_by: BTreeMap<u64, String> = taken
        .sightings
        .iter()
        .map(|sighting| (sighting.addr, sighting.held_by.clone()))
        .collect();
    pipeline.note(SessionInput::Inventory {
        at_ns: start_ns,
        summary: taken.summary,
        sightings: taken.sightings,
    });
    for &map_type in pipeline.model().types_seen().to_vec().iter() {
        if let Ok(facts) = inspect::map_type_info(&target, &binary, bias, map_type) {
            pipeline.note(SessionInput::Type { map_type, facts });
        }
    }
    if let Ok(peak_bytes) = target.peak_resident_bytes() {
        pipeline.note(SessionInput::Resident { peak_bytes });
    }
    pipeline.note(SessionInput::Freeze { end_ns: start_ns });
    pipeline.note(SessionInput::Finish {
        lost: 0,
        resolved: Resolved {
            frames: BTreeMap::new(),
            types: BTreeMap::new(),
            held_by,
        },
    });
    Ok(pipeline.finish()?)
}
