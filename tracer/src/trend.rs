//! A map's entry count over time, in constant memory, and the trend read from it.
//!
//! A leak is a map whose entries keep piling up, whatever else it does: it may delete (an
//! eviction that cannot keep up), overwrite, or start big. Totals alone cannot tell that from
//! a map that filled once at start-up, or one that grows and is cleared in turn; the shape of
//! its count over the window can. So every map keeps a [`Series`]: [`BUCKETS`] time buckets,
//! each holding the count at its end. When the map outlives them, neighbouring buckets merge
//! and the width doubles, so the memory per map is the same (`size_of::<Series>()`, 152
//! bytes) for a trace of a second or of a week, and the window is always covered by
//! `BUCKETS / 2` to `BUCKETS` buckets.
//!
//! [`assess`] cuts a window into equal sub-intervals and measures, from the count at their
//! boundaries, how many grew, how much of the growth the largest one carries, and how much
//! of it later sub-intervals gave back; [`crate::verdict::judge`] decides from that.

use serde::Serialize;

/// Time buckets per map. Any window is covered by at least half of them, so a window cut
/// into up to `BUCKETS / 2` sub-intervals has at least one bucket boundary in each.
pub const BUCKETS: usize = 32;

/// Width of a bucket at a map's first sighting; it doubles as the map lives on.
const FIRST_WIDTH_NS: u64 = 1_000_000;

/// The entry count of one map over its active life, at a resolution that coarsens as it
/// lives.
///
/// The series starts at the map's first change of count, not at its creation: an empty map
/// made ahead of its first use (at start-up, or before a phase of the program) has no trend
/// until it is used, exactly like a map first seen already in use, whose series starts at
/// its first operation. So an idle stretch before first use neither dilutes the trend nor
/// costs resolution.
///
/// Counts are kept as `u32`, saturating: a Go map holding four billion entries would need
/// hundreds of GiB, and the exact counts live in [`crate::model::MapRecord`] anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    /// Monotonic time of the first sighting, then of the first change: the start of bucket 0.
    origin_ns: u64,
    /// Width of every bucket.
    width_ns: u64,
    /// Count at the first sighting.
    first: u32,
    /// Buckets written so far; those before the last one written carry the count forward.
    /// 0 until the count first changes.
    used: u8,
    /// Count at the end of each bucket (the last one seen in it).
    buckets: [u32; BUCKETS],
}

impl Series {
    /// A series starting at `origin_ns` with `count` entries.
    pub fn new(origin_ns: u64, count: u64) -> Series {
        Series {
            origin_ns,
            width_ns: FIRST_WIDTH_NS,
            first: clamp(count),
            used: 0,
            buckets: [0; BUCKETS],
        }
    }

    /// The map held `count` entries from `at_ns` on. Times are expected in order; an
    /// earlier one counts in the latest bucket. The first change of count restarts the
    /// series there.
    pub fn record(&mut self, at_ns: u64, count: u64) {
        if self.used == 0 {
            if clamp(count) == self.first {
                return;
            }
            self.origin_ns = at_ns;
        }
        let mut index = self.index(at_ns);
        while index >= BUCKETS as u64 {
            self.coarsen();
            index = self.index(at_ns);
        }
        let latest = usize::from(self.used).saturating_sub(1);
        let index = (index as usize).max(latest);
        let carried = self.last();
        for bucket in &mut self.buckets[usize::from(self.used).min(index)..index] {
            *bucket = carried;
        }
        self.buckets[index] = clamp(count);
        self.used = (index + 1) as u8;
    }

    /// The latest count.
    pub fn last(&self) -> u32 {
        match self.used {
            0 => self.first,
            used => self.buckets[usize::from(used) - 1],
        }
    }

    /// The count at the latest bucket boundary at or before `at_ns` (the first count before
    /// the first boundary, the latest count after the last bucket written).
    pub fn count_at(&self, at_ns: u64) -> u32 {
        match self.index(at_ns) {
            0 => self.first,
            ended if ended > u64::from(self.used) => self.last(),
            ended => self.buckets[ended as usize - 1],
        }
    }

    /// When the map's count first changed (when it was first seen, until then).
    pub fn origin_ns(&self) -> u64 {
        self.origin_ns
    }

    /// The current bucket width: the resolution of [`Series::count_at`].
    pub fn width_ns(&self) -> u64 {
        self.width_ns
    }

    fn index(&self, at_ns: u64) -> u64 {
        at_ns.saturating_sub(self.origin_ns) / self.width_ns
    }

    /// Merges neighbouring buckets and doubles the width.
    fn coarsen(&mut self) {
        let used = usize::from(self.used);
        for merged in 0..BUCKETS / 2 {
            let later = 2 * merged + 1;
            self.buckets[merged] = if later < used {
                self.buckets[later]
            } else {
                self.buckets[(later - 1).min(used.saturating_sub(1))]
            };
        }
        self.buckets[BUCKETS / 2..].fill(0);
        self.used = used.div_ceil(2) as u8;
        self.width_ns = self.width_ns.saturating_mul(2);
    }
}

fn clamp(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// How much evidence stands behind a trend: the window it was read over, the sub-intervals
/// it was cut into, and how many of them grew.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Confidence {
    /// Seconds of the map's active life inside the trace window: from its first change of
    /// count (or its first sighting, if it never changed) to the end or its release.
    pub window_s: f64,
    /// Equal sub-intervals the window was cut into.
    pub intervals: u32,
    /// Of those, the ones at whose end the map held more entries than at their start.
    pub rising: u32,
}

/// The shape of a map's count over a window, measured at the boundaries of equal
/// sub-intervals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assessment {
    /// Window, sub-intervals and rising ones.
    pub confidence: Confidence,
    /// Entries at the end of the window minus entries at its start.
    pub net_growth: i64,
    /// Sum of the sub-intervals' gains (rising ones only).
    pub gains: u64,
    /// Sum of the sub-intervals' losses (falling ones only, as a positive number).
    pub losses: u64,
    /// The largest gain of a single sub-interval.
    pub largest_gain: u64,
    /// Entries gained over the last `recent_fraction` of the window (negative: lost).
    pub recent_growth: i64,
}

impl Assessment {
    /// Net entries gained per second of the window (negative when it shrank).
    pub fn growth_per_s(&self) -> f64 {
        if self.confidence.window_s > 0.0 {
            self.net_growth as f64 / self.confidence.window_s
        } else {
            0.0
        }
    }

    /// Entries the map would gain in an hour at [`Assessment::growth_per_s`].
    pub fn projected_growth_1h(&self) -> f64 {
        self.growth_per_s() * 3600.0
    }
}

/// Reads the trend of `series` between `from_ns` and `to_ns`, cut into `intervals` equal
/// sub-intervals (at least one, at most `BUCKETS / 2`), with "recent" meaning the last
/// `recent_fraction` of the window. The window starts no earlier than the series (the map's
/// first change of count). `None` when the window is empty.
pub fn assess(
    series: &Series,
    from_ns: u64,
    to_ns: u64,
    intervals: u32,
    recent_fraction: f64,
) -> Option<Assessment> {
    let from_ns = from_ns.max(series.origin_ns());
    let span = to_ns.checked_sub(from_ns).filter(|&span| span > 0)?;
    let intervals = intervals.clamp(1, BUCKETS as u32 / 2);
    let at = |boundary: u32| -> i64 {
        if boundary == intervals {
            i64::from(series.last())
        } else {
            let offset = (span as u128 * u128::from(boundary) / u128::from(intervals)) as u64;
            i64::from(series.count_at(from_ns + offset))
        }
    };
    let (mut rising, mut gains, mut losses, mut largest_gain) = (0, 0u64, 0u64, 0u64);
    for boundary in 0..intervals {
        let change = at(boundary + 1) - at(boundary);
        if change > 0 {
            rising += 1;
            gains += change as u64;
            largest_gain = largest_gain.max(change as u64);
        } else {
            losses += change.unsigned_abs();
        }
    }
    let recent_from = to_ns.saturating_sub((span as f64 * recent_fraction.clamp(0.0, 1.0)) as u64);
    let end = i64::from(series.last());
    Some(Assessment {
        confidence: Confidence {
            window_s: span as f64 / 1e9,
            intervals,
            rising,
        },
        net_growth: end - at(0),
        gains,
        losses,
        largest_gain,
        recent_growth: end - i64::from(series.count_at(recent_from.max(from_ns))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SECOND: u64 = 1_000 * MS;

    /// A series of an empty map fed `count(t)` every `step_ns` from 0 until `end_ns`.
    fn sampled(end_ns: u64, step_ns: u64, count: impl Fn(u64) -> u64) -> Series {
        let mut series = Series::new(0, 0);
        for at in (0..end_ns).step_by(step_ns as usize) {
            series.record(at, count(at));
        }
        series
    }

    #[test]
    fn memory_per_map_is_constant() {
        assert_eq!(std::mem::size_of::<Series>(), 152);
        // An hour of one change per millisecond still fits the same buckets.
        let series = sampled(3_600 * SECOND, MS, |at| at / MS + 1);
        assert!(series.width_ns() >= 3_600 * SECOND / BUCKETS as u64);
        assert_eq!(series.last(), 3_600_000);
    }

    #[test]
    fn coarsening_keeps_the_count_at_every_remaining_boundary() {
        let series = sampled(10 * SECOND, 10 * MS, |at| at / (10 * MS) + 1);
        let width = series.width_ns();
        assert_eq!(width, 512 * MS);
        for boundary in 1..=19 {
            assert_eq!(
                series.count_at(boundary * width),
                ((boundary * width - 1) / (10 * MS) + 1) as u32,
                "boundary {boundary}"
            );
        }
        assert_eq!(series.count_at(0), 0);
        assert_eq!(series.count_at(100 * SECOND), 1_000);
    }

    #[test]
    fn quiet_stretches_carry_the_count_forward() {
        let mut series = Series::new(0, 7);
        series.record(2 * MS, 8);
        series.record(20 * MS, 9);
        assert_eq!(series.count_at(MS), 7);
        assert_eq!(series.count_at(10 * MS), 8);
        assert_eq!(series.count_at(21 * MS), 9);
        // Going back in time counts in the latest bucket.
        series.record(5 * MS, 4);
        assert_eq!((series.count_at(10 * MS), series.last()), (8, 4));
    }

    #[test]
    fn the_series_starts_at_the_first_change() {
        let mut series = Series::new(0, 5);
        series.record(SECOND, 5); // an overwrite: no change yet
        series.record(4 * SECOND, 6);
        series.record(4 * SECOND + 100 * MS, 7);
        assert_eq!(series.origin_ns(), 4 * SECOND);
        assert_eq!(series.width_ns(), 4 * MS);
        assert_eq!(series.count_at(3 * SECOND), 5);
        assert_eq!(series.count_at(4 * SECOND + 50 * MS), 6);
        let trend = assess(&series, 0, 5 * SECOND, 10, 0.25).unwrap();
        assert_eq!(trend.confidence.window_s, 1.0);
        assert_eq!(trend.net_growth, 2);
    }

    #[test]
    fn huge_counts_saturate() {
        let series = sampled(SECOND, MS, |_| u64::MAX);
        assert_eq!(series.last(), u32::MAX);
    }

    #[test]
    fn a_steady_leak_rises_in_every_interval() {
        let series = sampled(5 * SECOND, 50 * MS, |at| at / (50 * MS) + 1);
        let trend = assess(&series, 0, 5 * SECOND, 10, 0.25).unwrap();
        assert_eq!(trend.confidence.intervals, 10);
        assert_eq!(trend.confidence.rising, 10);
        assert_eq!(trend.net_growth, 100);
        assert_eq!(trend.losses, 0);
        assert!(trend.recent_growth > 0);
        assert!((trend.growth_per_s() - 20.0).abs() < 1e-9);
        assert!((trend.projected_growth_1h() - 72_000.0).abs() < 1e-6);
    }

    #[test]
    fn extreme_times_neither_panic_nor_loop() {
        let mut series = Series::new(u64::MAX - 5, 1);
        series.record(u64::MAX, 2);
        series.record(0, 3);
        let mut late = Series::new(0, 1);
        late.record(1, 2);
        late.record(u64::MAX, 3);
        assert_eq!(late.last(), 3);
        let trend = assess(&late, 0, u64::MAX, 16, 1.0).unwrap();
        assert_eq!(trend.net_growth, 2);
        assert_eq!(assess(&series, 0, u64::MAX, 10, 0.25), None);
        assert!(assess(&late, 0, u64::MAX, 0, f64::NAN).is_some());
    }

    #[test]
    fn a_window_before_or_without_the_map_has_no_trend() {
        let series = Series::new(SECOND, 3);
        assert_eq!(assess(&series, 0, SECOND, 10, 0.25), None);
        assert_eq!(assess(&series, 0, SECOND / 2, 10, 0.25), None);
        let trend = assess(&series, 0, 2 * SECOND, 10, 0.25).unwrap();
        assert_eq!(trend.confidence.window_s, 1.0);
        assert_eq!(trend.net_growth, 0);
    }
}
