//! From runs to results: medians over rounds, added cost per call, the ratios, the tracers'
//! own costs, and the tables that show them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::run::{Mode, Phase, RunResult};

/// A statistic over rounds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, or `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let middle = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[middle]
        } else {
            (values[middle - 1] + values[middle]) / 2.0
        };
        Some(Spread {
            median,
            min: values[0],
            max: values[values.len() - 1],
        })
    }
}

/// One phase across modes.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseSummary {
    /// The phase, or `all` for every phase together (total time over total calls).
    pub name: String,
    /// Runtime map calls per repetition.
    pub calls: u64,
    /// Nanoseconds per map call, per mode, over rounds (each round: the median of its
    /// repetitions).
    pub ns_per_call: BTreeMap<&'static str, Spread>,
    /// Median nanoseconds per call added by each traced mode: `mode − untraced`.
    pub added_ns_per_call: BTreeMap<&'static str, f64>,
    /// `(c − a) / (b − a)`: gomaptrace's added cost over the floor's (target ≤ 1.10).
    pub gomaptrace_over_floor: Option<f64>,
    /// `(d − a) / (c − a)`: bpftrace's added cost over gomaptrace's.
    pub bpftrace_over_gomaptrace: Option<f64>,
}

/// One tracer's own costs, over rounds.
#[derive(Clone, Debug, Serialize)]
pub struct TracerSummary {
    /// Which one.
    pub mode: &'static str,
    /// Events delivered to userspace per second of workload (gomaptrace only).
    pub events_per_s: Option<Spread>,
    /// Events delivered per run.
    pub received: Option<Spread>,
    /// Events lost, summed over every round.
    pub lost_total: Option<u64>,
    /// CPU cores used while the workload ran (CPU time over wall time of that window).
    pub cpu_cores: Option<Spread>,
    /// CPU seconds over the tracer's whole life, start-up and report included.
    pub cpu_total_s: Option<Spread>,
    /// CPU seconds from start to probes live.
    pub cpu_attach_s: Option<Spread>,
    /// CPU seconds after the stop signal (detach, settle, report).
    pub cpu_stop_s: Option<Spread>,
    /// Peak RSS while tracing, MiB (`VmHWM` before the stop signal).
    pub tracing_peak_mib: Option<Spread>,
    /// Peak RSS over the whole life, MiB (`VmHWM` read until exit: includes the report).
    pub lifetime_peak_mib: Option<Spread>,
    /// From start to probes live, milliseconds.
    pub attach_ms: Option<Spread>,
    /// Maps in the report (released ones included).
    pub maps: Option<Spread>,
    /// Calls bpftrace counted, over the assign and delete calls the workload made.
    pub counted_over_expected: Option<Spread>,
}

/// Tracer memory per tracked map.
#[derive(Clone, Debug, Serialize)]
pub struct MemorySummary {
    /// Live maps the workload kept.
    pub live_maps: u64,
    /// `(VmHWM with N live maps − VmHWM with none) / N`, sampled while tracing: what the
    /// tracer's state costs per tracked map.
    pub tracing_bytes_per_map: Option<Spread>,
    /// The same with the peak over the whole life: includes building and writing the report
    /// (one JSON entry per map).
    pub lifetime_bytes_per_map: Option<Spread>,
    /// `(VmHWM after N maps made and dropped − VmHWM without) / N`: what a map costs once it
    /// is gone (0 if the tracer forgets dead maps).
    pub dead_bytes_per_map: Option<Spread>,
    /// Events lost in those runs, summed.
    pub lost_total: u64,
    /// Peak RSS while tracing N live maps, MiB.
    pub tracing_peak_mib: Option<Spread>,
}

/// One round's memory runs, all gomaptrace.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryRuns {
    /// The workload makes no map.
    pub without: RunResult,
    /// It makes N small maps and keeps them alive.
    pub live: RunResult,
    /// It makes N small maps and drops each at once.
    pub churned: RunResult,
}

/// One of the targets, checked.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    /// The target.
    pub target: &'static str,
    /// Met, missed, or `None` when not measured (or a statement rather than a bound).
    pub met: Option<bool>,
    /// The numbers behind the verdict.
    pub detail: String,
}

/// Everything the bench concludes.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Per phase, then `all`.
    pub phases: Vec<PhaseSummary>,
    /// Per traced mode.
    pub tracers: Vec<TracerSummary>,
    /// Memory per tracked map; `None` when not measured.
    pub memory: Option<MemorySummary>,
    /// The targets, checked against the medians.
    pub targets: Vec<TargetCheck>,
}

/// gomaptrace's added cost per call may be at most this many times the floor's.
pub const MAX_OVER_FLOOR: f64 = 1.10;

/// gomaptrace may use at most this many cores while tracing at full rate.
pub const MAX_CORES: f64 = 0.5;

fn check_targets(
    phases: &[PhaseSummary],
    tracers: &[TracerSummary],
    memory: Option<&MemorySummary>,
) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let ratios: Vec<(&str, f64)> = phases
        .iter()
        .filter_map(|phase| Some((phase.name.as_str(), phase.gomaptrace_over_floor?)))
        .collect();
    let worst = ratios.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
    checks.push(TargetCheck {
        target: "added cost per traced call ≤ 1.10 × the floor, every phase",
        met: worst.map(|(_, ratio)| ratio <= MAX_OVER_FLOOR),
        detail: match worst {
            Some((name, ratio)) => format!(
                "worst {name}: {ratio:.2}; all phases together: {}",
                number(
                    phases
                        .iter()
                        .find(|phase| phase.name == "all")
                        .and_then(|phase| phase.gomaptrace_over_floor),
                    2
                )
            ),
            None => "not measured (needs modes a, b and c)".to_string(),
        },
    });
    let gomaptrace = tracers.iter().find(|tracer| tracer.mode == "gomaptrace");
    let lost = gomaptrace.and_then(|tracer| tracer.lost_total);
    let lost = lost.map(|lost| lost + memory.map_or(0, |memory| memory.lost_total));
    let rate = gomaptrace.and_then(|tracer| tracer.events_per_s);
    checks.push(TargetCheck {
        target: "zero lost events at the workload's full rate",
        met: lost.map(|lost| lost == 0),
        detail: match (lost, rate) {
            (Some(lost), Some(rate)) => format!(
                "{lost} lost in every gomaptrace run; delivered {:.0} events/s (median, max \
                 {:.0})",
                rate.median, rate.max
            ),
            _ => "not measured (needs mode c)".to_string(),
        },
    });
    let cores = gomaptrace.and_then(|tracer| tracer.cpu_cores);
    checks.push(TargetCheck {
        target: "tracer CPU ≤ 0.5 core at full rate",
        met: cores.map(|cores| cores.max <= MAX_CORES),
        detail: match cores {
            Some(cores) => format!(
                "{:.3} cores (median; max {:.3}) while the workload ran",
                cores.median, cores.max
            ),
            None => "not measured (needs mode c)".to_string(),
        },
    });
    checks.push(TargetCheck {
        target: "tracer memory bounded, stated per tracked map",
        met: None,
        detail: match memory {
            Some(memory) => format!(
                "{} bytes per live map at {} live maps; {} bytes per map already gone",
                number(memory.tracing_bytes_per_map.map(|s| s.median), 0),
                memory.live_maps,
                number(memory.dead_bytes_per_map.map(|s| s.median), 0),
            ),
            None => "not measured (needs mode c and --live-maps > 0)".to_string(),
        },
    });
    checks
}

/// Summarizes `runs` (every mode, every round) and the memory pairs.
pub fn summarize(runs: &[RunResult], memory: &[MemoryRuns], live_maps: u64) -> Summary {
    let mut names: Vec<String> = Vec::new();
    for run in runs {
        for phase in &run.phases {
            if !names.contains(&phase.name) {
                names.push(phase.name.clone());
            }
        }
    }
    let mut phases: Vec<PhaseSummary> = names
        .iter()
        .map(|name| {
            phase_summary(name, runs, |run| {
                let reps: Vec<&Phase> = run.phases.iter().filter(|p| &p.name == name).collect();
                let calls = reps.first()?.calls;
                let per_call = Spread::of(reps.iter().map(|p| p.ns as f64 / p.calls.max(1) as f64));
                Some((calls, per_call?.median))
            })
        })
        .collect();
    phases.push(phase_summary("all", runs, |run| {
        let mut reps: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for phase in &run.phases {
            let (calls, ns) = reps.entry(phase.rep).or_default();
            *calls += phase.calls;
            *ns += phase.ns;
        }
        let calls = reps.values().next()?.0;
        let per_call = Spread::of(
            reps.values()
                .map(|&(calls, ns)| ns as f64 / calls.max(1) as f64),
        );
        Some((calls, per_call?.median))
    }));
    let tracers: Vec<TracerSummary> = [Mode::Floor, Mode::Gomaptrace, Mode::Bpftrace]
        .into_iter()
        .filter(|mode| runs.iter().any(|run| run.mode == *mode))
        .map(|mode| tracer_summary(mode, runs))
        .collect();
    let memory = (!memory.is_empty()).then(|| memory_summary(memory, live_maps));
    let targets = check_targets(&phases, &tracers, memory.as_ref());
    Summary {
        phases,
        tracers,
        memory,
        targets,
    }
}

/// `calls_and_ns_per_call` gives, for one run, the phase's calls per repetition and its
/// median ns per call over the run's repetitions.
fn phase_summary(
    name: &str,
    runs: &[RunResult],
    calls_and_ns_per_call: impl Fn(&RunResult) -> Option<(u64, f64)>,
) -> PhaseSummary {
    let mut ns_per_call = BTreeMap::new();
    let mut calls = 0;
    for mode in Mode::ALL {
        let values = runs
            .iter()
            .filter(|run| run.mode == mode)
            .filter_map(&calls_and_ns_per_call)
            .inspect(|&(count, _)| calls = count)
            .map(|(_, per_call)| per_call);
        if let Some(spread) = Spread::of(values) {
            ns_per_call.insert(mode.name(), spread);
        }
    }
    let mut added_ns_per_call = BTreeMap::new();
    if let Some(base) = ns_per_call.get(Mode::Untraced.name()) {
        for (mode, spread) in &ns_per_call {
            if *mode != Mode::Untraced.name() {
                added_ns_per_call.insert(*mode, spread.median - base.median);
            }
        }
    }
    let ratio = |over: Mode, under: Mode| {
        let over = added_ns_per_call.get(over.name())?;
        let under = added_ns_per_call.get(under.name())?;
        (*under > 0.0).then(|| over / under)
    };
    PhaseSummary {
        name: name.to_string(),
        calls,
        gomaptrace_over_floor: ratio(Mode::Gomaptrace, Mode::Floor),
        bpftrace_over_gomaptrace: ratio(Mode::Bpftrace, Mode::Gomaptrace),
        ns_per_call,
        added_ns_per_call,
    }
}

fn tracer_summary(mode: Mode, runs: &[RunResult]) -> TracerSummary {
    let traced: Vec<_> = runs
        .iter()
        .filter(|run| run.mode == mode)
        .filter_map(|run| run.tracer.as_ref().map(|tracer| (run, tracer)))
        .collect();
    let spread = |value: &dyn Fn(&RunResult, &super::run::TracerStats) -> Option<f64>| {
        Spread::of(traced.iter().filter_map(|(run, tracer)| value(run, tracer)))
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    let lost: Vec<u64> = traced
        .iter()
        .filter_map(|(_, tracer)| tracer.lost)
        .collect();
    TracerSummary {
        mode: mode.name(),
        events_per_s: spread(&|run, tracer| {
            tracer
                .received
                .map(|received| received as f64 / (run.active_ns as f64 / 1e9))
        }),
        received: spread(&|_, tracer| tracer.received.map(|received| received as f64)),
        lost_total: (!lost.is_empty()).then(|| lost.iter().sum()),
        cpu_cores: spread(&|_, tracer| {
            Some(tracer.active_cpu_ns as f64 / tracer.active_wall_ns.max(1) as f64)
        }),
        cpu_total_s: spread(&|_, tracer| Some(tracer.total_cpu_ns as f64 / 1e9)),
        cpu_attach_s: spread(&|_, tracer| Some(tracer.attach_cpu_ns as f64 / 1e9)),
        cpu_stop_s: spread(&|_, tracer| Some(tracer.stop_cpu_ns as f64 / 1e9)),
        tracing_peak_mib: spread(&|_, tracer| Some(mib(tracer.tracing_peak_kib))),
        lifetime_peak_mib: spread(&|_, tracer| Some(mib(tracer.lifetime_peak_kib))),
        attach_ms: spread(&|_, tracer| Some(tracer.attach_ms)),
        maps: spread(&|_, tracer| tracer.maps.map(|maps| maps as f64)),
        counted_over_expected: spread(&|run, tracer| {
            let expected: u64 = run
                .phases
                .iter()
                .map(|phase| phase.assigns + phase.deletes)
                .sum();
            tracer
                .counted
                .map(|counted| counted as f64 / expected.max(1) as f64)
        }),
    }
}

fn memory_summary(runs: &[MemoryRuns], live_maps: u64) -> MemorySummary {
    let per_map = |with: &dyn Fn(&MemoryRuns) -> &RunResult,
                   value: &dyn Fn(&super::run::TracerStats) -> u64| {
        Spread::of(runs.iter().filter_map(|set| {
            let with = value(with(set).tracer.as_ref()?);
            let without = value(set.without.tracer.as_ref()?);
            Some((with as f64 - without as f64) * 1024.0 / live_maps.max(1) as f64)
        }))
    };
    let lost_total = runs
        .iter()
        .flat_map(|set| [&set.without, &set.live, &set.churned])
        .filter_map(|run| run.tracer.as_ref()?.lost)
        .sum();
    MemorySummary {
        live_maps,
        tracing_bytes_per_map: per_map(&|set| &set.live, &|tracer| tracer.tracing_peak_kib),
        lifetime_bytes_per_map: per_map(&|set| &set.live, &|tracer| tracer.lifetime_peak_kib),
        dead_bytes_per_map: per_map(&|set| &set.churned, &|tracer| tracer.tracing_peak_kib),
        lost_total,
        tracing_peak_mib: Spread::of(
            runs.iter()
                .filter_map(|set| Some(set.live.tracer.as_ref()?.tracing_peak_kib as f64 / 1024.0)),
        ),
    }
}

/// How a phase is labelled in tables: what it calls.
pub fn phase_label(name: &str) -> String {
    let detail = match name {
        "insert_fast64" => "new int64 keys: mapassign_fast64",
        "overwrite_fast64" => "same keys again: mapassign_fast64",
        "delete_fast64" => "every key: mapdelete_fast64",
        "insert_faststr" => "new string keys: mapassign_faststr",
        "insert_generic" => "new 24-byte struct keys: mapassign",
        "small_maps" => "make + 1 insert, dropped: makemap_small + mapassign_fast64",
        "parallel_overwrite" => "one goroutine per CPU, own map: mapassign_fast64; wall time",
        "all" => "every phase: total time / total calls",
        _ => return name.to_string(),
    };
    format!("{name} ({detail})")
}

pub(super) fn number(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(value) => format!("{value:.decimals$}"),
        None => "–".to_string(),
    }
}

pub(super) fn spread_text(spread: Option<Spread>, decimals: usize) -> String {
    match spread {
        Some(spread) if spread.max - spread.min > 0.0 => format!(
            "{:.d$} ({:.d$}–{:.d$})",
            spread.median,
            spread.min,
            spread.max,
            d = decimals
        ),
        Some(spread) => format!("{:.decimals$}", spread.median),
        None => "–".to_string(),
    }
}

/// The results as Markdown tables (what the README shows).
/// `design` says how the numbers were taken, `context` where.
pub fn markdown(summary: &Summary, design: &str, context: &str) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{design}, on {context}. a = untraced, b = floor (empty BPF programs at gomaptrace's \
         probe sites), c = gomaptrace, d = bpftrace (`tests/fixtures/bench/peer.bt`). Added \
         cost = ns per map call over untraced (medians).\n"
    );
    let _ = writeln!(
        text,
        "| phase | calls | a: ns/call | b − a | c − a | d − a | (c−a)/(b−a) | (d−a)/(c−a) |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for phase in &summary.phases {
        let added = |mode: Mode| number(phase.added_ns_per_call.get(mode.name()).copied(), 0);
        let name = if phase.name == "all" {
            "**all**".to_string()
        } else {
            format!("`{}`", phase.name)
        };
        let _ = writeln!(
            text,
            "| {name} | {} | {} | {} | {} | {} | **{}** | {} |",
            phase.calls,
            number(
                phase
                    .ns_per_call
                    .get(Mode::Untraced.name())
                    .map(|s| s.median),
                1
            ),
            added(Mode::Floor),
            added(Mode::Gomaptrace),
            added(Mode::Bpftrace),
            number(phase.gomaptrace_over_floor, 3),
            number(phase.bpftrace_over_gomaptrace, 1),
        );
    }
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "| tracer | events/s delivered | events lost | CPU while tracing (cores) | CPU total (s) | peak RSS tracing (MiB) | peak RSS incl. report (MiB) |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|---:|");
    for tracer in &summary.tracers {
        let lost = match (tracer.mode, tracer.lost_total) {
            (_, Some(lost)) => lost.to_string(),
            ("bpftrace", None) => "n/a (counts in kernel)".to_string(),
            _ => "–".to_string(),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} |",
            tracer.mode,
            number(tracer.events_per_s.map(|s| s.median), 0),
            lost,
            number(tracer.cpu_cores.map(|s| s.median), 3),
            number(tracer.cpu_total_s.map(|s| s.median), 2),
            number(tracer.tracing_peak_mib.map(|s| s.median), 1),
            number(tracer.lifetime_peak_mib.map(|s| s.median), 1),
        );
    }
    if let Some(memory) = &summary.memory {
        let _ = writeln!(text);
        let _ = writeln!(
            text,
            "gomaptrace memory per tracked map, at {} live maps: **{} bytes** while tracing \
             (peak RSS with − without them, over {} maps), {} bytes including building and \
             writing the report. A map made and dropped still costs {} bytes (made and \
             dropped {} times). {} events lost in these runs.",
            memory.live_maps,
            number(memory.tracing_bytes_per_map.map(|s| s.median), 0),
            memory.live_maps,
            number(memory.lifetime_bytes_per_map.map(|s| s.median), 0),
            number(memory.dead_bytes_per_map.map(|s| s.median), 0),
            memory.live_maps,
            memory.lost_total,
        );
    }
    let _ = writeln!(text);
    let _ = writeln!(text, "| target | | measured |");
    let _ = writeln!(text, "|---|---|---|");
    for check in &summary.targets {
        let _ = writeln!(
            text,
            "| {} | {} | {} |",
            check.target,
            verdict(check.met),
            check.detail
        );
    }
    text
}

/// The results as plain text for the terminal, with spreads (min–max over rounds).
pub fn text(summary: &Summary, design: &str) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\n{design}.\nns per map call, median (min–max over rounds); added = mode − untraced"
    );
    for phase in &summary.phases {
        let _ = writeln!(
            text,
            "\n{}  [{} calls]",
            phase_label(&phase.name),
            phase.calls
        );
        for mode in Mode::ALL {
            let Some(spread) = phase.ns_per_call.get(mode.name()) else {
                continue;
            };
            let added = phase
                .added_ns_per_call
                .get(mode.name())
                .map(|added| format!("  added {added:>9.1}"))
                .unwrap_or_default();
            let _ = writeln!(
                text,
                "  {} {:<10} {:>28}{added}",
                mode.letter(),
                mode.name(),
                spread_text(Some(*spread), 1)
            );
        }
        let _ = writeln!(
            text,
            "  (c−a)/(b−a) gomaptrace over floor: {}   (d−a)/(c−a) bpftrace over gomaptrace: {}",
            number(phase.gomaptrace_over_floor, 3),
            number(phase.bpftrace_over_gomaptrace, 2)
        );
    }
    for tracer in &summary.tracers {
        let _ = writeln!(text, "\n{}:", tracer.mode);
        let rows: [(&str, Option<Spread>, usize); 10] = [
            ("events/s delivered", tracer.events_per_s, 0),
            ("events received", tracer.received, 0),
            ("CPU while tracing (cores)", tracer.cpu_cores, 3),
            ("CPU over its life (s)", tracer.cpu_total_s, 3),
            ("  of which attaching (s)", tracer.cpu_attach_s, 3),
            ("  of which after stop (s)", tracer.cpu_stop_s, 3),
            ("peak RSS while tracing (MiB)", tracer.tracing_peak_mib, 1),
            ("peak RSS incl. report (MiB)", tracer.lifetime_peak_mib, 1),
            ("attach time (ms)", tracer.attach_ms, 0),
            ("maps in report", tracer.maps, 0),
        ];
        for (label, spread, decimals) in rows {
            if spread.is_some() {
                let _ = writeln!(text, "  {label:<30} {}", spread_text(spread, decimals));
            }
        }
        if let Some(lost) = tracer.lost_total {
            let _ = writeln!(text, "  {:<30} {lost}", "events lost (all rounds)");
        }
        if tracer.counted_over_expected.is_some() {
            let _ = writeln!(
                text,
                "  {:<30} {}",
                "counted / assign+delete calls",
                spread_text(tracer.counted_over_expected, 4)
            );
        }
    }
    if let Some(memory) = &summary.memory {
        let _ = writeln!(
            text,
            "\ngomaptrace memory at {} live maps:",
            memory.live_maps
        );
        let _ = writeln!(
            text,
            "  {:<30} {}",
            "bytes/map while tracing",
            spread_text(memory.tracing_bytes_per_map, 0)
        );
        let _ = writeln!(
            text,
            "  {:<30} {}",
            "bytes/map incl. report",
            spread_text(memory.lifetime_bytes_per_map, 0)
        );
        let _ = writeln!(
            text,
            "  {:<30} {}",
            "bytes/map made and dropped",
            spread_text(memory.dead_bytes_per_map, 0)
        );
        let _ = writeln!(
            text,
            "  {:<30} {}",
            "peak RSS while tracing (MiB)",
            spread_text(memory.tracing_peak_mib, 1)
        );
        let _ = writeln!(text, "  {:<30} {}", "events lost", memory.lost_total);
    }
    let _ = writeln!(text, "\ntargets:");
    for check in &summary.targets {
        let _ = writeln!(
            text,
            "  [{}] {}: {}",
            verdict(check.met),
            check.target,
            check.detail
        );
    }
    text
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "stated",
    }
}
