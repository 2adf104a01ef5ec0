//! Which maps look like leaks, and how much memory a map holds.
//!
//! Pure judgement over a finished [`MapRecord`]: the thresholds are the user's, the facts are
//! the model's, and nothing here reads the target. The two verdicts answer the two questions
//! a capacity review asks of a map:
//! - `never-released`: does it only ever grow? Entries went in for the whole window, none came
//!   out (no delete, no clear) and the map itself was not freed: a cache without eviction.
//! - `retains-capacity`: did it shrink far below its peak? Go never shrinks a map's buckets
//!   (classic) or tables (swiss) on delete, so it still holds the memory of its peak.
//!
//! Maps whose inserts and deletes balance, maps that are cleared, and maps that stop being
//! used get no verdict.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::MapRecord;
use crate::plan::MapImplementation;

/// When a map earns a verdict; every field is a command-line flag.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// `never-released` needs at least this many more entries at the end than at first
    /// sight: small maps that grow a little are not worth a reader's attention.
    pub leak_min_growth: u64,
    /// `never-released` needs an insert within this last fraction of the window: a map that
    /// grew early and then stopped is not growing any more.
    pub leak_recent_fraction: f64,
    /// `retains-capacity` needs a peak of at least this many entries.
    pub retain_min_peak: u64,
    /// `retains-capacity` needs the live count at or below this fraction of the peak.
    pub retain_max_ratio: f64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            leak_min_growth: 1_000,
            leak_recent_fraction: 0.25,
            retain_min_peak: 1_000,
            retain_max_ratio: 0.25,
        }
    }
}

/// What a map's behaviour says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Grew through the window and never gave an entry back: the leak flag.
    NeverReleased,
    /// Shrank far below its peak but still holds the peak's memory.
    RetainsCapacity,
}

impl Verdict {
    /// The name used in the JSON report and the text report.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::NeverReleased => "never-released",
            Verdict::RetainsCapacity => "retains-capacity",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The observation window, in monotonic nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// When the probes were attached.
    pub start_ns: u64,
    /// When observation ended.
    pub end_ns: u64,
}

impl Window {
    /// Its length in seconds.
    pub fn seconds(self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

/// The verdict on one map, if any.
pub fn judge(record: &MapRecord, window: Window, thresholds: &Thresholds) -> Option<Verdict> {
    if record.is_released() || record.clears > 0 {
        return None;
    }
    let growth = record.live.saturating_sub(record.first_count);
    let recent_from = window.end_ns.saturating_sub(
        (window.end_ns.saturating_sub(window.start_ns) as f64 * thresholds.leak_recent_fraction)
            as u64,
    );
    let still_growing = record
        .last_insert_ns
        .is_some_and(|inserted| inserted >= recent_from);
    if record.deletes == 0 && growth >= thresholds.leak_min_growth && still_growing {
        return Some(Verdict::NeverReleased);
    }
    let shrunk = (record.live as f64) <= record.peak as f64 * thresholds.retain_max_ratio;
    if record.peak >= thresholds.retain_min_peak && record.deletes > 0 && shrunk {
        return Some(Verdict::RetainsCapacity);
    }
    None
}

/// Sizes of one map type's storage, read from its type descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// Bytes of one bucket (classic) or group (swiss), slots and control bytes included.
    pub bucket_bytes: u64,
    /// Entries one bucket or group holds (8 in every release).
    pub slots_per_bucket: u64,
}

/// Size of a map header (`hmap` or `maps.Map`), which every map holds.
const HEADER_BYTES: u64 = 48;
/// Classic maps grow when the average bucket holds more than 6.5 entries.
const CLASSIC_LOAD: f64 = 6.5;
/// Swiss tables grow when 7/8 of their slots are used.
const SWISS_LOAD: f64 = 7.0 / 8.0;
/// A swiss table holds at most 1024 slots; bigger maps split into more tables.
const SWISS_TABLE_SLOTS: u64 = 1024;
/// The largest bucket or group any release builds: keys and elements over 128 bytes are
/// stored through pointers, so a bucket holds at most 8 × (128 + 128) bytes of slots plus
/// its control words. A bigger size read from a type descriptor is not a map's.
const MAX_BUCKET_BYTES: u64 = 8 + 8 * 256 + 8;
/// Go refuses any single allocation above 2^48 bytes on 64-bit Linux (`maxAlloc`), so no
/// map's storage can be larger; a bigger estimate comes from a header or count that is not
/// a real map's.
const MAX_ALLOC_BYTES: u64 = 1 << 48;

/// Estimated bytes a map of `implementation` holds once it has held `entries` entries (maps
/// never shrink, so pass the peak for what it holds now, the live count for what it would
/// need if rebuilt). For classic maps a bucket count `2^log2_buckets` read from the header
/// wins when larger (a size hint, or growth before the trace). Overflow buckets and the old
/// array of a map in mid-growth are not counted.
///
/// Every input comes from the target's memory, which the target controls: `None` (unknown)
/// when they describe storage no Go map can have, instead of an absurd or overflowing number.
pub fn estimate_bytes(
    implementation: MapImplementation,
    storage: Storage,
    entries: u64,
    log2_buckets: u8,
) -> Option<u64> {
    if storage.bucket_bytes == 0 || storage.bucket_bytes > MAX_BUCKET_BYTES {
        return None;
    }
    let slots = storage.slots_per_bucket.max(1);
    let buckets = match implementation {
        MapImplementation::Classic => {
            let mut log2 = 0u32;
            while entries > slots && entries as f64 > CLASSIC_LOAD * 2f64.powi(log2 as i32) {
                log2 += 1;
            }
            1u64.checked_shl(log2.max(u32::from(log2_buckets)))
                .filter(|&buckets| buckets < MAX_ALLOC_BYTES)?
        }
        MapImplementation::Swiss if entries == 0 => 0,
        MapImplementation::Swiss if entries <= slots => 1,
        MapImplementation::Swiss => {
            let needed = (entries as f64 / SWISS_LOAD).ceil();
            let table_entries = (SWISS_TABLE_SLOTS as f64 * SWISS_LOAD) as u64;
            let total_slots = if needed <= SWISS_TABLE_SLOTS as f64 {
                (needed as u64).next_power_of_two()
            } else {
                entries
                    .div_ceil(table_entries)
                    .checked_next_power_of_two()?
                    .checked_mul(SWISS_TABLE_SLOTS)?
            };
            total_slots / slots
        }
    };
    buckets
        .checked_mul(storage.bucket_bytes)?
        .checked_add(HEADER_BYTES)
        .filter(|&bytes| bytes <= MAX_ALLOC_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Limits, Model};
    use tracer_common::{kind, MapEvent};

    const SECOND: u64 = 1_000_000_000;
    const WINDOW: Window = Window {
        start_ns: 0,
        end_ns: 10 * SECOND,
    };

    /// A map that sees `(kind, count before, time)` operations and a final count.
    fn map_after(operations: &[(u8, u64, u64)], final_count: u64) -> MapRecord {
        let mut model = Model::new(MapImplementation::Swiss, Limits::default());
        for &(kind, count, ktime_ns) in operations {
            model
                .observe(&MapEvent {
                    ktime_ns,
                    map: 0x00c0_0001_0000,
                    count,
                    header_word: 7,
                    map_type: 0,
                    key_hash: 0,
                    kind,
                    flags: 0,
                    _pad: [0; 2],
                })
                .unwrap();
        }
        model.freeze(WINDOW.end_ns);
        model.settle_words(0x00c0_0001_0000, [final_count, 7]);
        model.maps()[0].clone()
    }

    /// `n` inserts spread evenly over the window, starting from `first`.
    fn growing(first: u64, n: u64) -> Vec<(u8, u64, u64)> {
        (0..n)
            .map(|i| (kind::ASSIGN, first + i, i * WINDOW.end_ns / n))
            .collect()
    }

    #[test]
    fn a_cache_that_only_grows_is_never_released() {
        let map = map_after(&growing(0, 2_000), 2_000);
        assert_eq!(
            judge(&map, WINDOW, &Thresholds::default()),
            Some(Verdict::NeverReleased)
        );
        // Already big when tracing began: only the growth seen counts.
        let map = map_after(&growing(50_000, 2_000), 52_000);
        assert_eq!(
            judge(&map, WINDOW, &Thresholds::default()),
            Some(Verdict::NeverReleased)
        );
    }

    #[test]
    fn growth_that_stopped_or_is_small_or_balanced_is_fine() {
        let thresholds = Thresholds::default();
        // Grew in the first half only.
        let early: Vec<_> = growing(0, 2_000)
            .into_iter()
            .map(|(k, c, t)| (k, c, t / 2))
            .collect();
        assert_eq!(judge(&map_after(&early, 2_000), WINDOW, &thresholds), None);
        // Too little growth.
        assert_eq!(
            judge(&map_after(&growing(0, 10), 10), WINDOW, &thresholds),
            None
        );
        // Balanced: one delete is enough to show entries are released.
        let mut balanced = growing(0, 2_000);
        balanced.push((kind::DELETE, 2_000, WINDOW.end_ns - 1));
        assert_eq!(
            judge(&map_after(&balanced, 1_999), WINDOW, &thresholds),
            None
        );
        // Cleared maps get no verdict.
        let mut cleared = growing(0, 2_000);
        cleared.push((kind::CLEAR, 2_000, WINDOW.end_ns - 2));
        cleared.push((kind::ASSIGN, 0, WINDOW.end_ns - 1));
        assert_eq!(judge(&map_after(&cleared, 1), WINDOW, &thresholds), None);
    }

    #[test]
    fn a_map_emptied_by_deletes_retains_its_capacity() {
        let mut operations = growing(0, 2_000);
        operations.extend((0..1_995).map(|i| (kind::DELETE, 2_000 - i, WINDOW.end_ns - 1)));
        let map = map_after(&operations, 5);
        assert_eq!((map.peak, map.live), (2_000, 5));
        assert_eq!(
            judge(&map, WINDOW, &Thresholds::default()),
            Some(Verdict::RetainsCapacity)
        );
    }

    #[test]
    fn estimates_follow_each_implementation_growth_rule() {
        let classic = Storage {
            bucket_bytes: 272,
            slots_per_bucket: 8,
        };
        let swiss = Storage {
            bucket_bytes: 136,
            slots_per_bucket: 8,
        };
        use MapImplementation::{Classic, Swiss};
        assert_eq!(estimate_bytes(Classic, classic, 0, 0), Some(48 + 272));
        assert_eq!(estimate_bytes(Classic, classic, 8, 0), Some(48 + 272));
        // 100k entries: 2^14 buckets (6.5 × 16384 = 106496).
        assert_eq!(
            estimate_bytes(Classic, classic, 100_000, 0),
            Some(48 + 16_384 * 272)
        );
        // A header that says B = 5 beats the count.
        assert_eq!(estimate_bytes(Classic, classic, 3, 5), Some(48 + 32 * 272));
        assert_eq!(estimate_bytes(Swiss, swiss, 0, 0), Some(48));
        assert_eq!(estimate_bytes(Swiss, swiss, 8, 0), Some(48 + 136));
        // 9 entries need 11 slots at 7/8 load: 16 slots, 2 groups.
        assert_eq!(estimate_bytes(Swiss, swiss, 9, 0), Some(48 + 2 * 136));
        // 100k entries: 112 tables of 896 → 128 tables × 1024 slots / 8.
        assert_eq!(
            estimate_bytes(Swiss, swiss, 100_000, 0),
            Some(48 + 128 * 128 * 136)
        );
    }

    #[test]
    fn storage_no_go_map_can_have_is_unknown_not_huge() {
        use MapImplementation::{Classic, Swiss};
        let classic = Storage {
            bucket_bytes: 144,
            slots_per_bucket: 8,
        };
        // A header whose `B` no real map reaches (a torn or foreign read).
        assert_eq!(estimate_bytes(Classic, classic, 3, 62), None);
        assert_eq!(estimate_bytes(Classic, classic, 3, 255), None);
        // A count no real map reaches.
        assert_eq!(estimate_bytes(Classic, classic, u64::MAX, 0), None);
        assert_eq!(estimate_bytes(Swiss, classic, u64::MAX, 0), None);
        assert_eq!(estimate_bytes(Swiss, classic, u64::MAX / 2, 0), None);
        // A bucket size no type descriptor of a map holds.
        let foreign = Storage {
            bucket_bytes: u64::MAX,
            slots_per_bucket: 8,
        };
        assert_eq!(estimate_bytes(Classic, foreign, 1, 0), None);
        assert_eq!(estimate_bytes(Swiss, foreign, 1, 0), None);
        let empty = Storage {
            bucket_bytes: 0,
            slots_per_bucket: 0,
        };
        assert_eq!(estimate_bytes(Swiss, empty, 1_000, 0), None);
        // Zero-size keys and elements: buckets of control words only, still counted.
        let zero_sized = Storage {
            bucket_bytes: 16,
            slots_per_bucket: 8,
        };
        assert_eq!(estimate_bytes(Classic, zero_sized, 8, 0), Some(48 + 16));
    }
}
