//! What the guests are made of, all from Debian's packages and this workspace: QEMU and the
//! arm64 cross toolchain (installed), kernels and busybox (downloaded with `apt-get download`
//! and only the needed files extracted under `target/vm/`), gomaptrace for each architecture
//! and the maps fixture built by the project's Go toolchains.
//!
//! Kernels from suites this machine does not use (bookworm-backports, bullseye) come through
//! a private apt configuration under `target/vm/apt/<suite>`: the system's sources stay as
//! they are, and the archive's address is the one the system already uses.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use super::Arch;
use crate::run;

/// Debian packages (with their architecture where it is not the host's) the guests need:
/// QEMU for both architectures, and a linker, C library and Rust standard library to build
/// gomaptrace for arm64 with Debian's `rustc` (rustup has no arm64 target here).
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "gcc-aarch64-linux-gnu",
    "binutils-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "libstd-rust-web-dev:arm64",
];

/// Where a guest's kernel comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// The system's own suite (bookworm: 6.1 LTS).
    System,
    /// bookworm-backports (6.12).
    Backports,
    /// bullseye (5.10): older than gomaptrace's minimum, booted to see it refused.
    Bullseye,
}

impl Suite {
    /// The suite's name in the archive; `None` for the system's own.
    fn name(self) -> Option<&'static str> {
        match self {
            Suite::System => None,
            Suite::Backports => Some("bookworm-backports"),
            Suite::Bullseye => Some("bullseye"),
        }
    }
}

/// Installs [`PACKAGES`] (adding the arm64 architecture to dpkg first) when any is missing.
pub fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|package| !crate::setup::is_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing what VM guests need: {}",
        missing.join(" ")
    );
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .context("cannot run dpkg")?;
    if !String::from_utf8_lossy(&foreign.stdout)
        .lines()
        .any(|arch| arch == "arm64")
    {
        run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The guest kernel for `arch` from `suite`, downloaded and extracted once into
/// `target/vm/kernels/<suite>-<arch>/boot/vmlinuz-*`.
pub fn kernel(root: &Path, arch: Arch, suite: Suite) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/vm/kernels").join(format!(
        "{}-{}",
        suite.name().unwrap_or("system"),
        arch.debian()
    ));
    if let Some(found) = vmlinuz_in(&dir.join("boot")) {
        return Ok(found);
    }
    let apt = private_apt(root, suite)?;
    with_fresh_lists(&apt, || fetch_kernel(root, arch, &apt, &dir))?;
    vmlinuz_in(&dir.join("boot"))
        .with_context(|| format!("no /boot/vmlinuz-* in {}", dir.display()))
}

/// Runs `fetch`, and once more after `apt-get update` if it fails: package lists older than
/// the archive name files it no longer has.
fn with_fresh_lists(
    apt: &[String],
    mut fetch: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if fetch().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: refreshing the package lists and trying again");
    run(Command::new("apt-get")
        .args(apt)
        .args(["-q", "-o", "APT::Sandbox::User=root", "update"]))?;
    fetch()
}

/// Downloads the current kernel package of `arch` (with `apt` options) and extracts its
/// `/boot` into `dir`.
fn fetch_kernel(root: &Path, arch: Arch, apt: &[String], dir: &Path) -> anyhow::Result<()> {
    // The flavour's metapackage names the current kernel package: its ABI number changes
    // with every kernel update and the archive keeps only the current one.
    let meta = format!("linux-image-{0}:{0}", arch.debian());
    let depends = output(Command::new("apt-cache").args(apt).args(["depends", &meta]))?;
    let package = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-"))
        .with_context(|| format!("{meta} depends on no kernel package: {depends}"))?;
    let name = package.split(':').next().unwrap_or(package);
    let package = format!("{name}:{}", arch.debian());
    extract(root, apt, &package, dir, "./boot")
}

/// busybox-static for `arch`, its one binary extracted into `target/vm/busybox-<arch>`
/// (the package itself is never installed: the two architectures' packages conflict).
pub fn busybox(root: &Path, arch: Arch) -> anyhow::Result<PathBuf> {
    let dir = root
        .join("target/vm")
        .join(format!("busybox-{}", arch.debian()));
    let binary = dir.join("bin/busybox");
    if !binary.is_file() {
        let package = format!("busybox-static:{}", arch.debian());
        with_fresh_lists(&[], || extract(root, &[], &package, &dir, "./bin/busybox"))?;
    }
    Ok(binary)
}

/// Downloads `package` with `apt` options into a scratch directory and extracts `member`
/// (a path inside the package, `./…`) into `dir`, renamed into place whole.
fn extract(
    root: &Path,
    apt: &[String],
    package: &str,
    dir: &Path,
    member: &str,
) -> anyhow::Result<()> {
    eprintln!("xtask: downloading {package}");
    let scratch = root.join("target/vm/download");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("tree"))?;
    run(Command::new("apt-get")
        .args(apt)
        .args(["-q", "-o", "APT::Sandbox::User=root", "download", package])
        .current_dir(&scratch))?;
    let deb = std::fs::read_dir(&scratch)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run dpkg-deb")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(scratch.join("tree"))
        .arg(member)
        .stdin(dpkg.stdout.take().expect("piped"))
        .status()
        .context("cannot run tar")?;
    if !dpkg.wait()?.success() || !tar.success() {
        bail!("cannot extract {member} from {}", deb.display());
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.parent().expect("under target/vm"))?;
    std::fs::rename(scratch.join("tree"), dir)
        .with_context(|| format!("cannot move the extracted files to {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn vmlinuz_in(boot: &Path) -> Option<PathBuf> {
    std::fs::read_dir(boot)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// apt options that read only `suite` from a private list directory (updated here once a
/// day at most); none for the system's own suite.
fn private_apt(root: &Path, suite: Suite) -> anyhow::Result<Vec<String>> {
    let Some(name) = suite.name() else {
        return Ok(Vec::new());
    };
    let dir = root.join("target/vm/apt").join(name);
    for sub in ["lists/partial", "cache/archives/partial", "parts"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let sources = dir.join("sources.list");
    std::fs::write(
        &sources,
        format!(
            "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             {} {name} main\n",
            system_archive()?
        ),
    )?;
    let options: Vec<String> = [
        ("Dir::Etc::SourceList", sources),
        ("Dir::Etc::SourceParts", dir.join("parts")),
        ("Dir::State::Lists", dir.join("lists")),
        ("Dir::Cache", dir.join("cache")),
    ]
    .into_iter()
    .flat_map(|(key, path)| ["-o".to_string(), format!("{key}={}", path.display())])
    .collect();
    let stamp = dir.join("updated");
    let fresh = std::fs::metadata(&stamp)
        .and_then(|meta| meta.modified())
        .is_ok_and(|at| at.elapsed().is_ok_and(|age| age.as_secs() < 86_400));
    if !fresh {
        eprintln!("xtask: reading the {name} package lists");
        run(Command::new("apt-get").args(&options).args([
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            "update",
        ]))?;
        std::fs::write(&stamp, b"")?;
    }
    Ok(options)
}

/// The address of the Debian archive the system's own sources use (the first `URIs:` of a
/// deb822 source, or the first `deb` line), so that no address is written down here.
fn system_archive() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "sources") {
                texts.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    archive_in(&texts)
        .context("no Debian archive in /etc/apt/sources.list{,.d}: cannot reach other suites")
}

/// The first archive address (not the security archive's) in apt source files' `texts`.
fn archive_in(texts: &[String]) -> Option<String> {
    texts
        .iter()
        .flat_map(|text| text.lines())
        .find_map(|line| {
            let line = line.trim();
            let uri = match line.strip_prefix("URIs:") {
                Some(uris) => uris.split_whitespace().next(),
                None => line
                    .strip_prefix("deb ")?
                    .split_whitespace()
                    .find(|word| word.contains("://")),
            };
            uri.filter(|uri| !uri.contains("security"))
        })
        .map(str::to_string)
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// gomaptrace for `arch`, statically linked: for x86_64 the same build as `cargo xtask
/// image`; for arm64 cross-built by Debian's cargo and rustc (whose arm64 standard library
/// is a Debian package) into `target/vm/cross`, with the cross gcc as linker.
pub fn gomaptrace(root: &Path, arch: Arch) -> anyhow::Result<PathBuf> {
    if arch == Arch::X86_64 && std::env::consts::ARCH == "x86_64" {
        return crate::image::build_static(root);
    }
    let triple = arch.rust_triple();
    let upper = triple.to_uppercase().replace('-', "_");
    let gcc = format!("{}-linux-gnu-gcc", arch.rust_arch());
    let target_dir = root.join("target/vm/cross");
    eprintln!("xtask: building gomaptrace for {triple} (cross, release)");
    // Nothing of this xtask's own environment (rustup's toolchain, cargo's variables for the
    // running xtask) reaches Debian's cargo: only the home, registry and proxy settings.
    run(Command::new("/usr/bin/cargo")
        .current_dir(root)
        .env_clear()
        .envs(std::env::vars_os().filter(|(key, _)| {
            let key = key.to_string_lossy();
            matches!(key.as_ref(), "HOME" | "CARGO_HOME" | "USER" | "TMPDIR")
                || key.to_ascii_lowercase().ends_with("_proxy")
        }))
        .env("PATH", "/usr/bin:/bin")
        .env("RUSTC", "/usr/bin/rustc")
        .env("GOMAPTRACE_BPF", "real")
        .env(format!("CARGO_TARGET_{upper}_LINKER"), &gcc)
        .env(
            format!("CARGO_TARGET_{upper}_RUSTFLAGS"),
            "-C target-feature=+crt-static",
        )
        .env(format!("CC_{}", triple.replace('-', "_")), &gcc)
        .args(["build", "--release", "--package", "tracer", "--bin"])
        .args(["gomaptrace", "--target", triple, "--target-dir"])
        .arg(&target_dir))?;
    Ok(target_dir.join(triple).join("release/gomaptrace"))
}

/// The maps fixture built by Go `version` for `arch`, as a PIE when `pie`; Go's cache makes
/// a rebuild cheap.
pub fn fixture(root: &Path, arch: Arch, version: &str, pie: bool) -> anyhow::Result<PathBuf> {
    let go = root.join(".tools/go").join(version).join("bin/go");
    if !go.exists() {
        bail!(
            "Go {version} is not installed at {}: run `cargo xtask setup`",
            go.display()
        );
    }
    let out_dir = root.join("target/vm/fixtures").join(arch.debian());
    std::fs::create_dir_all(&out_dir)?;
    let output = out_dir.join(format!("maps-go{version}{}", if pie { "-pie" } else { "" }));
    let caches = root.join("target/fixtures");
    run(Command::new(&go)
        .args(["build", "-trimpath", "-o"])
        .arg(&output)
        .args(pie.then_some("-buildmode=pie"))
        .arg(".")
        .current_dir(root.join("tests/fixtures/maps"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOARCH", arch.debian())
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", caches.join(format!("gocache-{version}")))
        .env("GOPATH", caches.join("gopath")))?;
    Ok(output)
}

/// A copy of `binary` without symbols (`<arch>-linux-gnu-strip`, or the host's `strip`), so
/// that the initramfs the emulated guest unpacks stays small.
pub fn stripped(root: &Path, arch: Arch, binary: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let out_dir = root.join("target/vm/stripped").join(arch.debian());
    std::fs::create_dir_all(&out_dir)?;
    let output = out_dir.join(name);
    let strip = if arch.rust_arch() == std::env::consts::ARCH {
        "strip".to_string()
    } else {
        format!("{}-linux-gnu-strip", arch.rust_arch())
    };
    run(Command::new(strip).arg("-o").arg(&output).arg(binary))?;
    Ok(output)
}

/// The shared libraries a dynamically linked host binary loads, as `ldd` lists them (the
/// loader included): copied into the guest so that a debug build runs there too.
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listed = output(Command::new("ldd").arg(binary))?;
    Ok(listed
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_archive_in_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://archive.example/debian-security\n\
                      Suites: bookworm-security\n\nTypes: deb\n\
                      URIs: http://archive.example/debian\nSuites: bookworm\n";
        let one_line = "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            archive_in(&[deb822.to_string()]).as_deref(),
            Some("http://archive.example/debian")
        );
        assert_eq!(
            archive_in(&[String::new(), one_line.to_string()]).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(archive_in(&["# nothing\n".to_string()]), None);
    }

    #[test]
    fn lists_a_dynamic_binarys_libraries_and_loader() {
        let libraries = shared_libraries(Path::new("/bin/sh")).unwrap();
        let names: Vec<String> = libraries
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|name| name.starts_with("libc.so")),
            "{names:?}"
        );
        assert!(
            names.iter().any(|name| name.starts_with("ld-linux")),
            "{names:?}"
        );
        assert!(libraries
            .iter()
            .all(|path| path.is_absolute() && path.exists()));
    }
}
