//! The report's JSON contract: every type `--json` writes and recordings keep. Fields are
//! added, never renamed or removed; this file is the one to review for a change to it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Source positions are the inspector's own frames, one type from the pclntab to the JSON.
pub use crate::inspect::{MapTypeInfo, SourceFrame};
use crate::memory::inventory::{Capacity, Summary};
use crate::memory::release::ReleaseDetection;
use crate::model::Seen;
use crate::sampled::{Mode, SamplingReport};
use crate::trend::Confidence;
use crate::verdict::Verdict;

/// The whole report of one trace.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// Which mode made it: `exact` (every call probed), or `sampled` (discovery windows and
    /// polled headers: see `sampling` for what is exact and what is estimated).
    pub mode: Mode,
    /// `--mode sampled` only: how it sampled, and what its `*_estimated` numbers mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingReport>,
    /// Which process was traced.
    pub target: TargetInfo,
    /// How long the probes were attached, in seconds.
    pub duration_s: f64,
    /// Event delivery: anything lost makes the per-map numbers a lower bound.
    pub events: EventStats,
    /// The maps that earned a verdict, worst first.
    pub verdicts: Vec<Suspect>,
    /// Maps aggregated by where they were created, busiest first.
    pub sites: Vec<SiteReport>,
    /// Distributions over every map and every sampled entry.
    pub histograms: HistogramReports,
    /// Sampled keys: how entry lifetimes were measured.
    pub entries: EntrySampling,
    /// Released maps beyond the tracer's memory bound, counted in `sites` and `histograms`
    /// but not listed in `maps`.
    pub released_unlisted: u64,
    /// Maps left out of `maps` by `--max-maps` (counted in `sites` and `histograms`).
    pub maps_unlisted: u64,
    /// Every map seen (up to the bound above for released ones), in order of first sighting.
    pub maps: Vec<MapReport>,
    /// What the inventory at attach did (`null` when none was taken, as in recordings made
    /// before it existed).
    pub inventory: Option<Summary>,
    /// How maps the program dropped were noticed: `heap` (allocation bits) or `header`
    /// (reused memory only); absent when the trace did not check (recordings made before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_detection: Option<ReleaseDetection>,
}

/// The traced process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TargetInfo {
    /// Its pid.
    pub pid: u32,
    /// Its executable, as the process sees it.
    pub exe: String,
    /// The Go version it was built with, e.g. `go1.24.11`.
    pub go_version: String,
    /// It exited before the trace ended.
    pub exited: bool,
    /// The most memory it had resident (`VmHWM`), as last read while it ran: no estimate of
    /// what its maps hold can be larger, so a larger one is reported as unknown.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// The container it ran in, however it was named (`--pid` too); absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::container::ContainerInfo>,
    /// Its pid inside its own pid namespace (the last `NSpid`), when that is not the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
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
    /// Events received that fired while the probes were still being attached: not counted,
    /// so that every count is exact from the instant all probes were live.
    pub before_arming: u64,
    /// Writes the BPF side counted instead of sending (exact mode): each found the header
    /// its map's previous write left, which proves what that write did (see
    /// `tracer_common::MapEvent::folded`). They are in the maps' `inserts`, `overwrites`
    /// and `deletes` like any other write.
    pub folded: u64,
    /// Of `folded`, writes no map could be credited with (the record carrying them was lost,
    /// or a new map at their map's address took over their run while the tracer read it):
    /// the counts of the maps they belonged to, listed or released beyond the listed ones,
    /// are short by this many in total, and the next count of such a map is `unexplained`.
    pub folded_uncredited: u64,
    /// Released maps whose last operation was settled by their header as read right after one
    /// of the target's collections (exact mode): the map was already unreachable then, so the
    /// read is its final count (see `tracer_common::settle`).
    pub settled_at_collection: u64,
}

/// One map.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MapReport {
    /// `%p` of the map.
    pub addr: String,
    /// The map's Go type, e.g. `map[string]*bytes.Buffer`; `null` until an operation that
    /// passes the type was seen.
    #[serde(rename = "type")]
    pub map_type: Option<String>,
    /// Where it was created: the first frame of its creation stack outside the runtime.
    pub site: Option<SourceFrame>,
    /// The creation stack, innermost first, inlined calls expanded.
    pub stack: Vec<SourceFrame>,
    /// Where the program writes to it, from the sampled writes that carried a stack (the
    /// first writes of maps made before the trace, then one write in 1024): at most 8.
    pub writers: Vec<WriterReport>,
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
    /// Times the map's capacity grew: classic doublings of the buckets; swiss maps' first
    /// group, first table, table doublings and table splits.
    pub grows: u64,
    /// Times the map was reorganised without growing: classic same-size growths (overflow
    /// buckets piled up), swiss tombstones cleared in place (Go 1.25+).
    pub reorganisations: u64,
    /// Made by `maps.Clone`, starting with the source's entries.
    pub cloned: bool,
    /// Estimated bytes a map holding only its live entries would need.
    pub est_bytes: Option<u64>,
    /// Estimated bytes the map holds: sized for its peak, since Go maps never shrink.
    pub peak_est_bytes: Option<u64>,
    /// First event, seconds after the probes were attached.
    pub first_seen_s: f64,
    /// Last event, seconds after the probes were attached.
    pub last_seen_s: f64,
    /// Seconds from creation (or first sighting) to release, or to the end of the trace.
    pub lifetime_s: f64,
    /// Seen being created (false: it existed before, or was made without a create call).
    pub created: bool,
    /// The package-level variable path that holds the map at the end of the trace (e.g.
    /// `main.sessionCache.byID`), read from the binary's DWARF and the target's memory;
    /// `unknown` when none reaches it, the binary has no DWARF, or the map is gone.
    pub held_by: String,
    /// Verdicts on the map's behaviour; empty when nothing stands out.
    pub verdicts: Vec<Verdict>,
    /// Net entries gained per second over its life in the window (negative: it shrank).
    pub growth_per_s: f64,
    /// Entries it would gain in an hour at that rate.
    pub projected_growth_1h: f64,
    /// What the trend behind `never-released` rests on; `null` for a map with no time in
    /// the window.
    pub confidence: Option<Confidence>,
    /// Known to be freed: a later map was created at its address, or its process exited.
    /// Otherwise it may be alive or merely idle and not yet collected.
    pub released: bool,
    /// Count changes no observed operation explains; 0 means the counts are exact.
    pub unexplained: u64,
    /// The last operation's effect was never seen (the map or the target was gone first).
    pub unsettled: u64,
    /// How it was first seen: `creation`, `event` (an operation on a map made before), or
    /// `inventory` (found through a package-level variable at attach).
    pub seen: Seen,
    /// Found by the inventory and not operated on while traced: its numbers are its header's.
    pub idle: bool,
    /// An idle map's capacity, read from its header (`null` for maps seen in use).
    pub capacity: Option<Capacity>,
    /// Bytes the map would give back if rebuilt with its live entries: what it holds minus
    /// what those entries need.
    pub reclaimable_bytes: Option<u64>,
}

/// One stack that wrote to a map, and what its sampled operations did.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WriterReport {
    /// The first frame of the stack outside the runtime: the program's own write.
    pub site: Option<SourceFrame>,
    /// The whole stack, innermost first, inlined calls expanded.
    pub stack: Vec<SourceFrame>,
    /// Sampled assigns with this stack that added a key.
    pub inserts: u64,
    /// Sampled deletes with this stack that removed a key.
    pub deletes: u64,
}

impl MapReport {
    /// The site of the writer whose sampled operations changed the map most, the earliest on
    /// a tie (see [`crate::writers::Writers::main`]), among writers whose stack reaches the
    /// program's own code: where to look for a map whose creation was not seen.
    pub fn main_writer_site(&self) -> Option<&SourceFrame> {
        self.writers
            .iter()
            .rev()
            .filter(|writer| writer.site.is_some())
            .max_by_key(|writer| writer.inserts.saturating_add(writer.deletes))
            .and_then(|writer| writer.site.as_ref())
    }
}

/// A map with a verdict, with what a person needs to act on it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Suspect {
    /// The verdict.
    pub verdict: Verdict,
    /// `%p` of the map.
    pub addr: String,
    /// Its Go type.
    #[serde(rename = "type")]
    pub map_type: Option<String>,
    /// Where it was created.
    pub site: Option<SourceFrame>,
    /// What holds it (see [`MapReport::held_by`]).
    pub held_by: String,
    /// When its creation was not seen: where the program writes to it most.
    pub written_at: Option<SourceFrame>,
    /// Entries at the end.
    pub live: u64,
    /// Most entries at once.
    pub peak: u64,
    /// Net entries gained per second over the map's life in the window (negative: it shrank).
    pub growth_per_s: f64,
    /// Entries it would gain in an hour at that rate.
    pub projected_growth_1h: f64,
    /// What the trend rests on: the window, its sub-intervals, how many of them grew.
    pub confidence: Option<Confidence>,
    /// Estimated bytes it holds.
    pub est_bytes: Option<u64>,
    /// Bytes it would give back if rebuilt (see [`MapReport::reclaimable_bytes`]).
    pub reclaimable_bytes: Option<u64>,
    /// Found idle by the inventory: its verdict rests on its header's capacity.
    pub idle: bool,
    /// That capacity.
    pub capacity: Option<Capacity>,
}

/// What a site row groups its maps by.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    /// The line that created the maps (or `null`: neither creation nor a write stack seen).
    Creation,
    /// The line that writes most to maps whose creation was not seen.
    Writer,
}

/// Maps created at one source line.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SiteReport {
    /// The creating line; `null` gathers maps whose creation was not seen.
    pub site: Option<SourceFrame>,
    /// Whether `site` created the maps, or is the main writer of maps made before the trace.
    pub by: SiteKind,
    /// Maps seen created there (released ones included).
    pub maps_created: u64,
    /// `--mode sampled` only: `maps_created` scaled from the windows to the whole trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maps_created_estimated: Option<f64>,
    /// Of the maps from there, those not known released.
    pub live_maps: u64,
    /// Their entries at the end.
    pub live_entries: u64,
    /// Their estimated bytes; `null` when their sum exceeds what the target ever had
    /// resident (the model counts as live some maps that are gone).
    pub est_bytes: Option<u64>,
    /// How many of them earned a verdict.
    pub suspects: u64,
}

/// Percentiles of one distribution.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
}

/// The report's distributions.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HistogramReports {
    /// Peak entries per map.
    pub map_peak_entries: Percentiles,
    /// Map lifetimes in seconds (maps still alive count up to the end of the trace).
    pub map_lifetime_s: Percentiles,
    /// Sampled entries' lifetimes in seconds, insert to delete or clear.
    pub entry_lifetime_s: Percentiles,
}

/// How entries were sampled.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EntrySampling {
    /// One key in this many is followed (by a salted hash of its bytes); 0 means off.
    pub sample_one_in: u64,
    /// Sampled keys still present at the end (their lifetimes are not in the histogram).
    pub live: u64,
    /// Sampled inserts not followed because the sample table was full.
    pub untracked: u64,
}

/// What was learned outside the model, resolved once per distinct value: source frames per
/// stack address and facts per map type. Recorded with the events, so a replay needs
/// neither the binary nor the process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// Frames for each stack address (innermost inlined call first).
    pub frames: BTreeMap<u64, Vec<SourceFrame>>,
    /// Facts for each map-type pointer.
    pub types: BTreeMap<u64, MapTypeInfo>,
    /// The variable path holding each map address still alive at the end (absent in
    /// recordings made before it existed).
    #[serde(default)]
    pub held_by: BTreeMap<u64, String>,
}

/// `held_by` of a map no package-level variable is known to reach.
pub const UNKNOWN_HOLDER: &str = "unknown";
