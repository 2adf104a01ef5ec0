//! Which machine registers the BPF programs read, per architecture, and whether this build of
//! gomaptrace can trace a given binary at all.
//!
//! The BPF object embedded in the tracer is built for the tracer's own architecture (see
//! `tracer/build.rs`): its probes read that architecture's saved registers, so a target of
//! another architecture (an arm64 program run through emulation on an amd64 host, say) must
//! be refused before anything is attached, not traced with garbage.

use tracer_common::registers::{self, RegisterFile};

use crate::inspect::Arch;

/// The registers the BPF programs read when the target is built for `arch`.
pub fn registers(arch: Arch) -> &'static RegisterFile {
    match arch {
        Arch::Amd64 => &registers::AMD64,
        Arch::Arm64 => &registers::ARM64,
    }
}

/// The architecture whose registers the embedded BPF object reads: this build's own.
pub const HOST: Arch = if cfg!(target_arch = "aarch64") {
    Arch::Arm64
} else {
    Arch::Amd64
};

/// A target whose registers the embedded BPF programs cannot read.
#[derive(Debug, thiserror::Error)]
#[error(
    "the target is a linux/{target} program, but this gomaptrace reads linux/{host} registers: \
     run a gomaptrace built for {target}"
)]
pub struct ForeignArch {
    /// The target binary's architecture.
    pub target: Arch,
    /// The architecture this gomaptrace was built for.
    pub host: Arch,
}

/// Accepts only targets of this build's architecture.
pub fn check_traceable(target: Arch) -> Result<(), ForeignArch> {
    if target == HOST {
        Ok(())
    } else {
        Err(ForeignArch { target, host: HOST })
    }
}

#[cfg(test)]
mod tests;
