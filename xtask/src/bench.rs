//! `cargo xtask bench`: what tracing costs a Go program, measured, never a timed test.
//!
//! A Go workload (`tests/fixtures/bench`) makes map calls at full speed in timed phases (new
//! int64, string and struct keys, overwrites, deletes, many small maps made and dropped, and
//! one goroutine per CPU overwriting at once), timing each phase itself and repeating the
//! sequence `--reps` times. Each round runs it once per mode, alternating:
//!
//! - a: untraced;
//! - b: the floor: `gomaptrace --floor`, empty BPF programs at exactly gomaptrace's sites;
//! - c: gomaptrace;
//! - d: the peer: `bpftrace` with `tests/fixtures/bench/peer.bt`, per-map counts of
//!   `mapassign*`/`mapdelete*` probed at function entry, as a user would write it.
//!
//! Per phase it reports the added cost per map call (median over rounds of each run's median
//! repetition, minus untraced) and the ratios (c−a)/(b−a) (gomaptrace over the floor) and
//! (d−a)/(c−a); for each tracer the events delivered per second, events lost, CPU while the
//! workload ran (from `/proc/PID/task/*/schedstat`) and peak RSS (`VmHWM`, sampled before the
//! stop signal and then until exit). Memory per tracked map comes from three more gomaptrace
//! runs in each of the first [`MEMORY_ROUNDS`] rounds, where the workload keeps N small maps
//! alive, makes and drops N small maps, or does neither: (VmHWM with − VmHWM without) / N,
//! for live maps and for maps already gone.
//!
//! Every tracer is stopped with SIGINT while the workload is still alive and quiet, so that
//! gomaptrace can settle its last counts and bpftrace runs its END block (which clears the
//! per-map hash: printing one line per Go map would take longer than the run).
//!
//! Results go to `target/bench/`: `results.json` (every run and the summary), `table.md` (for
//! the README) and `overhead.svg`.
//!
//! Then the service phase (`service.rs`) measures a whole Go HTTP service under load, untraced
//! and with each gomaptrace mode; `--only calls` or `--only service` runs one phase alone,
//! `--only soak` the soak (`cargo xtask soak`).

mod plot;
pub(crate) mod procfs;
mod run;
mod service;
mod summary;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde_json::json;

use crate::{build_tracer, run as run_command};
use run::{Mode, RunResult, Tools, Workload};
use summary::MemoryRuns;

/// The Go toolchain the workload is built with: swiss maps, the current default runtime.
const BENCH_GO: &str = "1.24.11";

/// Rounds that also measure memory per map: its spread across rounds is a few bytes, so
/// more rounds would only add time.
const MEMORY_ROUNDS: usize = 3;

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchOptions {
    /// Alternating rounds (each mode once per round); medians are taken over rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Map calls per phase of the workload.
    #[arg(long, default_value_t = 50_000)]
    pub calls: usize,
    /// Times each run repeats the sequence of phases; a run's figure for a phase is the
    /// median of its repetitions.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Live maps for the memory-per-map measurement; 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    pub live_maps: usize,
    /// Modes to run, as letters: a untraced, b floor, c gomaptrace, d bpftrace.
    #[arg(long, default_value = "abcd")]
    pub modes: String,
    /// Measure this gomaptrace binary instead of building the workspace's (to compare builds).
    #[arg(long, hide = true)]
    pub tracer_bin: Option<PathBuf>,
    /// Run one phase alone: `calls` (per map call) or `service` (a whole service under load).
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Service phase: what each round runs, in order: `untraced`, `floor` (`gomaptrace
    /// --floor`) or any `gomaptrace --mode` (e.g. `exact`, `sampled`).
    #[arg(long, default_value = "untraced,floor,exact,sampled")]
    pub service_modes: String,
    /// Service phase: seconds of counted load per run. Two periods of `--mode sampled`'s
    /// default schedule (a 200 ms window every 20 s), so that its runs pay for their windows
    /// in proportion, not for one window in a short run or none.
    #[arg(long, default_value_t = 40.0)]
    pub service_seconds: f64,
    /// Service phase: the load generator's concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    pub service_concurrency: usize,
    /// Service phase: `SERVER,CLIENT` CPUs to pin the service and the load generator to (the
    /// tracer stays unpinned), or `none`.
    #[arg(long, default_value = "0,1")]
    pub service_cpus: String,
}

/// The phases `--only` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// The cost per map call against the floor.
    Calls,
    /// A whole Go service's throughput under load.
    Service,
    /// Hours in bounded memory: `cargo xtask soak` at its defaults (30 minutes at 20,000
    /// maps/s). Never part of a full bench run, which it would triple.
    Soak,
}

/// Builds everything, runs the rounds, prints the table and writes `target/bench/`.
pub fn run_bench(root: &Path, options: &BenchOptions) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads BPF programs: run it as root (sudo cargo xtask bench)");
    }
    let modes = parse_modes(&options.modes)?;
    if options.rounds == 0 || options.reps == 0 || options.calls < 2 {
        bail!("--rounds and --reps must be at least 1, --calls at least 2");
    }
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    if options.only == Some(Only::Soak) {
        return crate::soak::run_soak(root, &crate::soak::SoakOptions::DEFAULT);
    }
    if options.only == Some(Only::Service) {
        return service::run_phase(root, &out_dir, tracer_binary(root, options)?, options);
    }
    let tools = Tools {
        tracer: tracer_binary(root, options)?,
        workload: build_workload(root, &out_dir)?,
        peer_script: root.join("tests/fixtures/bench/peer.bt"),
        out_dir: out_dir.clone(),
    };
    let workload = Workload {
        calls: options.calls,
        live_maps: 0,
        phases: "all",
        reps: options.reps,
    };
    let started = Instant::now();
    // One untraced run first, not recorded: page cache, CPU frequency, the first fork.
    run::run_once(&tools, Mode::Untraced, &workload).context("warm-up run")?;

    let mut runs: Vec<RunResult> = Vec::new();
    let mut memory: Vec<MemoryRuns> = Vec::new();
    for round in 1..=options.rounds {
        let mut progress = format!("xtask: bench round {round}/{}:", options.rounds);
        for &mode in &modes {
            let run_started = Instant::now();
            let result = run::run_once(&tools, mode, &workload)
                .with_context(|| format!("round {round}, mode {}", mode.name()))?;
            progress += &format!(
                " {} {:.1}s",
                mode.letter(),
                run_started.elapsed().as_secs_f64()
            );
            runs.push(result);
        }
        if options.live_maps > 0 && modes.contains(&Mode::Gomaptrace) && round <= MEMORY_ROUNDS {
            let run_started = Instant::now();
            memory.push(memory_runs(&tools, options, round)?);
            progress += &format!(" mem {:.1}s", run_started.elapsed().as_secs_f64());
        }
        eprintln!("{progress}");
    }

    let summary = summary::summarize(&runs, &memory, options.live_maps as u64);
    let context = Context::read(&runs)?;
    let context_line = context.line();
    let design = format!(
        "{} alternating rounds (a, b, c, d), each run repeating every phase {} times with {} \
         map calls per phase; per run the median repetition, then the median over rounds",
        options.rounds, options.reps, options.calls
    );
    println!(
        "{}",
        summary::text(&summary, &design).trim_end_matches('\n')
    );
    let table = summary::markdown(&summary, &design, &context_line);
    println!("\n{table}");
    std::fs::write(out_dir.join("table.md"), &table)?;
    let title = format!("Added cost per Go map call ({context_line})");
    std::fs::write(out_dir.join("overhead.svg"), plot::svg(&summary, &title))?;
    let results = json!({
        "context": context.json(),
        "options": {
            "rounds": options.rounds,
            "calls_per_phase": options.calls,
            "reps": options.reps,
            "live_maps": options.live_maps,
            "modes": modes.iter().map(|mode| mode.name()).collect::<Vec<_>>(),
        },
        "elapsed_s": started.elapsed().as_secs_f64(),
        "summary": summary,
        "runs": runs,
        "memory_runs": memory,
    });
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
    eprintln!(
        "xtask: bench done in {:.0} s; wrote {}, {} and {}",
        started.elapsed().as_secs_f64(),
        json_path.display(),
        out_dir.join("table.md").display(),
        out_dir.join("overhead.svg").display()
    );
    if options.only.is_none() {
        service::run_phase(root, &out_dir, tools.tracer.clone(), options)?;
    }
    Ok(())
}

/// The gomaptrace to measure: `--tracer-bin`, or the workspace's, built for release.
fn tracer_binary(root: &Path, options: &BenchOptions) -> anyhow::Result<PathBuf> {
    match &options.tracer_bin {
        Some(path) => Ok(path.clone()),
        None => build_tracer(root, true),
    }
}

/// Three gomaptrace runs that differ only in the maps the workload makes: none; N small maps
/// kept alive; N small maps made and dropped at once (`small_maps` phase). Their order
/// rotates between rounds.
fn memory_runs(tools: &Tools, options: &BenchOptions, round: usize) -> anyhow::Result<MemoryRuns> {
    let live = options.live_maps;
    let plans = [
        (
            "without",
            Workload {
                calls: 2,
                live_maps: 0,
                phases: "none",
                reps: 1,
            },
        ),
        (
            "live",
            Workload {
                calls: 2,
                live_maps: live,
                phases: "none",
                reps: 1,
            },
        ),
        // small_maps makes calls/2 maps.
        (
            "churned",
            Workload {
                calls: 2 * live,
                live_maps: 0,
                phases: "small_maps",
                reps: 1,
            },
        ),
    ];
    let mut results: Vec<Option<RunResult>> = vec![None, None, None];
    for step in 0..plans.len() {
        let index = (step + round) % plans.len();
        let (name, workload) = &plans[index];
        let result = run::run_once(tools, Mode::Gomaptrace, workload)
            .with_context(|| format!("round {round}, memory run `{name}` ({live} maps)"))?;
        results[index] = Some(result);
    }
    let mut results = results
        .into_iter()
        .map(|result| result.expect("every plan ran"));
    let mut next = || results.next().expect("three runs");
    Ok(MemoryRuns {
        without: next(),
        live: next(),
        churned: next(),
    })
}

fn parse_modes(letters: &str) -> anyhow::Result<Vec<Mode>> {
    let mut modes = Vec::new();
    for letter in letters.chars() {
        let mode = Mode::ALL
            .into_iter()
            .find(|mode| mode.letter() == letter)
            .with_context(|| format!("unknown mode `{letter}` in --modes: use a, b, c, d"))?;
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    if modes.is_empty() {
        bail!("--modes is empty");
    }
    modes.sort_by_key(|mode| mode.letter());
    Ok(modes)
}

/// Builds the workload with the project's Go toolchain into `out_dir/mapbench`.
fn build_workload(root: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let go = root.join(".tools/go").join(BENCH_GO).join("bin/go");
    if !go.exists() {
        bail!(
            "Go {BENCH_GO} is missing at {}: run `cargo xtask setup`",
            go.display()
        );
    }
    let binary = out_dir.join("mapbench");
    run_command(
        Command::new(go)
            .args(["build", "-trimpath", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(root.join("tests/fixtures/bench"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", out_dir.join("gocache"))
            .env("GOPATH", out_dir.join("gopath")),
    )?;
    Ok(binary)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Where the numbers were measured.
struct Context {
    go: String,
    kernel: String,
    cpus: usize,
    cpu_model: String,
    bpftrace: String,
}

impl Context {
    fn read(runs: &[RunResult]) -> anyhow::Result<Context> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let bpftrace = Command::new("bpftrace")
            .arg("--version")
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
            .unwrap_or_default();
        Ok(Context {
            go: runs.first().map(|run| run.go.clone()).unwrap_or_default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")?
                .trim()
                .to_string(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
                .unwrap_or_default(),
            bpftrace,
        })
    }

    fn line(&self) -> String {
        format!(
            "{} workload, Linux {}, {} CPUs",
            self.go, self.kernel, self.cpus
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "go": self.go,
            "kernel": self.kernel,
            "cpus": self.cpus,
            "cpu_model": self.cpu_model,
            "bpftrace": self.bpftrace,
        })
    }
}
