//! `cargo xtask soak`: an hours-long trace in bounded memory, measured. Not part of CI.
//!
//! Traces the soak fixture (`tests/fixtures/soak`: `--rate` small maps a second, dropped
//! for the garbage collector, and a slow leak) for `--minutes` with every export on
//! (`--json`, `--pprof`, `--hlog`, `--plot`, every 10 s), and records the tracer's resident
//! memory and CPU every minute, then the size of each output. Writes
//! `target/soak/results.json` and prints the table the README quotes.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;

use crate::bench::procfs;
use crate::{build_tracer, run as run_command};

/// The Go release the soak fixture is built with.
const SOAK_GO: &str = "1.24.11";

/// What `cargo xtask soak` takes.
#[derive(Debug, clap::Args)]
pub struct SoakOptions {
    /// How long to trace, in minutes.
    #[arg(long, default_value_t = SoakOptions::DEFAULT.minutes)]
    pub minutes: u64,
    /// Maps the fixture creates per second.
    #[arg(long, default_value_t = SoakOptions::DEFAULT.rate)]
    pub rate: u64,
}

impl SoakOptions {
    /// The soak: at least 30 minutes of a service making 20,000 maps a second.
    pub const DEFAULT: SoakOptions = SoakOptions {
        minutes: 30,
        rate: 20_000,
    };
}

/// One reading of the tracer.
struct Sample {
    minute: u64,
    rss_kib: u64,
    cpu_s: f64,
    /// Maps the model held (not known released), from the JSON the tracer last rewrote.
    live_maps: u64,
    /// Maps created since the trace began, from the same JSON.
    created: u64,
}

/// Live and created maps summed over the sites of the JSON report at `path`; zeros while
/// there is none yet.
fn model_counts(path: &Path) -> (u64, u64) {
    let Ok(bytes) = std::fs::read(path) else {
        return (0, 0);
    };
    let Ok(report) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return (0, 0);
    };
    let sum = |field: &str| -> u64 {
        report["sites"]
            .as_array()
            .map(|sites| sites.iter().filter_map(|site| site[field].as_u64()).sum())
            .unwrap_or(0)
    };
    (sum("live_maps"), sum("maps_created"))
}

/// Runs the soak and prints its figures.
pub fn run_soak(root: &Path, options: &SoakOptions) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak loads BPF programs: run it as root");
    }
    let tracer = build_tracer(root, true)?;
    let out = root.join("target/soak");
    std::fs::create_dir_all(&out)?;
    let fixture = build_fixture(root, &out)?;

    let mut service = Command::new(&fixture)
        .arg(options.rate.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", fixture.display()))?;
    let mut lines = BufReader::new(service.stdout.take().context("piped")?).lines();
    if lines.next().transpose()?.as_deref() != Some("ready") {
        bail!("the soak fixture did not start");
    }
    let path = |name: &str| out.join(name);
    let mut traced = Command::new(&tracer)
        .arg("--pid")
        .arg(service.id().to_string())
        .args(["--interval", "10s", "--refresh", "10s", "--json"])
        .arg(path("report.json"))
        .arg("--pprof")
        .arg(path("maps.pb.gz"))
        .arg("--hlog")
        .arg(path("maps.hlog"))
        .arg("--plot")
        .arg(path("maps.svg"))
        .stdout(std::fs::File::create(path("report.txt"))?)
        .stderr(std::fs::File::create(path("tracer.log"))?)
        .spawn()
        .context("cannot start gomaptrace")?;
    let tracer_pid = traced.id();
    let started = Instant::now();
    let mut samples = Vec::new();
    for minute in 1..=options.minutes {
        let due = started + Duration::from_secs(60 * minute);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if traced.try_wait()?.is_some() {
            bail!(
                "gomaptrace stopped early: see {}",
                path("tracer.log").display()
            );
        }
        let memory = procfs::memory(tracer_pid)?;
        let cpu_s = procfs::cpu_ns(tracer_pid)? as f64 / 1e9;
        let (live_maps, created) = model_counts(&path("report.json"));
        eprintln!(
            "xtask: soak minute {minute}: tracer RSS {} KiB, CPU {cpu_s:.1} s, model {live_maps} live maps, {created} created",
            memory.now_kib
        );
        samples.push(Sample {
            minute,
            rss_kib: memory.now_kib,
            cpu_s,
            live_maps,
            created,
        });
    }
    procfs::signal(tracer_pid, libc::SIGINT)?;
    let status = traced.wait()?;
    let _ = service.kill();
    let _ = service.wait();
    if !status.success() {
        bail!(
            "gomaptrace failed ({status}): see {}",
            path("tracer.log").display()
        );
    }

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(path("report.json"))?)?;
    let created: u64 = report["sites"]
        .as_array()
        .context("sites")?
        .iter()
        .filter_map(|site| site["maps_created"].as_u64())
        .sum();
    let duration_s = report["duration_s"].as_f64().unwrap_or(1.0);
    let size = |name: &str| std::fs::metadata(path(name)).map_or(0, |meta| meta.len());
    // The first minute holds the start-up (attach, first report); flat is judged after it.
    let settled: Vec<u64> = samples
        .iter()
        .skip(1)
        .map(|sample| sample.rss_kib)
        .collect();
    let (low, high) = (
        settled.iter().copied().min().unwrap_or(0),
        settled.iter().copied().max().unwrap_or(0),
    );
    let flat = low > 0 && (high as f64) <= low as f64 * 1.10;
    let cpu_cores = samples
        .last()
        .map_or(0.0, |last| last.cpu_s / (60.0 * last.minute as f64));
    let results = json!({
        "minutes": options.minutes,
        "rate_asked": options.rate,
        "maps_created_per_s": created as f64 / duration_s,
        "lost": report["events"]["lost"],
        "rss_kib_per_minute": samples.iter().map(|sample| sample.rss_kib).collect::<Vec<_>>(),
        "live_maps_per_minute": samples.iter().map(|sample| sample.live_maps).collect::<Vec<_>>(),
        "created_per_minute": samples.iter().map(|sample| sample.created).collect::<Vec<_>>(),
        "rss_flat_within_10_percent_after_minute_1": flat,
        "cpu_cores": cpu_cores,
        "bytes": {
            "report.json": size("report.json"),
            "maps.pb.gz": size("maps.pb.gz"),
            "maps.hlog": size("maps.hlog"),
            "maps.svg": size("maps.svg"),
        },
    });
    std::fs::write(path("results.json"), serde_json::to_vec_pretty(&results)?)?;
    println!("| minute | tracer RSS (MiB) | tracer CPU (s) | model's live maps | maps created/s |");
    println!("|---:|---:|---:|---:|---:|");
    let mut created_before = 0;
    for sample in &samples {
        println!(
            "| {} | {:.1} | {:.1} | {} | {:.0} |",
            sample.minute,
            sample.rss_kib as f64 / 1024.0,
            sample.cpu_s,
            sample.live_maps,
            sample.created.saturating_sub(created_before) as f64 / 60.0
        );
        created_before = sample.created;
    }
    println!(
        "\n{:.0} maps/s created for {:.0} s, {} events lost; tracer {cpu_cores:.3} cores; RSS after minute 1 {} within 10 % ({:.1}–{:.1} MiB); report.json {} bytes, maps.pb.gz {}, maps.hlog {}, maps.svg {}",
        created as f64 / duration_s,
        duration_s,
        report["events"]["lost"],
        if flat { "flat" } else { "NOT flat" },
        low as f64 / 1024.0,
        high as f64 / 1024.0,
        size("report.json"),
        size("maps.pb.gz"),
        size("maps.hlog"),
        size("maps.svg"),
    );
    Ok(())
}

fn build_fixture(root: &Path, out: &Path) -> anyhow::Result<std::path::PathBuf> {
    let go = root.join(".tools/go").join(SOAK_GO).join("bin/go");
    if !go.exists() {
        bail!(
            "Go {SOAK_GO} is missing at {}: run `cargo xtask setup`",
            go.display()
        );
    }
    let binary = out.join("soak");
    run_command(
        Command::new(go)
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(root.join("tests/fixtures/soak"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0"),
    )?;
    Ok(binary)
}
