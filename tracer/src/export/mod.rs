//! Exports for capacity reviews: the trace as files and an endpoint that existing tools read
//! (pprof, HdrHistogram interval logs, an SVG plot, Prometheus, the JSON report).
//!
//! Every output reads a [`Snapshot`] — the report as it stands and the model's raw
//! distributions — and does its own I/O; the model stays free of it. [`Exports`] calls each
//! output once per `--interval` while tracing (from a worker thread, off the event loop) and
//! once more with the final report.

pub mod hlog;
pub mod json;
pub mod plot;
pub mod pprof;
pub mod prometheus;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::Histograms;
use crate::pipeline::Pipeline;
use crate::report::Report;

/// What every output reads: the report so far (or the final one) and the distributions
/// behind its histograms, at full resolution.
pub struct Snapshot<'a> {
    /// The report as of `at_s`.
    pub report: &'a Report,
    /// The model's distributions as of `at_s`.
    pub histograms: &'a Histograms,
    /// Seconds since the probes were attached.
    pub at_s: f64,
    /// This is the last snapshot of the trace.
    pub last: bool,
}

/// Why an output could not be written; one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be created or replaced.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The plot could not be drawn.
    #[error("cannot draw {path}: {reason}")]
    Draw {
        /// The SVG file.
        path: PathBuf,
        /// What the drawing library said.
        reason: String,
    },
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics on {addr}: {source}")]
    Serve {
        /// The address asked for.
        addr: String,
        /// What the system said.
        source: std::io::Error,
    },
}

impl ExportError {
    /// A write error for `path`.
    pub fn write(path: &Path, source: std::io::Error) -> ExportError {
        ExportError::Write {
            path: path.to_owned(),
            source,
        }
    }
}

/// One output, called at every interval and at the end.
pub trait Export: Send {
    /// Writes (or publishes) what `snapshot` says.
    fn write(&mut self, snapshot: &Snapshot<'_>) -> Result<(), ExportError>;
}

/// Every output asked for, and when each interval is due.
///
/// The event loop only copies the pipeline ([`Pipeline::snapshot`]); a worker thread builds
/// the report from the copy and writes the outputs, so that the ring buffer keeps being
/// drained meanwhile. At most one copy is in flight: an interval that falls due while the
/// worker is still busy is skipped, so memory holds at most one copy of the model and one
/// report besides the live model. The worker starts at the first interval, after the probes
/// are attached: a thread started earlier would keep the privileges the trace drops then
/// (capabilities are per thread, see [`crate::privileges::drop_after_attach`]).
pub struct Exports {
    /// The outputs until the worker takes them.
    waiting: Option<Vec<Box<dyn Export>>>,
    worker: Option<Worker>,
    interval: Duration,
    /// When the next interval is due.
    next: Instant,
}

/// The thread that writes the outputs, and how to reach it.
struct Worker {
    sender: std::sync::mpsc::SyncSender<crate::pipeline::Snapshot>,
    busy: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Box<dyn Export>>>,
}

/// How early an interval may be written: ticks jitter around the interval they are set to,
/// and one a few ms short must not push the write to the next tick.
const SLACK: Duration = Duration::from_millis(100);

impl Exports {
    /// Outputs written every `interval` (and at the end).
    pub fn new(outputs: Vec<Box<dyn Export>>, interval: Duration) -> Exports {
        Exports {
            waiting: (!outputs.is_empty()).then_some(outputs),
            worker: None,
            interval,
            next: Instant::now() + interval,
        }
    }

    /// Called on every tick of the trace: when an interval is due and the worker is free,
    /// hands it a snapshot of the pipeline.
    pub fn tick(&mut self, pipeline: &Pipeline, now_ns: u64) {
        let now = Instant::now();
        if now + SLACK < self.next {
            return;
        }
        if let Some(outputs) = self.waiting.take() {
            self.worker = Some(Worker::start(outputs));
        }
        let Some(worker) = &self.worker else {
            return;
        };
        self.next = (self.next + self.interval).max(now + self.interval - SLACK);
        if worker.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        if worker.sender.send(pipeline.snapshot(now_ns)).is_err() {
            worker.busy.store(false, Ordering::Release);
        }
    }

    /// Waits for the worker, then writes every output with the final report; the first
    /// failure is returned after all outputs were tried.
    pub fn finish(&mut self, report: &Report, histograms: &Histograms) -> Result<(), ExportError> {
        let mut outputs = match (self.worker.take(), self.waiting.take()) {
            (Some(worker), _) => {
                drop(worker.sender);
                worker.thread.join().unwrap_or_default()
            }
            (None, Some(outputs)) => outputs,
            (None, None) => return Ok(()),
        };
        let snapshot = Snapshot {
            report,
            histograms,
            at_s: report.duration_s,
            last: true,
        };
        let mut first_error = None;
        for output in &mut outputs {
            if let Err(error) = output.write(&snapshot) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Worker {
    fn start(mut outputs: Vec<Box<dyn Export>>) -> Worker {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<crate::pipeline::Snapshot>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let busy = Arc::clone(&busy);
            move || {
                for copy in receiver {
                    let report = copy.report();
                    let histograms = copy.histograms();
                    drop(copy);
                    let snapshot = Snapshot {
                        report: &report,
                        histograms: &histograms,
                        at_s: report.duration_s,
                        last: false,
                    };
                    for output in &mut outputs {
                        if let Err(error) = output.write(&snapshot) {
                            eprintln!("gomaptrace: {error}");
                        }
                    }
                    drop((report, histograms));
                    crate::allocator::release_free_memory();
                    busy.store(false, Ordering::Release);
                }
                outputs
            }
        });
        Worker {
            sender,
            busy,
            thread,
        }
    }
}

/// Fails now, with the error a write would give, when a file cannot be created next to
/// `path` (where atomic replacement writes it first).
pub fn check_writable(path: &Path) -> Result<(), ExportError> {
    let (temporary, _file) = crate::sibling::create_temporary_sibling(path)
        .map_err(|source| ExportError::write(path, source))?;
    let _ = std::fs::remove_file(&temporary);
    Ok(())
}

/// `function (file:line)` with the file's directories dropped: how outputs name a site.
pub fn short_site(site: &crate::report::SourceFrame) -> String {
    let file = site.file.rsplit('/').next().unwrap_or(&site.file);
    format!("{} ({file}:{})", site.function, site.line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Setup;
    use crate::plan::MapImplementation;
    use crate::report::TargetInfo;
    use crate::verdict::Thresholds;

    fn pipeline() -> Pipeline {
        let setup = Setup {
            target: TargetInfo {
                pid: 1,
                exe: "/bin/app".to_string(),
                go_version: "go1.24.11".to_string(),
                exited: false,
                peak_rss_bytes: None,
                container: None,
                ns_pid: None,
            },
            implementation: MapImplementation::Swiss,
            start_ns: 1_000,
            thresholds: Thresholds::default(),
            sample_one_in: 64,
            sampling: None,
            probe_links: None,
        };
        Pipeline::new(setup, None)
    }

    #[test]
    fn intervals_are_written_off_the_loop_and_the_end_after_them() {
        let dir = std::env::temp_dir().join(format!("gomaptrace-exports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (json_path, hlog_path) = (dir.join("report.json"), dir.join("maps.hlog"));
        let outputs: Vec<Box<dyn Export>> = vec![
            Box::new(json::Json::new(json_path.clone(), 10)),
            Box::new(hlog::Hlog::create(hlog_path.clone()).unwrap()),
        ];
        let mut exports = Exports::new(outputs, Duration::ZERO);
        let pipeline = pipeline();
        exports.tick(&pipeline, 2_000_000_000);
        let report = pipeline.snapshot(3_000_000_000).report();
        let histograms = pipeline.model().histograms(3_000_000_000);
        exports.finish(&report, &histograms).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
        assert_eq!(written["maps_unlisted"], 0);
        let log = std::fs::read_to_string(&hlog_path).unwrap();
        let intervals = log.lines().filter(|line| line.starts_with("Tag=")).count();
        assert_eq!(intervals, 2 * hlog::TAGS.len(), "{log}");
        assert_eq!(log.matches("#[StartTime:").count(), 1, "{log}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_paths_fail_before_tracing() {
        let error = check_writable(Path::new("/nonexistent/dir/report.json")).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("cannot write /nonexistent/dir/report.json"));
    }
}
