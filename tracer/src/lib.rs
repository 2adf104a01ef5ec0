//! gomaptrace: follow every map of a live Go program through eBPF uprobes.
//!
//! Data flows one way through these modules: the target process ([`target`]) → what its
//! binary holds ([`inspect`]) → where to put probes ([`plan`]) → the loaded BPF programs
//! ([`probes`]) → the per-map model ([`model`], free of I/O) and its [`verdict`]s → the
//! report ([`report`]). [`pipeline`] feeds model and report in order (and records or replays
//! that feed); [`session`] strings everything together for one live trace, [`live`] shows
//! it while it runs.

pub mod abi;
pub mod allocator;
pub mod container;
pub mod diagnostics;
#[cfg(test)]
mod dwarf_oracle;
pub mod export;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(any(test, feature = "fixtures"))]
pub mod gofixture;
pub mod inspect;
pub mod kernel;
pub mod launch;
pub mod live;
pub mod memory;
pub mod model;
pub mod overrides;
pub mod pipeline;
pub mod plan;
pub mod privileges;
pub mod probes;
pub mod report;
pub mod rootfs;
pub mod sampled;
pub mod session;
pub mod sibling;
pub mod snapshot;
pub mod target;
pub mod trend;
pub mod verdict;
pub mod writers;
