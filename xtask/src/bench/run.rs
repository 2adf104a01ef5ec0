//! One run: the workload, started and waiting, a tracer attached to it (or none), the
//! workload's phases, the tracer sampled while the workload is alive and quiet, then both
//! stopped and their numbers collected.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use super::procfs::{self, Usage};

/// How long any single step (a line of output, an attach, an exit) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// After the workload says `done`, how long to wait before sampling the tracer, so that it
/// has read every event (gomaptrace drains its ring buffer every 10 ms).
const DRAIN_WAIT: Duration = Duration::from_millis(100);

/// What is attached to the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// (a) Nothing.
    Untraced,
    /// (b) `gomaptrace --floor`: empty BPF programs at exactly gomaptrace's probe sites.
    Floor,
    /// (c) gomaptrace.
    Gomaptrace,
    /// (d) The bpftrace script `tests/fixtures/bench/peer.bt`.
    Bpftrace,
}

impl Mode {
    /// Every mode, in the order each round runs them.
    pub const ALL: [Mode; 4] = [
        Mode::Untraced,
        Mode::Floor,
        Mode::Gomaptrace,
        Mode::Bpftrace,
    ];

    /// The letter the issue uses for it.
    pub fn letter(self) -> char {
        match self {
            Mode::Untraced => 'a',
            Mode::Floor => 'b',
            Mode::Gomaptrace => 'c',
            Mode::Bpftrace => 'd',
        }
    }

    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Floor => "floor",
            Mode::Gomaptrace => "gomaptrace",
            Mode::Bpftrace => "bpftrace",
        }
    }
}

/// The programs a run needs.
pub struct Tools {
    /// The Go workload (`tests/fixtures/bench`).
    pub workload: PathBuf,
    /// The release gomaptrace.
    pub tracer: PathBuf,
    /// The bpftrace script.
    pub peer_script: PathBuf,
    /// Where reports and tracer output go (`target/bench/`).
    pub out_dir: PathBuf,
}

/// What the workload is asked to do.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Map calls per phase (`-n`).
    pub calls: usize,
    /// Small maps to build and keep alive after the phases (`-live`).
    pub live_maps: usize,
    /// `all`, `none` or a list of phase names (`-phases`).
    pub phases: &'static str,
    /// Times the sequence of phases runs (`-reps`).
    pub reps: usize,
}

/// One timed phase, as the workload reports it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Phase {
    /// Its name, e.g. `insert_fast64`.
    pub name: String,
    /// Runtime map calls made: `makes + assigns + deletes`.
    pub calls: u64,
    /// `makemap*` calls.
    pub makes: u64,
    /// `mapassign*` calls.
    pub assigns: u64,
    /// `mapdelete*` calls.
    pub deletes: u64,
    /// Wall time of the phase.
    pub ns: u64,
    /// Which repetition of the sequence of phases, from 0.
    #[serde(default)]
    pub rep: u64,
}

#[derive(Deserialize)]
struct WorkloadResult {
    go: String,
    phases: Vec<Phase>,
}

/// The tracer's side of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TracerStats {
    /// From start to the attached signal, in milliseconds.
    pub attach_ms: f64,
    /// CPU used between the start signal and [`DRAIN_WAIT`] after the workload's `done`.
    pub active_cpu_ns: u64,
    /// The wall time of that same window.
    pub active_wall_ns: u64,
    /// Peak RSS while tracing, before being told to stop (`VmHWM`), KiB.
    pub tracing_peak_kib: u64,
    /// RSS just before being told to stop (`VmRSS`), KiB.
    pub tracing_rss_kib: u64,
    /// CPU over the tracer's whole life (`wait4`), including start-up and the report.
    pub total_cpu_ns: u64,
    /// CPU used from start until the probes were live (loading, verifying, attaching).
    pub attach_cpu_ns: u64,
    /// CPU used after the stop signal (detaching, settling, building and writing the report).
    pub stop_cpu_ns: u64,
    /// Peak RSS over the tracer's whole life, stop and report included (`VmHWM` read until
    /// it exits), KiB.
    pub lifetime_peak_kib: u64,
    /// Events delivered to userspace (gomaptrace's `events.received`).
    pub received: Option<u64>,
    /// Events the kernel could not deliver (gomaptrace's `events.lost`).
    pub lost: Option<u64>,
    /// Maps in gomaptrace's report, released ones included.
    pub maps: Option<u64>,
    /// Calls bpftrace counted (`@total`).
    pub counted: Option<u64>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// What was attached.
    pub mode: Mode,
    /// The workload's Go version.
    pub go: String,
    /// The workload's phases.
    pub phases: Vec<Phase>,
    /// From the start signal to the workload's `done` line.
    pub active_ns: u64,
    /// The tracer's numbers; `None` untraced.
    pub tracer: Option<TracerStats>,
}

/// Runs the workload once with `mode` attached.
pub fn run_once(tools: &Tools, mode: Mode, workload: &Workload) -> anyhow::Result<RunResult> {
    let mut target = Target::start(&tools.workload, workload)?;
    let tracer = match mode {
        Mode::Untraced => None,
        _ => Some(Tracer::attach(tools, mode, target.pid()).inspect_err(|_| target.kill())?),
    };
    let cpu_before = match &tracer {
        Some(tracer) => procfs::cpu_ns(tracer.pid())?,
        None => 0,
    };
    let started = Instant::now();
    target.signal()?;
    let result = target.result();
    let active_ns = started.elapsed().as_nanos() as u64;
    let (result, tracer_stats) = match (result, tracer) {
        (Err(error), tracer) => {
            if let Some(tracer) = tracer {
                let _ = tracer.stop();
            }
            target.kill();
            return Err(error);
        }
        (Ok(result), None) => (result, None),
        (Ok(result), Some(tracer)) => {
            std::thread::sleep(DRAIN_WAIT);
            let cpu_after = procfs::cpu_ns(tracer.pid())?;
            let active_wall_ns = started.elapsed().as_nanos() as u64;
            let memory = procfs::memory(tracer.pid())?;
            let attach_ms = tracer.attach_ms;
            let (usage, outputs) = tracer.stop()?;
            let stats = TracerStats {
                attach_ms,
                active_cpu_ns: cpu_after.saturating_sub(cpu_before),
                active_wall_ns,
                tracing_peak_kib: memory.peak_kib,
                tracing_rss_kib: memory.now_kib,
                total_cpu_ns: usage.cpu_ns,
                attach_cpu_ns: cpu_before,
                stop_cpu_ns: usage.cpu_ns.saturating_sub(cpu_after),
                lifetime_peak_kib: usage.peak_kib,
                received: outputs.received,
                lost: outputs.lost,
                maps: outputs.maps,
                counted: outputs.counted,
            };
            (result, Some(stats))
        }
    };
    target.finish()?;
    Ok(RunResult {
        mode,
        go: result.go,
        phases: result.phases,
        active_ns,
        tracer: tracer_stats,
    })
}

/// Lines a child prints, read on a thread so that every wait has a timeout.
pub(super) struct Lines {
    receiver: Receiver<String>,
    name: String,
}

impl Lines {
    pub(super) fn spawn(stream: impl std::io::Read + Send + 'static, name: &str) -> Lines {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            receiver,
            name: name.to_string(),
        }
    }

    /// The next line; an error when the stream ends or nothing comes in time.
    fn next(&self) -> anyhow::Result<String> {
        match self.receiver.recv_timeout(STEP_TIMEOUT) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => {
                bail!("{}: nothing within {STEP_TIMEOUT:?}", self.name)
            }
            Err(RecvTimeoutError::Disconnected) => bail!("{} ended", self.name),
        }
    }

    /// The first line for which `wanted` holds, skipping the others.
    pub(super) fn find(&self, wanted: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        loop {
            let line = self.next()?;
            if wanted(&line) {
                return Ok(line);
            }
        }
    }

    /// Every remaining line, until the stream closes.
    pub(super) fn rest(&self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(line) = self.receiver.recv_timeout(STEP_TIMEOUT) {
            seen.push(line);
        }
        seen
    }
}

/// The running workload.
struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
}

impl Target {
    /// Starts the workload and waits until it says `ready`.
    fn start(binary: &Path, workload: &Workload) -> anyhow::Result<Target> {
        let mut child = Command::new(binary)
            .args(["-n", &workload.calls.to_string()])
            .args(["-live", &workload.live_maps.to_string()])
            .args(["-phases", workload.phases])
            .args(["-reps", &workload.reps.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdin = child.stdin.take();
        let stdout = Lines::spawn(child.stdout.take().context("piped")?, "workload stdout");
        let mut target = Target {
            child,
            stdin,
            stdout,
        };
        if let Err(error) = target.stdout.find(|line| line == "ready") {
            target.kill();
            return Err(error);
        }
        Ok(target)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the phases run.
    fn signal(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the phases' results and for `done` (the live maps, if any, are built).
    fn result(&self) -> anyhow::Result<WorkloadResult> {
        let line = self.stdout.find(|line| line.starts_with("result "))?;
        let json = &line["result ".len()..];
        let result: WorkloadResult =
            serde_json::from_str(json).with_context(|| format!("workload printed {line:?}"))?;
        self.stdout.find(|line| line == "done")?;
        Ok(result)
    }

    /// Closes stdin, which lets the workload exit, and checks that it exits cleanly.
    fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the workload failed: {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("the workload did not exit within {STEP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a tracer reported once stopped.
#[derive(Default)]
struct Outputs {
    received: Option<u64>,
    lost: Option<u64>,
    maps: Option<u64>,
    counted: Option<u64>,
}

/// The part of gomaptrace's JSON report the bench reads; everything else is ignored.
#[derive(Deserialize)]
struct ReportView {
    #[serde(default)]
    events: Option<EventsView>,
    #[serde(default)]
    maps: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct EventsView {
    received: u64,
    lost: u64,
}

/// A running tracer, attached.
struct Tracer {
    child: Child,
    mode: Mode,
    attach_ms: f64,
    json: PathBuf,
    stdout: Option<Lines>,
    stderr: Lines,
}

impl Tracer {
    /// Starts the tracer for `mode` on `pid` and returns once its probes are live.
    fn attach(tools: &Tools, mode: Mode, pid: u32) -> anyhow::Result<Tracer> {
        let json = tools.out_dir.join(format!("last-{}.json", mode.name()));
        let _ = std::fs::remove_file(&json);
        let started = Instant::now();
        let mut command = match mode {
            Mode::Floor | Mode::Gomaptrace => {
                let mut command = Command::new(&tools.tracer);
                if mode == Mode::Floor {
                    command.arg("--floor");
                }
                let text = tools.out_dir.join(format!("last-{}.txt", mode.name()));
                command
                    .args(["--pid", &pid.to_string(), "--json"])
                    .arg(&json)
                    // Every map listed: the run counts them (and a report that lists them all
                    // is what the memory figures include).
                    .args(["--max-maps", "1000000000"])
                    .stdout(std::fs::File::create(&text)?);
                command
            }
            Mode::Bpftrace => {
                let mut command = Command::new("bpftrace");
                command
                    .args(["-p", &pid.to_string()])
                    .arg(&tools.peer_script)
                    .arg(&tools.workload)
                    // The per-map hash must hold one key per map the workload touches; the
                    // default (4096) would silently drop the updates of later maps.
                    .env("BPFTRACE_MAP_KEYS_MAX", "1048576")
                    .stdout(Stdio::piped());
                command
            }
            Mode::Untraced => unreachable!("nothing to attach"),
        };
        let mut child = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stderr = Lines::spawn(child.stderr.take().context("piped")?, "tracer stderr");
        let stdout = child
            .stdout
            .take()
            .map(|stdout| Lines::spawn(stdout, "bpftrace stdout"));
        let mut tracer = Tracer {
            child,
            mode,
            attach_ms: 0.0,
            json,
            stdout,
            stderr,
        };
        let ready = match mode {
            Mode::Bpftrace => tracer.bpftrace_ready(),
            _ => tracer.gomaptrace_ready(),
        };
        if let Err(error) = ready {
            let _ = tracer.child.kill();
            let _ = tracer.child.wait();
            let said = tracer.stderr.rest().join("\n");
            return Err(error.context(format!("{} did not attach: {said}", mode.name())));
        }
        tracer.attach_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(tracer)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// gomaptrace says `gomaptrace: attached K probes to pid N (...)` once its probes are live.
    fn gomaptrace_ready(&self) -> anyhow::Result<()> {
        let line = self
            .stderr
            .find(|line| line.contains("attached") || line.contains("error"))?;
        if !line.contains("attached") {
            bail!("{line}");
        }
        Ok(())
    }

    /// bpftrace prints `Attaching N probes...` before it attaches anything, and nothing once
    /// it is done. Each attached uprobe is one perf-event descriptor, and the script's END
    /// probe one more, attached before the others (the script prints nothing, so bpftrace
    /// opens no perf buffer): the probes are live when bpftrace holds N + 1 of them.
    fn bpftrace_ready(&self) -> anyhow::Result<()> {
        let stdout = self.stdout.as_ref().context("bpftrace stdout")?;
        let line = stdout.find(|line| line.starts_with("Attaching "))?;
        let probes: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|count| count.parse().ok())
            .with_context(|| format!("unexpected bpftrace line {line:?}"))?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        while procfs::perf_event_fds(self.pid()) < probes + 1 {
            if Instant::now() > deadline {
                bail!("bpftrace did not attach its {probes} probes within {STEP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Sends SIGINT, waits for the exit and reads what the tracer reported.
    fn stop(self) -> anyhow::Result<(Usage, Outputs)> {
        procfs::signal(self.pid(), libc::SIGINT)?;
        let usage = procfs::wait_with_usage(self.pid(), STEP_TIMEOUT)?;
        let stderr = self.stderr.rest();
        if usage.exit_code != Some(0) {
            bail!(
                "{} exited with {:?}: {}",
                self.mode.name(),
                usage.exit_code,
                stderr.join("\n")
            );
        }
        let outputs = match self.mode {
            Mode::Bpftrace => {
                let stdout = self.stdout.as_ref().context("bpftrace stdout")?.rest();
                let counted = stdout
                    .iter()
                    .find_map(|line| line.strip_prefix("@total: "))
                    .and_then(|count| count.trim().parse().ok())
                    .with_context(|| format!("no @total in bpftrace's output: {stdout:?}"))?;
                Outputs {
                    counted: Some(counted),
                    ..Outputs::default()
                }
            }
            _ => {
                let bytes = std::fs::read(&self.json)
                    .with_context(|| format!("cannot read {}", self.json.display()))?;
                let report: ReportView = serde_json::from_slice(&bytes)
                    .with_context(|| format!("cannot parse {}", self.json.display()))?;
                // One entry per map ever seen: hundreds of MB over a bench. The text report
                // next to it stays.
                let _ = std::fs::remove_file(&self.json);
                Outputs {
                    received: report.events.as_ref().map(|events| events.received),
                    lost: report.events.as_ref().map(|events| events.lost),
                    maps: Some(report.maps.len() as u64),
                    counted: None,
                }
            }
        };
        Ok((usage, outputs))
    }
}
