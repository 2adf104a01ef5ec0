//! Builds the BPF programs in `tracer-ebpf/` and hands the object to the tracer.
//!
//! The BPF crate needs a toolchain that differs from the host build's: Debian's `rustc-web`
//! (whose `core` source is installed, and which matches bpf-linker's LLVM) with
//! `-Z build-std=core`. rustup's proxies must stay off `PATH` for that build, and none of the
//! variables cargo sets for this script may leak into it. `cargo xtask setup` installs the
//! toolchain; without it this script stops with a message that says so.

use std::path::{Path, PathBuf};
use std::process::Command;

const BPF_TARGET: &str = "bpfel-unknown-none";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tracer/ is inside the workspace");
    let ebpf_dir = root.join("tracer-ebpf");
    for watched in [
        "tracer-ebpf/src",
        "tracer-ebpf/Cargo.toml",
        "tracer-ebpf/Cargo.lock",
        "tracer-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let linker_dir = root.join(".tools/bin");
    for needed in [
        Path::new(DEBIAN_CARGO),
        Path::new(DEBIAN_RUSTC),
        &linker_dir.join("bpf-linker"),
    ] {
        if !needed.exists() {
            panic!(
                "{} is missing: the BPF programs cannot be built. Run `cargo xtask setup` first.",
                needed.display()
            );
        }
    }

    let target_dir = root.join("target/bpf");
    let mut build = Command::new(DEBIAN_CARGO);
    build
        .env_clear()
        .envs(std::env::vars_os().filter(|(key, _)| is_passed_through(key)))
        .env("PATH", format!("{}:/usr/bin:/bin", linker_dir.display()))
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(&ebpf_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            BPF_TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    let status = build
        .status()
        .unwrap_or_else(|error| panic!("cannot run {DEBIAN_CARGO}: {error}"));
    assert!(
        status.success(),
        "building tracer-ebpf failed (see the errors above)"
    );

    let object = target_dir.join(BPF_TARGET).join("release/gomaptrace-ebpf");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::copy(&object, out_dir.join("gomaptrace.bpf.o"))
        .unwrap_or_else(|error| panic!("cannot copy {}: {error}", object.display()));
}

/// Only what the nested build needs from this environment: the home and registry locations
/// and proxy settings. Everything cargo set for this build script stays behind.
fn is_passed_through(key: &std::ffi::OsStr) -> bool {
    let key = key.to_string_lossy();
    matches!(key.as_ref(), "HOME" | "CARGO_HOME" | "USER" | "TMPDIR")
        || key.to_ascii_lowercase().ends_with("_proxy")
}
