//! `cargo xtask vm-test`: gomaptrace traced live on other kernels and on arm64, in QEMU
//! guests, the way aya's `cargo xtask integration-test vm` tests aya.
//!
//! Each guest boots a Debian kernel with a small initramfs (busybox-static, gomaptrace for
//! the guest's architecture, the maps fixture built by a classic and a swiss Go release (and
//! as a PIE, with the guest's dynamic loader), and `init.sh`) and no disk or network. Init traces each fixture as the host tests do and prints the
//! fixture's tally, gomaptrace's messages and its report on the serial console, then powers
//! off; the host checks every map's counts against the tally (`check.rs`).
//!
//! Guests run under TCG (`-accel tcg -cpu max`): this machine's `/dev/kvm` cannot run stock
//! kernels. Emulated code runs 11–25× slower than the host, so guests only run what needs the
//! guest's kernel or architecture. QEMU exits 0 whatever happens inside, so a guest passes
//! only on init's lines, and one that hangs is killed after a timeout.

mod assets;
mod check;
mod cpio;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use assets::{install_packages, Suite};

/// The guest's init, written to `/init` in every initramfs.
const INIT: &str = include_str!("vm/init.sh");

/// A Go release before swiss tables (classic buckets), and one with them.
const CLASSIC_GO: &str = "1.23.9";
const SWISS_GO: &str = "1.27.3";

/// A guest's architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// amd64.
    X86_64,
    /// arm64, emulated on this x86_64 machine.
    Aarch64,
}

impl Arch {
    /// Debian's (and Go's) name.
    fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Rust's `target_arch`, also the GNU tools' prefix.
    fn rust_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The dynamic loader a PIE asks for: where the guest has it, and where this machine's
    /// packages put it (arm64's comes with `libc6-arm64-cross`).
    fn loader(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("/lib64/ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2"),
            Arch::Aarch64 => (
                "/lib/ld-linux-aarch64.so.1",
                "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1",
            ),
        }
    }

    fn rust_triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// QEMU for this architecture under TCG, with the serial console on stdout. `-cpu max` on
    /// arm64 emulates pointer authentication with QEMU's cheap algorithm
    /// (`pauth-impdef`): the architected one costs more than the guest's whole workload.
    fn qemu(self, kernel: &Path, initramfs: &Path) -> Command {
        let (program, machine, cpu, console) = match self {
            Arch::X86_64 => ("qemu-system-x86_64", "q35", "max", "ttyS0 noapic"),
            Arch::Aarch64 => (
                "qemu-system-aarch64",
                "virt",
                "max,pauth-impdef=on",
                "ttyAMA0",
            ),
        };
        let mut qemu = Command::new(program);
        qemu.args(["-machine", machine, "-accel", "tcg", "-cpu", cpu])
            .args(["-m", "1024", "-smp", "1", "-nographic", "-no-reboot"])
            .args(["-nic", "none"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initramfs)
            .arg("-append")
            .arg(format!("console={console} panic=-1 quiet"));
        qemu
    }
}

/// One build of the maps fixture.
#[derive(Clone, Copy, Debug)]
struct Build {
    /// The Go release.
    go: &'static str,
    /// `-buildmode=pie`: loaded at a random base by the guest's dynamic loader, so the
    /// tracer must find the load bias (on arm64, never traced before these guests).
    pie: bool,
}

impl Build {
    const fn plain(go: &'static str) -> Build {
        Build { go, pie: false }
    }

    const fn pie(go: &'static str) -> Build {
        Build { go, pie: true }
    }

    /// Its file name in the guest, which init prints as the case's name.
    fn name(&self) -> String {
        format!("maps-go{}{}", self.go, if self.pie { "-pie" } else { "" })
    }
}

/// What a guest must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Every fixture traced with exact counts.
    Traced,
    /// gomaptrace refusing the kernel with its one-line error.
    Refused,
}

/// One guest of the matrix.
struct Guest {
    /// Its name in messages and on the command line (`--guest`).
    label: &'static str,
    arch: Arch,
    suite: Suite,
    /// The builds of the maps fixture it traces.
    builds: &'static [Build],
    expect: Expect,
}

/// The full matrix: arm64 and amd64 on Debian's 6.1 LTS kernel and amd64 on 6.12
/// (bookworm-backports) with a classic and a swiss Go release, arm64 on 6.12 with the swiss
/// one, and amd64 on 5.10 (bullseye), which gomaptrace must refuse.
const MATRIX: &[Guest] = &[
    Guest {
        label: "arm64-6.1",
        arch: Arch::Aarch64,
        suite: Suite::System,
        builds: &[
            Build::plain(CLASSIC_GO),
            Build::plain(SWISS_GO),
            Build::pie(SWISS_GO),
        ],
        expect: Expect::Traced,
    },
    Guest {
        label: "amd64-6.1",
        arch: Arch::X86_64,
        suite: Suite::System,
        builds: &[Build::plain(CLASSIC_GO), Build::plain(SWISS_GO)],
        expect: Expect::Traced,
    },
    Guest {
        label: "amd64-6.12",
        arch: Arch::X86_64,
        suite: Suite::Backports,
        builds: &[Build::plain(CLASSIC_GO), Build::plain(SWISS_GO)],
        expect: Expect::Traced,
    },
    Guest {
        label: "arm64-6.12",
        arch: Arch::Aarch64,
        suite: Suite::Backports,
        builds: &[Build::plain(SWISS_GO)],
        expect: Expect::Traced,
    },
    Guest {
        label: "amd64-5.10",
        arch: Arch::X86_64,
        suite: Suite::Bullseye,
        builds: &[Build::plain(SWISS_GO)],
        expect: Expect::Refused,
    },
];

/// The guest the default test run boots: amd64 on 6.1 with the swiss fixture.
const QUICK: Guest = Guest {
    label: "amd64-6.1-quick",
    arch: Arch::X86_64,
    suite: Suite::System,
    builds: &[Build::plain(SWISS_GO)],
    expect: Expect::Traced,
};

/// Options of `cargo xtask vm-test`.
#[derive(Debug, clap::Args)]
pub struct VmOptions {
    /// Boot only these guests (by label: arm64-6.1, amd64-6.1, amd64-6.12, arm64-6.12,
    /// amd64-5.10).
    #[arg(long)]
    guest: Vec<String>,
    /// Put this gomaptrace (built for this machine) into the guests of this machine's
    /// architecture instead of building the static release one; a dynamically linked build
    /// brings its shared libraries along.
    #[arg(long)]
    tracer: Option<PathBuf>,
}

/// Installs what guests need and downloads the kernels of the system's own suite and busybox;
/// kernels from other suites are fetched by `vm-test` itself, so that an archive suite that
/// moves away cannot break every other command.
pub fn install_guests(root: &Path) -> anyhow::Result<()> {
    install_packages()?;
    for guest in MATRIX.iter().filter(|guest| guest.suite == Suite::System) {
        assets::kernel(root, guest.arch, guest.suite)?;
        assets::busybox(root, guest.arch)?;
    }
    Ok(())
}

/// Boots the matrix (or the guests `options` name), each in turn, and fails unless every
/// one passed.
pub fn run_matrix(root: &Path, options: &VmOptions) -> anyhow::Result<()> {
    let guests: Vec<&Guest> = MATRIX
        .iter()
        .filter(|guest| options.guest.is_empty() || options.guest.iter().any(|g| g == guest.label))
        .collect();
    if guests.is_empty() {
        bail!("no guest is called {:?}", options.guest);
    }
    let started = Instant::now();
    let mut tracers: Vec<(Arch, PathBuf)> = Vec::new();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for guest in guests {
        let tracer = match tracers.iter().find(|(arch, _)| *arch == guest.arch) {
            Some((_, path)) => path.clone(),
            None => {
                let path = match &options.tracer {
                    Some(path) if guest.arch.rust_arch() == std::env::consts::ARCH => path.clone(),
                    _ => assets::gomaptrace(root, guest.arch)?,
                };
                tracers.push((guest.arch, path.clone()));
                path
            }
        };
        match run_guest(root, guest, &tracer) {
            Ok(lines) => summary.extend(lines),
            Err(error) => {
                summary.push(format!("{}: FAILED", guest.label));
                failures.push(format!("{}: {error:#}", guest.label));
            }
        }
    }
    eprintln!(
        "xtask: vm-test summary ({} s):",
        started.elapsed().as_secs()
    );
    for line in &summary {
        eprintln!("  {line}");
    }
    if !failures.is_empty() {
        bail!("VM guests failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

/// The default test run's guest run: one amd64 6.1 guest tracing one fixture with `tracer`
/// (the debug build, its shared libraries copied in).
pub fn run_quick(root: &Path, tracer: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let lines = run_guest(root, &QUICK, tracer)?;
    for line in lines {
        eprintln!("xtask: {line}");
    }
    eprintln!(
        "xtask: quick VM run passed in {} s",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Builds `guest`'s initramfs, boots it and checks what it printed; returns one summary
/// line per fixture.
fn run_guest(root: &Path, guest: &Guest, tracer: &Path) -> anyhow::Result<Vec<String>> {
    let kernel = assets::kernel(root, guest.arch, guest.suite)?;
    let mut archive = cpio::Archive::default();
    archive.file("/init", 0o755, INIT.as_bytes());
    for directory in ["/dev", "/proc", "/sys", "/tmp", "/bin", "/lib"] {
        archive.directory(directory);
    }
    archive.char_device("/dev/console", 0o600, 5, 1);
    let busybox = assets::busybox(root, guest.arch)?;
    archive.file("/bin/busybox", 0o755, &read(&busybox)?);
    let stripped = assets::stripped(root, guest.arch, tracer, "gomaptrace")?;
    archive.file("/gomaptrace", 0o755, &read(&stripped)?);
    if crate::image::has_interpreter(&read(tracer)?) {
        for library in assets::shared_libraries(tracer)? {
            let name = library.file_name().context("a library file name")?;
            let at = if name.to_string_lossy().starts_with("ld-linux") {
                library.to_string_lossy().into_owned()
            } else {
                format!("/lib/{}", name.to_string_lossy())
            };
            archive.file(&at, 0o755, &read(&library)?);
        }
    }
    for build in guest.builds {
        let fixture = assets::fixture(root, guest.arch, build.go, build.pie)?;
        archive.file(
            &format!("/fixtures/{}", build.name()),
            0o755,
            &read(&fixture)?,
        );
    }
    if guest.builds.iter().any(|build| build.pie) {
        let (at, host) = guest.arch.loader();
        archive.file(at, 0o755, &read(Path::new(host))?);
    }
    let dir = root.join("target/vm/guests");
    std::fs::create_dir_all(&dir)?;
    let initramfs = dir.join(format!("{}.cpio", guest.label));
    std::fs::write(&initramfs, archive.finish())
        .with_context(|| format!("cannot write {}", initramfs.display()))?;

    let log = dir.join(format!("{}.log", guest.label));
    // Every build is traced twice: exact, then sampled.
    let timeout = Duration::from_secs(120 + 2 * 240 * guest.builds.len() as u64);
    let names: Vec<String> = guest.builds.iter().map(Build::name).collect();
    eprintln!(
        "xtask: booting {} ({}, {}), console in {}",
        guest.label,
        kernel.display(),
        names.join(" "),
        log.display()
    );
    let started = Instant::now();
    let output = boot(guest.arch.qemu(&kernel, &initramfs), &log, timeout)?;
    let wall = started.elapsed().as_secs();
    let console = check::parse(&output);
    let release = console.kernel.clone().unwrap_or_default();
    let mut lines = Vec::new();
    let find = |name: &str| {
        console
            .cases
            .iter()
            .find(|case| case.name == name)
            .with_context(|| {
                format!(
                    "init never ran {name} (finished: {}); see {}",
                    console.finished,
                    log.display()
                )
            })
    };
    let timing = |case: &check::Case| {
        format!(
            "attached after {} s, case {} s, boot {wall} s wall",
            case.attach_seconds.unwrap_or_default(),
            case.seconds.unwrap_or_default()
        )
    };
    for build in guest.builds {
        let name = build.name();
        let case = find(&name)?;
        let outcome = match guest.expect {
            Expect::Traced => check::check_traced(case, build.go).map(|passed| {
                format!(
                    "{} ({release}) {name} ({}): {} maps, every count equal ({})",
                    guest.label,
                    passed.go_version,
                    passed.maps,
                    timing(case)
                )
            }),
            Expect::Refused => check::check_refused(case)
                .map(|refusal| format!("{} ({release}): refused: {refusal}", guest.label)),
        };
        lines.push(outcome.with_context(|| format!("see {}", log.display()))?);
        if guest.expect == Expect::Traced {
            let name = format!("{name}-sampled");
            let case = find(&name)?;
            let grouped = check::takes_grouped_links(&release);
            let outcome = check::check_sampled(case, build.go, grouped).map(|passed| {
                format!(
                    "{} ({release}) {name}: {} maps seen in windows, each live == len, probes {} ({})",
                    guest.label,
                    passed.maps,
                    if grouped { "grouped" } else { "per site" },
                    timing(case)
                )
            });
            lines.push(outcome.with_context(|| format!("see {}", log.display()))?);
        }
    }
    if !console.finished {
        bail!("init did not finish; see {}", log.display());
    }
    Ok(lines)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Runs QEMU, copying its console to `log`, and returns the console's text once QEMU exits;
/// kills it after `timeout`.
fn boot(mut qemu: Command, log: &Path, timeout: Duration) -> anyhow::Result<String> {
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {qemu:?}: run `cargo xtask setup`"))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let mut file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).into_owned();
            let _ = writeln!(file, "{line}");
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = reader.join().expect("the console reader does not panic");
    let errors = errors.join().expect("the stderr reader does not panic");
    match status {
        None => bail!(
            "the guest did not power off within {} s; see {}",
            timeout.as_secs(),
            log.display()
        ),
        Some(status) if !status.success() => {
            bail!("QEMU failed with {status}: {}", errors.trim())
        }
        Some(_) => Ok(text),
    }
}
