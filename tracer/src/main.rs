//! `gomaptrace`: the command-line edge. Parses flags, runs one trace, prints the report.
//! Errors become one line on stderr and a non-zero exit status.

use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tracer::export::{self, json, Export, Exports};
use tracer::launch::{Launched, Program};
use tracer::live::LiveView;
use tracer::pipeline;
use tracer::report::Report;
use tracer::sampled::Schedule;
use tracer::session::{self, Options, StopReason};
use tracer::verdict::Thresholds;

/// Follow every map of a running Go program: where it was created, how many entries it holds,
/// whether they are ever released. Attaches eBPF uprobes; the target is never stopped.
#[derive(Debug, Parser)]
#[command(name = "gomaptrace", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Rebuild the report of a recording made with `--record`, on any machine.
    Replay {
        /// The recording.
        path: PathBuf,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// List at most this many maps in the JSON besides the suspects' (the biggest).
        #[arg(long, default_value_t = json::DEFAULT_MAX_MAPS, value_name = "N")]
        max_maps: usize,
    },
    /// List the maps a running Go program holds in package-level variables (idle ones too),
    /// with their entries, capacity and memory, without attaching any probe.
    Inventory {
        /// The Go process to look at.
        #[arg(long)]
        pid: u32,
        /// Also write the report as JSON to this file (replaced atomically).
        #[arg(long)]
        json: Option<PathBuf>,
        /// `retains-capacity` needs a peak (what an idle map's capacity says it once held)
        /// of at least this many entries.
        #[arg(long, default_value_t = Thresholds::default().retain_min_peak, value_name = "ENTRIES")]
        retain_min_peak: u64,
        /// `retains-capacity` needs the live count at or below this fraction of the peak.
        #[arg(long, default_value_t = Thresholds::default().retain_max_ratio, value_name = "FRACTION")]
        retain_max_ratio: f64,
    },
}

#[derive(Debug, Args)]
struct TraceArgs {
    /// The Go process to trace.
    #[arg(long, required_unless_present_any = ["program", "container"])]
    pid: Option<u32>,
    /// Trace the Go process of this running container: its name, full id or a unique id
    /// prefix (at least 4 hex digits). A container with several Go processes is an error
    /// that lists their host pids, for `--pid`.
    #[arg(long, value_name = "NAME|ID", conflicts_with = "pid")]
    container: Option<String>,
    /// Launch mode: start this Go program (looked up in PATH like a shell) with these
    /// arguments, every probe live before its first instruction, so maps made in `init()`
    /// have creation sites. Its stdin, stdout and stderr are its own, gomaptrace exits with
    /// its status, and the report goes to stderr.
    #[arg(
        last = true,
        value_name = "PROGRAM [ARGS]",
        conflicts_with_all = ["pid", "container"]
    )]
    program: Vec<OsString>,
    /// Stop after this long (e.g. 30s, 500ms, 2m); default: until Ctrl-C, SIGTERM or the
    /// target's exit.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Also write the report as JSON to this file (replaced atomically).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Save everything the report is built from to this file, for `gomaptrace replay`.
    /// It holds no key contents.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Follow one key in N (rounded up to a power of two) from insert to delete, chosen by
    /// a salted hash of its bytes on the BPF side, for entry lifetimes; 0 turns it off.
    #[arg(long, default_value_t = 64, value_name = "N")]
    sample_keys: u64,
    /// `never-released` needs at least this many more entries at the end of the trace than
    /// at its start (or at the map's first sighting).
    #[arg(long, default_value_t = Thresholds::default().leak_min_growth, value_name = "ENTRIES")]
    leak_min_growth: u64,
    /// The trend behind `never-released` is read over this many equal sub-intervals.
    #[arg(long, default_value_t = Thresholds::default().leak_intervals, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=(tracer::trend::BUCKETS / 2) as i64))]
    leak_intervals: u32,
    /// `never-released` needs growth in at least this fraction of the sub-intervals.
    #[arg(long, default_value_t = Thresholds::default().leak_min_rising, value_name = "FRACTION",
          value_parser = parse_fraction)]
    leak_min_rising: f64,
    /// `never-released` needs each sub-interval's gain to be at most this fraction of the
    /// net growth (more is a one-off fill, not a trend).
    #[arg(long, default_value_t = Thresholds::default().leak_max_share, value_name = "FRACTION",
          value_parser = parse_fraction)]
    leak_max_share: f64,
    /// `never-released` needs the sub-intervals that shrank to give back at most this
    /// fraction of what the others gained.
    #[arg(long, default_value_t = Thresholds::default().leak_max_giveback, value_name = "FRACTION",
          value_parser = parse_fraction)]
    leak_max_giveback: f64,
    /// `never-released` needs growth within this last fraction of the trace.
    #[arg(long, default_value_t = Thresholds::default().leak_recent_fraction, value_name = "FRACTION",
          value_parser = parse_fraction)]
    leak_recent_fraction: f64,
    /// `never-released` needs the map to be seen for at least this long (e.g. 1s, 500ms).
    #[arg(long, default_value_t = Thresholds::default().leak_min_window_s, value_name = "DURATION",
          value_parser = parse_seconds)]
    leak_min_window: f64,
    /// `retains-capacity` needs a peak of at least this many entries.
    #[arg(long, default_value_t = Thresholds::default().retain_min_peak, value_name = "ENTRIES")]
    retain_min_peak: u64,
    /// `retains-capacity` needs the live count at or below this fraction of the peak.
    #[arg(long, default_value_t = Thresholds::default().retain_max_ratio, value_name = "FRACTION")]
    retain_max_ratio: f64,
    /// How often the live view refreshes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    refresh: Duration,
    /// Write the live maps as a gzipped pprof profile to this file, keyed by creation (or
    /// writer) stack: `go tool pprof -top PATH`. Replaced atomically every `--interval`.
    #[arg(long, value_name = "PATH")]
    pprof: Option<PathBuf>,
    /// Append an HdrHistogram interval log to this file every `--interval` (tags
    /// map_peak_entries, map_lifetime_us, entry_lifetime_us, map_est_bytes).
    #[arg(long, value_name = "PATH")]
    hlog: Option<PathBuf>,
    /// Draw live entries and estimated bytes over time of the top suspects and sites to
    /// this SVG file, redrawn every `--interval`.
    #[arg(long, value_name = "PATH.svg")]
    plot: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics while tracing (e.g. 127.0.0.1:9464),
    /// updated every `--interval`.
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// How often the exports (`--json`, `--pprof`, `--hlog`, `--plot`, `--serve`) are
    /// written while tracing.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    interval: Duration,
    /// List at most this many maps in the JSON besides the suspects' (the biggest by
    /// memory); the others are counted in `maps_unlisted`, and in `sites` and `histograms`.
    #[arg(long, default_value_t = json::DEFAULT_MAX_MAPS, value_name = "N")]
    max_maps: usize,
    /// The live view also lists maps by address (the fastest growing and the busiest), below
    /// the sites of code.
    #[arg(long)]
    live_addresses: bool,
    /// Attach empty programs at the same sites instead (measures the uprobe cost itself).
    #[arg(long, hide = true, conflicts_with = "mode")]
    floor: bool,
    /// Print on stderr why a probe could not read what it needed (a map header, a new map,
    /// a call stack): the BPF programs' own diagnostics, off unless asked for.
    #[arg(long)]
    verbose: bool,
    /// `exact`: every map call probed for the whole trace, every number exact. `sampled`:
    /// for long runs on busy services, probes attached only for `--window` every `--period`
    /// and map headers polled every `--poll` in between (exact live counts, capacity,
    /// releases and verdicts; per-site creation counts estimated and labelled so).
    #[arg(long, value_enum, default_value = "exact")]
    mode: ModeArg,
    /// `--mode sampled`: how long every probe stays attached in each discovery window.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    window: Duration,
    /// `--mode sampled`: from one discovery window's start to the next. The probes are on
    /// for the window and about 0.1 s more while they go, so at the defaults a service pays
    /// at most 1.5 % of what exact mode would cost it, however map-heavy it is; a new map
    /// site is seen within a period.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    period: Duration,
    /// `--mode sampled`: how often the known maps' headers are read between windows.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll: Duration,
}

/// The values of `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Every probe on every map call.
    Exact,
    /// Discovery windows and polled headers.
    Sampled,
}

/// Rows of each table in the text report.
const TEXT_ROWS: usize = 20;

fn main() -> ExitCode {
    tracer::allocator::configure();
    let cli = Cli::parse();
    // Outlives `run`, so that an error is printed before a launched program is waited for.
    let mut launched = None;
    let result = match &cli.command {
        Some(Command::Replay {
            path,
            json,
            max_maps,
        }) => replay(path, json.as_deref(), *max_maps).map(|()| ExitCode::SUCCESS),
        Some(Command::Inventory {
            pid,
            json,
            retain_min_peak,
            retain_max_ratio,
        }) => {
            let thresholds = Thresholds {
                retain_min_peak: *retain_min_peak,
                retain_max_ratio: *retain_max_ratio,
                ..Thresholds::default()
            };
            tracer::snapshot::inventory_report(*pid, thresholds)
                .map_err(anyhow::Error::from)
                .and_then(|report| emit(&report, json.as_deref(), json::DEFAULT_MAX_MAPS, false))
                .map(|()| ExitCode::SUCCESS)
        }
        None => run(&cli.trace, &mut launched),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gomaptrace: error: {}", one_line(&error));
            // Kills a program not started yet; waits for one already running.
            drop(launched);
            ExitCode::FAILURE
        }
    }
}

fn replay(
    path: &std::path::Path,
    json: Option<&std::path::Path>,
    max_maps: usize,
) -> anyhow::Result<()> {
    let report = pipeline::replay(path)?;
    emit(&report, json, max_maps, false)
}

/// Prints the text report (to stderr in launch mode, where stdout is the program's) and
/// writes the JSON one, listing at most `max_maps` maps besides the suspects'.
fn emit(
    report: &Report,
    json: Option<&std::path::Path>,
    max_maps: usize,
    stderr: bool,
) -> anyhow::Result<()> {
    if stderr {
        eprint!("{}", report.render_text(TEXT_ROWS));
    } else {
        print!("{}", report.render_text(TEXT_ROWS));
    }
    if let Some(path) = json {
        json::limited(report, max_maps)
            .write_json(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn run(args: &TraceArgs, launched: &mut Option<Launched>) -> anyhow::Result<ExitCode> {
    // Forked first, while this process has a single thread (the event loop does not exist).
    *launched = match args.program.split_first() {
        Some((program, program_args)) => {
            Some(Launched::fork(Program::resolve(program, program_args)?)?)
        }
        None => None,
    };
    let pid = match (launched.as_ref(), &args.container) {
        (Some(child), _) => child.pid(),
        (None, Some(query)) => tracer::container::go_process(&tracer::container::find(query)?)?,
        (None, None) => args
            .pid
            .context("--pid, --container or a PROGRAM to launch is required")?,
    };
    let thresholds = Thresholds {
        leak_min_growth: args.leak_min_growth,
        leak_intervals: args.leak_intervals,
        leak_min_rising: args.leak_min_rising,
        leak_max_share: args.leak_max_share,
        leak_max_giveback: args.leak_max_giveback,
        leak_recent_fraction: args.leak_recent_fraction,
        leak_min_window_s: args.leak_min_window,
        retain_min_peak: args.retain_min_peak,
        retain_max_ratio: args.retain_max_ratio,
    };
    let options = Options {
        duration: args.duration,
        sample_one_in: args.sample_keys,
        thresholds,
        record: args.record.clone(),
        floor: args.floor,
        verbose: args.verbose,
        tick: args
            .refresh
            .min(args.interval)
            .max(Duration::from_millis(100)),
        sampling: match args.mode {
            ModeArg::Exact => None,
            ModeArg::Sampled => Some(Schedule::new(args.window, args.period, args.poll)?),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    // The terminal belongs to a launched program: no live view over its output.
    let launch_mode = launched.is_some();
    let on_terminal = !launch_mode && std::io::stdout().is_terminal();
    let tick_s = options.tick.as_secs_f64();
    let mut view = LiveView::with_addresses(args.live_addresses);
    let (stop, mut exports): (Pin<Box<dyn Future<Output = ()>>>, Exports) = {
        let _in_runtime = runtime.enter();
        let stop: Pin<Box<dyn Future<Output = ()>>> = if launch_mode {
            let forwarding = forward_terminate(pid).context("cannot handle Ctrl-C and SIGTERM")?;
            runtime.spawn(forwarding);
            Box::pin(std::future::pending())
        } else {
            Box::pin(stop_signal().context("cannot handle Ctrl-C and SIGTERM")?)
        };
        (stop, exports(args, pid)?)
    };
    let on_attached = |attached: &session::Attached| {
        eprintln!(
            "gomaptrace: attached {} probes to pid {} ({}); Ctrl-C to stop",
            attached.probes, attached.pid, attached.go_version
        );
    };
    let on_tick = |pipeline: &pipeline::Pipeline| {
        exports.tick(pipeline, session::monotonic_ns());
        if on_terminal {
            print!("{}", view.render_screen(pipeline, tick_s));
        } else if !launch_mode {
            eprintln!("{}", view.render_line(pipeline, tick_s));
        }
    };
    let outcome = runtime.block_on(async {
        match launched.as_mut() {
            Some(child) => {
                session::trace_launched(child, &options, stop, on_attached, on_tick).await
            }
            None => session::trace(pid, &options, stop, on_attached, on_tick).await,
        }
    })?;
    if on_terminal {
        print!("\x1b[H\x1b[2J");
    }
    if outcome.stop == StopReason::TargetExited && !launch_mode {
        eprintln!("gomaptrace: pid {pid} exited; the report covers what was seen until then");
    }
    emit(
        &outcome.report,
        args.json.as_deref(),
        args.max_maps,
        launch_mode,
    )?;
    exports.finish(&outcome.report, &outcome.histograms)?;
    match launched.as_mut() {
        Some(child) => {
            let status = runtime
                .block_on(child.exited())
                .with_context(|| format!("cannot wait for pid {pid}"))?;
            Ok(ExitCode::from(status))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// In launch mode, Ctrl-C reaches the program from the terminal (the whole foreground
/// process group gets it): gomaptrace keeps tracing until the program exits. SIGTERM, sent
/// to gomaptrace alone, is passed on to the program. Returns the task that does both, with
/// the handlers already installed.
fn forward_terminate(pid: u32) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {
                    // SAFETY: our own child, reaped only after this task stops being polled.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
        }
    })
}

/// The exports asked for, each checked now so that a bad path or address fails before any
/// probe is attached. Must run inside the tokio runtime (the metrics server is a task on it).
fn exports(args: &TraceArgs, pid: u32) -> anyhow::Result<Exports> {
    let mut outputs: Vec<Box<dyn Export>> = Vec::new();
    for path in [&args.json, &args.pprof, &args.plot].into_iter().flatten() {
        export::check_writable(path)?;
    }
    if let Some(path) = &args.json {
        outputs.push(Box::new(json::Json::new(path.clone(), args.max_maps)));
    }
    if let Some(path) = &args.pprof {
        outputs.push(Box::new(export::pprof::Pprof::new(path.clone())));
    }
    if let Some(path) = &args.hlog {
        outputs.push(Box::new(export::hlog::Hlog::create(path.clone())?));
    }
    if let Some(path) = &args.plot {
        outputs.push(Box::new(export::plot::Plot::new(path.clone())));
    }
    if let Some(addr) = &args.serve {
        let container = export::prometheus::cgroup_of(pid);
        outputs.push(Box::new(export::prometheus::Metrics::serve(
            addr, container,
        )?));
    }
    Ok(Exports::new(outputs, args.interval))
}

/// The error and its causes on one line. Library errors already quote their cause in their
/// own message (so they read well alone); a cause is only appended when it adds something.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// Installs the Ctrl-C and SIGTERM handlers now, before any probe is attached, and returns
/// what resolves on either. Handlers installed only when the trace first waits for them left
/// a window after "attached" in which a signal took its default action: gomaptrace died
/// without a report.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 500ms or 2m"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|error| format!("`{text}`: {error}"))
}

/// Parses a fraction between 0 and 1.
fn parse_fraction(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|value| (0.0..=1.0).contains(value))
        .ok_or_else(|| format!("`{text}` is not a fraction between 0 and 1"))
}

/// Parses a duration (see [`parse_duration`]) into seconds.
fn parse_seconds(text: &str) -> Result<f64, String> {
    parse_duration(text).map(|duration| duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_stay_between_zero_and_one() {
        assert_eq!(parse_fraction("0.8"), Ok(0.8));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
        assert_eq!(parse_seconds("500ms"), Ok(0.5));
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let inner = std::io::Error::other("disk full");
        let error = anyhow::Error::new(inner).context("cannot write x: disk full");
        assert_eq!(one_line(&error), "cannot write x: disk full");
        let error = anyhow::anyhow!("deeper").context("cannot write y");
        assert_eq!(one_line(&error), "cannot write y: deeper");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
