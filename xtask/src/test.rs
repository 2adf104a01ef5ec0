//! `cargo xtask test`: what CI runs. Formatting and lints first (cheap, and a failure there
//! says more than a test failure would), then every unit and integration test.
//!
//! Integration tests load BPF programs and attach them to real Go processes: they need root
//! and a kernel with BPF and uprobes, and they fail, never skip, without them.

use std::path::Path;

use crate::{build_tracer, cargo, run};

/// Runs the checks and the whole test suite.
pub fn run_all(root: &Path) -> anyhow::Result<()> {
    run(cargo(root).args(["fmt", "--all", "--check"]))?;
    run(cargo(root).args([
        "fmt",
        "--check",
        "--manifest-path",
        "tracer-ebpf/Cargo.toml",
    ]))?;
    run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    crate::ebpf_clippy::run_clippy(root)?;
    let tracer = build_tracer(root, false)?;
    // Every test binary runs even after one fails, so that one run names every failure.
    run(cargo(root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("GOMAPTRACE_BIN", &tracer))?;
    // One guest, one fixture: the kernel-and-architecture matrix is `cargo xtask vm-test`.
    crate::vm::run_quick(root, &tracer)
}
