//! `cargo xtask image`: a container image of gomaptrace, how fleets run tracers.
//!
//! The binary is linked statically (glibc's static libraries, `+crt-static`) so that the image
//! can be `FROM scratch`: nothing but `/gomaptrace`. It is built with podman from a local
//! context; nothing is pulled.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::{cargo, run};

/// The tag `cargo xtask image` gives the image unless told otherwise.
pub const DEFAULT_TAG: &str = "localhost/gomaptrace:latest";

/// Builds the static binary and the image tagged `tag`.
pub fn build_image(root: &Path, tag: &str) -> anyhow::Result<()> {
    let binary = build_static(root)?;
    let context = root.join("target/image");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)
        .with_context(|| format!("cannot create {}", context.display()))?;
    std::fs::copy(&binary, context.join("gomaptrace"))
        .with_context(|| format!("cannot copy {}", binary.display()))?;
    std::fs::write(
        context.join("Containerfile"),
        "FROM scratch\nCOPY gomaptrace /gomaptrace\nENTRYPOINT [\"/gomaptrace\"]\n",
    )?;
    run(std::process::Command::new("podman")
        .args(["build", "-q", "-t", tag])
        .arg(&context))?;
    eprintln!("xtask: built image {tag} ({})", binary.display());
    Ok(())
}

/// `cargo build --release` of gomaptrace for this machine's target with a static C runtime.
/// An explicit `--target` keeps the flag away from build scripts (the BPF build) and gives
/// the static build its own directory.
pub(crate) fn build_static(root: &Path) -> anyhow::Result<PathBuf> {
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    run(cargo(root)
        .args([
            "build",
            "--release",
            "--package",
            "tracer",
            "--bin",
            "gomaptrace",
        ])
        .args(["--target", &triple])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    let binary = root.join("target").join(&triple).join("release/gomaptrace");
    let bytes =
        std::fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
    if has_interpreter(&bytes) {
        bail!("{} still asks for a dynamic loader", binary.display());
    }
    Ok(binary)
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header (a dynamic
/// loader it needs, which an image `FROM scratch` does not have).
pub(crate) fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, len: usize| -> u64 {
        elf.get(at..at + len).map_or(0, |bytes| {
            bytes
                .iter()
                .rev()
                .fold(0, |value, &byte| value << 8 | u64::from(byte))
        })
    };
    let (phoff, phentsize, phnum) = (read(0x20, 8), read(0x36, 2), read(0x38, 2));
    (0..phnum).any(|index| read((phoff + index * phentsize) as usize, 4) == u64::from(PT_INTERP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_dynamic_from_static_executables() {
        let dynamic = std::fs::read("/bin/sh").unwrap();
        assert!(has_interpreter(&dynamic));
        assert!(!has_interpreter(b"not an ELF file"));
    }
}
