//! The service phase of `cargo xtask bench`: what tracing costs a whole Go service, not one
//! map call.
//!
//! A map-heavy HTTP service (`tests/fixtures/service`: two per-request maps, an evicting
//! session cache and a route counter, about 40 map operations per request besides net/http's
//! own) serves a bounded loopback load from `tests/fixtures/loadgen` (`--service-concurrency`
//! connections, `--service-seconds` per run after a short warm-up). Each round runs it once
//! per entry of `--service-modes`, in that order: `untraced`, `floor` (`gomaptrace --floor`,
//! the uprobe floor for the whole service) or any gomaptrace `--mode` (`exact`, `sampled`).
//! The modes are data so that a mode gomaptrace gains needs no code here; one it rejects
//! stops the bench before any round with gomaptrace's own one-line reason.
//!
//! By default the service runs on one CPU and the client on another (`--service-cpus 0,1`),
//! so that they do not take turns on one core; the tracer runs unpinned, where it would in
//! production. Per mode it reports requests/s (median over rounds), the median over rounds of
//! each round's ratio to that round's untraced run, the client's p50 and p99 latency, and the
//! tracer's CPU while the load ran and its peak RSS (`procfs`).
//!
//! Results join the per-call ones: `service` in `target/bench/results.json` and a section of
//! `target/bench/table.md` (replaced when the phase runs alone, `--only service`).

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::procfs;
use super::run::Lines;
use super::summary::{number, spread_text, Spread, TargetCheck};
use super::{BenchOptions, BENCH_GO};
use crate::gofixture;

/// Sessions the service's cache keeps before it evicts the oldest.
const CACHE_SESSIONS: usize = 1000;

/// Distinct sessions the client names: four times the cache, so that it keeps evicting.
const CLIENT_SESSIONS: usize = 4 * CACHE_SESSIONS;

/// Load before the counted window of each run, not counted: connections, first sessions.
const WARMUP: Duration = Duration::from_millis(500);

/// How long one step (a line of output, an attach, an exit) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The bound for `--mode sampled`: throughput at least this share of untraced.
pub const MIN_SAMPLED_RATIO: f64 = 0.98;

/// The heading that starts the service section of `table.md`.
const TABLE_HEADING: &str = "#### Whole service";

/// What is attached to the service in one mode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceMode {
    /// Its name in `--service-modes`, tables and JSON.
    name: String,
    /// gomaptrace's arguments for it; `None`: untraced.
    args: Option<Vec<String>>,
}

/// The two fixtures and the tracer.
struct Programs {
    server: PathBuf,
    client: PathBuf,
    tracer: PathBuf,
    out_dir: PathBuf,
}

/// The client's `result` line.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ClientResult {
    /// Requests completed in the counted window.
    pub requests: u64,
    /// Requests that failed (the run fails when any did).
    pub errors: u64,
    /// The counted window, from its start to the last response.
    pub duration_s: f64,
    /// `requests / duration_s`.
    pub rps: f64,
    /// Latency percentiles over the counted requests, microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// The slowest request.
    pub max_us: f64,
}

/// The tracer's costs in one run.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceTracer {
    /// From start to probes live, milliseconds.
    pub attach_ms: f64,
    /// CPU used while the client ran (warm-up included), nanoseconds.
    pub active_cpu_ns: u64,
    /// Wall time of that window, nanoseconds.
    pub active_wall_ns: u64,
    /// Peak RSS before the stop signal (`VmHWM`), KiB.
    pub tracing_peak_kib: u64,
    /// Peak RSS over its whole life, report included, KiB.
    pub lifetime_peak_kib: u64,
    /// CPU over its whole life, nanoseconds.
    pub total_cpu_ns: u64,
    /// Events delivered (gomaptrace's `events.received`).
    pub received: Option<u64>,
    /// Events the kernel could not deliver.
    pub lost: Option<u64>,
}

/// One run of the service under load.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceRun {
    /// The mode's name.
    pub mode: String,
    /// The round, from 1.
    pub round: usize,
    /// What the client measured.
    pub client: ClientResult,
    /// The tracer's costs; `None` untraced.
    pub tracer: Option<ServiceTracer>,
}

/// One mode over every round.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceModeSummary {
    /// The mode's name.
    pub mode: String,
    /// Requests per second.
    pub rps: Option<Spread>,
    /// Each round's requests/s over that round's untraced run.
    pub rps_over_untraced: Option<Spread>,
    /// Client latency p50, microseconds.
    pub p50_us: Option<Spread>,
    /// Client latency p99, microseconds.
    pub p99_us: Option<Spread>,
    /// Tracer CPU while the load ran, in cores.
    pub tracer_cores: Option<Spread>,
    /// Tracer peak RSS while tracing, MiB.
    pub tracer_peak_mib: Option<Spread>,
    /// Events delivered per second of load.
    pub events_per_s: Option<Spread>,
    /// Events lost, summed over rounds.
    pub lost_total: Option<u64>,
}

/// What the service phase concludes.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceSummary {
    /// How the runs were made, in words.
    pub design: String,
    /// One entry per mode, in `--service-modes` order.
    pub modes: Vec<ServiceModeSummary>,
    /// The throughput target for `--mode sampled`.
    pub target: TargetCheck,
}

/// Runs the service phase and merges its results into `out_dir`'s `results.json` and
/// `table.md`.
pub fn run_phase(
    root: &Path,
    out_dir: &Path,
    tracer: PathBuf,
    options: &BenchOptions,
) -> anyhow::Result<()> {
    let cpus = parse_cpus(&options.service_cpus)?;
    if options.service_seconds <= 0.0 || options.service_concurrency == 0 {
        bail!("--service-seconds must be above 0 and --service-concurrency at least 1");
    }
    let modes = parse_modes(&options.service_modes)?
        .into_iter()
        .map(|name| resolve_mode(&tracer, name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let go = root.join(".tools/go").join(BENCH_GO).join("bin/go");
    if !go.exists() {
        bail!(
            "Go {BENCH_GO} is missing at {}: run `cargo xtask setup`",
            go.display()
        );
    }
    let programs = Programs {
        server: gofixture::build("service", BENCH_GO, gofixture::Flavor::Plain, &[]),
        client: gofixture::build("loadgen", BENCH_GO, gofixture::Flavor::Plain, &[]),
        tracer,
        out_dir: out_dir.to_path_buf(),
    };
    let started = Instant::now();
    // One untraced run first, not recorded: page cache, CPU frequency, the first fork.
    run_once(&programs, &modes[0], 0, options, cpus).context("service warm-up run")?;
    let mut runs = Vec::new();
    for round in 1..=options.rounds {
        let mut progress = format!("xtask: service round {round}/{}:", options.rounds);
        for mode in &modes {
            let run = run_once(&programs, mode, round, options, cpus)
                .with_context(|| format!("service round {round}, mode {}", mode.name))?;
            progress += &format!(" {} {:.0}/s", mode.name, run.client.rps);
            runs.push(run);
        }
        eprintln!("{progress}");
    }
    let pinning = match cpus {
        Some((server, client)) => {
            format!("service on CPU {server}, client on CPU {client}, tracer unpinned")
        }
        None => "nothing pinned".to_string(),
    };
    let design = format!(
        "{} alternating rounds ({}), each {} s of load from {} keep-alive connections after \
         {} ms of warm-up; {pinning}; Go {BENCH_GO}",
        options.rounds,
        modes
            .iter()
            .map(|mode| mode.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        options.service_seconds,
        options.service_concurrency,
        WARMUP.as_millis(),
    );
    let summary = summarize(&runs, &modes, design);
    print!("{}", text(&summary));
    write_results(out_dir, &summary, &runs, options, started.elapsed())
}

/// The CPUs of `--service-cpus`: `server,client`, or `none`.
fn parse_cpus(text: &str) -> anyhow::Result<Option<(usize, usize)>> {
    if text == "none" {
        return Ok(None);
    }
    let parsed = text
        .split_once(',')
        .and_then(|(server, client)| Some((server.parse().ok()?, client.parse().ok()?)));
    let Some((server, client)) = parsed else {
        bail!("--service-cpus takes `SERVER,CLIENT` (two CPU numbers) or `none`, not `{text}`");
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if server == client || server >= cpus || client >= cpus {
        bail!("--service-cpus {text}: need two different CPUs below {cpus}");
    }
    Ok(Some((server, client)))
}

/// The names in `--service-modes`, checked for form and repeats.
fn parse_modes(text: &str) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for name in text.split(',').map(str::trim) {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
            bail!("--service-modes: `{name}` is not a mode name (e.g. untraced,floor,exact)");
        }
        if names.iter().any(|seen| seen == name) {
            bail!("--service-modes names `{name}` twice");
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// How to run mode `name`: `untraced`, `floor`, or a gomaptrace `--mode`, which `tracer`
/// must accept (asked with `--mode NAME --help`). A gomaptrace older than `--mode` has only
/// exact counting, so `exact` runs it without the flag.
fn resolve_mode(tracer: &Path, name: String) -> anyhow::Result<ServiceMode> {
    let args = match name.as_str() {
        "untraced" => None,
        "floor" => Some(vec!["--floor".to_string()]),
        _ => {
            let output = Command::new(tracer)
                .args(["--mode", &name, "--help"])
                .output()
                .with_context(|| format!("cannot run {}", tracer.display()))?;
            let said = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                Some(vec!["--mode".to_string(), name.clone()])
            } else if name == "exact" && said.contains("unexpected argument '--mode'") {
                Some(Vec::new())
            } else if said.contains("unexpected argument '--mode'") {
                bail!(
                    "{} has no --mode, so it cannot run service mode `{name}`: drop it from \
                     --service-modes",
                    tracer.display()
                );
            } else {
                let reason = said.lines().next().unwrap_or("no reason given").trim();
                let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                bail!("gomaptrace rejects service mode `{name}`: {reason}");
            }
        }
    };
    Ok(ServiceMode { name, args })
}

/// Pins the child to `cpu` before it starts, so that every thread it makes inherits it.
fn pin(command: &mut Command, cpu: usize) {
    // SAFETY: the closure runs between fork and exec; it only fills a stack value and makes
    // one system call.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The running service.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    address: String,
}

impl Server {
    fn start(binary: &Path, cpu: Option<usize>) -> anyhow::Result<Server> {
        let mut command = Command::new(binary);
        command
            .args(["-sessions", &CACHE_SESSIONS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(cpu) = cpu {
            pin(&mut command, cpu);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdin = child.stdin.take();
        let stdout = Lines::spawn(child.stdout.take().context("piped")?, "service stdout");
        let mut server = Server {
            child,
            stdin,
            address: String::new(),
        };
        let address = stdout
            .find(|line| line.starts_with("listening "))
            .and_then(|line| {
                stdout.find(|line| line == "ready")?;
                Ok(line["listening ".len()..].to_string())
            });
        // On an error, dropping the server stops it.
        server.address = address.context("the service did not start")?;
        Ok(server)
    }

    /// Closes stdin, which stops the service, and checks that it exits cleanly.
    fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the service failed: {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("the service did not exit within {STEP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A run that fails half-way leaves no service behind (a no-op once it exited).
impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running gomaptrace, attached.
struct Tracer {
    child: Child,
    stderr: Lines,
    json: PathBuf,
    attach_ms: f64,
    /// Reaped by `wait4` in [`Tracer::stop`], which `Child` does not know about.
    reaped: bool,
}

/// A run that fails half-way leaves no tracer attached.
impl Drop for Tracer {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The part of gomaptrace's JSON report read here.
#[derive(Deserialize)]
struct ReportView {
    #[serde(default)]
    events: Option<EventsView>,
}

#[derive(Deserialize)]
struct EventsView {
    received: u64,
    lost: u64,
}

impl Tracer {
    fn attach(
        programs: &Programs,
        mode: &ServiceMode,
        args: &[String],
        pid: u32,
    ) -> anyhow::Result<Tracer> {
        let json = programs
            .out_dir
            .join(format!("last-service-{}.json", mode.name));
        let text = programs
            .out_dir
            .join(format!("last-service-{}.txt", mode.name));
        let _ = std::fs::remove_file(&json);
        let started = Instant::now();
        let mut child = Command::new(&programs.tracer)
            .args(args)
            .args(["--pid", &pid.to_string(), "--json"])
            .arg(&json)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&text)?)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", programs.tracer.display()))?;
        let stderr = Lines::spawn(child.stderr.take().context("piped")?, "tracer stderr");
        let ready = stderr
            .find(|line| line.contains("attached") || line.contains("error"))
            .and_then(|line| {
                if line.contains("attached") {
                    Ok(())
                } else {
                    bail!("{line}")
                }
            });
        if let Err(error) = ready {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error.context(format!("gomaptrace ({}) did not attach", mode.name)));
        }
        Ok(Tracer {
            child,
            stderr,
            json,
            attach_ms: started.elapsed().as_secs_f64() * 1e3,
            reaped: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT, waits for the exit and reads the event counts from the report.
    fn stop(mut self) -> anyhow::Result<(procfs::Usage, Option<EventsView>)> {
        procfs::signal(self.pid(), libc::SIGINT)?;
        let usage = procfs::wait_with_usage(self.pid(), STEP_TIMEOUT)?;
        self.reaped = true;
        if usage.exit_code != Some(0) {
            bail!(
                "gomaptrace exited with {:?}: {}",
                usage.exit_code,
                self.stderr.rest().join("\n")
            );
        }
        let bytes = std::fs::read(&self.json)
            .with_context(|| format!("cannot read {}", self.json.display()))?;
        let report: ReportView = serde_json::from_slice(&bytes)
            .with_context(|| format!("cannot parse {}", self.json.display()))?;
        let _ = std::fs::remove_file(&self.json);
        Ok((usage, report.events))
    }
}

/// One run: the service, the tracer for `mode` (if any), the client's load, then both stopped.
fn run_once(
    programs: &Programs,
    mode: &ServiceMode,
    round: usize,
    options: &BenchOptions,
    cpus: Option<(usize, usize)>,
) -> anyhow::Result<ServiceRun> {
    // On any error below, dropping the server and the tracer stops them.
    let server = Server::start(&programs.server, cpus.map(|(server, _)| server))?;
    let tracer = match &mode.args {
        None => None,
        Some(args) => Some(Tracer::attach(programs, mode, args, server.child.id())?),
    };
    let cpu_before = match &tracer {
        Some(tracer) => procfs::cpu_ns(tracer.pid())?,
        None => 0,
    };
    let started = Instant::now();
    let client = run_client(
        programs,
        &server.address,
        options,
        cpus.map(|(_, client)| client),
    )?;
    let active_wall_ns = started.elapsed().as_nanos() as u64;
    let tracer = match tracer {
        None => None,
        Some(tracer) => {
            let cpu_after = procfs::cpu_ns(tracer.pid())?;
            let memory = procfs::memory(tracer.pid())?;
            let attach_ms = tracer.attach_ms;
            let (usage, events) = tracer.stop()?;
            Some(ServiceTracer {
                attach_ms,
                active_cpu_ns: cpu_after.saturating_sub(cpu_before),
                active_wall_ns,
                tracing_peak_kib: memory.peak_kib,
                lifetime_peak_kib: usage.peak_kib,
                total_cpu_ns: usage.cpu_ns,
                received: events.as_ref().map(|events| events.received),
                lost: events.as_ref().map(|events| events.lost),
            })
        }
    };
    server.finish()?;
    Ok(ServiceRun {
        mode: mode.name.clone(),
        round,
        client,
        tracer,
    })
}

/// Runs the load generator against `address` and parses its `result` line.
fn run_client(
    programs: &Programs,
    address: &str,
    options: &BenchOptions,
    cpu: Option<usize>,
) -> anyhow::Result<ClientResult> {
    let mut command = Command::new(&programs.client);
    command
        .args(["-url", &format!("http://{address}")])
        .args(["-c", &options.service_concurrency.to_string()])
        .args([
            "-d",
            &format!("{}ms", (options.service_seconds * 1e3) as u64),
        ])
        .args(["-warmup", &format!("{}ms", WARMUP.as_millis())])
        .args(["-sessions", &CLIENT_SESSIONS.to_string()]);
    if let Some(cpu) = cpu {
        pin(&mut command, cpu);
    }
    let output = command
        .output()
        .with_context(|| format!("cannot run {}", programs.client.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the load generator failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("result "))
        .with_context(|| format!("the load generator printed no result: {stdout:?}"))?;
    serde_json::from_str(line).with_context(|| format!("the load generator printed {line:?}"))
}

/// Medians per mode, and each round's ratio to its own untraced run.
fn summarize(runs: &[ServiceRun], modes: &[ServiceMode], design: String) -> ServiceSummary {
    let untraced_rps = |round: usize| {
        runs.iter()
            .find(|run| run.round == round && run.mode == "untraced")
            .map(|run| run.client.rps)
    };
    let summaries: Vec<ServiceModeSummary> = modes
        .iter()
        .map(|mode| {
            let of_mode: Vec<&ServiceRun> =
                runs.iter().filter(|run| run.mode == mode.name).collect();
            let spread = |value: &dyn Fn(&ServiceRun) -> Option<f64>| {
                Spread::of(of_mode.iter().filter_map(|run| value(run)))
            };
            let lost: Vec<u64> = of_mode
                .iter()
                .filter_map(|run| run.tracer.as_ref()?.lost)
                .collect();
            ServiceModeSummary {
                mode: mode.name.clone(),
                rps: spread(&|run| Some(run.client.rps)),
                rps_over_untraced: spread(&|run| Some(run.client.rps / untraced_rps(run.round)?)),
                p50_us: spread(&|run| Some(run.client.p50_us)),
                p99_us: spread(&|run| Some(run.client.p99_us)),
                tracer_cores: spread(&|run| {
                    let tracer = run.tracer.as_ref()?;
                    Some(tracer.active_cpu_ns as f64 / tracer.active_wall_ns.max(1) as f64)
                }),
                tracer_peak_mib: spread(&|run| {
                    Some(run.tracer.as_ref()?.tracing_peak_kib as f64 / 1024.0)
                }),
                events_per_s: spread(&|run| {
                    let tracer = run.tracer.as_ref()?;
                    Some(tracer.received? as f64 / (tracer.active_wall_ns as f64 / 1e9))
                }),
                lost_total: (!lost.is_empty()).then(|| lost.iter().sum()),
            }
        })
        .collect();
    let sampled = summaries
        .iter()
        .find(|mode| mode.mode == "sampled")
        .and_then(|mode| mode.rps_over_untraced);
    let target = TargetCheck {
        target: "service throughput under --mode sampled ≥ 0.98 × untraced",
        met: sampled.map(|ratio| ratio.median >= MIN_SAMPLED_RATIO),
        detail: match sampled {
            Some(ratio) => format!(
                "{:.3} of untraced (median of rounds; {:.3}–{:.3})",
                ratio.median, ratio.min, ratio.max
            ),
            None => "not measured (needs modes untraced and sampled)".to_string(),
        },
    };
    ServiceSummary {
        design,
        modes: summaries,
        target,
    }
}

/// The service results for the terminal, with spreads (min–max over rounds).
fn text(summary: &ServiceSummary) -> String {
    let mut text = format!("\nwhole service: {}.\n", summary.design);
    for mode in &summary.modes {
        text += &format!("\n{}:\n", mode.mode);
        let rows: [(&str, Option<Spread>, usize); 7] = [
            ("requests/s", mode.rps, 0),
            ("over untraced (per round)", mode.rps_over_untraced, 3),
            ("p50 latency (µs)", mode.p50_us, 0),
            ("p99 latency (µs)", mode.p99_us, 0),
            ("tracer CPU under load (cores)", mode.tracer_cores, 3),
            ("tracer peak RSS (MiB)", mode.tracer_peak_mib, 1),
            ("events/s delivered", mode.events_per_s, 0),
        ];
        for (label, spread, decimals) in rows {
            if spread.is_some() {
                text += &format!("  {label:<30} {}\n", spread_text(spread, decimals));
            }
        }
        if let Some(lost) = mode.lost_total {
            text += &format!("  {:<30} {lost}\n", "events lost (all rounds)");
        }
    }
    text += &format!(
        "\n  [{}] {}: {}\n",
        verdict(summary.target.met),
        summary.target.target,
        summary.target.detail
    );
    text
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

/// The service section of `table.md` (what the README shows).
pub fn markdown(summary: &ServiceSummary) -> String {
    let mut text = format!(
        "{TABLE_HEADING}\n\n`tests/fixtures/service` (per-request maps, an evicting session \
         cache, a route counter: about 40 map operations per request besides net/http's own) \
         under `tests/fixtures/loadgen` on loopback: {}. Medians over rounds; \"vs untraced\" \
         is the median of each round's ratio.\n\n",
        summary.design
    );
    text += "| mode | requests/s | vs untraced | p50 latency (µs) | p99 latency (µs) | tracer CPU (cores) | tracer peak RSS (MiB) | events/s | events lost |\n";
    text += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for mode in &summary.modes {
        text += &format!(
            "| {} | {} | **{}** | {} | {} | {} | {} | {} | {} |\n",
            mode.mode,
            number(mode.rps.map(|s| s.median), 0),
            number(mode.rps_over_untraced.map(|s| s.median), 3),
            number(mode.p50_us.map(|s| s.median), 0),
            number(mode.p99_us.map(|s| s.median), 0),
            number(mode.tracer_cores.map(|s| s.median), 3),
            number(mode.tracer_peak_mib.map(|s| s.median), 1),
            number(mode.events_per_s.map(|s| s.median), 0),
            mode.lost_total
                .map_or("–".to_string(), |lost| lost.to_string()),
        );
    }
    text += &format!(
        "\n| target | | measured |\n|---|---|---|\n| {} | {} | {} |\n",
        summary.target.target,
        verdict(summary.target.met),
        summary.target.detail
    );
    text
}

/// Puts the service results into `results.json` (key `service`) and `table.md` (its own
/// section), keeping what the per-call phase wrote there.
fn write_results(
    out_dir: &Path,
    summary: &ServiceSummary,
    runs: &[ServiceRun],
    options: &BenchOptions,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let json_path = out_dir.join("results.json");
    let mut results = std::fs::read(&json_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| json!({}));
    results["service"] = json!({
        "options": {
            "rounds": options.rounds,
            "modes": options.service_modes,
            "seconds": options.service_seconds,
            "concurrency": options.service_concurrency,
            "cpus": options.service_cpus,
            "cache_sessions": CACHE_SESSIONS,
            "client_sessions": CLIENT_SESSIONS,
            "go": BENCH_GO,
        },
        "elapsed_s": elapsed.as_secs_f64(),
        "summary": summary,
        "runs": runs,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
    let table_path = out_dir.join("table.md");
    let previous = std::fs::read_to_string(&table_path).unwrap_or_default();
    let calls = previous
        .split_once(TABLE_HEADING)
        .map_or(previous.as_str(), |(before, _)| before)
        .trim_end();
    let table = markdown(summary);
    println!("\n{table}");
    let joined = if calls.is_empty() {
        table
    } else {
        format!("{calls}\n\n{table}")
    };
    let mut file = std::fs::File::create(&table_path)?;
    file.write_all(joined.as_bytes())?;
    eprintln!(
        "xtask: service phase done in {:.0} s; wrote {} and {}",
        elapsed.as_secs_f64(),
        json_path.display(),
        table_path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_a_list_of_names() {
        assert_eq!(
            parse_modes("untraced,floor,exact,sampled").unwrap(),
            ["untraced", "floor", "exact", "sampled"]
        );
        assert!(parse_modes("untraced,,exact").is_err());
        assert!(parse_modes("exact,exact").is_err());
        assert!(parse_modes("Exact").is_err());
    }

    #[test]
    fn cpus_are_two_different_ones_or_none() {
        assert_eq!(parse_cpus("none").unwrap(), None);
        assert!(parse_cpus("0,0").is_err());
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("0,100000").is_err());
    }

    #[test]
    fn untraced_and_floor_need_no_question_to_gomaptrace() {
        let missing = Path::new("/nonexistent/gomaptrace");
        assert_eq!(resolve_mode(missing, "untraced".into()).unwrap().args, None);
        assert_eq!(
            resolve_mode(missing, "floor".into()).unwrap().args,
            Some(vec!["--floor".to_string()])
        );
        assert!(resolve_mode(missing, "exact".into()).is_err());
    }
}
