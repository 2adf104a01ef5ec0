//! Writing the JSON report so that a reader never sees a partial file.

use std::io;
use std::path::Path;

use super::contract::Report;

impl Report {
    /// Writes the JSON report to `path` atomically: readers see the old file or the whole new
    /// one, never a partial file.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        write_atomically(path, &bytes)
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the whole new one, never a
/// partial file; on failure nothing is left behind. See [`crate::sibling`] for why the
/// temporary file cannot be redirected.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::sibling::write_atomically(path, bytes)
}
