//! Everything a report is built from, in the order it happened, and the recording of it.
//!
//! A live trace and `gomaptrace replay` feed the same [`Pipeline`] the same inputs: raw
//! ring-buffer records and [`SessionInput`]s (the window's start and end, headers read from memory,
//! the target's exit, resolved symbols, lost counts). The live trace also writes every input
//! to a recording as it goes; a replay reads them back. Since the model and the report are
//! pure, the replayed report is byte for byte the live one.
//!
//! A recording is `MAGIC`, then frames of `[tag: u8][length: u32 LE][payload]`: tag 1 a raw
//! ring-buffer record, tag 2 a JSON [`SessionInput`]. Key contents are never in it (the BPF side only
//! sends salted hashes, and the salt is not recorded).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::memory::inventory::{Sighting, Summary};
use crate::memory::release::{Dropped, ReleaseDetection};
use crate::model::{Limits, Model};
use crate::plan::MapImplementation;
use crate::report::{MapTypeInfo, Report, ReportContext, Resolved, TargetInfo};
use crate::sampled::{self, Polled, Schedule, Tally};
use crate::sibling::create_temporary_sibling;
use crate::verdict::{Thresholds, Window};

/// First bytes of every recording; the version changes whenever the event format does.
/// v2: growth split into kinds (`tracer_common::kind::HASH_GROW`, `PRUNE`); a v1 recording
/// has no tombstone pruning in it and counts classic same-size growths as growth.
/// v3: writes may carry their writer's stack (a `CreateEvent`-sized record of kind `ASSIGN`
/// or `DELETE`); an older reader would take them for plain writes and drop the writers.
const MAGIC: &[u8] = b"gomaptrace-recording-v3\n";
const TAG_RECORD: u8 = 1;
const TAG_NOTE: u8 = 2;
/// No input is this large; a bigger length means a corrupt file, not an allocation to make.
const MAX_FRAME: u32 = 64 << 20;

/// How the trace was set up: what the report needs besides the events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// The traced process.
    pub target: TargetInfo,
    /// Its map implementation (how to read seeds; how to estimate memory).
    pub implementation: MapImplementation,
    /// When the probes were attached (monotonic ns, the clock of event times).
    pub start_ns: u64,
    /// Verdict thresholds.
    pub thresholds: Thresholds,
    /// One key in this many sampled; 0 for none.
    pub sample_one_in: u64,
    /// `--mode sampled`: when the windows and polls happen; absent in exact mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Schedule>,
    /// `--mode sampled`: how the windows' probes are linked (grouped, or per site and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_links: Option<String>,
}

/// What the session tells the pipeline besides the probes' events: the trace's start and
/// end, what it read from the binary and the target's memory, its sampled windows. Recorded
/// next to the events, so a replay sees exactly the same inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionInput {
    /// The trace begins.
    Start(Setup),
    /// A map type was read from the target.
    Type {
        /// The map-type pointer.
        map_type: u64,
        /// What it says.
        facts: MapTypeInfo,
    },
    /// The observation window ended (monotonic ns).
    Freeze {
        /// When.
        end_ns: u64,
    },
    /// A quiet map's header, read from memory after the probes were detached: it settles
    /// the map's pending operation. Recorded under its first name, `Settle`.
    #[serde(rename = "Settle")]
    HeaderRead {
        /// The map.
        addr: u64,
        /// Its count and second header word.
        words: [u64; 2],
    },
    /// The most memory the target had resident, read while it ran: the ceiling on every
    /// estimate of what its maps hold.
    Resident {
        /// `VmHWM`, in bytes.
        peak_bytes: u64,
    },
    /// The target exited at this monotonic time: every map it held is released.
    Exited {
        /// When it was noticed.
        at_ns: u64,
    },
    /// The inventory at attach finished: the maps it found, read at `at_ns`.
    Inventory {
        /// When it finished reading (monotonic ns).
        at_ns: u64,
        /// What it did.
        summary: Summary,
        /// The maps.
        sightings: Vec<Sighting>,
    },
    /// How this trace notices maps the program dropped (see [`crate::memory::release`]).
    ReleaseDetection {
        /// The method.
        method: ReleaseDetection,
    },
    /// The target's memory says an idle map may be gone; the model decides.
    Dropped(Dropped),
    /// `--mode sampled`: a discovery window's probes are all attached, at `armed_ns`.
    Window {
        /// When the last probe was attached (monotonic ns).
        armed_ns: u64,
        /// How long attaching every probe took, in ms.
        attach_ms: f64,
    },
    /// `--mode sampled`: the discovery window ended; later events only settle.
    WindowEnd {
        /// When (monotonic ns).
        end_ns: u64,
    },
    /// The probes start being detached (at the trace's end, or a window's): later events
    /// settle nothing (see [`crate::model::Model::detaching`]).
    Detaching {
        /// When the first probe starts going (monotonic ns).
        at_ns: u64,
    },
    /// `--mode sampled`: the last window's probes are gone.
    Detached {
        /// How long detaching them took, in ms.
        detach_ms: f64,
    },
    /// `--mode sampled`: the known maps' headers read between windows.
    Poll {
        /// When the reads began (monotonic ns).
        at_ns: u64,
        /// What they read.
        headers: Vec<Polled>,
        /// How long reading them took, in ms.
        #[serde(default)]
        took_ms: f64,
    },
    /// The probes are gone: the BPF side's count of folded writes, and the folds it still
    /// held (see [`crate::model::HeldFolds`]).
    Folds {
        /// Every write folded.
        total: u64,
        /// Folds no record carried, map by map.
        held: Vec<crate::model::HeldFolds>,
    },
    /// Folds a map the heap check released had left in the BPF side, read right before its
    /// release (see [`crate::model::Model::read_run`]).
    ReleasedFolds(crate::model::HeldFolds),
    /// The runs of folds of a past epoch, read as a new one began: their maps were not
    /// written since (see [`crate::model::Model::read_run`]).
    PastRuns(Vec<crate::model::HeldFolds>),
    /// The header of a map no longer written, read while tracing, with the time of the
    /// map's last record then (see [`crate::model::Model::settle_quiet`]).
    QuietHeader {
        /// The map.
        addr: u64,
        /// Its count and second header word.
        words: [u64; 2],
        /// When its last record was, as the model knew it before the read.
        seen_ns: u64,
    },
    /// What the tracer last read at a collection for the map at an address, right before the
    /// record of the map that replaces it there (see [`crate::model::Model::collected`]).
    Collected(crate::model::Collected),
    /// The trace is over.
    Finish {
        /// Events the BPF side lost.
        lost: u64,
        /// Source frames of every creation stack address.
        resolved: Resolved,
    },
}

/// Why a recording could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The recording.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file is not a recording, or not one this version can read.
    #[error("{path}: not a gomaptrace recording (or from an incompatible version)")]
    NotARecording {
        /// The file.
        path: PathBuf,
    },
    /// The file ends early or holds garbage.
    #[error("{path}: corrupt recording at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Writes every input of a live trace to a file. The file appears under its name only once
/// the trace finished; a failed trace leaves no partial recording.
pub struct Recorder {
    path: PathBuf,
    temporary: PathBuf,
    out: BufWriter<File>,
    failed: Option<io::Error>,
}

impl Recorder {
    /// Starts a recording that will be named `path`.
    pub fn create(path: &Path) -> Result<Recorder, RecordingError> {
        let io_error = |source| RecordingError::Io {
            path: path.to_owned(),
            source,
        };
        let (temporary, file) = create_temporary_sibling(path).map_err(io_error)?;
        let mut out = BufWriter::new(file);
        out.write_all(MAGIC).map_err(io_error)?;
        Ok(Recorder {
            path: path.to_owned(),
            temporary,
            out,
            failed: None,
        })
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let written = (|| {
            self.out.write_all(&[tag])?;
            self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
            self.out.write_all(payload)
        })();
        if let Err(error) = written {
            self.failed = Some(error);
        }
    }

    /// Flushes and names the file; the first write error, if any, surfaces here.
    pub fn finish(mut self) -> Result<(), RecordingError> {
        let path = self.path.clone();
        let result = match self.failed.take() {
            Some(error) => Err(error),
            None => self
                .out
                .flush()
                .and_then(|()| self.out.get_ref().sync_all())
                .and_then(|()| std::fs::rename(&self.temporary, &self.path)),
        };
        if result.is_err() {
            let _ = std::fs::remove_file(&self.temporary);
        }
        result.map_err(|source| RecordingError::Io { path, source })
    }
}

impl Drop for Recorder {
    /// A recorder dropped without [`Recorder::finish`] belongs to a failed trace.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temporary);
    }
}

/// The model plus what the report needs, fed in order.
pub struct Pipeline {
    setup: Setup,
    model: Model,
    resolved: Resolved,
    window_end_ns: Option<u64>,
    lost: u64,
    recorder: Option<Recorder>,
    release_detection: Option<ReleaseDetection>,
    /// Windows and polls so far (`--mode sampled`).
    tally: Tally,
    /// Frames of the stacks resolved while tracing, for snapshots; not recorded (the final
    /// resolution at [`SessionInput::Finish`] is).
    live_frames: std::collections::BTreeMap<u64, Vec<crate::inspect::SourceFrame>>,
}

impl Pipeline {
    /// Starts a trace; every later input is also written to `recorder` when given.
    pub fn new(setup: Setup, mut recorder: Option<Recorder>) -> Pipeline {
        if let Some(recorder) = &mut recorder {
            write_note(recorder, &SessionInput::Start(setup.clone()));
        }
        Pipeline {
            model: armed_model(&setup),
            setup,
            resolved: Resolved::default(),
            window_end_ns: None,
            lost: 0,
            recorder,
            release_detection: None,
            tally: Tally::default(),
            live_frames: std::collections::BTreeMap::new(),
        }
    }

    /// Frames of stack addresses resolved while tracing, so that snapshots name sites.
    pub fn add_live_frames(
        &mut self,
        frames: std::collections::BTreeMap<u64, Vec<crate::inspect::SourceFrame>>,
    ) {
        self.live_frames.extend(frames);
    }

    /// A copy of everything the report is built from, as it stands at `now_ns`, with the
    /// frames resolved so far: cheap to take on the event loop, and turned into a report
    /// elsewhere (see [`crate::export`]).
    pub fn snapshot(&self, now_ns: u64) -> Snapshot {
        let mut resolved = self.resolved.clone();
        if resolved.frames.is_empty() {
            resolved.frames = self.live_frames.clone();
        }
        Snapshot {
            model: self.model.clone(),
            setup: self.setup.clone(),
            resolved,
            window: Window {
                start_ns: self.setup.start_ns,
                end_ns: self
                    .window_end_ns
                    .unwrap_or(now_ns)
                    .max(self.setup.start_ns),
            },
            lost: self.lost,
            tally: self.tally.clone(),
            release_detection: self.release_detection,
        }
    }

    /// One raw ring-buffer record.
    pub fn record(&mut self, bytes: &[u8]) {
        if let Some(recorder) = &mut self.recorder {
            recorder.frame(TAG_RECORD, bytes);
        }
        self.model.observe_record(bytes);
    }

    /// `at_ns`, or the window's end if the trace's window ended before it: what the
    /// inventory found or a last check released after the end is dated at the end.
    fn no_later_than_the_window(&self, at_ns: u64) -> u64 {
        self.window_end_ns.map_or(at_ns, |end| at_ns.min(end))
    }

    /// One other input.
    pub fn note(&mut self, note: SessionInput) {
        if let Some(recorder) = &mut self.recorder {
            write_note(recorder, &note);
        }
        match note {
            SessionInput::Start(setup) => {
                self.model = armed_model(&setup);
                self.setup = setup;
            }
            SessionInput::Type { map_type, facts } => {
                self.resolved.types.insert(map_type, facts);
            }
            SessionInput::Freeze { end_ns } => {
                self.tally.close(end_ns);
                self.window_end_ns = Some(end_ns);
                self.model.freeze(end_ns);
            }
            SessionInput::HeaderRead { addr, words } => self.model.settle_with_read(addr, words),
            SessionInput::Folds { total, held } => self.model.held_folds(total, &held),
            SessionInput::ReleasedFolds(folds) => self.model.read_run(&folds),
            SessionInput::Collected(read) => self.model.collected(read),
            SessionInput::PastRuns(runs) => runs.iter().for_each(|run| self.model.read_run(run)),
            SessionInput::QuietHeader {
                addr,
                words,
                seen_ns,
            } => self.model.settle_quiet(addr, words, seen_ns),
            SessionInput::Resident { peak_bytes } => {
                self.setup.target.peak_rss_bytes = Some(peak_bytes)
            }
            SessionInput::Exited { at_ns } => {
                self.setup.target.exited = true;
                self.model.abandon_pending();
                self.model.release_all(at_ns);
            }
            SessionInput::Inventory {
                at_ns,
                summary,
                sightings,
            } => self
                .model
                .inventory(self.no_later_than_the_window(at_ns), summary, &sightings),
            SessionInput::ReleaseDetection { method } => self.release_detection = Some(method),
            SessionInput::Dropped(dropped) => self.model.dropped(&Dropped {
                at_ns: self.no_later_than_the_window(dropped.at_ns),
                ..dropped
            }),
            SessionInput::Window {
                armed_ns,
                attach_ms,
            } => {
                self.tally.open(armed_ns, attach_ms);
                self.model.rearm(armed_ns);
            }
            SessionInput::WindowEnd { end_ns } => {
                self.tally.close(end_ns);
                self.model.freeze(end_ns);
            }
            SessionInput::Detaching { at_ns } => self.model.detaching(at_ns),
            SessionInput::Detached { detach_ms } => self.tally.detached(detach_ms),
            SessionInput::Poll {
                at_ns,
                headers,
                took_ms,
            } => {
                self.tally.polled(at_ns, headers.len(), took_ms);
                self.model.poll(at_ns, &headers);
            }
            SessionInput::Finish { lost, resolved } => {
                self.model.abandon_pending();
                self.lost = lost;
                self.resolved.frames = resolved.frames;
                self.resolved.types.extend(resolved.types);
                self.resolved.held_by = resolved.held_by;
            }
        }
    }

    /// The model so far (for the live view and for what to resolve next).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Source frames of stack addresses: all of them once the trace is finished, those
    /// resolved so far while it runs (for the live view).
    pub fn frames(&self) -> &std::collections::BTreeMap<u64, Vec<crate::inspect::SourceFrame>> {
        if self.resolved.frames.is_empty() {
            &self.live_frames
        } else {
            &self.resolved.frames
        }
    }

    /// What has been resolved so far.
    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// The setup the trace started with.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// Builds the report, and closes the recording.
    pub fn finish(mut self) -> Result<Report, RecordingError> {
        let report = self.report();
        if let Some(recorder) = self.recorder.take() {
            recorder.finish()?;
        }
        Ok(report)
    }

    fn report(&self) -> Report {
        let window = Window {
            start_ns: self.setup.start_ns,
            end_ns: self.window_end_ns.unwrap_or(self.setup.start_ns),
        };
        let context = ReportContext {
            target: self.setup.target.clone(),
            window,
            lost: self.lost,
            implementation: self.setup.implementation,
            thresholds: self.setup.thresholds,
            sample_one_in: self.setup.sample_one_in,
            resolved: &self.resolved,
        };
        let mut report = Report::new(&self.model, &context);
        report.release_detection = self.release_detection;
        sampled::label(&mut report, &self.setup, &self.tally, window);
        report
    }
}

/// Everything a report is built from, copied at one instant of a trace.
pub struct Snapshot {
    model: Model,
    setup: Setup,
    resolved: Resolved,
    window: Window,
    lost: u64,
    tally: Tally,
    /// How dropped maps were being found, as the final report says it.
    release_detection: Option<ReleaseDetection>,
}

impl Snapshot {
    /// The report as of the snapshot.
    pub fn report(&self) -> Report {
        let context = ReportContext {
            target: self.setup.target.clone(),
            window: self.window,
            lost: self.lost,
            implementation: self.setup.implementation,
            thresholds: self.setup.thresholds,
            sample_one_in: self.setup.sample_one_in,
            resolved: &self.resolved,
        };
        let mut report = Report::new(&self.model, &context);
        sampled::label(&mut report, &self.setup, &self.tally, self.window);
        report.release_detection = self.release_detection;
        report
    }

    /// The model's distributions as of the snapshot.
    pub fn histograms(&self) -> crate::model::Histograms {
        self.model.histograms(self.window.end_ns)
    }
}

/// A model that counts events from the moment the probes were all attached.
fn armed_model(setup: &Setup) -> Model {
    let mut model = Model::new(setup.implementation, Limits::default());
    model.arm(setup.start_ns);
    model
}

fn write_note(recorder: &mut Recorder, note: &SessionInput) {
    match serde_json::to_vec(note) {
        Ok(json) => recorder.frame(TAG_NOTE, &json),
        Err(error) => recorder.failed = Some(error.into()),
    }
}

/// Rebuilds the report of a recorded trace.
pub fn replay(path: &Path) -> Result<Report, RecordingError> {
    let io_error = |source| RecordingError::Io {
        path: path.to_owned(),
        source,
    };
    let mut input = BufReader::new(File::open(path).map_err(io_error)?);
    let mut magic = vec![0u8; MAGIC.len()];
    if input.read_exact(&mut magic).is_err() || magic != MAGIC {
        return Err(RecordingError::NotARecording {
            path: path.to_owned(),
        });
    }
    let mut offset = MAGIC.len() as u64;
    let corrupt = |offset, reason: &str| RecordingError::Corrupt {
        path: path.to_owned(),
        offset,
        reason: reason.to_string(),
    };
    let mut pipeline: Option<Pipeline> = None;
    let mut finished = false;
    loop {
        let mut head = [0u8; 5];
        match input.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(io_error(error)),
        }
        input
            .read_exact(&mut head[1..])
            .map_err(|_| corrupt(offset, "truncated frame header"))?;
        let length = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if length > MAX_FRAME {
            return Err(corrupt(offset, "frame length out of range"));
        }
        let mut payload = vec![0u8; length as usize];
        input
            .read_exact(&mut payload)
            .map_err(|_| corrupt(offset, "truncated frame"))?;
        match (head[0], pipeline.as_mut()) {
            (TAG_RECORD, Some(pipeline)) => pipeline.record(&payload),
            (TAG_NOTE, current) => {
                let note: SessionInput = serde_json::from_slice(&payload)
                    .map_err(|error| corrupt(offset, &error.to_string()))?;
                finished |= matches!(note, SessionInput::Finish { .. });
                match (note, current) {
                    (SessionInput::Start(setup), None) => {
                        pipeline = Some(Pipeline::new(setup, None))
                    }
                    (note, Some(pipeline)) => pipeline.note(note),
                    (_, None) => return Err(corrupt(offset, "no start note")),
                }
            }
            _ => return Err(corrupt(offset, "unknown frame or no start note")),
        }
        offset += 5 + u64::from(length);
    }
    match pipeline {
        Some(pipeline) if finished => pipeline.finish(),
        _ => Err(corrupt(
            offset,
            "the recording ends before the trace finished",
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tracer_common::{kind, CreateEvent, MapEvent, STACK_DEPTH};

    /// A trace's setup as a test of its outputs needs one: exact mode, classic maps.
    pub(crate) fn setup() -> Setup {
        Setup {
            target: TargetInfo {
                pid: 7,
                exe: "/srv/app".into(),
                go_version: "go1.22.10".into(),
                exited: false,
                peak_rss_bytes: None,
                container: None,
                ns_pid: None,
            },
            implementation: MapImplementation::Classic,
            start_ns: 1_000,
            thresholds: Thresholds::default(),
            sample_one_in: 64,
            sampling: None,
            probe_links: None,
        }
    }

    fn event_bytes(kind: u8, count: u64, at: u64) -> Vec<u8> {
        let event = MapEvent {
            ktime_ns: at,
            map: 0x00c0_000a_0000,
            count,
            header_word: 0x1234_0000_0000,
            map_type: 0,
            key_hash: 0,
            kind,
            flags: 0,
            folded: 0,
        };
        // SAFETY: MapEvent is repr(C) plain data, as the ring buffer carries it.
        let bytes: [u8; MapEvent::SIZE] = unsafe { std::mem::transmute(event) };
        bytes.to_vec()
    }

    /// A write that carries its writer's stack, as the BPF side sends it.
    fn written_bytes(kind: u8, count: u64, at: u64) -> Vec<u8> {
        let mut stack = [0u64; STACK_DEPTH];
        stack[0] = 0x40_1000;
        let mut event_bytes = event_bytes(kind, count, at);
        event_bytes.extend_from_slice(&0x40_2000u64.to_ne_bytes());
        event_bytes.extend_from_slice(&1u32.to_ne_bytes());
        event_bytes.extend_from_slice(&0u32.to_ne_bytes());
        for address in stack {
            event_bytes.extend_from_slice(&address.to_ne_bytes());
        }
        assert_eq!(event_bytes.len(), CreateEvent::SIZE);
        event_bytes
    }

    fn run(recorder: Option<Recorder>) -> Report {
        let mut pipeline = Pipeline::new(setup(), recorder);
        pipeline.record(&written_bytes(kind::ASSIGN, 0, 1_500));
        pipeline.record(&event_bytes(kind::DELETE, 1, 1_600));
        for (at, count) in [(2_000, 0), (3_000, 1), (4_000, 2)] {
            pipeline.record(&event_bytes(kind::ASSIGN, count, at));
        }
        pipeline.record(&[1, 2, 3]);
        pipeline.note(SessionInput::Freeze { end_ns: 5_000 });
        pipeline.note(SessionInput::HeaderRead {
            addr: 0x00c0_000a_0000,
            words: [3, 0x1234_0000_0000],
        });
        let mut resolved = Resolved::default();
        resolved
            .held_by
            .insert(0x00c0_000a_0000, "main.sessions".into());
        pipeline.note(SessionInput::Finish { lost: 2, resolved });
        pipeline.finish().unwrap()
    }

    #[test]
    fn a_replay_rebuilds_the_same_report() {
        let dir = std::env::temp_dir().join(format!("gomaptrace-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.gmt");
        let live = run(Some(Recorder::create(&path).unwrap()));
        assert_eq!(live.maps[0].inserts, 4);
        assert_eq!(live.maps[0].writers.len(), 1);
        assert_eq!(live.maps[0].writers[0].inserts, 1);
        assert_eq!(live.maps[0].held_by, "main.sessions");
        assert_eq!((live.events.lost, live.events.malformed), (2, 1));
        let replayed = replay(&path).unwrap();
        assert_eq!(
            serde_json::to_string(&live).unwrap(),
            serde_json::to_string(&replayed).unwrap()
        );
        assert_eq!(live.render_text(20), replayed.render_text(20));

        // Truncated or foreign files are refused with a reason.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(replay(&path), Err(RecordingError::Corrupt { .. })));
        for foreign in [
            &b"hello"[..],
            b"gomaptrace-recording-v1\n",
            b"gomaptrace-recording-v2\n",
        ] {
            std::fs::write(&path, foreign).unwrap();
            assert!(matches!(
                replay(&path),
                Err(RecordingError::NotARecording { .. })
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_map_the_last_check_finds_dropped_after_the_window_is_released_at_its_end() {
        let mut pipeline = Pipeline::new(setup(), None);
        pipeline.record(&event_bytes(kind::ASSIGN, 0, 1_500));
        pipeline.record(&event_bytes(kind::ASSIGN, 1, 2_000));
        pipeline.note(SessionInput::Freeze { end_ns: 5_000 });
        pipeline.note(SessionInput::Dropped(Dropped {
            addr: 0x00c0_000a_0000,
            seed: 0x1234,
            last_seen_ns: 2_000,
            words: Some([2, 0x1234_0000_0000]),
            freed: true,
            reused: false,
            at_ns: 9_000,
        }));
        let released = &pipeline.model().maps()[0];
        assert_eq!(released.released_ns, Some(5_000));
    }

    #[test]
    fn a_finish_note_recorded_before_held_by_existed_still_reads() {
        let note: SessionInput =
            serde_json::from_str(r#"{"Finish":{"lost":0,"resolved":{"frames":{},"types":{}}}}"#)
                .unwrap();
        let SessionInput::Finish { resolved, .. } = note else {
            panic!("not a finish note: {note:?}");
        };
        assert!(resolved.held_by.is_empty());
    }

    #[test]
    fn an_interval_snapshot_says_how_releases_are_found() {
        let mut pipeline = Pipeline::new(setup(), None);
        assert_eq!(pipeline.snapshot(2_000).report().release_detection, None);
        pipeline.note(SessionInput::ReleaseDetection {
            method: ReleaseDetection::Heap,
        });
        assert_eq!(
            pipeline.snapshot(2_000).report().release_detection,
            Some(ReleaseDetection::Heap)
        );
    }

    #[test]
    fn an_unfinished_recording_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("gomaptrace-rec2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.gmt");
        drop(Pipeline::new(
            setup(),
            Some(Recorder::create(&path).unwrap()),
        ));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
