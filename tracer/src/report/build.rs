//! Building the report from the model: a pure function of the model, the resolved
//! symbols and the trace's metadata.

use std::collections::HashMap;

use hdrhistogram::Histogram;

use crate::model::{MapRecord, Model, StackId};
use crate::plan::MapImplementation;
use crate::sampled::Mode;
use crate::verdict::{self, Thresholds, Window};

use super::contract::{
    EntrySampling, EventStats, HistogramReports, MapReport, MapTypeInfo, Percentiles, Report,
    Resolved, SiteKind, SiteReport, SourceFrame, Suspect, TargetInfo, WriterReport, UNKNOWN_HOLDER,
};

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

impl ReportContext<'_> {
    fn stack(&self, model: &Model, id: Option<StackId>) -> Vec<SourceFrame> {
        let Some(addresses) = id.and_then(|id| model.stacks().get(id as usize)) else {
            return Vec::new();
        };
        addresses
            .iter()
            .flat_map(|address| self.resolved.frames.get(address).into_iter().flatten())
            .map(SourceFrame::clone)
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

    fn type_facts(&self, record: &MapRecord) -> Option<&MapTypeInfo> {
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
fn site(stack: &[SourceFrame]) -> Option<SourceFrame> {
    stack
        .iter()
        .find(|frame| {
            !RUNTIME_PREFIXES
                .iter()
                .any(|prefix| frame.function.starts_with(prefix))
        })
        .cloned()
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
                folded: model.folds(),
                folded_uncredited: model.folds_uncredited(),
                settled_at_collection: model.settled_at_collection(),
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
    let mut by_site: HashMap<(Option<SourceFrame>, SiteKind), SiteReport> = HashMap::new();
    let mut counted_stacks: HashMap<Option<SourceFrame>, Vec<StackId>> = HashMap::new();
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
