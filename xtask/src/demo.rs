//! `cargo xtask demo`: the whole tool on a bundled Go service that really leaks through a map.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::{build_tracer, run};

/// The Go toolchain the demo service is built with (installed by set-up).
const DEMO_GO: &str = "1.24.11";

/// Builds the demo service and gomaptrace, traces the service for `duration`, prints the report.
pub fn run_demo(root: &Path, duration: &str) -> anyhow::Result<()> {
    let tracer = build_tracer(root, true)?;
    let service = build_service(root)?;
    let mut child = Command::new(&service)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", service.display()))?;
    let mut ready = String::new();
    let stdout = child.stdout.take().context("the service has no stdout")?;
    BufReader::new(stdout).read_line(&mut ready)?;
    eprintln!(
        "xtask: demo service running as pid {}; tracing it for {duration}",
        child.id()
    );
    let json = root.join("target/demo/report.json");
    let traced = run(Command::new(&tracer)
        .arg("--pid")
        .arg(child.id().to_string())
        .args(["--duration", duration, "--json"])
        .arg(&json));
    let _ = child.kill();
    let _ = child.wait();
    traced?;
    eprintln!("xtask: JSON report written to {}", json.display());
    Ok(())
}

fn build_service(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let go = root.join(".tools/go").join(DEMO_GO).join("bin/go");
    if !go.exists() {
        bail!("Go {DEMO_GO} is missing at {}", go.display());
    }
    let out_dir = root.join("target/demo");
    let binary = out_dir.join("leaky-service");
    run(Command::new(go)
        .args(["build", "-trimpath", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(root.join("tests/fixtures/leaky"))
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", out_dir.join("gocache")))?;
    Ok(binary)
}
