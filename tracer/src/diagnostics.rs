//! The BPF programs' own diagnostics (`--verbose`): why a probe could not read a header, a
//! new map or a call stack, printed on stderr as the probes report it.
//!
//! The data already shows each such failure (a flagged count, a missing creation, an empty
//! stack) but not its cause. The programs only log on those failure paths, through
//! aya-log's ring buffer, and only when [`level`] enabled them at load: without
//! `--verbose`, no logging code runs in the target's probes.

use std::os::fd::{AsRawFd, RawFd};

use aya::Ebpf;
use tokio::io::unix::AsyncFd;

/// The value of aya-log's `AYA_LOG_LEVEL` global: every message, or none.
pub fn level(verbose: bool) -> u8 {
    if verbose {
        aya_log::Level::Trace as u8
    } else {
        0
    }
}

/// The name of the BPF global [`level`] sets.
pub const LEVEL_GLOBAL: &str = aya_log::LEVEL;

/// Error taking the programs' log buffer.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the BPF programs' diagnostics: {0}")]
pub struct DiagnosticsError(#[from] aya_log::Error);

/// The programs' log buffer, read into stderr.
pub struct Diagnostics {
    logger: aya_log::EbpfLogger<Stderr>,
}

impl Diagnostics {
    /// Takes the log buffer out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Diagnostics, DiagnosticsError> {
        Ok(Diagnostics {
            logger: aya_log::EbpfLogger::init_with_logger(ebpf, Stderr)?,
        })
    }

    /// Prints every message as it arrives, until the runtime stops. Must run on the tokio
    /// runtime.
    pub async fn forward(self) {
        // SAFETY: the logger owns its ring buffer's descriptor and returns the same one for
        // as long as the AsyncFd holds it.
        let registered =
            unsafe { AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) };
        let Ok(mut readable) = registered else {
            return;
        };
        while let Ok(mut ready) = readable.readable_mut().await {
            ready.get_inner_mut().logger.flush();
            ready.clear_ready();
        }
    }
}

impl AsRawFd for Diagnostics {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}

/// Writes each message as one `gomaptrace: bpf <level>: <message>` line.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!(
            "gomaptrace: bpf {}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        );
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_unless_verbose() {
        assert_eq!(level(false), 0);
        assert!(level(true) >= aya_log::Level::Debug as u8);
        assert_eq!(LEVEL_GLOBAL, "AYA_LOG_LEVEL");
    }
}
