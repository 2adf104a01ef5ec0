//! The report: what the model learned, as JSON for tools and as text for people.
//!
//! The JSON shape is a contract (fields are added, never renamed or removed); `addr` is the
//! string Go's `fmt.Sprintf("%p", m)` prints for the map, so users can match it to their own
//! logs. The report is a pure function of the model, the resolved symbols and the trace's
//! metadata, which is what lets `gomaptrace replay` rebuild it byte for byte.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::inspect::SourceFrame;
use crate::memory::inventory::{Capacity, Summary};
use crate::memory::release::ReleaseDetection;
use crate::model::{MapRecord, Model, Seen, StackId};
use crate::plan::MapImplementation;
use crate::sampled::{Mode, SamplingReport};
use crate::trend::Confidence;
use crate::verdict::{self, Storage, Thresholds, Verdict, Window};

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

impl TargetInfo {
    /// ` in podman container NAME (ID), pid N inside` for the text report's first line, or
    /// nothing on the host.
    fn container_text(&self) -> String {
        let Some(container) = &self.container else {
            return String::new();
        };
        let runtime = container
            .runtime
            .as_deref()
            .map(|runtime| format!("{runtime} "))
            .unwrap_or_default();
        let inside = self
            .ns_pid
            .map(|pid| format!(", pid {pid} inside"))
            .unwrap_or_default();
        format!(" in {runtime}container {}{inside}", container.label())
    }
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
}

/// A source position, as Go's own tools print it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Fully qualified function, e.g. `main.(*Cache).Put`.
    pub function: String,
    /// Source file path as compiled.
    pub file: String,
    /// Line number.
    pub line: u32,
}

impl From<&SourceFrame> for Location {
    fn from(frame: &SourceFrame) -> Location {
        Location {
            function: frame.function.clone(),
            file: frame.file.clone(),
            line: frame.line,
        }
    }
}

impl Location {
    /// `function (file:line)` with the file's directories dropped, for one text line.
    fn short(&self) -> String {
        let file = self.file.rsplit('/').next().unwrap_or(&self.file);
        format!("{} ({file}:{})", self.function, self.line)
    }
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
    pub site: Option<Location>,
    /// The creation stack, innermost first, inlined calls expanded.
    pub stack: Vec<Location>,
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
    pub site: Option<Location>,
    /// The whole stack, innermost first, inlined calls expanded.
    pub stack: Vec<Location>,
    /// Sampled assigns with this stack that added a key.
    pub inserts: u64,
    /// Sampled deletes with this stack that removed a key.
    pub deletes: u64,
}

impl MapReport {
    /// The site of the writer whose sampled operations changed the map most, the earliest on
    /// a tie (see [`crate::writers::Writers::main`]), among writers whose stack reaches the
    /// program's own code: where to look for a map whose creation was not seen.
    pub fn main_writer_site(&self) -> Option<&Location> {
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
    pub site: Option<Location>,
    /// What holds it (see [`MapReport::held_by`]).
    pub held_by: String,
    /// When its creation was not seen: where the program writes to it most.
    pub written_at: Option<Location>,
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
    pub site: Option<Location>,
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

impl Percentiles {
    fn of(histogram: &Histogram<u64>, scale: f64) -> Percentiles {
        let at = |quantile: f64| histogram.value_at_quantile(quantile) as f64 * scale;
        Percentiles {
            count: histogram.len(),
            min: if histogram.is_empty() {
                0.0
            } else {
                histogram.min() as f64 * scale
            },
            max: histogram.max() as f64 * scale,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p99_9: at(0.999),
        }
    }
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

/// A map type as read from the target: name and storage sizes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeFacts {
    /// As Go writes it, e.g. `map[string]*bytes.Buffer`.
    pub name: String,
    /// Bucket or group sizes, for memory estimates.
    pub storage: Storage,
}

/// What was learned outside the model, resolved once per distinct value: source frames per
/// stack address and facts per map type. Recorded with the events, so a replay needs
/// neither the binary nor the process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// Frames for each stack address (innermost inlined call first).
    pub frames: BTreeMap<u64, Vec<SourceFrame>>,
    /// Facts for each map-type pointer.
    pub types: BTreeMap<u64, TypeFacts>,
    /// The variable path holding each map address still alive at the end (absent in
    /// recordings made before it existed).
    #[serde(default)]
    pub held_by: BTreeMap<u64, String>,
}

/// Everything besides the model that the report is built from.
#[derive(Clone, Debug)]
pub struct ReportContext<'a> {
    /// The traced process.
    pub target: TargetInfo,
    /// The observation window.
    pub window: Window,
    /// Events the BPF side lost.
    pub lost: u64,
    /// The target's map implementation (for memory estimates).
    pub implementation: MapImplementation,
    /// Verdict thresholds.
    pub thresholds: Thresholds,
    /// One key in this many sampled; 0 when sampling was off.
    pub sample_one_in: u64,
    /// Resolved stacks and types.
    pub resolved: &'a Resolved,
}

/// Function-name prefixes of the code that creates maps on a program's behalf: the creation
/// site is the first frame outside them.
pub(crate) const RUNTIME_PREFIXES: [&str; 4] =
    ["runtime.", "internal/runtime/", "reflect.", "maps."];

/// `held_by` of a map no package-level variable is known to reach.
pub const UNKNOWN_HOLDER: &str = "unknown";

impl ReportContext<'_> {
    fn stack(&self, model: &Model, id: Option<StackId>) -> Vec<Location> {
        let Some(addresses) = id.and_then(|id| model.stacks().get(id as usize)) else {
            return Vec::new();
        };
        addresses
            .iter()
            .flat_map(|address| self.resolved.frames.get(address).into_iter().flatten())
            .map(Location::from)
            .collect()
    }

    /// `bytes`, unless the target never had that much memory resident: then the estimate
    /// rests on something other than a real map (a torn read, a foreign header) and is
    /// unknown.
    fn within_resident(&self, bytes: u64) -> Option<u64> {
        match self.target.peak_rss_bytes {
            Some(resident) if bytes > resident => None,
            _ => Some(bytes),
        }
    }

    fn type_facts(&self, record: &MapRecord) -> Option<&TypeFacts> {
        self.resolved.types.get(&record.map_type)
    }

    /// What holds a map: only a map still alive can be the one now at its address.
    fn held_by(&self, record: &MapRecord) -> String {
        self.resolved
            .held_by
            .get(&record.addr)
            .filter(|_| !record.is_released())
            .map_or_else(|| UNKNOWN_HOLDER.to_string(), Clone::clone)
    }

    fn map(&self, model: &Model, record: &MapRecord) -> MapReport {
        let stack = self.stack(model, record.stack);
        let writers = record
            .writers
            .list()
            .iter()
            .map(|writer| {
                let stack = self.stack(model, Some(writer.stack));
                WriterReport {
                    site: site(&stack),
                    stack,
                    inserts: writer.inserts,
                    deletes: writer.deletes,
                }
            })
            .collect();
        let facts = self.type_facts(record);
        let estimate = |entries| {
            facts
                .and_then(|facts| {
                    verdict::estimate_bytes(
                        self.implementation,
                        facts.storage,
                        entries,
                        record.log2_buckets,
                    )
                })
                .and_then(|bytes| self.within_resident(bytes))
        };
        let held = match (facts, record.capacity) {
            (Some(facts), Some(capacity)) if record.idle => {
                verdict::capacity_bytes(facts.storage, &capacity)
                    .and_then(|bytes| self.within_resident(bytes))
            }
            _ => estimate(record.peak),
        };
        let rebuilt = facts.and_then(|facts| {
            verdict::estimate_bytes(self.implementation, facts.storage, record.live, 0)
        });
        let start = self.window.start_ns;
        let trend = verdict::trend(record, self.window, &self.thresholds);
        MapReport {
            addr: format!("{:#x}", record.addr),
            map_type: facts.map(|facts| facts.name.clone()),
            site: site(&stack),
            live: record.live,
            peak: record.peak,
            inserts: record.inserts,
            overwrites: record.overwrites,
            deletes: record.deletes,
            clears: record.clears,
            grows: record.grows,
            reorganisations: record.reorganisations,
            cloned: record.cloned,
            est_bytes: estimate(record.live),
            peak_est_bytes: held,
            first_seen_s: seconds_since(start, record.first_seen_ns),
            last_seen_s: seconds_since(start, record.last_seen_ns),
            lifetime_s: record.lifetime_ns(self.window.end_ns) as f64 / 1e9,
            created: record.created,
            held_by: self.held_by(record),
            verdicts: verdict::judge(record, self.window, &self.thresholds)
                .into_iter()
                .collect(),
            growth_per_s: trend.map_or(0.0, |trend| trend.growth_per_s()),
            projected_growth_1h: trend.map_or(0.0, |trend| trend.projected_growth_1h()),
            confidence: trend.map(|trend| trend.confidence),
            released: record.is_released(),
            unexplained: record.unexplained,
            unsettled: record.unsettled,
            seen: record.seen,
            idle: record.idle,
            capacity: record.capacity.filter(|_| record.idle),
            reclaimable_bytes: held
                .zip(rebuilt)
                .map(|(held, rebuilt)| held.saturating_sub(rebuilt)),
            stack,
            writers,
        }
    }
}

/// The first frame outside the runtime's map machinery.
fn site(stack: &[Location]) -> Option<Location> {
    stack
        .iter()
        .find(|frame| {
            !RUNTIME_PREFIXES
                .iter()
                .any(|prefix| frame.function.starts_with(prefix))
        })
        .cloned()
}

/// A rate as a signed whole number, with a decimal only when it is small (`+0.4`, `+20`).
fn signed_rate(rate: f64) -> String {
    if rate.abs() < 10.0 && rate != 0.0 {
        format!("{rate:+.1}")
    } else {
        format!("{rate:+.0}")
    }
}

fn seconds_since(start_ns: u64, at_ns: u64) -> f64 {
    at_ns.saturating_sub(start_ns) as f64 / 1e9
}

impl Report {
    /// Builds the report from a finished model.
    pub fn new(model: &Model, context: &ReportContext<'_>) -> Report {
        let records = model.maps();
        let maps: Vec<MapReport> = records
            .iter()
            .map(|record| context.map(model, record))
            .collect();
        let window_s = context.window.seconds();
        let mut verdicts: Vec<Suspect> = maps
            .iter()
            .flat_map(|map| {
                map.verdicts.iter().map(move |&verdict| Suspect {
                    verdict,
                    addr: map.addr.clone(),
                    map_type: map.map_type.clone(),
                    site: map.site.clone(),
                    held_by: map.held_by.clone(),
                    written_at: match map.site {
                        Some(_) => None,
                        None => map.main_writer_site().cloned(),
                    },
                    live: map.live,
                    peak: map.peak,
                    growth_per_s: map.growth_per_s,
                    projected_growth_1h: map.projected_growth_1h,
                    confidence: map.confidence,
                    est_bytes: map.peak_est_bytes,
                    reclaimable_bytes: map.reclaimable_bytes,
                    idle: map.idle,
                    capacity: map.capacity,
                })
            })
            .collect();
        verdicts.sort_by(|a, b| {
            (
                a.verdict,
                std::cmp::Reverse(a.est_bytes),
                std::cmp::Reverse(a.live),
                &a.addr,
            )
                .cmp(&(
                    b.verdict,
                    std::cmp::Reverse(b.est_bytes),
                    std::cmp::Reverse(b.live),
                    &b.addr,
                ))
        });
        let (sampled_live, untracked) = model.sampled_entries();
        let histograms = model.histograms(context.window.end_ns);
        Report {
            mode: Mode::Exact,
            sampling: None,
            target: context.target.clone(),
            duration_s: window_s,
            events: EventStats {
                received: model.received(),
                lost: context.lost,
                malformed: model.malformed(),
                before_arming: model.before_arming(),
            },
            verdicts,
            sites: sites(model, context, &records, &maps),
            histograms: HistogramReports {
                map_peak_entries: Percentiles::of(&histograms.map_peak_entries, 1.0),
                map_lifetime_s: Percentiles::of(&histograms.map_lifetime_us, 1e-6),
                entry_lifetime_s: Percentiles::of(&histograms.entry_lifetime_us, 1e-6),
            },
            entries: EntrySampling {
                sample_one_in: context.sample_one_in,
                live: sampled_live,
                untracked,
            },
            released_unlisted: model.released_unlisted(),
            release_detection: None,
            maps_unlisted: 0,
            maps,
            inventory: model.inventory_summary().cloned(),
        }
    }

    /// Writes the JSON report to `path` atomically: readers see the old file or the whole new
    /// one, never a partial file.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        write_atomically(path, &bytes)
    }

    /// The report for a person: a summary, the suspects, the creation sites, the biggest
    /// maps, and what was lost.
    pub fn render_text(&self, max_rows: usize) -> String {
        let mut text = String::new();
        let target = &self.target;
        let released =
            self.maps.iter().filter(|map| map.released).count() as u64 + self.released_unlisted;
        let _ = writeln!(
            text,
            "gomaptrace: pid {} ({}, {}){}{}: {:.1} s, {} maps ({} released), {} events, {} lost",
            target.pid,
            target.exe,
            target.go_version,
            target.container_text(),
            if target.exited { ", exited" } else { "" },
            self.duration_s,
            self.maps.len() as u64 + self.released_unlisted,
            released,
            self.events.received,
            self.events.lost,
        );
        if let Some(line) = crate::sampled::text_line(self) {
            let _ = writeln!(text, "{line}");
        }
        self.render_suspects(&mut text);
        self.render_idle(&mut text, max_rows);
        self.render_sites(&mut text, max_rows);
        self.render_maps(&mut text, max_rows);
        let _ = writeln!(text);
        if self.events.lost > 0 {
            let _ = writeln!(
                text,
                "LOST: {} events were lost (ring buffer full); per-map counts are incomplete",
                self.events.lost
            );
        } else {
            let _ = writeln!(text, "lost events: 0");
        }
        match self.release_detection {
            Some(ReleaseDetection::Heap) => {
                let _ = writeln!(text, "dropped maps: released when the heap frees them");
            }
            Some(ReleaseDetection::Header) => {
                let _ = writeln!(
                    text,
                    "dropped maps: released once their memory is reused (no symbols to read \
                     the heap)"
                );
            }
            None => {}
        }
        text
    }

    fn render_suspects(&self, text: &mut String) {
        let _ = writeln!(text);
        if self.verdicts.is_empty() {
            let _ = writeln!(text, "SUSPECTS: none");
            return;
        }
        let _ = writeln!(text, "SUSPECTS");
        for suspect in &self.verdicts {
            let _ = writeln!(
                text,
                "  {:<17} {}  {}",
                suspect.verdict.name().to_uppercase(),
                suspect.map_type.as_deref().unwrap_or("map (type not seen)"),
                suspect
                    .site
                    .as_ref()
                    .map_or("created before the trace".to_string(), Location::short),
            );
            let _ = writeln!(
                text,
                "  {:<17} {}  live {}  peak {}  {}/s ({} in 1 h)  holds ~{}{}",
                "",
                suspect.addr,
                suspect.live,
                suspect.peak,
                signed_rate(suspect.growth_per_s),
                signed_rate(suspect.projected_growth_1h),
                suspect.est_bytes.map_or("?".to_string(), human_bytes),
                suspect
                    .confidence
                    .filter(|_| suspect.verdict == Verdict::NeverReleased)
                    .map_or(String::new(), |confidence| format!(
                        "  rising in {}/{} of {:.1} s",
                        confidence.rising, confidence.intervals, confidence.window_s
                    )),
            );
            if let (true, Some(capacity)) = (suspect.idle, suspect.capacity) {
                let _ = writeln!(
                    text,
                    "  {:<17} idle at attach: {} slots, once held ≥ {}; rebuilt it would give back ~{}",
                    "",
                    capacity.slots,
                    capacity.once_held(),
                    suspect.reclaimable_bytes.map_or("?".to_string(), human_bytes),
                );
            }
            if suspect.held_by != UNKNOWN_HOLDER {
                let _ = writeln!(text, "  {:<17} held by {}", "", suspect.held_by);
            }
            if suspect.site.is_none() {
                let _ = writeln!(
                    text,
                    "  {:<17} written at {}",
                    "",
                    suspect
                        .written_at
                        .as_ref()
                        .map_or("(no write stack seen)".to_string(), Location::short),
                );
            }
        }
    }

    /// The inventory's line, then the idle maps it found, biggest first.
    fn render_idle(&self, text: &mut String, max_rows: usize) {
        let Some(inventory) = &self.inventory else {
            return;
        };
        let _ = writeln!(text);
        let _ = writeln!(
            text,
            "INVENTORY ({}): {} maps in view at attach, {:.1} ms; cannot see {}",
            inventory.method, inventory.found, inventory.time_ms, inventory.blind_to
        );
        let mut idle: Vec<&MapReport> = self
            .maps
            .iter()
            .filter(|map| map.idle && !map.released)
            .collect();
        if idle.is_empty() {
            return;
        }
        idle.sort_by(|a, b| {
            (b.peak_est_bytes, b.live, &a.addr).cmp(&(a.peak_est_bytes, a.live, &b.addr))
        });
        let _ = writeln!(
            text,
            "{:<16} {:>8} {:>9} {:>10} {:>11}  type / held by",
            "IDLE MAP", "live", "slots", "holds", "reclaimable"
        );
        for map in idle.iter().take(max_rows) {
            let _ = writeln!(
                text,
                "{:<16} {:>8} {:>9} {:>10} {:>11}  {} / {}",
                map.addr,
                map.live,
                map.capacity
                    .map_or("?".to_string(), |capacity| capacity.slots.to_string()),
                map.peak_est_bytes.map_or("?".to_string(), human_bytes),
                map.reclaimable_bytes.map_or("?".to_string(), human_bytes),
                map.map_type.as_deref().unwrap_or("?"),
                map.held_by,
            );
        }
        if idle.len() > max_rows {
            let _ = writeln!(text, "… and {} smaller idle maps", idle.len() - max_rows);
        }
    }

    fn render_sites(&self, text: &mut String, max_rows: usize) {
        let _ = writeln!(text);
        let _ = writeln!(
            text,
            "{:<56} {:>8} {:>9} {:>12} {:>10} {:>8}",
            "CREATION SITE", "created", "live maps", "live entries", "est bytes", "suspects"
        );
        for site in self.sites.iter().take(max_rows) {
            let name = site
                .site
                .as_ref()
                .map_or("(creation not seen)".to_string(), Location::short);
            let name = match site.by {
                SiteKind::Creation => name,
                SiteKind::Writer => format!("{name} (written)"),
            };
            let _ = writeln!(
                text,
                "{:<56} {:>8} {:>9} {:>12} {:>10} {:>8}",
                name,
                site.maps_created,
                site.live_maps,
                site.live_entries,
                site.est_bytes.map_or("?".to_string(), human_bytes),
                site.suspects
            );
        }
        if self.sites.len() > max_rows {
            let _ = writeln!(text, "… and {} more sites", self.sites.len() - max_rows);
        }
    }

    fn render_maps(&self, text: &mut String, max_rows: usize) {
        let mut alive: Vec<&MapReport> = self.maps.iter().filter(|map| !map.released).collect();
        alive.sort_by(|a, b| b.live.cmp(&a.live).then(b.peak.cmp(&a.peak)));
        let _ = writeln!(text);
        let _ = writeln!(
            text,
            "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}  type / seen",
            "MAP", "live", "peak", "inserts", "overwr", "deletes", "clears"
        );
        for map in alive.iter().take(max_rows) {
            let _ = writeln!(
                text,
                "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}  {} / {}{}",
                map.addr,
                map.live,
                map.peak,
                map.inserts,
                map.overwrites,
                map.deletes,
                map.clears,
                map.map_type.as_deref().unwrap_or("?"),
                match (map.created, map.idle) {
                    (true, _) => "created",
                    (false, true) => "idle at attach",
                    (false, false) => "already in use",
                },
                if map.unexplained > 0 {
                    " (inexact)"
                } else {
                    ""
                },
            );
        }
        if alive.len() > max_rows {
            let _ = writeln!(text, "… and {} smaller maps", alive.len() - max_rows);
        }
        let released = self.maps.len() - alive.len();
        if released > 0 || self.released_unlisted > 0 {
            let _ = writeln!(
                text,
                "{} maps were released during the trace (another map took their address); \
                 maps not listed as released may be idle but still reachable",
                released as u64 + self.released_unlisted
            );
        }
    }
}

/// Aggregates maps by creation site: live maps and entries from the listed maps, created
/// counts from the model's per-stack totals (which include unlisted released maps). Maps
/// whose creation was not seen are grouped by their main writer's site, when one was seen.
fn sites(
    model: &Model,
    context: &ReportContext<'_>,
    records: &[&MapRecord],
    maps: &[MapReport],
) -> Vec<SiteReport> {
    let mut by_site: HashMap<(Option<Location>, SiteKind), SiteReport> = HashMap::new();
    let mut counted_stacks: HashMap<Option<Location>, Vec<StackId>> = HashMap::new();
    for (record, map) in records.iter().zip(maps) {
        let (site, by) = match (&map.site, map.main_writer_site()) {
            (None, Some(writer)) => (Some(writer.clone()), SiteKind::Writer),
            (site, _) => (site.clone(), SiteKind::Creation),
        };
        let entry = by_site.entry((site.clone(), by)).or_insert(SiteReport {
            by,
            site,
            maps_created: 0,
            maps_created_estimated: None,
            live_maps: 0,
            live_entries: 0,
            est_bytes: Some(0),
            suspects: 0,
        });
        if !map.released {
            entry.live_maps += 1;
            entry.live_entries += map.live;
            entry.est_bytes = entry
                .est_bytes
                .map(|sum| sum.saturating_add(map.peak_est_bytes.unwrap_or(0)));
        }
        entry.suspects += map.verdicts.len() as u64;
        if let Some(stack) = record.stack {
            let stacks = counted_stacks.entry(map.site.clone()).or_default();
            if !stacks.contains(&stack) {
                stacks.push(stack);
                entry.maps_created += model.stack_totals(stack).created;
            }
        }
    }
    let mut sites: Vec<SiteReport> = by_site.into_values().collect();
    for site in &mut sites {
        site.est_bytes = site
            .est_bytes
            .and_then(|bytes| context.within_resident(bytes));
    }
    sites.sort_by(|a, b| {
        (b.suspects, b.live_entries, b.maps_created)
            .cmp(&(a.suspects, a.live_entries, a.maps_created))
            .then_with(|| (&a.site, a.by).cmp(&(&b.site, b.by)))
    });
    sites
}

/// `1.2 MiB`-style sizes.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the whole new one, never a
/// partial file; on failure nothing is left behind. See [`crate::sibling`] for why the
/// temporary file cannot be redirected.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::sibling::write_atomically(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Limits;
    use tracer_common::{kind, CreateEvent, MapEvent, STACK_DEPTH};

    const MAP: u64 = 0x00c0_000a_0000;
    const MAP_TYPE: u64 = 0x4a_b000;
    const CALLER: u64 = 0x40_2000;

    fn event(kind: u8, count: u64, at: u64) -> MapEvent {
        MapEvent {
            ktime_ns: 1_000_000_000 + at * 500_000_000,
            map: MAP,
            count,
            header_word: 7,
            map_type: if kind == kind::ASSIGN { MAP_TYPE } else { 0 },
            key_hash: 0,
            kind,
            flags: 0,
            _pad: [0; 2],
        }
    }

    fn resolved() -> Resolved {
        let frame = |function: &str, line| SourceFrame {
            function: function.into(),
            file: "/src/app/main.go".into(),
            line,
        };
        let mut resolved = Resolved::default();
        resolved
            .frames
            .insert(0x40_1000, vec![frame("runtime.makemap_small", 3)]);
        resolved.frames.insert(
            CALLER,
            vec![frame("main.newIndex", 17), frame("main.main", 40)],
        );
        resolved.types.insert(
            MAP_TYPE,
            TypeFacts {
                name: "map[string]int".into(),
                storage: Storage {
                    bucket_bytes: 136,
                    slots_per_bucket: 8,
                },
            },
        );
        resolved
    }

    fn sample() -> Report {
        sample_with(resolved())
    }

    fn sample_with(resolved: Resolved) -> Report {
        let mut model = Model::new(MapImplementation::Swiss, Limits::default());
        let mut stack = [0u64; STACK_DEPTH];
        stack[0] = 0x40_1000;
        model
            .observe_create(&CreateEvent {
                event: event(kind::CREATE, 0, 0),
                caller: CALLER,
                stack_len: 1,
                _pad: 0,
                stack,
            })
            .unwrap();
        model.observe(&event(kind::ASSIGN, 0, 1)).unwrap();
        // The first insert gives the map its first group.
        model.observe(&event(kind::GROW, 0, 1)).unwrap();
        model.observe(&event(kind::ASSIGN, 1, 2)).unwrap();
        model.settle_words(MAP, [2, 7]);
        report_of(&model, &resolved)
    }

    /// The report of `model` for a swiss-map target traced from 1 s to 3 s with default
    /// thresholds.
    fn report_of(model: &Model, resolved: &Resolved) -> Report {
        let context = ReportContext {
            target: TargetInfo {
                pid: 42,
                exe: "/srv/app".into(),
                go_version: "go1.24.11".into(),
                exited: false,
                peak_rss_bytes: None,
                container: None,
                ns_pid: None,
            },
            window: Window {
                start_ns: 1_000_000_000,
                end_ns: 3_000_000_000,
            },
            lost: 0,
            implementation: MapImplementation::Swiss,
            thresholds: Thresholds::default(),
            sample_one_in: 0,
            resolved,
        };
        Report::new(model, &context)
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
        assert_eq!(
            (map["grows"].as_u64(), map["reorganisations"].as_u64()),
            (Some(1), Some(0))
        );
        assert_eq!(map["created"], true);
        assert_eq!(map["type"], "map[string]int");
        // The probed runtime frame is skipped; the inlined caller comes first.
        assert_eq!(map["site"]["function"], "main.newIndex");
        assert_eq!(map["site"]["line"], 17);
        assert_eq!(map["stack"].as_array().unwrap().len(), 3);
        assert_eq!(map["est_bytes"], 48 + 136);
        assert_eq!(map["lifetime_s"].as_f64(), Some(2.0));
        assert!(map["verdicts"].as_array().unwrap().is_empty());
        assert_eq!(json["target"]["go_version"], "go1.24.11");
        assert_eq!(json["events"]["received"], 4);
        assert_eq!(json["sites"][0]["maps_created"], 1);
        assert_eq!(json["sites"][0]["live_entries"], 2);
        assert_eq!(json["histograms"]["map_peak_entries"]["max"], 2.0);
        assert_eq!(json["histograms"]["map_lifetime_s"]["count"], 1);
    }

    #[test]
    fn held_by_names_the_variable_or_says_unknown() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["maps"][0]["held_by"], "unknown");

        let mut named = resolved();
        named.held_by.insert(MAP, "main.cache.byID".into());
        let mut report = sample_with(named);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["maps"][0]["held_by"], "main.cache.byID");

        // Under a suspect, the text names the holder; an unknown one is not printed.
        let suspect = |held_by: &str| Suspect {
            verdict: Verdict::NeverReleased,
            addr: "0xc0000a0000".into(),
            map_type: None,
            site: None,
            held_by: held_by.into(),
            written_at: None,
            live: 2,
            peak: 2,
            growth_per_s: 1.0,
            projected_growth_1h: 3600.0,
            confidence: None,
            est_bytes: None,
            reclaimable_bytes: None,
            idle: false,
            capacity: None,
        };
        report.verdicts = vec![suspect("main.cache.byID")];
        let text = report.render_text(10);
        assert!(
            text.contains("\n                    held by main.cache.byID\n"),
            "{text}"
        );
        report.verdicts = vec![suspect(UNKNOWN_HOLDER)];
        assert!(!report.render_text(10).contains("held by"));
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
    fn text_leads_with_a_summary_then_suspects_and_sites() {
        let text = sample().render_text(10);
        assert!(text.starts_with(
            "gomaptrace: pid 42 (/srv/app, go1.24.11): 2.0 s, 1 maps (0 released), 4 events, 0 lost"
        ), "{text}");
        assert!(text.contains("SUSPECTS: none"));
        assert!(text.contains("main.newIndex (main.go:17)"));
        assert!(text.contains("0xc0000a0000"));
    }

    #[test]
    fn a_containerized_target_is_named_on_the_first_line_and_in_json() {
        let mut report = sample();
        report.target.container = Some(crate::container::ContainerInfo {
            id: "342a6fb4e6124d84dd97f8e7408b8e0e7e2f062a91e377b8bf439c864b1a940b".into(),
            name: Some("leakzoo".into()),
            runtime: Some("podman".into()),
            cgroup: "/libpod_parent/libpod-342a6fb4e612".into(),
        });
        report.target.ns_pid = Some(1);
        let text = report.render_text(10);
        assert!(
            text.starts_with(
                "gomaptrace: pid 42 (/srv/app, go1.24.11) in podman container leakzoo \
             (342a6fb4e612), pid 1 inside: 2.0 s"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["target"]["container"]["name"], "leakzoo");
        assert_eq!(json["target"]["ns_pid"], 1);
        let host = serde_json::to_value(sample()).unwrap();
        assert!(host["target"].get("container").is_none(), "{host}");
        let old: TargetInfo = serde_json::from_str(
            r#"{"pid": 1, "exe": "/a", "go_version": "go1.22.1", "exited": false}"#,
        )
        .unwrap();
        assert_eq!((old.container, old.ns_pid), (None, None));
    }

    /// A map made before the trace, written by `main.fill` (line 70), that keeps growing.
    fn written_before_the_trace() -> Report {
        const WRITER: u64 = 0x40_5000;
        let mut model = Model::new(MapImplementation::Swiss, Limits::default());
        let mut stack = [0u64; STACK_DEPTH];
        stack[..2].copy_from_slice(&[0x40_4000, 0x40_6000]);
        // One insert every 45 ms across the 2 s window; the first four carry a stack.
        let at = |count: u64| MapEvent {
            ktime_ns: 1_000_000_000 + (count - 10) * 45_000_000,
            ..event(kind::ASSIGN, count, 0)
        };
        for count in 10..14 {
            model
                .observe_create(&CreateEvent {
                    event: at(count),
                    caller: WRITER,
                    stack_len: 2,
                    _pad: 0,
                    stack,
                })
                .unwrap();
        }
        for count in 14..54 {
            model.observe(&at(count)).unwrap();
        }
        model.freeze(3_000_000_000);
        model.settle_words(MAP, [54, 7]);
        let mut resolved = resolved();
        let frame = |function: &str, line| SourceFrame {
            function: function.into(),
            file: "/src/app/main.go".into(),
            line,
        };
        resolved
            .frames
            .insert(0x40_4000, vec![frame("runtime.mapassign_fast64", 200)]);
        resolved.frames.insert(WRITER, vec![frame("main.fill", 70)]);
        resolved
            .frames
            .insert(0x40_6000, vec![frame("main.main", 90)]);
        report_of(&model, &resolved)
    }

    #[test]
    fn maps_made_before_the_trace_are_located_by_their_writers() {
        let report = written_before_the_trace();
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        let map = &json["maps"][0];
        assert_eq!(map["created"], false);
        assert!(map["site"].is_null());
        let writers = map["writers"].as_array().unwrap();
        assert_eq!(writers.len(), 1, "{writers:#?}");
        assert_eq!(writers[0]["site"]["function"], "main.fill");
        assert_eq!(writers[0]["site"]["line"], 70);
        assert_eq!(writers[0]["stack"].as_array().unwrap().len(), 3);
        assert_eq!(
            (
                writers[0]["inserts"].as_u64(),
                writers[0]["deletes"].as_u64()
            ),
            (Some(4), Some(0))
        );
        assert_eq!(map["inserts"], 44, "{map}");

        let suspect = &json["verdicts"][0];
        assert_eq!(suspect["verdict"], "never-released");
        assert_eq!(suspect["written_at"]["line"], 70);
        let site = &json["sites"][0];
        assert_eq!(
            (site["by"].as_str(), site["site"]["line"].as_u64()),
            (Some("writer"), Some(70))
        );
        assert_eq!(
            (site["live_maps"].as_u64(), site["maps_created"].as_u64()),
            (Some(1), Some(0))
        );

        let text = report.render_text(10);
        assert!(text.contains("created before the trace"), "{text}");
        assert!(text.contains("written at main.fill (main.go:70)"), "{text}");
        assert!(text.contains("main.fill (main.go:70) (written)"), "{text}");

        // A created map's site row says so.
        let json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["sites"][0]["by"], "creation");
        assert!(json["verdicts"].as_array().unwrap().is_empty());
    }

    #[test]
    fn a_leak_reports_its_rate_projection_and_confidence() {
        let mut model = Model::new(MapImplementation::Swiss, Limits::default());
        // One insert every 20 ms for the whole 2 s window: 50 entries a second.
        for count in 0..100 {
            model
                .observe(&MapEvent {
                    ktime_ns: 1_000_000_000 + count * 20_000_000,
                    ..event(kind::ASSIGN, count, 0)
                })
                .unwrap();
        }
        model.freeze(3_000_000_000);
        model.settle_words(MAP, [100, 7]);
        let resolved = resolved();
        let report = report_of(&model, &resolved);
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        let suspect = &json["verdicts"][0];
        assert_eq!(suspect["verdict"], "never-released");
        assert_eq!(suspect["growth_per_s"], 50.0);
        assert_eq!(suspect["projected_growth_1h"], 180_000.0);
        assert_eq!(
            suspect["confidence"],
            serde_json::json!({"window_s": 2.0, "intervals": 10, "rising": 10})
        );
        let map = &json["maps"][0];
        assert_eq!(map["verdicts"], serde_json::json!(["never-released"]));
        assert_eq!(map["growth_per_s"], 50.0);
        assert_eq!(map["confidence"], suspect["confidence"]);
        let text = report.render_text(10);
        assert!(
            text.contains("+50/s (+180000 in 1 h)  holds ~")
                && text.contains("rising in 10/10 of 2.0 s"),
            "{text}"
        );
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }
}
