//! Builds the BPF programs in `tracer-ebpf/` and hands the object to the tracer.
//!
//! The BPF crate needs a toolchain that differs from the host build's: Debian's `rustc-web`
//! (whose `core` source is installed, and which matches bpf-linker's LLVM) with
//! `-Z build-std=core`. rustup's proxies must stay off `PATH` for that build, and none of the
//! variables cargo sets for this script may leak into it. `cargo xtask setup` installs the
//! toolchain.
//!
//! `GOMAPTRACE_BPF` says whether the real object is needed: `real` (set by every `cargo
//! xtask` command) builds it and stops with a message when the toolchain is missing; `stub`
//! embeds an empty object; unset, the object is built when the toolchain is there and stubbed
//! otherwise, so that `cargo check`, clippy and rust-analyzer work on a fresh clone. A
//! gomaptrace with the stub refuses to trace with a one-line error (`probes.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the real BPF object is wanted: `real`, `stub`, or unset (real when possible).
const MODE_VAR: &str = "GOMAPTRACE_BPF";
const BPF_TARGET: &str = "bpfel-unknown-none";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// The architectures whose Go registers `tracer_common::registers` describes, spelled as
/// Rust's `target_arch` (and aya's `bpf_target_arch`).
const BPF_ARCHITECTURES: [&str; 2] = ["x86_64", "aarch64"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tracer/ is inside the workspace");
    build_pprof_types(&manifest_dir);
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
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let embedded = out_dir.join("gomaptrace.bpf.o");
    let toolchain = [
        PathBuf::from(DEBIAN_CARGO),
        PathBuf::from(DEBIAN_RUSTC),
        linker_dir.join("bpf-linker"),
    ];
    println!("cargo:rerun-if-env-changed={MODE_VAR}");
    for needed in &toolchain {
        // A missing path reruns this script on every build, so installing it is noticed.
        println!("cargo:rerun-if-changed={}", needed.display());
    }
    let missing = toolchain.iter().find(|needed| !needed.exists());
    let mode = std::env::var(MODE_VAR).unwrap_or_default();
    match (mode.as_str(), missing) {
        ("stub", _) => return write_stub(&embedded, "GOMAPTRACE_BPF=stub"),
        ("real", Some(needed)) => panic!(
            "{} is missing: the BPF programs cannot be built. Run `cargo xtask setup` first.",
            needed.display()
        ),
        ("real" | "", _) => {}
        (other, _) => panic!("{MODE_VAR}={other}: expected `real`, `stub` or nothing"),
    }
    if let Some(needed) = missing {
        return write_stub(
            &embedded,
            &format!("{} is missing (run `cargo xtask setup`)", needed.display()),
        );
    }

    let host_arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("set by cargo");
    assert!(
        BPF_ARCHITECTURES.contains(&host_arch.as_str()),
        "gomaptrace reads Go's registers on {BPF_ARCHITECTURES:?} only, not on {host_arch}"
    );
    // Every architecture is built, not only the one embedded: the register table's offsets are
    // checked against aya's bindings at compile time (`tracer-ebpf/src/go_abi.rs`), and an
    // arm64 mistake must fail this machine's build too.
    for arch in BPF_ARCHITECTURES {
        let object = build_bpf(
            &ebpf_dir,
            &linker_dir,
            &root.join("target/bpf").join(arch),
            arch,
        );
        if arch == host_arch {
            std::fs::copy(&object, &embedded)
                .unwrap_or_else(|error| panic!("cannot copy {}: {error}", object.display()));
        }
    }
}

/// Embeds an empty object instead of the BPF programs, saying why: enough to type-check and
/// lint the tracer, never to trace.
fn write_stub(embedded: &Path, why: &str) {
    println!(
        "cargo:warning=BPF programs not built ({why}): this gomaptrace cannot trace; \
         set {MODE_VAR}=real or use `cargo xtask build`"
    );
    std::fs::write(embedded, b"")
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", embedded.display()));
}

/// Generates the Rust types of pprof's `profile.proto` (for `--pprof`) into `OUT_DIR`. The
/// .proto is parsed by protox, in Rust, so no `protoc` has to be installed for the build.
fn build_pprof_types(manifest_dir: &Path) {
    let proto_dir = manifest_dir.join("proto");
    let proto = proto_dir.join("profile.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&proto_dir])
        .unwrap_or_else(|error| panic!("cannot parse {}: {error}", proto.display()));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|error| panic!("cannot generate pprof types: {error}"));
}

/// Builds the BPF object for one architecture's register layout (`bpf_target_arch`, the
/// name aya uses) and returns its path.
fn build_bpf(ebpf_dir: &Path, linker_dir: &Path, target_dir: &Path, arch: &str) -> PathBuf {
    let mut build = Command::new(DEBIAN_CARGO);
    build
        .env_clear()
        .envs(std::env::vars_os().filter(|(key, _)| is_passed_through(key)))
        .env("PATH", format!("{}:/usr/bin:/bin", linker_dir.display()))
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", format!("--cfg bpf_target_arch=\"{arch}\""))
        .current_dir(ebpf_dir)
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
        .arg(target_dir);
    let status = build
        .status()
        .unwrap_or_else(|error| panic!("cannot run {DEBIAN_CARGO}: {error}"));
    assert!(
        status.success(),
        "building tracer-ebpf for {arch} failed (see the errors above)"
    );
    target_dir.join(BPF_TARGET).join("release/gomaptrace-ebpf")
}

/// Only what the nested build needs from this environment: the home and registry locations
/// and proxy settings. Everything cargo set for this build script stays behind.
fn is_passed_through(key: &std::ffi::OsStr) -> bool {
    let key = key.to_string_lossy();
    matches!(key.as_ref(), "HOME" | "CARGO_HOME" | "USER" | "TMPDIR")
        || key.to_ascii_lowercase().ends_with("_proxy")
}
