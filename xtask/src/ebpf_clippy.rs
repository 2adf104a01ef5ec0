//! Clippy on the BPF crate, which is its own workspace and never part of the host build, so
//! `cargo clippy --workspace` does not reach it.
//!
//! Debian's `rustc-web` (which builds the BPF object) ships no clippy, so the crate is linted
//! with the host toolchain's clippy for the host target: the BPF-specific code is the same
//! source, selected by the same `bpf_target_arch` cfg, once per architecture the build embeds
//! or checks. The crate asks for Debian's newer rustc (`rust-version`); linting needs no
//! feature that version adds, hence `--ignore-rust-version`.

use std::path::Path;

use crate::{cargo, run};

/// The architectures `tracer/build.rs` builds the BPF object for.
const ARCHITECTURES: [&str; 2] = ["x86_64", "aarch64"];

/// Lints `tracer-ebpf` for every architecture, warnings denied.
pub fn run_clippy(root: &Path) -> anyhow::Result<()> {
    for arch in ARCHITECTURES {
        run(cargo(root)
            .current_dir(root.join("tracer-ebpf"))
            .env("RUSTFLAGS", format!("--cfg bpf_target_arch=\"{arch}\""))
            .args([
                "clippy",
                "--ignore-rust-version",
                "--locked",
                "--target-dir",
            ])
            .arg(root.join("target/bpf-clippy").join(arch))
            .args(["--", "-D", "warnings"]))?;
    }
    Ok(())
}
