//! `--mode sampled`: a cost a busy service can afford for hours.
//!
//! In exact mode every probe traps on every map call for the whole trace. In sampled mode
//! every probe is attached only for a short discovery window (`--window`) every `--period`;
//! between windows no uprobe is attached at all, and the headers of every known map are read
//! from the target's memory every `--poll` instead ([`read_headers`]). What each source gives:
//!
//! - **Exact**: a map's `len` at each poll (its header's count), its capacity (classic `B`,
//!   swiss directory and tables), and that it was dropped (its hash seed changed to that of
//!   another map at its address, or the heap freed it: [`crate::memory::release`]). The
//!   trend verdicts read the polled series, so a steady leak is found within two windows.
//!   Counts of operations (inserts, overwrites, deletes, clears, growths) are exact *for the
//!   windows*: every window is armed like the start of an exact trace (each map's first event
//!   in a window is its baseline), so `unexplained == 0` holds.
//! - **Estimated**: how many maps each site creates over the whole trace: creations are only
//!   seen in windows, so their counts are scaled by the time traced over the time observed
//!   (about `period / window`). Every output labels them (`mode`, `sampling`,
//!   `maps_created_estimated`).
//!
//! Maps created and dropped between two windows are never seen; a map first used between
//! windows is seen in the next one. A map emptied (the runtime draws a new seed) and filled
//! again between two polls goes on as the same map; a map freed and its memory handed to a
//! new map between two checks of the heap goes on as the same map too.
//!
//! This module holds the schedule, the recorded poll input and the labels; the window loop
//! is in `session/sampled.rs`. Memory: one [`Polled`] (48 bytes) per known map during a poll.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inspect::ReadMemory;
use crate::memory::inventory::{self, Capacity};
use crate::pipeline::Setup;
use crate::plan::MapImplementation;
use crate::report::Report;
use crate::verdict::Window;

/// Headers read per batch; the event loop drains the ring buffer between batches.
pub const BATCH: usize = 512;

/// Which mode produced a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every probe on every map call for the whole trace: every number is exact.
    #[default]
    Exact,
    /// Discovery windows and polled headers (see the module documentation).
    Sampled,
}

/// When the windows and polls happen; recorded in the trace's setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Length of a discovery window, in ms.
    pub window_ms: u64,
    /// From one window's start to the next, in ms.
    pub period_ms: u64,
    /// Between two polls, in ms.
    pub poll_ms: u64,
}

/// Why a schedule cannot be followed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// A zero window, period or poll.
    #[error("--window, --period and --poll must be at least 1 ms")]
    Zero,
    /// Windows that would overlap.
    #[error("--period ({period_ms} ms) must be longer than --window ({window_ms} ms)")]
    Overlap {
        /// The window.
        window_ms: u64,
        /// The period.
        period_ms: u64,
    },
}

impl Schedule {
    /// Checks and converts the command-line durations.
    pub fn new(
        window: Duration,
        period: Duration,
        poll: Duration,
    ) -> Result<Schedule, ScheduleError> {
        let ms = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let (window_ms, period_ms, poll_ms) = (ms(window), ms(period), ms(poll));
        if window_ms == 0 || period_ms == 0 || poll_ms == 0 {
            return Err(ScheduleError::Zero);
        }
        if period_ms <= window_ms {
            return Err(ScheduleError::Overlap {
                window_ms,
                period_ms,
            });
        }
        Ok(Schedule {
            window_ms,
            period_ms,
            poll_ms,
        })
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    /// The time between polls.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

/// One map's header as a poll read it: a recorded pipeline input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Polled {
    /// The map's address.
    pub addr: u64,
    /// Its header's count and seed word; `None` when the memory could not be read.
    pub words: Option<[u64; 2]>,
    /// Its capacity, when its storage could be read consistently.
    pub capacity: Option<Capacity>,
}

/// Reads the headers of the maps at `addrs` from `memory` (see
/// [`inventory::read_header`]); the target keeps running.
pub fn read_headers(
    memory: &impl ReadMemory,
    addrs: &[u64],
    implementation: MapImplementation,
) -> Vec<Polled> {
    addrs
        .iter()
        .map(
            |&addr| match inventory::read_header(memory, addr, implementation) {
                Some((words, capacity)) => Polled {
                    addr,
                    words: Some(words),
                    capacity,
                },
                None => Polled {
                    addr,
                    words: None,
                    capacity: None,
                },
            },
        )
        .collect()
}

/// What happened so far in a sampled trace, rebuilt from recorded notes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Windows opened.
    pub windows: u64,
    /// Time the probes were attached and counting, summed over windows (ns).
    pub observed_ns: u64,
    /// Polls applied.
    pub polls: u64,
    /// When the window now open was armed.
    open_since: Option<u64>,
    /// Slowest attach of all probes at a window's start (ms).
    pub attach_ms_max: f64,
    /// Slowest detach of all probes after a window (ms), done off the event loop.
    pub detach_ms_max: f64,
    /// Time of the last poll (monotonic ns).
    pub last_poll_ns: Option<u64>,
    /// Slowest poll (ms), with the ring buffer drained between its batches.
    pub poll_ms_max: f64,
    /// Most maps read by one poll.
    pub polled_maps_max: u64,
}

impl Tally {
    /// A window was armed at `armed_ns`, its probes having taken `attach_ms` to attach.
    pub fn open(&mut self, armed_ns: u64, attach_ms: f64) {
        self.close(armed_ns);
        self.windows += 1;
        self.open_since = Some(armed_ns);
        self.attach_ms_max = self.attach_ms_max.max(attach_ms);
    }

    /// The window open (if any) ended at `end_ns`.
    pub fn close(&mut self, end_ns: u64) {
        if let Some(since) = self.open_since.take() {
            self.observed_ns += end_ns.saturating_sub(since);
        }
    }

    /// The probes of the last window took `detach_ms` to go.
    pub fn detached(&mut self, detach_ms: f64) {
        self.detach_ms_max = self.detach_ms_max.max(detach_ms);
    }

    /// A poll of `maps` headers, which took `took_ms`, was applied at `at_ns`.
    pub fn polled(&mut self, at_ns: u64, maps: usize, took_ms: f64) {
        self.polls += 1;
        self.last_poll_ns = Some(at_ns);
        self.poll_ms_max = self.poll_ms_max.max(took_ms);
        self.polled_maps_max = self.polled_maps_max.max(maps as u64);
    }

    /// Time observed so far, counting the open window up to `now_ns`.
    fn observed_until(&self, now_ns: u64) -> u64 {
        self.observed_ns
            + self
                .open_since
                .map_or(0, |since| now_ns.saturating_sub(since))
    }
}

/// How a sampled report was made, and how to read its numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SamplingReport {
    /// `--window`, in seconds.
    pub window_s: f64,
    /// `--period`, in seconds.
    pub period_s: f64,
    /// `--poll`, in seconds.
    pub poll_s: f64,
    /// Discovery windows opened.
    pub windows: u64,
    /// Seconds the probes were attached and counting, over all windows.
    pub observed_s: f64,
    /// Polls of the known maps' headers.
    pub polls: u64,
    /// Seconds from the trace's start to its last poll.
    pub last_poll_s: Option<f64>,
    /// What every `*_estimated` number was multiplied by: the time traced over the time
    /// observed.
    pub scale: f64,
    /// Slowest attach of every probe at a window's start, in ms (the first window's probes
    /// are the trace's own, attached before it starts, and not counted).
    pub attach_ms_max: f64,
    /// Slowest detach of every probe after a window, in ms (off the event loop).
    pub detach_ms_max: f64,
    /// How the windows' probes are linked: `grouped: …` (one uprobe-multi link per
    /// program, removed in one wait), or `per site` with why grouped links were not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_links: Option<String>,
    /// Slowest poll, in ms (on the event loop, draining between batches).
    pub poll_ms_max: f64,
    /// Most maps one poll read.
    pub polled_maps_max: u64,
    /// Which numbers are exact.
    pub exact: &'static str,
    /// Which numbers are estimated.
    pub estimated: &'static str,
}

/// What the report says is exact in sampled mode.
pub const EXACT: &str = "live and peak entries at each poll, capacity, releases, verdicts \
                         from the polled series; operation counts within windows";
/// What the report says is estimated in sampled mode.
pub const ESTIMATED: &str = "sites[].maps_created_estimated: creations seen in windows, \
                             scaled by the time traced over the time observed";

/// Marks `report` (built for `window` of a trace set up as `setup` says) as made in sampled
/// mode, when it was: the mode, how it sampled, and the scaled creation counts of every site.
pub fn label(report: &mut Report, setup: &Setup, tally: &Tally, window: Window) {
    let Some(schedule) = &setup.sampling else {
        return;
    };
    let Window { start_ns, end_ns } = window;
    let traced_ns = end_ns.saturating_sub(start_ns);
    let observed_ns = tally.observed_until(end_ns).min(traced_ns);
    let scale = if observed_ns == 0 {
        1.0
    } else {
        traced_ns as f64 / observed_ns as f64
    };
    report.mode = Mode::Sampled;
    report.sampling = Some(SamplingReport {
        window_s: schedule.window_ms as f64 / 1e3,
        period_s: schedule.period_ms as f64 / 1e3,
        poll_s: schedule.poll_ms as f64 / 1e3,
        windows: tally.windows,
        observed_s: observed_ns as f64 / 1e9,
        polls: tally.polls,
        last_poll_s: tally
            .last_poll_ns
            .map(|at| at.saturating_sub(start_ns) as f64 / 1e9),
        scale: (scale * 1e3).round() / 1e3,
        attach_ms_max: tally.attach_ms_max,
        detach_ms_max: tally.detach_ms_max,
        probe_links: setup.probe_links.clone(),
        poll_ms_max: tally.poll_ms_max,
        polled_maps_max: tally.polled_maps_max,
        exact: EXACT,
        estimated: ESTIMATED,
    });
    for site in &mut report.sites {
        site.maps_created_estimated = Some((site.maps_created as f64 * scale).round());
    }
}

/// The text report's line saying how a sampled report was made; `None` in exact mode.
pub fn text_line(report: &Report) -> Option<String> {
    let sampling = report.sampling.as_ref()?;
    Some(format!(
        "mode: sampled ({} windows of {} s every {} s, {:.1} s observed, {} polls every {} s): \
         live/peak entries, capacity, releases and verdicts are exact at each poll; maps \
         created per site are estimated (x{:.1})",
        sampling.windows,
        sampling.window_s,
        sampling.period_s,
        sampling.observed_s,
        sampling.polls,
        sampling.poll_s,
        sampling.scale,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Limits, Model};
    use tracer_common::kind;

    #[test]
    fn schedules_are_checked() {
        let ms = Duration::from_millis;
        assert!(Schedule::new(ms(200), ms(10_000), ms(1_000)).is_ok());
        assert_eq!(
            Schedule::new(ms(0), ms(10_000), ms(1_000)),
            Err(ScheduleError::Zero)
        );
        assert_eq!(
            Schedule::new(ms(500), ms(500), ms(1_000)),
            Err(ScheduleError::Overlap {
                window_ms: 500,
                period_ms: 500
            })
        );
    }

    #[test]
    fn the_tally_counts_only_armed_time() {
        let mut tally = Tally::default();
        tally.open(1_000, 3.0);
        tally.close(1_200);
        tally.close(5_000);
        tally.open(10_000, 5.0);
        assert_eq!(tally.windows, 2);
        assert_eq!(tally.observed_ns, 200);
        assert_eq!(tally.observed_until(10_050), 250);
        assert_eq!(tally.attach_ms_max, 5.0);
    }

    const M: u64 = 0x00c0_0001_0000;
    const SEED: u64 = 0x5eed;

    fn event(kind: u8, count: u64, seed: u64, ktime_ns: u64) -> tracer_common::MapEvent {
        tracer_common::MapEvent {
            ktime_ns,
            map: M,
            count,
            header_word: seed,
            map_type: 0,
            key_hash: 0,
            kind,
            flags: 0,
            folded: 0,
        }
    }

    fn polled(count: u64, seed: u64, slots: u64) -> Polled {
        Polled {
            addr: M,
            words: Some([count, seed]),
            capacity: Some(Capacity {
                slots,
                log2_buckets: None,
                directory_len: Some(0),
                tables: Some(1),
            }),
        }
    }

    fn model() -> Model {
        Model::new(MapImplementation::Swiss, Limits::default())
    }

    #[test]
    fn a_new_window_takes_each_maps_first_event_as_its_baseline() {
        let mut model = model();
        model.observe(&event(kind::ASSIGN, 0, SEED, 1)).unwrap();
        model.observe(&event(kind::ASSIGN, 1, SEED, 2)).unwrap();
        model.freeze(3);
        model.poll(4, &[polled(2, SEED, 8)]);
        // 48 entries came and went unseen between the windows.
        model.rearm(10);
        model.observe(&event(kind::ASSIGN, 50, SEED, 11)).unwrap();
        model.observe(&event(kind::DELETE, 51, SEED, 12)).unwrap();
        model.freeze(13);
        model.poll(14, &[polled(50, SEED, 64)]);
        let maps = model.maps();
        assert_eq!(maps.len(), 1);
        let map = maps[0];
        assert_eq!((map.unexplained, map.unsettled), (0, 0));
        assert_eq!(
            (map.inserts, map.deletes, map.live, map.peak),
            (3, 1, 50, 51)
        );
        assert_eq!(map.capacity.map(|capacity| capacity.slots), Some(64));
    }

    #[test]
    fn an_event_before_the_window_is_armed_does_not_count() {
        let mut model = model();
        model.observe(&event(kind::ASSIGN, 0, SEED, 1)).unwrap();
        model.freeze(2);
        model.poll(3, &[polled(1, SEED, 8)]);
        model.rearm(10);
        model.observe(&event(kind::ASSIGN, 7, SEED, 9)).unwrap();
        assert_eq!(model.before_arming(), 1);
        assert_eq!(model.maps()[0].live, 1);
    }

    #[test]
    fn polls_follow_a_map_emptied_or_refilled_and_release_what_is_no_map() {
        let mut model = model();
        model.observe(&event(kind::ASSIGN, 4, SEED, 1)).unwrap();
        model.freeze(2);
        // Emptied: the runtime drew a new seed.
        model.poll(3, &[polled(0, 0x77, 8)]);
        assert_eq!(model.live_maps().count(), 1);
        assert_eq!(model.maps()[0].live, 0);
        // Cleared and filled again between two polls: the same map goes on.
        model.poll(4, &[polled(5, 0x99, 8)]);
        let maps = model.maps();
        assert_eq!(maps.len(), 1);
        assert_eq!((maps[0].live, maps[0].seed()), (5, 0x99));
        // Zeroed memory (or more entries than slots) is no map: released.
        model.poll(5, &[polled(0, 0, 8)]);
        assert_eq!(model.live_maps().count(), 0);
        assert!(model.maps()[0].is_released());
    }

    #[test]
    fn a_map_made_before_its_seed_takes_the_first_seed_only_from_a_map() {
        let created = |model: &mut Model| {
            let mut creation = event(kind::CREATE, 0, 0, 1);
            creation.flags = tracer_common::FLAG_SEED_PENDING;
            model.observe(&creation).unwrap();
            model.freeze(2);
        };
        // Freed before any event showed its seed; its memory now holds a swiss group, whose
        // control bytes read as a count far above any capacity. Read with storage that
        // cannot be read, it says nothing; with storage, it is no map: released.
        let mut freed = model();
        created(&mut freed);
        let mut garbage = polled(0x8080_8080_8080_2e80, SEED, 8);
        garbage.capacity = None;
        freed.poll(3, &[garbage]);
        assert_eq!(freed.live_maps().count(), 1);
        assert_eq!(freed.maps()[0].live, 0);
        freed.poll(4, &[polled(0x8080_8080_8080_2e80, SEED, 8)]);
        assert_eq!(freed.live_maps().count(), 0);
        assert_eq!(freed.maps()[0].live, 0);
        // The same for a map whose seed is known, when the garbage kept its seed word.
        let mut known = model();
        known.observe(&event(kind::ASSIGN, 2, SEED, 1)).unwrap();
        known.freeze(2);
        let mut garbage = polled(0x8080_8080_8080_2e80, SEED, 8);
        garbage.capacity = None;
        known.poll(3, &[garbage]);
        known.poll(4, &[polled(0x8080_8080_8080_2e80, SEED, 8)]);
        assert_eq!(known.maps()[0].peak, 2);
        assert!(known.maps()[0].is_released());
        // Still a map: its first seed is taken.
        let mut kept = model();
        created(&mut kept);
        kept.poll(3, &[polled(3, SEED, 8)]);
        let maps = kept.maps();
        assert_eq!((maps[0].live, maps[0].seed()), (3, SEED as u32));
    }

    #[test]
    fn the_trace_end_does_not_reopen_a_window_that_ended() {
        let mut model = model();
        model.observe(&event(kind::ASSIGN, 5, SEED, 1)).unwrap();
        model.freeze(2);
        model.observe(&event(kind::ASSIGN, 6, SEED, 3)).unwrap();
        model.freeze(10);
        // Unseen operations happened between the two: this event only settles.
        model.observe(&event(kind::DELETE, 3, SEED, 4)).unwrap();
        let map = model.maps()[0];
        assert_eq!((map.inserts, map.deletes, map.live), (1, 0, 6));
        assert_eq!(map.unexplained, 0);
    }

    #[test]
    fn an_event_older_than_a_poll_is_already_in_it() {
        let mut model = model();
        model.observe(&event(kind::ASSIGN, 5, SEED, 1)).unwrap();
        model.freeze(20);
        model.poll(25, &[polled(7, SEED, 8)]);
        // From inside the window, committed after the poll, which read its effect already.
        model.observe(&event(kind::ASSIGN, 6, SEED, 15)).unwrap();
        let map = model.maps()[0];
        assert_eq!((map.live, map.unexplained), (7, 0));
    }

    #[test]
    fn a_poll_settles_the_last_operation_of_the_window() {
        let mut model = model();
        model.observe(&event(kind::ASSIGN, 5, SEED, 1)).unwrap();
        model.freeze(2);
        model.poll(3, &[polled(6, SEED, 8)]);
        let map = model.maps()[0];
        assert_eq!((map.inserts, map.live, map.unexplained), (1, 6, 0));
    }

    #[test]
    fn every_output_says_sampled_and_labels_estimates() {
        let mut report = crate::export::json::tests::empty_report();
        report.sites.push(crate::report::SiteReport {
            site: None,
            by: crate::report::SiteKind::Creation,
            maps_created: 3,
            maps_created_estimated: None,
            live_maps: 1,
            live_entries: 7,
            est_bytes: None,
            suspects: 0,
        });
        let schedule = Schedule::new(
            Duration::from_millis(200),
            Duration::from_secs(10),
            Duration::from_secs(1),
        )
        .unwrap();
        let mut tally = Tally::default();
        tally.open(0, 0.0);
        tally.close(200_000_000);
        tally.polled(1_000_000_000, 1, 0.5);
        let setup = crate::pipeline::Setup {
            sampling: Some(schedule),
            probe_links: Some("grouped: one uprobe-multi link per program".into()),
            ..crate::pipeline::tests::setup()
        };
        let window = Window {
            start_ns: 0,
            end_ns: 10_000_000_000,
        };
        label(&mut report, &setup, &tally, window);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["mode"], "sampled");
        assert_eq!(
            json["sampling"]["probe_links"],
            "grouped: one uprobe-multi link per program"
        );
        assert_eq!(json["sampling"]["scale"], 50.0);
        assert_eq!(json["sites"][0]["maps_created_estimated"], 150.0);
        assert_eq!(json["sites"][0]["maps_created"], 3);
        assert!(report.render_text(5).contains("mode: sampled"));
        let profile = crate::export::pprof::profile(&report, 0);
        let comments: Vec<&str> = profile
            .comment
            .iter()
            .map(|&index| profile.string_table[index as usize].as_str())
            .collect();
        assert!(comments[1].starts_with("mode: sampled"), "{comments:?}");
        let histograms = model().histograms(0);
        let metrics = crate::export::prometheus::encode(
            &crate::export::Snapshot {
                report: &report,
                histograms: &histograms,
                at_s: 1.0,
                last: false,
            },
            "/",
        );
        assert!(
            metrics.contains("gomaptrace_sampling_info{mode=\"sampled\""),
            "{metrics}"
        );
        assert!(
            metrics.contains("gomaptrace_maps_created_estimated{"),
            "{metrics}"
        );
        assert!(metrics.contains("} 150\n"), "{metrics}");
    }

    #[test]
    fn exact_reports_say_exact_and_carry_no_estimate() {
        let report = crate::export::json::tests::empty_report();
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["mode"], "exact");
        assert!(json.get("sampling").is_none());
        assert!(text_line(&report).is_none());
    }

    #[test]
    fn polls_read_headers_and_mark_unreadable_memory() {
        struct Memory;
        impl ReadMemory for Memory {
            fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
                (addr < 0x2000).then(|| {
                    let mut bytes = vec![0u8; len];
                    bytes[0] = 7;
                    bytes
                })
            }
        }
        let polled = read_headers(&Memory, &[0x1000, 0x9000], MapImplementation::Classic);
        assert_eq!(polled[0].words, Some([7, 7]));
        assert_eq!(polled[0].capacity.map(|capacity| capacity.slots), Some(8));
        assert_eq!(polled[1].words, None);
    }
}
