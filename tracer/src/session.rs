//! One trace from start to finish: open the target, plan and attach probes, feed the model
//! until told to stop, detach, settle the last counts and build the report.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tracer_common::seed_from_word;

use crate::inspect::{GoBinary, InspectError};
use crate::model::{Header, Model};
use crate::plan::{self, MapImplementation, PlanError};
use crate::privileges::{self, PrivilegeError};
use crate::probes::{Outputs, ProbeError, Probes};
use crate::report::{Report, TargetInfo};
use crate::target::{Target, TargetError};

/// How often the ring buffer is drained when the BPF side does not wake the reader. Short
/// enough that the buffer never comes close to full at the fastest event rate of a map loop.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// After the window ends, how long the probes stay attached so that the next operation on
/// each busy map classifies its last one. Quiet maps are settled from memory afterwards.
const SETTLE_GRACE: Duration = Duration::from_millis(200);

/// What can stop a trace before it starts; each message is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The pid is wrong or unreachable.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Not enough privileges.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// The executable is not a Go program this version understands.
    #[error("{exe}: {source}")]
    Inspect {
        /// The target's executable.
        exe: String,
        /// What is wrong with it.
        source: InspectError,
    },
    /// No probe site.
    #[error("{exe}: {source}")]
    Plan {
        /// The target's executable.
        exe: String,
        /// Why no probe can be placed.
        source: PlanError,
    },
    /// The kernel refused the probes.
    #[error(transparent)]
    Probes(#[from] ProbeError),
    /// The target went away before the probes were in place.
    #[error("pid {0} exited before the probes were attached")]
    ExitedEarly(u32),
    /// Anything else from the operating system.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why the trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `--duration` elapsed.
    Duration,
    /// Ctrl-C or SIGTERM.
    Signal,
    /// The target exited.
    TargetExited,
}

/// What the caller learns once the probes are live.
#[derive(Clone, Debug)]
pub struct Attached {
    /// Number of uprobes attached.
    pub probes: usize,
    /// The target's pid.
    pub pid: u32,
    /// The Go version of the target.
    pub go_version: String,
}

/// A finished trace.
#[derive(Debug)]
pub struct Outcome {
    /// The report.
    pub report: Report,
    /// Why it ended.
    pub stop: StopReason,
}

/// Traces `pid` until `stop` resolves, the duration passes or the target exits.
/// `on_attached` runs once the probes are live.
pub async fn trace(
    pid: u32,
    duration: Option<Duration>,
    stop: impl Future<Output = ()>,
    on_attached: impl FnOnce(&Attached),
) -> Result<Outcome, SessionError> {
    let target = Target::open(pid)?;
    privileges::check()?;
    let exe = target.exe().display().to_string();
    let binary = GoBinary::open(&target.exe_link()).map_err(|source| SessionError::Inspect {
        exe: exe.clone(),
        source,
    })?;
    let plan = plan::plan(&binary).map_err(|source| SessionError::Plan {
        exe: exe.clone(),
        source,
    })?;
    let go_version = binary.go_version().to_string();
    drop(binary);

    let (probes, outputs) = match Probes::attach(&plan, &target.exe_link(), pid) {
        Err(_) if !target.is_alive() => return Err(SessionError::ExitedEarly(pid)),
        attached => attached?,
    };
    let start_ns = monotonic_ns();
    on_attached(&Attached {
        probes: probes.attached(),
        pid,
        go_version: go_version.clone(),
    });

    let mut model = Model::new();
    let Outputs { events, lost } = outputs;
    let mut events = watch(events)?;
    let stop_reason = follow(&mut events, &mut model, &target, duration, stop).await?;
    let window_end_ns = monotonic_ns();

    model.freeze(window_end_ns);
    settle_from_events(&mut events, &mut model, &target).await;
    probes.detach();
    drain(events.get_mut(), &mut model);
    let lost = Outputs {
        events: events.into_inner(),
        lost,
    }
    .lost()?;
    settle_from_memory(&mut model, &target, plan.implementation);

    let info = TargetInfo {
        pid,
        exe,
        go_version,
        exited: !target.is_alive(),
    };
    let window_s = window_end_ns.saturating_sub(start_ns) as f64 / 1e9;
    let report = Report::new(info, window_s, &model, lost, start_ns);
    Ok(Outcome {
        report,
        stop: stop_reason,
    })
}

/// Feeds the model until one of the stop conditions fires.
async fn follow(
    events: &mut AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    model: &mut Model,
    target: &Target,
    duration: Option<Duration>,
    stop: impl Future<Output = ()>,
) -> Result<StopReason, SessionError> {
    let exited = watch(target.pidfd().try_clone()?)?;
    let deadline = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop, deadline);
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(StopReason::Signal),
            _ = &mut deadline => return Ok(StopReason::Duration),
            _ = exited.readable() => return Ok(StopReason::TargetExited),
            ready = events.readable_mut() => {
                let mut guard = ready?;
                drain(guard.get_inner_mut(), model);
                guard.clear_ready();
            }
            _ = tick.tick() => drain(events.get_mut(), model),
        }
    }
}

/// Registers an owned descriptor with the event loop, for readability only.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor (a ring-buffer map or a pidfd) and returns the same
    // one for as long as the AsyncFd holds it.
    Ok(unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }?)
}

fn drain(events: &mut aya::maps::RingBuf<aya::maps::MapData>, model: &mut Model) {
    while let Some(record) = events.next() {
        model.observe_record(&record);
    }
}

/// Keeps draining for a short grace period, until every pending operation is settled by its
/// map's next event or the target goes quiet or away.
async fn settle_from_events(
    events: &mut AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    model: &mut Model,
    target: &Target,
) {
    let deadline = Instant::now() + SETTLE_GRACE;
    while Instant::now() < deadline && target.is_alive() && model.pending().next().is_some() {
        tokio::time::sleep(DRAIN_INTERVAL).await;
        drain(events.get_mut(), model);
    }
}

/// Settles what is still pending from the headers in the target's memory, now that no probe
/// fires any more. A target that is gone takes those counts with it: they stay unsettled.
fn settle_from_memory(model: &mut Model, target: &Target, implementation: MapImplementation) {
    if target.is_alive() {
        let pending: Vec<u64> = model.pending().collect();
        for addr in pending {
            if let Ok([count, seed_word]) = target.read_words(addr) {
                let seed = seed_from_word(seed_word, implementation.seed_shift());
                model.settle(addr, Header { count, seed });
            }
        }
    }
    model.abandon_pending();
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer; CLOCK_MONOTONIC always exists. It is the clock
    // bpf_ktime_get_ns() reads, so event times and this start time compare directly.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
