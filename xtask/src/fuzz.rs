//! `cargo xtask fuzz`: runs each libFuzzer target in `fuzz/` (see `tracer::fuzzing`) for a
//! fixed time and prints, per target, the executions, the coverage, the CPU time spent and
//! what was found.
//!
//! Each target starts from the committed corpus (`fuzz/corpus/<target>`) and
//! `fuzz/regressions/<target>`, and writes what it learns to `target/fuzz/corpus/<target>`,
//! so a run never changes the committed corpus. Findings (crash, timeout, out-of-memory
//! inputs) land in `target/fuzz/artifacts/<target>/`; minimise one and move it to
//! `fuzz/regressions/<target>/` with the fix, and the default test run replays it forever.
//!
//! The properties are libFuzzer's: no panic (a crash), no input that runs longer than
//! [`INPUT_TIMEOUT_S`] (a hang), no allocation above [`MALLOC_LIMIT_MB`] and no more than
//! [`RSS_LIMIT_MB`] resident (unbounded memory). Arithmetic overflow panics too: the fuzz
//! build has overflow checks on. Fuzzing runs at the lowest CPU priority (nice 19): it is
//! background work on a shared machine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};

/// The fuzz targets, as `fuzz/Cargo.toml` names them (`tracer::fuzzing::Target::name`).
pub const TARGETS: [&str; 7] = [
    "elf",
    "go_sections",
    "dwarf_roots",
    "map_types",
    "heap",
    "inventory",
    "recording",
];

/// One input may run this long before libFuzzer calls it a hang.
const INPUT_TIMEOUT_S: u32 = 10;
/// One allocation above this is a finding: no reader needs that much for one input.
const MALLOC_LIMIT_MB: u32 = 256;
/// Resident memory above this is a finding.
const RSS_LIMIT_MB: u32 = 1024;

/// `cargo xtask fuzz` options.
#[derive(Debug, clap::Args)]
pub struct FuzzOptions {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only these targets (repeatable); all of them by default.
    #[arg(long = "target")]
    targets: Vec<String>,
}

/// What one target's run did.
struct Outcome {
    target: String,
    executions: Option<u64>,
    coverage: Option<u64>,
    cpu_s: f64,
    wall_s: f64,
    findings: Vec<String>,
}

/// Builds the targets and runs each for `options.seconds`; fails when any found something.
pub fn run_fuzz(root: &Path, options: &FuzzOptions) -> anyhow::Result<()> {
    for target in &options.targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "no fuzz target {target:?}: the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let targets: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        options.targets.iter().map(String::as_str).collect()
    };
    lowest_priority();
    crate::run(cargo_fuzz(root).args(["build", "-O", "-a"]))?;
    let mut outcomes = Vec::new();
    for target in targets {
        outcomes.push(fuzz_one(root, target, options.seconds)?);
    }
    println!(
        "{:<12} {:>12} {:>8} {:>9} {:>9}  findings",
        "target", "executions", "cov", "cpu s", "wall s"
    );
    let show = |value: Option<u64>| value.map_or("?".to_owned(), |value| value.to_string());
    for outcome in &outcomes {
        println!(
            "{:<12} {:>12} {:>8} {:>9.1} {:>9.1}  {}",
            outcome.target,
            show(outcome.executions),
            show(outcome.coverage),
            outcome.cpu_s,
            outcome.wall_s,
            if outcome.findings.is_empty() {
                "none".to_owned()
            } else {
                outcome.findings.join(" ")
            }
        );
    }
    let cpu: f64 = outcomes.iter().map(|outcome| outcome.cpu_s).sum();
    println!("total CPU time: {cpu:.0} s ({:.3} CPU-hours)", cpu / 3600.0);
    let found: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| !outcome.findings.is_empty())
        .map(|outcome| outcome.target.as_str())
        .collect();
    if !found.is_empty() {
        bail!(
            "fuzzing found inputs that break {} (see target/fuzz/artifacts/)",
            found.join(", ")
        );
    }
    Ok(())
}

/// Runs one target for `seconds` and reads its statistics and findings.
fn fuzz_one(root: &Path, target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let scratch = root.join("target/fuzz/corpus").join(target);
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    let logs = root.join("target/fuzz/logs");
    for dir in [&scratch, &artifacts, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let before_artifacts = list(&artifacts);
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    // The fuzzer binary itself, not `cargo fuzz run`, so the CPU time counted is fuzzing
    // only, never a rebuild.
    let mut command = Command::new(
        root.join("fuzz/target")
            .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
            .join("release")
            .join(target),
    );
    command
        .arg(&scratch)
        .arg(root.join("fuzz/corpus").join(target));
    let regressions = root.join("fuzz/regressions").join(target);
    if regressions.is_dir() {
        command.arg(&regressions);
    }
    let mut artifact_prefix = artifacts.clone().into_os_string();
    artifact_prefix.push("/");
    command
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .arg(format!(
            "-artifact_prefix={}",
            artifact_prefix.to_string_lossy()
        ))
        .stdout(Stdio::null())
        .stderr(log);
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log: {})",
        log_path.display()
    );
    let cpu_before = children_cpu_seconds();
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = children_cpu_seconds() - cpu_before;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut findings: Vec<String> = list(&artifacts)
        .into_iter()
        .filter(|name| !before_artifacts.contains(name))
        .collect();
    if !status.success() && findings.is_empty() {
        findings.push(format!("exited with {status} (see {})", log_path.display()));
    }
    Ok(Outcome {
        target: target.to_owned(),
        executions: final_stat(&text, "stat::number_of_executed_units:"),
        coverage: last_coverage(&text),
        cpu_s,
        wall_s,
        findings,
    })
}

/// `cargo +nightly fuzz` in the workspace root: libFuzzer needs nightly's sanitizer flags.
/// The tracer it links needs no BPF object (the readers never load one).
fn cargo_fuzz(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command
        .arg("+nightly")
        .arg("fuzz")
        .current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("GOMAPTRACE_BPF", "stub");
    command
}

/// Lowers this process's CPU priority (and so its children's) to the lowest.
fn lowest_priority() {
    // SAFETY: setpriority on this process with a valid priority has no memory effects.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// User plus system CPU seconds of every waited-for child so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// File names in `dir`.
fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A number from libFuzzer's `-print_final_stats` lines, e.g. `stat::number_of_executed_units: 1234`.
fn final_stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|value| value.trim().parse().ok())
}

/// The last `cov: N` libFuzzer printed.
fn last_coverage(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|line| {
        let after = line.split_once(" cov: ")?.1;
        after.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_statistics() {
        let log = "#2\tINITED cov: 812 ft: 1301 corp: 40/1090Kb exec/s: 0 rss: 80Mb\n\
                   #4096\tpulse  cov: 840 ft: 1402 corp: 44/1100Kb exec/s: 2048 rss: 90Mb\n\
                   Done 5000 runs in 10 second(s)\n\
                   stat::number_of_executed_units: 5000\n\
                   stat::average_exec_per_sec:     500\n";
        assert_eq!(
            final_stat(log, "stat::number_of_executed_units:"),
            Some(5000)
        );
        assert_eq!(last_coverage(log), Some(840));
        assert_eq!(final_stat("", "stat::number_of_executed_units:"), None);
    }

    #[test]
    fn every_fuzz_target_is_declared() {
        let manifest = std::fs::read_to_string(crate::workspace_root().join("fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml");
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} is not a [[bin]] of fuzz/Cargo.toml"
            );
        }
    }
}
