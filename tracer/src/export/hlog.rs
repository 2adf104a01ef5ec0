//! `--hlog PATH`: an HdrHistogram interval log (the standard format, V2 deflate encoding,
//! which Java's HistogramLogAnalyzer and HistogramLogProcessor require), one interval per
//! `--interval`, one tag per distribution.
//!
//! Each interval's histograms describe every map known at the interval's end (maps still
//! alive count their lifetime so far), like the report's `histograms`: a reader wanting the
//! whole trace takes the last interval of each tag, and the series of intervals shows how the
//! distributions moved.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use super::{Export, ExportError, Snapshot};

/// The tags of the log, one per distribution.
pub const TAGS: [&str; 4] = [
    "map_peak_entries",
    "map_lifetime_us",
    "entry_lifetime_us",
    "map_est_bytes",
];

/// An interval log being appended to.
pub struct Hlog {
    path: PathBuf,
    out: BufWriter<File>,
    serializer: V2DeflateSerializer,
    /// Seconds since the probes were attached at the end of the last interval written.
    last_at_s: f64,
    /// The header is written with the first interval, when the attach time is known.
    started: bool,
}

impl Hlog {
    /// Creates (or truncates) `path`, so that an unwritable path fails before tracing.
    pub fn create(path: PathBuf) -> Result<Hlog, ExportError> {
        // The log grows in place, interval by interval, so it cannot be written beside and
        // renamed; running as root, it must still not follow a symlink planted at its name.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| ExportError::write(&path, source))?;
        Ok(Hlog {
            path,
            out: BufWriter::new(file),
            serializer: V2DeflateSerializer::new(),
            last_at_s: 0.0,
            started: false,
        })
    }

    /// Writes the log's header: the time the probes were attached (`at_s` seconds ago),
    /// which every interval's timestamp is relative to, and the legend.
    fn start(&mut self, at_s: f64) -> std::io::Result<()> {
        let attached = SystemTime::now()
            .checked_sub(Duration::from_secs_f64(at_s.max(0.0)))
            .unwrap_or_else(SystemTime::now);
        IntervalLogWriterBuilder::new()
            .add_comment("gomaptrace map distributions; tags: map_peak_entries (entries), map_lifetime_us and entry_lifetime_us (microseconds), map_est_bytes (bytes)")
            .with_start_time(attached)
            .with_base_time(attached)
            .begin_log_with(&mut self.out, &mut self.serializer)
            .map(drop)?;
        writeln!(
            self.out,
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        )
    }
}

/// What the maps still alive hold (the report's `peak_est_bytes`), one value per map.
fn est_bytes(snapshot: &Snapshot<'_>) -> Histogram<u64> {
    let mut histogram = Histogram::new(3).expect("3 significant digits is a valid precision");
    for map in snapshot.report.maps.iter().filter(|map| !map.released) {
        if let Some(bytes) = map.peak_est_bytes {
            // Auto-resizing: any u64 fits (a saturating record would clamp instead).
            let _ = histogram.record(bytes);
        }
    }
    histogram
}

impl Export for Hlog {
    fn write(&mut self, snapshot: &Snapshot<'_>) -> Result<(), ExportError> {
        if !self.started {
            self.start(snapshot.at_s)
                .map_err(|source| ExportError::write(&self.path, source))?;
            self.started = true;
        }
        let start = Duration::from_secs_f64(self.last_at_s.max(0.0));
        let length = Duration::from_secs_f64((snapshot.at_s - self.last_at_s).max(0.0));
        let bytes = est_bytes(snapshot);
        let histograms = [
            &snapshot.histograms.map_peak_entries,
            &snapshot.histograms.map_lifetime_us,
            &snapshot.histograms.entry_lifetime_us,
            &bytes,
        ];
        let path = self.path.clone();
        let failed = |reason: String| ExportError::write(&path, std::io::Error::other(reason));
        let mut writer = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.out, &mut self.serializer)
            .map_err(|error| failed(error.to_string()))?;
        for (tag, histogram) in TAGS.iter().zip(histograms) {
            let tag = Tag::new(tag).expect("tags have no commas or spaces");
            writer
                .write_histogram(histogram, start, length, Some(tag))
                .map_err(|error| failed(error.to_string()))?;
        }
        self.out
            .flush()
            .map_err(|source| ExportError::write(&self.path, source))?;
        self.last_at_s = snapshot.at_s;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_planted_at_the_log_path_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("gomaptrace-hlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let log = dir.join("trace.hlog");
        let _ = std::fs::remove_file(&log);
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        assert!(Hlog::create(log.clone()).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        std::fs::remove_file(&log).unwrap();
        assert!(Hlog::create(log.clone()).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
