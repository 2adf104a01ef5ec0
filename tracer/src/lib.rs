//! gomaptrace: follow every map of a live Go program through eBPF uprobes.
//!
//! Data flows one way through these modules: the target process ([`target`]) → what its
//! binary holds ([`inspect`]) → where to put probes ([`plan`]) → the loaded BPF programs
//! ([`probes`]) → the per-map model ([`model`], free of I/O) → the report ([`report`]).
//! [`session`] strings them together for one trace.

#[cfg(any(test, feature = "fixtures"))]
pub mod gofixture;
pub mod inspect;
pub mod model;
pub mod plan;
pub mod privileges;
pub mod probes;
pub mod report;
pub mod session;
pub mod target;
