//! The discovery-window loop of `--mode sampled` (see [`crate::sampled`]): every probe
//! attached for `--window` every `--period`, really detached in between (an attached but
//! disabled uprobe still traps), and the known maps' headers polled every `--poll` while no
//! probe is attached.
//!
//! Each window is armed like the start of a trace ([`SessionInput::Window`]): no event counts until
//! every probe is attached, and each map's first event after arming is its baseline. The
//! window ends at its time ([`SessionInput::WindowEnd`]: later events only settle what is pending);
//! its probes are then detached on a thread of their own, since the kernel takes about 0.1 s
//! per probe, so the event loop keeps draining and the window's length stays what it says.
//! Polls begin at the window's end, once the events from before it are drained (later
//! events only settle what is pending, and a poll settles it first, as a header read after
//! the probes are gone does); once the probes are gone, what is still pending is settled
//! from memory.

use std::path::PathBuf;
use std::thread::JoinHandle;

use super::*;
use crate::sampled::{self, Schedule};

/// Records read between two looks at the clock while a window is open.
const CLOCK_EVERY: u32 = 256;

/// Where the windows are.
enum Phase {
    /// Every probe attached, until the window ends.
    Open { until: Instant },
    /// The last window's probes going, on their own thread, which says how long it took.
    Detaching(JoinHandle<Duration>),
    /// No probe attached; the next window opens at `Windows::next`.
    Closed,
}

/// The window schedule of one trace, and the probes it attaches and detaches.
pub(super) struct Windows<'p> {
    schedule: Schedule,
    probes: &'p mut Probes,
    plan: &'p ProbePlan,
    exe: PathBuf,
    pid: u32,
    phase: Phase,
    /// When the next window opens.
    next: Instant,
    /// When the last window ended.
    ended: Instant,
}

impl<'p> Windows<'p> {
    /// The schedule of a trace whose probes, attached to `exe` of `pid` where `plan` says,
    /// went on just now: the first window is open.
    pub(super) fn new(
        schedule: Schedule,
        probes: &'p mut Probes,
        plan: &'p ProbePlan,
        exe: PathBuf,
        pid: u32,
    ) -> Windows<'p> {
        let now = Instant::now();
        Windows {
            schedule,
            probes,
            plan,
            exe,
            pid,
            phase: Phase::Open {
                until: now + schedule.window(),
            },
            next: now + schedule.period(),
            ended: now,
        }
    }

    /// When the phase changes by the clock (a detach is checked on every drain instead).
    fn wakes_at(&self) -> Instant {
        match self.phase {
            Phase::Open { until } => until,
            Phase::Closed => self.next,
            Phase::Detaching(_) => Instant::now() + Duration::from_secs(3600),
        }
    }
}

impl Feed<'_> {
    /// Feeds the pipeline through windows and polls until one of the stop conditions fires,
    /// then leaves the trace either in a window (the probes attached: the trace ends as an
    /// exact one does) or after a final poll (no probe attached).
    pub(super) async fn follow_sampled(
        &mut self,
        events: &mut AsyncFd<RingBuf<MapData>>,
        options: &Options,
        windows: &mut Windows<'_>,
        stop: impl Future<Output = ()>,
        on_tick: &mut impl FnMut(&Pipeline),
    ) -> Result<StopReason, SessionError> {
        // The first window is the trace's own start: its probes were attached (and its
        // attach time taken) before the trace began.
        let armed_ns = self.pipeline.setup().start_ns;
        self.note(SessionInput::Window {
            armed_ns,
            attach_ms: 0.0,
        });
        let exited = watch(self.inspected.target.pidfd().try_clone()?)?;
        let duration = options.duration;
        let deadline = async {
            match duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop, deadline);
        let interval = |period| {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let mut drain_tick = interval(DRAIN_INTERVAL);
        let mut view_tick = interval(options.tick);
        view_tick.tick().await;
        let mut release_tick = interval(RELEASE_INTERVAL);
        release_tick.tick().await;
        let mut poll_tick = interval(windows.schedule.poll());
        poll_tick.tick().await;
        let reason = loop {
            // Not while a window counts: a header read then could be older than an event
            // still in the ring buffer. After its end (and once the events from before it
            // are drained), events only settle pending operations, and a poll settles
            // them first.
            let polling = !matches!(windows.phase, Phase::Open { .. })
                && windows.ended.elapsed() >= DROP_DELAY;
            let wake = tokio::time::Instant::from_std(windows.wakes_at());
            tokio::select! {
                _ = &mut stop => break StopReason::Signal,
                _ = &mut deadline => break StopReason::Duration,
                _ = exited.readable() => break StopReason::TargetExited,
                ready = events.readable_mut() => {
                    let mut guard = ready?;
                    self.drain_within(guard.get_inner_mut(), windows);
                    guard.clear_ready();
                }
                _ = drain_tick.tick() => {
                    self.drain_within(events.get_mut(), windows);
                    self.check_detached(events, windows);
                }
                _ = view_tick.tick() => {
                    self.read_resident();
                    self.resolve_new_stacks();
                    on_tick(self.pipeline);
                }
                _ = release_tick.tick() => self.release_dropped(events.get_mut(), Check::Timer),
                _ = poll_tick.tick(), if polling => self.poll(events.get_mut()),
                _ = tokio::time::sleep_until(wake) => {
                    if !self.advance(events, windows)? {
                        break StopReason::TargetExited;
                    }
                }
            }
        };
        // The trace ends without waiting for a detach still under way (later events only
        // settle): the report's window ends when it was told to, and its last poll comes
        // once every probe is off (see `last_poll`).
        Ok(reason)
    }

    /// Ends the open window, or opens the next one; `false` when the target went away
    /// while its probes were being attached.
    fn advance(
        &mut self,
        events: &mut AsyncFd<RingBuf<MapData>>,
        windows: &mut Windows<'_>,
    ) -> Result<bool, SessionError> {
        match windows.phase {
            Phase::Open { .. } => {
                // Not drained first: the window ends now, however many events are still to
                // be read (those from before its end count, the others only settle).
                self.note(SessionInput::WindowEnd {
                    end_ns: monotonic_ns(),
                });
                windows.ended = Instant::now();
                let links = windows.probes.take_links()?;
                self.note(SessionInput::Detaching {
                    at_ns: monotonic_ns(),
                });
                let thread = std::thread::spawn(move || {
                    let started = Instant::now();
                    links.detach();
                    started.elapsed()
                });
                windows.phase = Phase::Detaching(thread);
            }
            Phase::Closed => {
                self.drain(events.get_mut());
                let started = Instant::now();
                let attached = windows
                    .probes
                    .reattach(windows.plan, &windows.exe, windows.pid);
                match attached {
                    Err(_) if !self.inspected.target.is_alive() => return Ok(false),
                    attached => attached?,
                }
                let armed_ns = monotonic_ns();
                self.note(SessionInput::Window {
                    armed_ns,
                    attach_ms: millis(started.elapsed()),
                });
                let now = Instant::now();
                windows.phase = Phase::Open {
                    until: now + windows.schedule.window(),
                };
                while windows.next <= now {
                    windows.next += windows.schedule.period();
                }
            }
            Phase::Detaching(_) => {}
        }
        Ok(true)
    }

    /// Drains like [`Feed::drain`]; while a window is open, only until its end: a ring buffer
    /// that refills as fast as it is read must not keep the probes on past it.
    fn drain_within(&mut self, events: &mut RingBuf<MapData>, windows: &Windows<'_>) {
        if let Phase::Open { until } = windows.phase {
            let mut read = 0u32;
            while let Some(record) = events.next() {
                self.pipeline.record(&record);
                read = read.wrapping_add(1);
                if read.is_multiple_of(CLOCK_EVERY) && Instant::now() >= until {
                    return;
                }
            }
        }
        self.drain(events);
    }

    /// Once the last window's probes are gone: settles and polls (see [`Feed::detached`]).
    fn check_detached(
        &mut self,
        events: &mut AsyncFd<RingBuf<MapData>>,
        windows: &mut Windows<'_>,
    ) {
        if !matches!(&windows.phase, Phase::Detaching(thread) if thread.is_finished()) {
            return;
        }
        if let Phase::Detaching(thread) = std::mem::replace(&mut windows.phase, Phase::Closed) {
            self.detached(events, thread);
            self.poll(events.get_mut());
        }
    }

    /// The last window's probes are gone (`thread` finished): no event comes any more, so
    /// what is still pending is settled from memory.
    fn detached(&mut self, events: &mut AsyncFd<RingBuf<MapData>>, thread: JoinHandle<Duration>) {
        let took = thread.join().unwrap_or_default();
        self.note(SessionInput::Detached {
            detach_ms: millis(took),
        });
        self.drain(events.get_mut());
        self.settle_quiet_maps();
    }

    /// The trace's last poll, once its probes are detached and its events drained: every
    /// known map's `live` is its header's at the end, whether the trace ended in a window or
    /// between two.
    pub(super) fn last_poll(&mut self) {
        self.poll_with(|_| {});
    }

    /// Reads the header of every known map, in batches with the ring buffer drained between
    /// them, and passes them on as one recorded input.
    fn poll(&mut self, events: &mut RingBuf<MapData>) {
        // First every event still queued: a window ended with a backlog (its drain stops at
        // its end), and a header read before its events apply would be older than them.
        self.drain(events);
        self.poll_with(|feed| feed.drain(events));
    }

    /// Reads every known map's header in batches, running `between` after each batch.
    fn poll_with(&mut self, mut between: impl FnMut(&mut Self)) {
        if !self.inspected.target.is_alive() {
            return;
        }
        let mut addrs: Vec<u64> = self
            .pipeline
            .model()
            .live_maps()
            .map(|record| record.addr)
            .collect();
        addrs.sort_unstable();
        let implementation = self.pipeline.setup().implementation;
        let at_ns = monotonic_ns();
        let started = Instant::now();
        let mut headers = Vec::with_capacity(addrs.len());
        for batch in addrs.chunks(sampled::BATCH) {
            headers.extend(sampled::read_headers(
                &self.inspected.target,
                batch,
                implementation,
            ));
            between(self);
        }
        self.note(SessionInput::Poll {
            at_ns,
            headers,
            took_ms: millis(started.elapsed()),
        });
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}
