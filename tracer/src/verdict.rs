//! Which maps look like leaks, and how much memory a map holds.
//!
//! Pure judgement over a finished [`MapRecord`]: the thresholds are the user's, the facts are
//! the model's, and nothing here reads the target. The two verdicts answer the two questions
//! a capacity review asks of a map:
//! - `never-released`: does it keep growing? Its net entry count rose steadily across the
//!   window (in most sub-intervals, not in one burst, giving little back, and still at the
//!   end) and the map itself was not freed: a cache without eviction, or with an eviction
//!   that cannot keep up (see [`crate::trend`]).
//! - `retains-capacity`: did it shrink far below its peak? Go never shrinks a map's buckets
//!   (classic) or tables (swiss) on delete, so it still holds the memory of its peak.
//!
//! Maps whose inserts and deletes balance, maps that are cleared, maps that filled once and
//! then only overwrite, and maps that stopped growing get no verdict.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::MapRecord;
use crate::plan::MapImplementation;
use crate::trend::{self, Assessment};

/// When a map earns a verdict; every field is a command-line flag. Recordings made before a
/// field existed replay with its default.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    /// `never-released` needs at least this many more entries at the end of the window than
    /// at its start. The default, two per sub-interval, keeps a trend from resting on single
    /// entries, which the series' bucket resolution can shift into a neighbouring interval.
    pub leak_min_growth: u64,
    /// `never-released` needs growth within this last fraction of the window: a map that
    /// grew early and then stopped is not growing any more.
    pub leak_recent_fraction: f64,
    /// The window is cut into this many equal sub-intervals to read the trend (1 to
    /// [`crate::trend::BUCKETS`] / 2).
    pub leak_intervals: u32,
    /// `never-released` needs growth in at least this fraction of the sub-intervals. At the
    /// default, 8 of 10: a count that moves up or down at random does that in 5.5 % of
    /// windows; a steady leak does it every time.
    pub leak_min_rising: f64,
    /// `never-released` needs every sub-interval's gain to be at most this fraction of the
    /// net growth: above one half, a single sub-interval carries most of the growth, which is
    /// a one-off fill (a warm-up, a bulk load), not a trend.
    pub leak_max_share: f64,
    /// `never-released` needs the sub-intervals that shrank to give back at most this
    /// fraction of what the others gained: a map that is cleared or drained as often as it
    /// fills gives most of it back (at one half and above, more went out than stayed).
    pub leak_max_giveback: f64,
    /// `never-released` needs the map to be seen for at least this many seconds of the
    /// window: a map filled by one request or batch just as the trace ends grows steadily
    /// for a moment, which says nothing about a leak.
    pub leak_min_window_s: f64,
    /// `retains-capacity` needs a peak of at least this many entries.
    pub retain_min_peak: u64,
    /// `retains-capacity` needs the live count at or below this fraction of the peak.
    pub retain_max_ratio: f64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            leak_min_growth: 20,
            leak_recent_fraction: 0.25,
            leak_intervals: 10,
            leak_min_rising: 0.8,
            leak_max_share: 0.5,
            leak_max_giveback: 0.5,
            leak_min_window_s: 1.0,
            retain_min_peak: 1_000,
            retain_max_ratio: 0.25,
        }
    }
}

/// What a map's behaviour says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Grew steadily through the window, giving back less than it gained: the leak flag.
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

/// The trend of a map's entry count over its life inside the window (up to its release),
/// cut as `thresholds` say; `None` when it has no time in the window.
pub fn trend(record: &MapRecord, window: Window, thresholds: &Thresholds) -> Option<Assessment> {
    let to_ns = record
        .released_ns
        .map_or(window.end_ns, |released| released.min(window.end_ns));
    trend::assess(
        &record.series,
        window.start_ns,
        to_ns,
        thresholds.leak_intervals,
        thresholds.leak_recent_fraction,
    )
}

/// Whether a trend is a leak: enough net growth, over a long enough window, rising in most
/// sub-intervals, not carried by one of them, not given back, and still rising at the end.
pub fn is_leak(trend: &Assessment, thresholds: &Thresholds) -> bool {
    let confidence = trend.confidence;
    let net = trend.net_growth.max(0) as f64;
    trend.net_growth > 0
        && trend.net_growth.unsigned_abs() >= thresholds.leak_min_growth
        && confidence.window_s >= thresholds.leak_min_window_s
        && f64::from(confidence.rising)
            >= (thresholds.leak_min_rising * f64::from(confidence.intervals)).ceil()
        && trend.largest_gain as f64 <= thresholds.leak_max_share * net
        && trend.losses as f64 <= thresholds.leak_max_giveback * trend.gains as f64
        && trend.recent_growth > 0
}

/// The verdict on one map, if any.
pub fn judge(record: &MapRecord, window: Window, thresholds: &Thresholds) -> Option<Verdict> {
    if record.is_released() {
        return None;
    }
    if record.idle {
        return judge_idle(record, thresholds);
    }
    if trend(record, window, thresholds).is_some_and(|trend| is_leak(&trend, thresholds)) {
        return Some(Verdict::NeverReleased);
    }
    let shrunk = (record.live as f64) <= record.peak as f64 * thresholds.retain_max_ratio;
    let deleted = record.deletes > 0 || record.unseen_deletes > 0;
    if record.peak >= thresholds.retain_min_peak && deleted && shrunk {
        return Some(Verdict::RetainsCapacity);
    }
    None
}

/// The verdict on a map the inventory found and no operation touched since: its header is
/// all there is. Its peak is what its capacity says it once held (see
/// [`crate::memory::inventory::Capacity::once_held`]), judged with the same thresholds as a
/// map seen shrinking: `retains-capacity` when that peak is at least `retain_min_peak` and
/// its entries are at most `retain_max_ratio` of it.
pub fn judge_idle(record: &MapRecord, thresholds: &Thresholds) -> Option<Verdict> {
    let once_held = record.capacity?.once_held();
    let shrunk = (record.live as f64) <= once_held as f64 * thresholds.retain_max_ratio;
    (once_held >= thresholds.retain_min_peak && shrunk).then_some(Verdict::RetainsCapacity)
}

/// Bytes the storage of `capacity` takes, for a map type with `storage`: its buckets or
/// groups and its header, counted as [`estimate_bytes`] counts them (a swiss directory and
/// table headers, 8 and 32 bytes each, are left out like classic overflow buckets), so that
/// the two compare. `None` for a size no Go map can have.
pub fn capacity_bytes(
    storage: Storage,
    capacity: &crate::memory::inventory::Capacity,
) -> Option<u64> {
    if storage.bucket_bytes == 0 || storage.bucket_bytes > MAX_BUCKET_BYTES {
        return None;
    }
    capacity
        .buckets()
        .checked_mul(storage.bucket_bytes)?
        .checked_add(HEADER_BYTES)
        .filter(|&bytes| bytes <= MAX_ALLOC_BYTES)
}

/// Storage sizes are what the binary's type descriptor says ([`crate::inspect::Storage`]).
pub use crate::inspect::Storage;

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
                    folded: 0,
                })
                .unwrap();
        }
        model.freeze(WINDOW.end_ns);
        model.settle_with_read(0x00c0_0001_0000, [final_count, 7]);
        model.maps()[0].clone()
    }

    /// A map's operations, written as a script: each call adds one operation at a time,
    /// keeping the count the runtime would pass.
    struct Script {
        count: u64,
        operations: Vec<(u8, u64, u64)>,
    }

    impl Script {
        fn starting_with(count: u64) -> Script {
            Script {
                count,
                operations: Vec::new(),
            }
        }

        fn insert(&mut self, at: u64) {
            self.operations.push((kind::ASSIGN, self.count, at));
            self.count += 1;
        }

        fn overwrite(&mut self, at: u64) {
            self.operations.push((kind::ASSIGN, self.count, at));
        }

        fn delete(&mut self, at: u64) {
            self.operations.push((kind::DELETE, self.count, at));
            self.count -= 1;
        }

        fn clear(&mut self, at: u64) {
            self.operations.push((kind::CLEAR, self.count, at));
            self.count = 0;
        }

        /// Inserts every `step` ns from `from` up to (not including) `to`.
        fn insert_every(&mut self, step: u64, from: u64, to: u64) {
            for at in (from..to).step_by(step as usize) {
                self.insert(at);
            }
        }

        fn verdict(&self) -> Option<Verdict> {
            let map = map_after(&self.operations, self.count);
            judge(&map, WINDOW, &Thresholds::default())
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_slow_steady_leak_is_never_released() {
        // One entry every 50 ms for the whole window: 200 entries, far below the old 1000.
        let mut slow = Script::starting_with(0);
        slow.insert_every(50 * MS, 0, WINDOW.end_ns);
        assert_eq!(slow.verdict(), Some(Verdict::NeverReleased));
        // About 10 entries a second over 5 s is enough.
        let mut ten = Script::starting_with(0);
        ten.insert_every(100 * MS, 0, 5 * SECOND);
        let map = map_after(&ten.operations, ten.count);
        let window = Window {
            start_ns: 0,
            end_ns: 5 * SECOND,
        };
        assert_eq!(
            judge(&map, window, &Thresholds::default()),
            Some(Verdict::NeverReleased)
        );
        let trend = trend(&map, window, &Thresholds::default()).unwrap();
        assert_eq!(
            (trend.confidence.intervals, trend.confidence.rising),
            (10, 10)
        );
        assert!((trend.growth_per_s() - 10.0).abs() < 0.5, "{trend:?}");
        // Already big when tracing began: only the growth seen counts.
        let mut big = Script::starting_with(50_000);
        big.insert_every(50 * MS, 0, WINDOW.end_ns);
        assert_eq!(big.verdict(), Some(Verdict::NeverReleased));
    }

    #[test]
    fn a_map_idle_until_its_first_use_is_judged_from_there() {
        // Made at start-up, first used after 4 s, then leaking until the end.
        let mut idle = Script::starting_with(0);
        idle.operations.push((kind::CREATE, 0, 0));
        idle.insert_every(50 * MS, 4 * SECOND, WINDOW.end_ns);
        let map = map_after(&idle.operations, idle.count);
        assert_eq!(map.first_seen_ns, 0);
        assert_eq!(
            judge(&map, WINDOW, &Thresholds::default()),
            Some(Verdict::NeverReleased)
        );
        let trend = trend(&map, WINDOW, &Thresholds::default()).unwrap();
        assert_eq!(trend.confidence.window_s, 6.0);
        assert!((trend.growth_per_s() - 20.0).abs() < 1e-9, "{trend:?}");
    }

    #[test]
    fn deletes_that_do_not_keep_up_are_still_a_leak() {
        // Three in, two out, every 50 ms.
        let mut evicting = Script::starting_with(0);
        for step in 0..200 {
            let at = step * 50 * MS;
            for _ in 0..3 {
                evicting.insert(at);
            }
            evicting.delete(at + MS);
            evicting.delete(at + MS);
        }
        assert_eq!(evicting.verdict(), Some(Verdict::NeverReleased));
    }

    #[test]
    fn a_warm_up_then_overwrites_is_not_a_leak() {
        let mut warm = Script::starting_with(0);
        warm.insert_every(MS / 10, 0, 200 * MS);
        for step in 0..1_000 {
            warm.overwrite(200 * MS + step * 9 * MS);
        }
        assert_eq!(warm.count, 2_000);
        assert_eq!(warm.verdict(), None);
    }

    #[test]
    fn a_one_off_bulk_fill_is_not_a_trend() {
        // A slow trickle that alone would count, plus one bulk load of 1000 in the middle.
        let mut bulk = Script::starting_with(0);
        bulk.insert_every(50 * MS, 0, 5 * SECOND);
        bulk.insert_every(MS / 100, 5 * SECOND, 5 * SECOND + 10 * MS);
        bulk.insert_every(50 * MS, 5 * SECOND + 10 * MS, WINDOW.end_ns);
        assert_eq!(bulk.verdict(), None);
    }

    #[test]
    fn growth_that_stopped_is_not_a_leak() {
        let mut stopped = Script::starting_with(0);
        stopped.insert_every(10 * MS, 0, WINDOW.end_ns / 2);
        assert_eq!(stopped.verdict(), None);
        // Grew in 7 of 10 sub-intervals, none of them in the last quarter of the window.
        let mut late = Script::starting_with(0);
        late.insert_every(10 * MS, 0, 7 * SECOND);
        assert_eq!(late.verdict(), None);
    }

    #[test]
    fn balanced_cleared_and_small_maps_are_not_leaks() {
        // Balanced: every insert is matched by a delete.
        let mut balanced = Script::starting_with(100);
        for step in 0..1_000 {
            balanced.insert(step * 10 * MS);
            balanced.delete(step * 10 * MS + MS);
        }
        assert_eq!(balanced.verdict(), None);
        // Cleared every 1.3 s, growing in between.
        let mut cleared = Script::starting_with(0);
        let mut at = 0;
        while at < WINDOW.end_ns {
            if at % (1_300 * MS) == 0 && at > 0 {
                cleared.clear(at);
            }
            cleared.insert(at);
            at += 10 * MS;
        }
        assert_eq!(cleared.verdict(), None);
        // Cleared once, at the end.
        let mut emptied = Script::starting_with(0);
        emptied.insert_every(10 * MS, 0, WINDOW.end_ns - 2 * MS);
        emptied.clear(WINDOW.end_ns - 2 * MS);
        emptied.insert(WINDOW.end_ns - MS);
        assert_eq!(emptied.verdict(), None);
        // Steady but tiny: ten entries in ten seconds.
        let mut tiny = Script::starting_with(0);
        tiny.insert_every(SECOND, 0, WINDOW.end_ns);
        assert_eq!(tiny.verdict(), None);
    }

    #[test]
    fn a_map_filled_just_before_the_end_has_too_short_a_window() {
        let mut late = Script::starting_with(0);
        late.insert_every(MS, WINDOW.end_ns - 500 * MS, WINDOW.end_ns);
        let map = map_after(&late.operations, late.count);
        assert_eq!(map.first_seen_ns, WINDOW.end_ns - 500 * MS);
        assert_eq!(judge(&map, WINDOW, &Thresholds::default()), None);
        let thresholds = Thresholds {
            leak_min_window_s: 0.1,
            ..Thresholds::default()
        };
        assert_eq!(
            judge(&map, WINDOW, &thresholds),
            Some(Verdict::NeverReleased)
        );
    }

    #[test]
    fn a_map_emptied_by_deletes_retains_its_capacity() {
        let mut drained = Script::starting_with(0);
        drained.insert_every(WINDOW.end_ns / 2_000, 0, WINDOW.end_ns);
        for _ in 0..1_995 {
            drained.delete(WINDOW.end_ns - 1);
        }
        let map = map_after(&drained.operations, drained.count);
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
