//! Project automation: `cargo xtask <command>`.
//!
//! Every command first runs the idempotent set-up, so the README's commands work on a fresh
//! machine with nothing installed by hand.

mod bench;
mod demo;
mod ebpf_clippy;
mod fuzz;
// The fixture builder and the toolchain lists the tests use, shared as source: xtask builds
// before the tracer's BPF object exists, so it cannot depend on the tracer crate. xtask uses
// only part of it.
#[allow(dead_code)]
#[path = "../../tracer/src/gofixture.rs"]
mod gofixture;
mod image;
mod setup;
mod soak;
mod test;
mod vm;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the project needs (Debian packages, bpf-linker, Go toolchains).
    Setup,
    /// Build gomaptrace (release) after set-up.
    Build,
    /// Run every check and test CI runs: fmt, clippy, unit and integration tests.
    Test,
    /// Start the bundled leaking Go service, trace it and print the report.
    Demo {
        /// How long to trace.
        #[arg(long, default_value = "10s")]
        duration: String,
    },
    /// Measure what tracing costs a Go program: untraced, empty probes, gomaptrace, bpftrace.
    Bench(bench::BenchOptions),
    /// Build a container image of gomaptrace (static binary, `FROM scratch`) with podman.
    Image {
        /// The image's tag.
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
    /// Trace a service making 20,000 maps a second for 30 minutes with every export on;
    /// record the tracer's memory each minute, its CPU and the outputs' sizes. Not in CI.
    Soak(soak::SoakOptions),
    /// Boot QEMU guests (arm64 and amd64, Debian's 6.1, 6.12 and 5.10 kernels) and trace the
    /// maps fixture inside them; see README "Kernels and architectures".
    VmTest(vm::VmOptions),
    /// Fuzz every reader of target-controlled bytes (libFuzzer, `fuzz/`) for a fixed time
    /// per target; print executions, coverage, CPU time and findings. Not in CI.
    Fuzz(fuzz::FuzzOptions),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    setup::install_missing(&root)?;
    match cli.command {
        Task::Setup => Ok(()),
        Task::Build => build_tracer(&root, true).map(|_| ()),
        Task::Test => test::run_all(&root),
        Task::Demo { duration } => demo::run_demo(&root, &duration),
        Task::Bench(options) => bench::run_bench(&root, &options),
        Task::Image { tag } => image::build_image(&root, &tag),
        Task::Soak(options) => soak::run_soak(&root, &options),
        Task::VmTest(options) => vm::run_matrix(&root, &options),
        Task::Fuzz(options) => fuzz::run_fuzz(&root, &options),
    }
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is inside the workspace")
        .to_path_buf()
}

/// Builds the `gomaptrace` binary and returns its path.
fn build_tracer(root: &std::path::Path, release: bool) -> anyhow::Result<PathBuf> {
    let mut build = cargo(root);
    build.args(["build", "--package", "tracer", "--bin", "gomaptrace"]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    Ok(root.join("target").join(profile).join("gomaptrace"))
}

/// The cargo that runs this xtask, in the workspace root.
fn cargo(root: &std::path::Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root);
    // Whatever xtask builds traces for real: never the stub `tracer/build.rs` falls back to.
    command.env("GOMAPTRACE_BPF", "real");
    command
}

/// Runs a command, failing with its command line when it fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
