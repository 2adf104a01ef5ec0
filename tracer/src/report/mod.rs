//! The report: what the model learned, as JSON for tools and as text for people.
//!
//! The JSON shape is a contract (fields are added, never renamed or removed); `addr` is the
//! string Go's `fmt.Sprintf("%p", m)` prints for the map, so users can match it to their own
//! logs. The report is a pure function of the model, the resolved symbols and the trace's
//! metadata, which is what lets `gomaptrace replay` rebuild it byte for byte.
//!
//! Layout: `contract` holds the JSON types (the contract), `build` makes a [`Report`] from
//! the model, `text` renders it for people, `write` puts it on disk.

mod build;
mod contract;
mod text;
mod write;

pub use build::ReportContext;
pub(crate) use build::RUNTIME_PREFIXES;
pub use contract::*;
pub(crate) use text::human_bytes;
pub use write::write_atomically;

#[cfg(test)]
mod tests;
