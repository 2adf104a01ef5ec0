//! One trace from start to finish: open the target, plan and attach probes, feed the model
//! until told to stop, detach, settle the last counts and build the report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{writers::FoldRun, MapEvent};

use crate::abi::{self, ForeignArch};
use crate::inspect::{self, GoBinary, InspectError, ReadMemory};
use crate::launch::{LaunchError, Launched};
use crate::memory::inventory::{self, Taken};
use crate::memory::release::{self, Detector, Dropped};
use crate::memory::roots::{Roots, RootsError};
use crate::memory::scan::{self, ScanStats, Scanner};
use crate::model::{HeldFolds, Model};
use crate::pipeline::{Pipeline, Recorder, RecordingError, SessionInput, Setup};
use crate::plan::{self, PlanError, ProbePlan};
use crate::privileges::{self, DropError, PrivilegeError};
use crate::probes::{Folds, Linking, Outputs, ProbeError, Probes, Programs};
use crate::report::{MapTypeInfo, Report, Resolved, TargetInfo};
use crate::target::{Target, TargetError};
use crate::verdict::Thresholds;
use collection::Listings;

mod collection;
mod sampled;

/// How often the ring buffer is drained when the BPF side does not wake the reader. Short
/// enough that the buffer never comes close to full at the fastest event rate of a map loop.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// How often exact mode starts a new fold epoch (see `tracer_common::maps::FOLDING`).
const FOLD_EPOCH: Duration = Duration::from_millis(tracer_common::writers::EPOCH_MS);
/// How often exact mode catches up with maps no longer written: it reads the runs of past
/// fold epochs and the headers of maps with no record for this long (see
/// [`Feed::catch_up`]). Each costs a read per open run and per quiet map.
const QUIET_CATCH_UP: Duration = Duration::from_secs(1);

/// Records fed per turn of the event loop while tracing: a stop, a tick or the target's
/// exit waits for at most this many (a few ms of work), however full the ring buffer is.
const DRAIN_BATCH: usize = 4096;

/// After the window ends, how long the probes stay attached so that the next operation on
/// each busy map classifies its last one. Quiet maps are settled from memory afterwards.
const SETTLE_GRACE: Duration = Duration::from_millis(200);

/// How often idle maps are checked against the target's memory for a drop (see
/// [`crate::memory::release`]).
const RELEASE_INTERVAL: Duration = Duration::from_secs(1);

/// How long what a release check found waits before it reaches the pipeline: long enough for
/// every event from before the check's reads to be committed to the ring buffer and drained
/// (a record is committed microseconds after it is reserved), short enough that a dropped map
/// does not linger.
const DROP_DELAY: Duration = Duration::from_millis(50);

/// What can stop a trace before it starts; each message is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The pid is wrong or unreachable.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Not enough privileges.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// The privileges the trace no longer needs could not be given up.
    #[error(transparent)]
    Drop(#[from] DropError),
    /// The executable is not a Go program this version understands.
    #[error("{exe}: {source}")]
    Inspect {
        /// The target's executable.
        exe: String,
        /// What is wrong with it.
        source: InspectError,
    },
    /// The target is built for an architecture whose registers this build cannot read.
    #[error("{exe}: {source}")]
    ForeignArch {
        /// The target's executable.
        exe: String,
        /// Which architectures.
        source: ForeignArch,
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
    /// The recording could not be written.
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The program to launch could not be started.
    #[error(transparent)]
    Launch(#[from] LaunchError),
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

/// How to trace.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stop after this long; `None`: on the stop signal or the target's exit.
    pub duration: Option<Duration>,
    /// Follow one key in this many (a power of two) from insert to delete; 0: none.
    pub sample_one_in: u64,
    /// Verdict thresholds.
    pub thresholds: Thresholds,
    /// Write every input to this recording, for `gomaptrace replay`.
    pub record: Option<PathBuf>,
    /// Attach empty programs instead of the real ones (`--floor`, for the benchmark).
    pub floor: bool,
    /// How often `on_tick` runs while tracing.
    pub tick: Duration,
    /// Print the BPF programs' diagnostics on stderr ([`crate::diagnostics`]).
    pub verbose: bool,
    /// `--mode sampled`: discovery windows and polls on this schedule; `None`: exact.
    /// Ignored with `floor`, which measures the exact mode's probes.
    pub sampling: Option<crate::sampled::Schedule>,
}

impl Options {
    /// The schedule the trace follows: `sampling`, unless `floor` overrides it.
    fn sampled(&self) -> Option<crate::sampled::Schedule> {
        self.sampling.filter(|_| !self.floor)
    }
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
    /// The model's distributions at the end, at full resolution (for `--hlog`).
    pub histograms: crate::model::Histograms,
    /// Why it ended.
    pub stop: StopReason,
}

/// The target and what is known about its executable, kept for the whole trace: types are
/// read from its memory as they appear, stacks symbolized through its binary at the end.
struct Inspected {
    target: Target,
    binary: GoBinary,
    /// Run-time address − linked address.
    bias: u64,
}

/// Traces `pid` until `stop` resolves, the duration passes or the target exits.
/// `on_attached` runs once the probes are live, `on_tick` every `options.tick` with the
/// trace so far (for a live view).
pub async fn trace(
    pid: u32,
    options: &Options,
    stop: impl Future<Output = ()>,
    on_attached: impl FnOnce(&Attached),
    on_tick: impl FnMut(&Pipeline),
) -> Result<Outcome, SessionError> {
    let target = Target::open(pid)?;
    privileges::check()?;
    let exe = target.exe().display().to_string();
    let (prepared, programs) = prepare(&target.exe_link(), &exe, options)?;
    let bias = target.load_bias(|offset| prepared.binary.vaddr_of_file_offset(offset))?;
    let attached = Probes::attach(
        &prepared.plan,
        &target.exe_link(),
        pid,
        programs,
        prepared.linking,
    );
    let (probes, outputs) = match attached {
        Err(_) if !target.is_alive() => return Err(SessionError::ExitedEarly(pid)),
        attached => attached?,
    };
    let armed_ns = monotonic_ns();
    let live = Live {
        target,
        bias,
        exe,
        prepared,
        probes,
        outputs,
        armed_ns,
    };
    follow_attached(live, options, stop, on_attached, on_tick).await
}

/// Starts the program `child` waits to become (see [`crate::launch`]) with every probe
/// already live, then traces it like [`trace`]. Before the exec, the binary is inspected and
/// the probes attached to it for the child's pid: the kernel installs them when the exec maps
/// the binary, so maps made in `init()` are seen created. Only after the exec is anything
/// read from `/proc/PID` (the load bias of a PIE exists from then on). On an error before
/// the exec, dropping `child` kills it.
pub async fn trace_launched(
    child: &mut Launched,
    options: &Options,
    stop: impl Future<Output = ()>,
    on_attached: impl FnOnce(&Attached),
    on_tick: impl FnMut(&Pipeline),
) -> Result<Outcome, SessionError> {
    privileges::check()?;
    let path = child.program().path().to_path_buf();
    let (prepared, programs) = prepare(&path, child.program().shown(), options)?;
    let (probes, outputs) = Probes::attach(
        &prepared.plan,
        &path,
        child.pid(),
        programs,
        prepared.linking,
    )?;
    // Armed before the program runs its first instruction: its init() maps count.
    let armed_ns = monotonic_ns();
    let (target, bias) = child.release(|offset| prepared.binary.vaddr_of_file_offset(offset))?;
    let exe = target.exe().display().to_string();
    let live = Live {
        target,
        bias,
        exe,
        prepared,
        probes,
        outputs,
        armed_ns,
    };
    follow_attached(live, options, stop, on_attached, on_tick).await
}

/// What is decided from the executable alone, before any probe goes on.
struct Prepared {
    binary: GoBinary,
    plan: ProbePlan,
    go_version: String,
    recorder: Option<Recorder>,
    /// How the probes are tied to their sites.
    linking: Linking,
}

/// Inspects the executable at `path` (named `shown` in errors), checks it can be traced,
/// plans the probes and opens the recording: the same for a process attached to and a
/// program launched.
fn prepare(
    path: &Path,
    shown: &str,
    options: &Options,
) -> Result<(Prepared, Programs), SessionError> {
    let binary = GoBinary::open(path).map_err(|source| SessionError::Inspect {
        exe: shown.to_string(),
        source,
    })?;
    abi::check_traceable(binary.arch()).map_err(|source| SessionError::ForeignArch {
        exe: shown.to_string(),
        source,
    })?;
    let plan = plan::plan(&binary).map_err(|source| SessionError::Plan {
        exe: shown.to_string(),
        source,
    })?;
    let go_version = binary.go_version().to_string();
    let recorder = options
        .record
        .as_deref()
        .map(Recorder::create)
        .transpose()?;
    let programs = if options.floor {
        Programs::Floor
    } else {
        Programs::Tracing {
            key_sample_mask: key_sample_mask(options.sample_one_in),
            key_salt: random_salt(),
            diagnostics: options.verbose,
        }
    };
    // Sampled windows attach and detach every period: grouped links make that cheap.
    let linking = match options.sampled() {
        Some(_) => Linking::Grouped,
        None => Linking::PerSite,
    };
    let prepared = Prepared {
        binary,
        plan,
        go_version,
        recorder,
        linking,
    };
    Ok((prepared, programs))
}

/// A target with its probes live: what [`follow_attached`] needs, however it was started.
struct Live {
    target: Target,
    bias: u64,
    exe: String,
    prepared: Prepared,
    probes: Probes,
    outputs: Outputs,
    /// When the last probe was attached (monotonic ns): events count from then on (see
    /// [`crate::model::Model::arm`]).
    armed_ns: u64,
}

/// The trace once the probes are live, the same for a process attached to and a program
/// launched: feed the model until told to stop, detach, settle and report.
async fn follow_attached(
    live: Live,
    options: &Options,
    stop: impl Future<Output = ()>,
    on_attached: impl FnOnce(&Attached),
    mut on_tick: impl FnMut(&Pipeline),
) -> Result<Outcome, SessionError> {
    let Live {
        target,
        bias,
        exe,
        prepared:
            Prepared {
                binary,
                plan,
                go_version,
                recorder,
                linking: _,
            },
        mut probes,
        outputs,
        armed_ns: start_ns,
    } = live;
    let pid = target.pid();
    // Naming the container may run its runtime's tool (`podman inspect`), which needs the
    // privileges given up next.
    let container = crate::container::of_pid(pid);
    // From here on only target-controlled bytes are parsed, and only sampled mode's windows
    // attach again: grouped links need nothing but the `bpf` call (`CAP_BPF`, kept), per-site
    // uprobes perf events.
    privileges::drop_after_attach(options.sampled().is_some() && !probes.grouped())?;
    let Outputs {
        events,
        lost,
        diagnostics,
        mut folds,
    } = outputs;
    // Exact mode folds the writes whose header proves what the write before them did;
    // sampled mode's windows send every write (they are short, and their polls read counts
    // anyway). Folding is on before the user hears the trace is attached: what the program
    // does from then on is traced at the cost the trace runs at.
    let exact = options.sampled().is_none() && !options.floor;
    let folds = if exact {
        folds.set(true)?;
        Some(folds)
    } else {
        None
    };
    on_attached(&Attached {
        probes: probes.attached(),
        pid,
        go_version: go_version.clone(),
    });
    // The inventory (and the roots it reads from DWARF, needed again at the end) runs in
    // the background while the trace runs: the trace does not wait for it.
    let inventory = std::thread::spawn({
        let exe = target.exe_link();
        let implementation = plan.implementation;
        let types_start = binary.types_start();
        move || inventory::take(&exe, pid, bias, implementation, types_start)
    });

    let setup = Setup {
        target: TargetInfo {
            pid,
            exe,
            go_version,
            exited: false,
            peak_rss_bytes: None,
            container,
            ns_pid: crate::container::ns_pid(pid),
        },
        implementation: plan.implementation,
        start_ns,
        thresholds: options.thresholds,
        sample_one_in: if options.floor {
            0
        } else {
            options.sample_one_in
        },
        sampling: options.sampled(),
        probe_links: options.sampled().map(|_| probes.linked().to_string()),
    };
    let setup_sampled = setup.sampling.is_some();
    let mut pipeline = Pipeline::new(setup, recorder);
    let detector = Detector::new(&binary, bias, plan.implementation);
    pipeline.note(SessionInput::ReleaseDetection {
        method: detector.method(),
    });
    let inspected = Inspected {
        target,
        binary,
        bias,
    };
    if let Some(diagnostics) = diagnostics {
        tokio::spawn(diagnostics.forward());
    }
    let mut events = watch(events)?;
    let mut feed = Feed {
        pipeline: &mut pipeline,
        inspected: &inspected,
        types_resolved: 0,
        stacks_resolved: 0,
        peak_resident: None,
        inventory: Some(inventory),
        roots: None,
        scanned_holders: BTreeMap::new(),
        detector,
        drops: Vec::new(),
        drops_at: Instant::now(),
        folds,
        quiet_reads: HashMap::new(),
        listings: exact.then(Listings::default),
    };
    feed.read_resident();
    let stop_reason = match options.sampled() {
        Some(schedule) => {
            let exe = inspected.target.exe_link();
            let mut windows = sampled::Windows::new(schedule, &mut probes, &plan, exe, pid);
            feed.follow_sampled(&mut events, options, &mut windows, stop, &mut on_tick)
                .await?
        }
        None => {
            feed.follow(&mut events, options, stop, &mut on_tick)
                .await?
        }
    };
    // The window ends when the loop stops: waiting for the inventory and the last check of
    // dropped maps takes time, and what the program does meanwhile is not in the window.
    // Folding stops first, so that every fold is from the window, and each map's next write
    // carries its folds and settles its pending operation.
    if let Some(folds) = &mut feed.folds {
        folds.set(false)?;
    }
    let end_ns = monotonic_ns();
    feed.note(SessionInput::Freeze { end_ns });
    feed.take_inventory(true);
    if inspected.target.is_alive() {
        // Counted as of the end of the window (the pipeline dates it no later), not as of
        // the last tick.
        feed.release_dropped(events.get_mut(), Check::Last);
    }
    feed.drain_until_settled(&mut events).await;
    feed.note(SessionInput::Detaching {
        at_ns: monotonic_ns(),
    });
    probes.detach();
    feed.drain(events.get_mut());
    feed.apply_drops();
    if let Some(folds) = feed.folds.take() {
        let held = folds
            .held()
            .into_iter()
            .map(|(addr, run)| HeldFolds::of_run(addr, &run))
            .collect();
        feed.note(SessionInput::Folds {
            total: folds.total()?,
            held,
        });
    }
    drop(events);
    let lost = crate::probes::events_lost(&lost)?;
    feed.settle_quiet_maps();
    if setup_sampled {
        feed.last_poll();
    }
    feed.read_resident();
    if let Some(peak_bytes) = feed.peak_resident {
        feed.note(SessionInput::Resident { peak_bytes });
    }
    let exited = !inspected.target.is_alive();
    if exited {
        feed.note(SessionInput::Exited {
            at_ns: monotonic_ns(),
        });
    }
    let scanned_holders = std::mem::take(&mut feed.scanned_holders);
    let mut held_by = match (exited, feed.roots.take()) {
        (false, Some(Ok(roots))) => inspected.held_by(&roots, pipeline.model()),
        _ => BTreeMap::new(),
    };
    // A live map no variable reaches is named by the goroutine stack that points at it
    // now; one only the inventory's heap scan found, and no stack holds, by the heap.
    if !exited {
        let unnamed: std::collections::HashSet<u64> = pipeline
            .model()
            .maps()
            .iter()
            .filter(|record| !record.is_released() && !held_by.contains_key(&record.addr))
            .map(|record| record.addr)
            .collect();
        for (addr, holder) in inspected.stack_holders(plan.implementation, &unnamed) {
            held_by.entry(addr).or_insert(holder);
        }
    }
    for record in pipeline.model().maps() {
        if record.seen == crate::model::Seen::Inventory
            && !record.is_released()
            && scanned_holders.contains_key(&record.addr)
        {
            held_by
                .entry(record.addr)
                .or_insert_with(|| inventory::HEAP_HOLDER.to_string());
        }
    }
    let resolved = Resolved {
        frames: inspected.frames(pipeline.model().stacks()),
        types: BTreeMap::new(),
        held_by,
    };
    pipeline.note(SessionInput::Finish { lost, resolved });
    let histograms = pipeline.model().histograms(end_ns);
    let report = pipeline.finish()?;
    Ok(Outcome {
        report,
        histograms,
        stop: stop_reason,
    })
}

/// The mask the BPF side applies to key hashes (see `tracer_common::globals`).
fn key_sample_mask(sample_one_in: u64) -> u32 {
    match sample_one_in {
        0 => u32::MAX,
        n => n
            .checked_next_power_of_two()
            .map_or(u64::MAX, |power| power - 1)
            .min(u64::from(u32::MAX - 1)) as u32,
    }
}

/// A fresh secret per trace, so key hashes cannot be reversed or compared across traces.
fn random_salt() -> u64 {
    let mut salt = [0u8; 8];
    // SAFETY: writes at most 8 bytes into the buffer. If the call fails, the salt stays the
    // process's own time mixed below, still unknown to anyone reading the report.
    let filled = unsafe { libc::getrandom(salt.as_mut_ptr().cast(), salt.len(), 0) };
    let salt = u64::from_ne_bytes(salt);
    if filled == 8 {
        salt
    } else {
        salt ^ monotonic_ns().rotate_left(29) ^ u64::from(std::process::id())
    }
}

impl Inspected {
    /// Source frames for every address of every creation stack: the first address is the
    /// probed instruction itself, the others return addresses, looked up one byte earlier so
    /// that a call at the end of an inlined body is attributed to it.
    fn frames(&self, stacks: &[Vec<u64>]) -> BTreeMap<u64, Vec<inspect::SourceFrame>> {
        let mut frames = BTreeMap::new();
        for stack in stacks {
            for (index, &address) in stack.iter().enumerate() {
                frames.entry(address).or_insert_with(|| {
                    let linked = address.wrapping_sub(self.bias);
                    let lookup = if index == 0 {
                        linked
                    } else {
                        linked.saturating_sub(1)
                    };
                    self.binary.frames_at(lookup)
                });
            }
        }
        frames
    }

    /// The variable path holding each map still alive, read from the target's memory now.
    /// A binary without DWARF, or a map no path reaches, gets no entry ("unknown").
    fn held_by(&self, roots: &Roots, model: &Model) -> BTreeMap<u64, String> {
        let alive: std::collections::HashSet<u64> = model
            .maps()
            .iter()
            .filter(|record| !record.is_released())
            .map(|record| record.addr)
            .collect();
        roots.resolve(&self.target, self.bias, |addr| alive.contains(&addr))
    }

    /// `goroutine N stack` for each of `maps` a goroutine's stack points at now (see
    /// [`crate::memory::scan`]); nothing for a binary without `.symtab`.
    fn stack_holders(
        &self,
        implementation: crate::plan::MapImplementation,
        maps: &std::collections::HashSet<u64>,
    ) -> BTreeMap<u64, String> {
        let Ok(scanner) = Scanner::new(&self.binary, self.bias, implementation) else {
            return BTreeMap::new();
        };
        if maps.is_empty() {
            return BTreeMap::new();
        }
        let deadline = Instant::now() + scan::MAX_TIME;
        scanner.stack_holders(&self.target, maps, deadline, &mut ScanStats::default())
    }

    /// Name and storage sizes of a map type, read from the target's memory.
    fn type_facts(&self, map_type: u64) -> Option<MapTypeInfo> {
        let read = || inspect::map_type_info(&self.target, &self.binary, self.bias, map_type).ok();
        let facts = read()?;
        if !facts.name.contains('?') {
            return Some(facts);
        }
        // A part that cannot be named, or a target that exited in the middle of the read
        // (`map[string]?`, the rest of its memory gone): read again, which fails whole in
        // the second case, so that a name cut short by the exit is not kept.
        read().filter(|again| again.name == facts.name)
    }
}

/// Moves what the probes and the target say into the pipeline.
struct Feed<'a> {
    pipeline: &'a mut Pipeline,
    inspected: &'a Inspected,
    /// How many of the model's types have been looked at.
    types_resolved: usize,
    /// How many of the model's stacks have had their frames resolved while tracing.
    stacks_resolved: usize,
    /// The target's peak resident memory at the last reading: read while it runs, since an
    /// exited target has no status left to read.
    peak_resident: Option<u64>,
    /// The inventory, while it runs in the background.
    inventory: Option<std::thread::JoinHandle<Taken>>,
    /// The roots it read, once it finished.
    roots: Option<Result<Roots, RootsError>>,
    /// What holds each map the inventory's heap scan found and no variable reaches.
    scanned_holders: BTreeMap<u64, String>,
    /// Finds the maps the program dropped.
    detector: Detector,
    /// What the last check found, passed on after [`DROP_DELAY`] (see `release_dropped`).
    drops: Vec<Dropped>,
    /// When `drops` were found.
    drops_at: Instant,
    /// The BPF side's folded writes, while they are on (exact mode).
    folds: Option<Folds>,
    /// Headers of quiet maps read by the last catch-ups, waiting for a second read to agree.
    quiet_reads: HashMap<u64, QuietRead>,
    /// The maps whose headers are read at each collection (exact mode).
    listings: Option<Listings>,
}

impl Feed<'_> {
    fn note(&mut self, note: SessionInput) {
        self.pipeline.note(note);
    }

    /// Feeds the pipeline until one of the stop conditions fires.
    async fn follow(
        &mut self,
        events: &mut AsyncFd<RingBuf<MapData>>,
        options: &Options,
        stop: impl Future<Output = ()>,
        on_tick: &mut impl FnMut(&Pipeline),
    ) -> Result<StopReason, SessionError> {
        let exited = watch(self.inspected.target.pidfd().try_clone()?)?;
        let duration = options.duration;
        let deadline = async {
            match duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop, deadline);
        let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut view_tick = tokio::time::interval(options.tick);
        view_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        view_tick.tick().await;
        let mut release_tick = tokio::time::interval(RELEASE_INTERVAL);
        release_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        release_tick.tick().await;
        let mut epoch_tick = tokio::time::interval(FOLD_EPOCH);
        epoch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        epoch_tick.tick().await;
        let mut catch_up_tick = tokio::time::interval(QUIET_CATCH_UP);
        catch_up_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        catch_up_tick.tick().await;
        loop {
            // In this order, and the ring buffer a batch at a time: however full it is, a
            // stop is noticed within one batch, so the window ends when it was asked to.
            tokio::select! {
                biased;
                _ = &mut stop => return Ok(StopReason::Signal),
                _ = &mut deadline => return Ok(StopReason::Duration),
                _ = exited.readable() => return Ok(StopReason::TargetExited),
                _ = view_tick.tick() => {
                    self.read_resident();
                    self.resolve_new_stacks();
                    on_tick(self.pipeline);
                }
                _ = release_tick.tick() => self.release_dropped(events.get_mut(), Check::Timer),
                _ = catch_up_tick.tick(), if self.folds.is_some() => {
                    self.catch_up(events.get_mut())?;
                }
                _ = epoch_tick.tick() => {
                    if let Some(folds) = &mut self.folds {
                        folds.advance()?;
                    }
                }
                _ = drain_tick.tick() => {
                    self.drain_batch(events.get_mut());
                }
                ready = events.readable_mut() => {
                    let mut guard = ready?;
                    if self.drain_batch(guard.get_inner_mut()) {
                        guard.clear_ready();
                    }
                }
            }
        }
    }

    /// Once the background inventory finished (or at once, waiting for it, when `wait`),
    /// passes its maps to the pipeline and keeps its roots.
    fn take_inventory(&mut self, wait: bool) {
        if !wait
            && !self
                .inventory
                .as_ref()
                .is_some_and(|handle| handle.is_finished())
        {
            return;
        }
        let Some(Ok(taken)) = self.inventory.take().map(std::thread::JoinHandle::join) else {
            return;
        };
        self.roots = Some(taken.roots);
        self.scanned_holders = taken
            .sightings
            .iter()
            .filter(|sighting| inventory::is_scanned_holder(&sighting.held_by))
            .map(|sighting| (sighting.addr, sighting.held_by.clone()))
            .collect();
        self.note(SessionInput::Inventory {
            at_ns: monotonic_ns(),
            summary: taken.summary,
            sightings: taken.sightings,
        });
    }

    /// Feeds every waiting record, then reads the types that appeared, while the target is
    /// still there to read them from.
    fn drain(&mut self, events: &mut RingBuf<MapData>) {
        while let Some(record) = events.next() {
            self.record(&record);
        }
        self.after_drain();
    }

    /// Feeds one record. In exact mode, also: at a collection's mark termination, reads the
    /// listed maps' headers; before a creation, gives the model what was read for the map
    /// it replaces; after any record, lists its map if a read could settle it.
    fn record(&mut self, record: &[u8]) {
        let (Some(listings), Some(event)) = (&mut self.listings, MapEvent::from_bytes(record))
        else {
            self.pipeline.record(record);
            return;
        };
        let target = &self.inspected.target;
        if let Some(read) = listings.before(&event, |addrs| target.read_header_words(addrs)) {
            self.pipeline.note(SessionInput::Collected(read));
        }
        self.pipeline.record(record);
        listings.after(&event, self.pipeline.model());
    }

    /// Feeds at most [`DRAIN_BATCH`] waiting records, as [`Feed::drain`] does; says whether
    /// the ring buffer is empty.
    fn drain_batch(&mut self, events: &mut RingBuf<MapData>) -> bool {
        let mut emptied = false;
        for _ in 0..DRAIN_BATCH {
            let Some(record) = events.next() else {
                emptied = true;
                break;
            };
            self.record(&record);
        }
        self.after_drain();
        emptied
    }

    /// What follows feeding records: the inventory once it is ready, the drops found by the
    /// last check once their delay passed, and the types that appeared.
    fn after_drain(&mut self) {
        self.take_inventory(false);
        if self.drops_at.elapsed() >= DROP_DELAY {
            self.apply_drops();
        }
        let fresh: Vec<u64> = self.pipeline.model().types_seen()[self.types_resolved..].to_vec();
        self.types_resolved += fresh.len();
        for map_type in fresh {
            if let Some(facts) = self.inspected.type_facts(map_type) {
                self.pipeline.note(SessionInput::Type { map_type, facts });
            }
        }
    }

    /// Resolves the frames of the stacks interned since the last tick, so that what is
    /// exported while tracing names its sites (the final report resolves them all again).
    fn resolve_new_stacks(&mut self) {
        let stacks = &self.pipeline.model().stacks()[self.stacks_resolved..];
        self.stacks_resolved += stacks.len();
        let frames = self.inspected.frames(stacks);
        self.pipeline.add_live_frames(frames);
    }

    /// Takes a fresh reading of the target's peak resident memory, while it is there.
    fn read_resident(&mut self) {
        if let Ok(peak) = self.inspected.target.peak_resident_bytes() {
            self.peak_resident = Some(peak);
        }
    }

    /// Checks idle maps against the target's memory. A map used while it was read has an
    /// event from before the read, and the model keeps a map with an event since its check;
    /// holding the findings for [`DROP_DELAY`] of draining (or until the probes are gone)
    /// lets every such event reach the model first, even one queued behind a ring-buffer
    /// record another CPU had not committed yet.
    ///
    /// A check on the timer stops after [`release::BUDGET`] of this thread's CPU time (not
    /// wall time: a tracer descheduled on a loaded machine has not spent its budget); the
    /// last check, at the end, reads every idle map, so that the report counts what is live
    /// at its end.
    fn release_dropped(&mut self, events: &mut RingBuf<MapData>, check: Check) {
        self.drain(events);
        let now_ns = monotonic_ns();
        let candidates = self.detector.pick(self.pipeline.model(), now_ns);
        let mut dropped = Vec::new();
        let started = thread_cpu_time();
        for chunk in candidates.chunks(release::CHUNK) {
            if check == Check::Timer && thread_cpu_time().saturating_sub(started) > release::BUDGET
            {
                break;
            }
            dropped.extend(self.detector.inspect(&self.inspected.target, chunk, now_ns));
            self.drain(events);
        }
        // Findings not yet passed on wait with these.
        self.drops.extend(dropped);
        self.drops_at = Instant::now();
    }

    /// Passes the findings of the last check to the pipeline, each released map preceded by
    /// the run of folds it left open in the BPF side: no record of its own will carry it,
    /// and credited while the map is still known, the run leaves the map's last write
    /// pending, which its last header can then settle.
    fn apply_drops(&mut self) {
        for dropped in std::mem::take(&mut self.drops) {
            let addr = dropped.addr;
            if let Some(folds) = &mut self.folds {
                let model = self.pipeline.model();
                if model.releases(&dropped) {
                    let taken = folds.take_if(addr, |run| {
                        model.is_run_of_map_at(addr, [run.count, run.header_word])
                    });
                    // A failed read leaves the run to a later record, or uncredited.
                    if let Ok(Some(run)) = taken {
                        self.pipeline
                            .note(SessionInput::ReleasedFolds(HeldFolds::of_run(addr, &run)));
                    }
                }
            }
            self.pipeline.note(SessionInput::Dropped(dropped));
        }
    }

    /// Starts a new fold epoch, credits the runs of epochs long past, and settles the last
    /// write of maps no longer written from their headers, so that a map written in a burst
    /// and then left alone is known by its whole count while the trace goes on.
    ///
    /// Why no write goes unseen, or counted twice:
    /// - A run of an epoch at least two epochs back takes no more writes (a write folds
    ///   only in the epoch of its map's last write): its map has not been written since,
    ///   and the record before it was drained long ago. A write that slipped in anyway (its
    ///   program preempted across the epoch change) is credited when a record or the end
    ///   delivers the run again, since the model counts only the writes a run adds.
    /// - The first write of an epoch is always sent, so a map with no record for a while can
    ///   only have changed by a write whose record is on its way. Its header is read twice,
    ///   a catch-up apart, and settles its last write only if both reads agree, no record
    ///   came in between (the drains before and after each read would have shown it), and
    ///   no run of a recent epoch is at its address (an older one was credited above).
    fn catch_up(&mut self, events: &mut RingBuf<MapData>) -> Result<(), SessionError> {
        let Some(folds) = &mut self.folds else {
            return Ok(());
        };
        folds.advance()?;
        self.drain(events);
        let quiet_since = monotonic_ns().saturating_sub(QUIET_CATCH_UP.as_nanos() as u64);
        let quiet = self.pipeline.model().quiet_pending(quiet_since);
        let unread: Vec<(u64, u64)> = quiet
            .iter()
            .copied()
            .filter(|(addr, seen_ns)| {
                !self
                    .quiet_reads
                    .get(addr)
                    .is_some_and(|read| read.seen_ns == *seen_ns && read.tried)
            })
            .collect();
        let addrs: Vec<u64> = unread.iter().map(|(addr, _)| *addr).collect();
        let reads: Vec<(u64, u64, [u64; 2])> = unread
            .iter()
            .zip(self.inspected.target.read_header_words(&addrs))
            .filter_map(|(&(addr, seen_ns), words)| Some((addr, seen_ns, words?)))
            .collect();
        let Some(folds) = &self.folds else {
            return Ok(());
        };
        let epoch = folds.epoch();
        let runs = folds.held();
        let settled = |run: &FoldRun| epoch.wrapping_sub(run.epoch) >= 2;
        let past: Vec<HeldFolds> = runs
            .iter()
            .filter(|(_, run)| settled(run))
            .map(|(addr, run)| HeldFolds::of_run(*addr, run))
            .collect();
        if !past.is_empty() {
            self.pipeline.note(SessionInput::PastRuns(past));
        }
        self.drain(events);
        self.free_credited_runs(runs.iter().filter(|(_, run)| settled(run)));
        let quiet: HashSet<u64> = quiet.iter().map(|(addr, _)| *addr).collect();
        self.quiet_reads.retain(|addr, _| quiet.contains(addr));
        for (addr, seen_ns, words) in reads {
            let read = QuietRead {
                seen_ns,
                words,
                tried: false,
            };
            let agreed = self
                .quiet_reads
                .insert(addr, read)
                .is_some_and(|first| first.seen_ns == seen_ns && first.words == words);
            let recent_run = runs.get(&addr).is_some_and(|run| !settled(run));
            if agreed && !recent_run {
                self.pipeline.note(SessionInput::QuietHeader {
                    addr,
                    words,
                    seen_ns,
                });
                // Settled, or not a possible outcome (another object there): not read again
                // until the map's next record.
                if let Some(read) = self.quiet_reads.get_mut(&addr) {
                    read.tried = true;
                }
            }
        }
        Ok(())
    }

    /// Removes from the BPF side the past runs (as read) credited in full to their live map:
    /// no write extends them any more, and the map's next record would only deliver them
    /// again. A map written once in a burst and then never again would otherwise hold its
    /// run's slot for the rest of the trace, and every catch-up would read it again; the runs
    /// of such maps are what fills the table on a long trace. A run that changed since it
    /// was read (its map wrote meanwhile, and its next record carries the run) stays.
    fn free_credited_runs<'r>(&mut self, past: impl Iterator<Item = (&'r u64, &'r FoldRun)>) {
        let Some(folds) = &mut self.folds else {
            return;
        };
        let model = self.pipeline.model();
        for (&addr, read) in past {
            if model.credited_whole(&HeldFolds::of_run(addr, read)) {
                // A failed removal leaves the run to its map's next record, as before.
                let _ = folds.take_if(addr, |current| current == read);
            }
        }
    }

    /// Keeps draining for a short grace period, until every pending operation is settled by
    /// its map's next event or the target goes quiet or away.
    async fn drain_until_settled(&mut self, events: &mut AsyncFd<RingBuf<MapData>>) {
        let deadline = Instant::now() + SETTLE_GRACE;
        while Instant::now() < deadline
            && self.inspected.target.is_alive()
            && self.pipeline.model().pending().next().is_some()
        {
            tokio::time::sleep(DRAIN_INTERVAL).await;
            self.drain(events.get_mut());
        }
    }

    /// Settles what is still pending from the headers in the target's memory, now that no
    /// probe fires any more. A target that is gone takes those counts with it: they stay
    /// unsettled.
    fn settle_quiet_maps(&mut self) {
        let target = &self.inspected.target;
        if !target.is_alive() {
            return;
        }
        let mut pending: Vec<u64> = self.pipeline.model().pending().collect();
        pending.sort_unstable();
        let headers = target.read_header_words(&pending);
        for (addr, words) in pending.into_iter().zip(headers) {
            if let Some(words) = words {
                self.pipeline.note(SessionInput::HeaderRead { addr, words });
            }
        }
    }
}

/// A quiet map's header as a catch-up read it (see [`Feed::catch_up`]).
struct QuietRead {
    /// When the map's last record was, as the model knew it at the read.
    seen_ns: u64,
    /// The header's count and second word.
    words: [u64; 2],
    /// It was passed on: a map it did not settle is not read again until its next record.
    tried: bool,
}

/// Registers an owned descriptor with the event loop, for readability only.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor (a ring-buffer map or a pidfd) and returns the same
    // one for as long as the AsyncFd holds it.
    Ok(unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }?)
}

/// The monotonic clock that event times use, in ns: the time base of snapshots.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer; CLOCK_MONOTONIC always exists. It is the clock
    // bpf_ktime_get_ns() reads, so event times and this start time compare directly.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// CPU time this thread has used: what a budget on the tracer's own cost counts.
fn thread_cpu_time() -> Duration {
    let mut used = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer; every thread has a CPU-time clock.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut used) };
    Duration::new(used.tv_sec as u64, used.tv_nsec as u32)
}

/// Which check of idle maps runs, which decides how much of it may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// One on the release timer, within [`release::BUDGET`].
    Timer,
    /// The last one, at the end of the trace: every idle map.
    Last,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rates_become_masks() {
        assert_eq!(key_sample_mask(0), u32::MAX);
        assert_eq!(key_sample_mask(1), 0);
        assert_eq!(key_sample_mask(64), 63);
        assert_eq!(key_sample_mask(100), 127);
        assert_eq!(key_sample_mask(u64::MAX), u32::MAX - 1);
        assert_eq!(key_sample_mask(1 << 40), u32::MAX - 1);
    }
}
