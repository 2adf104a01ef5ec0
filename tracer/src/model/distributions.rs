//! Sampled keys and the distributions (map sizes and lifetimes, entry lifetimes) the
//! histograms and the `--hlog` export are made of.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::{KeyChange, Model};

/// Distributions over the whole trace, in the units their names say.
#[derive(Clone, Debug)]
pub struct Histograms {
    /// Peak entry count of every map.
    pub map_peak_entries: Histogram<u64>,
    /// Map lifetimes in microseconds: creation (or first sighting) to release, or to the end
    /// of the window for maps still alive.
    pub map_lifetime_us: Histogram<u64>,
    /// Lifetimes of sampled entries, insert to delete (or clear), in microseconds.
    pub entry_lifetime_us: Histogram<u64>,
}

impl Histograms {
    pub(super) fn new() -> Histograms {
        let histogram = || Histogram::new(3).expect("3 significant digits is a valid precision");
        Histograms {
            map_peak_entries: histogram(),
            map_lifetime_us: histogram(),
            entry_lifetime_us: histogram(),
        }
    }
}

/// Sampled keys followed from insert to delete.
#[derive(Clone, Debug, Default)]
pub(super) struct SampledEntries {
    /// (map address, key hash) → insert time.
    pub(super) live: BTreeMap<(u64, u32), u64>,
    /// Sampled inserts not followed because `live` was full.
    pub(super) untracked: u64,
}

impl SampledEntries {
    /// Stops following the keys of the map at `addr`; returns their insert times.
    pub(super) fn take_map(&mut self, addr: u64) -> Vec<u64> {
        let keys: Vec<(u64, u32)> = self
            .live
            .range((addr, 0)..=(addr, u32::MAX))
            .map(|(key, _)| *key)
            .collect();
        keys.iter()
            .filter_map(|key| self.live.remove(key))
            .collect()
    }
}

impl Model {
    pub(super) fn follow_key(&mut self, addr: u64, change: Option<(KeyChange, u64)>) {
        let Some((change, now)) = change else {
            return;
        };
        let entries = &mut self.entries;
        match change {
            KeyChange::Inserted(hash) => {
                if entries.live.len() < self.limits.sampled_entries {
                    entries.live.insert((addr, hash), now);
                } else {
                    entries.untracked += 1;
                }
            }
            KeyChange::Deleted(hash) => {
                if let Some(inserted) = entries.live.remove(&(addr, hash)) {
                    record_us(
                        &mut self.histograms.entry_lifetime_us,
                        now.saturating_sub(inserted),
                    );
                }
            }
            KeyChange::Cleared => {
                for inserted in entries.take_map(addr) {
                    record_us(
                        &mut self.histograms.entry_lifetime_us,
                        now.saturating_sub(inserted),
                    );
                }
            }
        }
    }

    /// The trace's distributions, with the maps still alive counted up to `end_ns`.
    pub fn histograms(&self, end_ns: u64) -> Histograms {
        let mut histograms = self.histograms.clone();
        for record in self.maps.values() {
            record_value(&mut histograms.map_peak_entries, record.peak);
            record_us(&mut histograms.map_lifetime_us, record.lifetime_ns(end_ns));
        }
        histograms
    }

    /// Sampled keys still present when the trace ended, and sampled inserts not followed
    /// because the sample table was full.
    pub fn sampled_entries(&self) -> (u64, u64) {
        (self.entries.live.len() as u64, self.entries.untracked)
    }
}

pub(super) fn record_us(histogram: &mut Histogram<u64>, ns: u64) {
    record_value(histogram, ns / 1_000);
}

/// Records `value`, growing the histogram's range as needed (it starts tiny and resizes);
/// a value beyond what any histogram can hold is clamped rather than dropped.
pub(super) fn record_value(histogram: &mut Histogram<u64>, value: u64) {
    if histogram.record(value).is_err() {
        histogram.saturating_record(value);
    }
}
