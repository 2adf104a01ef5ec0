//! Loading the BPF programs and attaching them where the [`ProbePlan`] says.
//!
//! Probes are restricted to the target process by the kernel (a uprobe perf event filtered on
//! the target's pid), so other processes running the same binary pay nothing.

use std::num::NonZeroU32;
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{
    UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope,
};
use aya::programs::UProbe;
use aya::{Ebpf, EbpfLoader};
use tracer_common::{globals, maps, LOST_SLOT};

use crate::plan::{ProbeKind, ProbePlan};

/// The BPF object built from `tracer-ebpf/` by this crate's build script; empty when the
/// script embedded a stub (see `build.rs`).
static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gomaptrace.bpf.o"));

/// Why the probes could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kernel refused to load the object (verifier, missing BPF support, privileges).
    #[error("cannot load the BPF programs: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program or map the tracer needs is not in the object: a build mismatch.
    #[error("the BPF object has no {0}: rebuild gomaptrace")]
    Missing(&'static str),
    /// Loading or attaching one program failed.
    #[error("cannot attach {program} to {function} at file offset {offset:#x}: {source}")]
    Attach {
        /// The BPF program.
        program: &'static str,
        /// The probed Go function.
        function: String,
        /// Where in the file.
        offset: u64,
        /// What the kernel said.
        source: Box<aya::programs::ProgramError>,
    },
    /// Preparing a program for attachment failed.
    #[error("cannot prepare BPF program {program}: {source}")]
    Program {
        /// The BPF program.
        program: &'static str,
        /// What the kernel said.
        source: Box<aya::programs::ProgramError>,
    },
    /// Reading a BPF map failed.
    #[error("cannot read BPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What went wrong.
        source: Box<aya::maps::MapError>,
    },
    /// The pid is zero, which the kernel reads as "every process".
    #[error("pid 0 cannot be traced")]
    PidZero,
    /// This gomaptrace was built with an empty stand-in for its BPF programs.
    #[error(
        "this gomaptrace was built without its BPF programs (the BPF toolchain was missing or \
         GOMAPTRACE_BPF=stub): run `cargo xtask build`"
    )]
    Stub,
    /// The programs' diagnostics could not be set up.
    #[error(transparent)]
    Diagnostics(#[from] crate::diagnostics::DiagnosticsError),
    /// A test-only ring buffer size ([`crate::overrides`]) the kernel would refuse.
    #[error(transparent)]
    RingBytes(#[from] crate::overrides::BadRingBytes),
    /// The running kernel lacks a BPF feature the programs use.
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelTooOld),
}

/// Attached probes; dropping this value detaches them all.
pub struct Probes {
    ebpf: Ebpf,
    attached: usize,
    /// Every live uprobe by program, so that they can be detached without unloading
    /// anything (see [`Probes::take_links`]).
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// Uprobes taken off their programs: dropping this value detaches them, which takes the
/// kernel about 0.1 s per probe, so it is dropped on a thread of its own.
pub struct Detaching(Vec<UProbeLink>);

impl Detaching {
    /// Detaches every uprobe, each on a thread of its own (one per probe site): the kernel
    /// waits out a grace period for each, and in parallel those waits overlap.
    pub fn detach(self) {
        std::thread::scope(|scope| {
            for link in self.0 {
                scope.spawn(move || drop(link));
            }
        });
    }
}

/// Where the probes' output is read from. Kept apart from [`Probes`] so that the reader can
/// keep draining after the probes are detached.
pub struct Outputs {
    /// The event ring buffer.
    pub events: RingBuf<MapData>,
    /// The programs' own diagnostics, when they were loaded verbose.
    pub diagnostics: Option<crate::diagnostics::Diagnostics>,
    /// Per-CPU count of events the ring buffer had no room for.
    pub lost: PerCpuArray<MapData, u64>,
}

impl Outputs {
    /// Events lost so far, summed over CPUs.
    pub fn lost(&self) -> Result<u64, ProbeError> {
        let per_cpu = self
            .lost
            .get(&LOST_SLOT, 0)
            .map_err(|source| ProbeError::Map {
                name: maps::LOST,
                source: Box::new(source),
            })?;
        Ok(per_cpu.iter().sum())
    }
}

/// What the attached programs do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programs {
    /// The real programs; keys are sampled for entry lifetimes when their salted hash
    /// masked with `key_sample_mask` is zero (`u32::MAX`: no sampling, no key reads).
    Tracing {
        /// See `tracer_common::globals::KEY_SAMPLE_MASK`.
        key_sample_mask: u32,
        /// See `tracer_common::globals::KEY_SALT`.
        key_salt: u64,
        /// Whether the programs explain their read failures ([`crate::diagnostics`]).
        diagnostics: bool,
    },
    /// An empty program at every site: measures the uprobe's own cost (`--floor`).
    Floor,
}

impl Probes {
    /// Loads the programs and attaches one uprobe per plan site in `exe`, for `pid` only.
    pub fn attach(
        plan: &ProbePlan,
        exe: &Path,
        pid: u32,
        programs: Programs,
    ) -> Result<(Probes, Outputs), ProbeError> {
        let pid = NonZeroU32::new(pid).ok_or(ProbeError::PidZero)?;
        if BPF_OBJECT.is_empty() {
            return Err(ProbeError::Stub);
        }
        crate::kernel::check_running()?;
        let (mask, salt, verbose) = match programs {
            Programs::Tracing {
                key_sample_mask,
                key_salt,
                diagnostics,
            } => (key_sample_mask, key_salt, diagnostics),
            Programs::Floor => (u32::MAX, 0, false),
        };
        let mut loader = EbpfLoader::new();
        if let Some(bytes) = crate::overrides::ring_bytes()? {
            loader.map_max_entries(maps::EVENTS, bytes);
        }
        let mut ebpf = loader
            .override_global(globals::KEY_SAMPLE_MASK, &mask, true)
            .override_global(globals::KEY_SALT, &salt, true)
            .override_global(
                crate::diagnostics::LEVEL_GLOBAL,
                &crate::diagnostics::level(verbose),
                true,
            )
            .load(BPF_OBJECT)
            .map_err(|error| ProbeError::Load(Box::new(error)))?;
        let outputs = Outputs {
            events: take_map(&mut ebpf, maps::EVENTS)?,
            lost: take_map(&mut ebpf, maps::LOST)?,
            diagnostics: if verbose {
                Some(crate::diagnostics::Diagnostics::take(&mut ebpf)?)
            } else {
                None
            },
        };
        let mut attached = 0;
        let groups: Vec<(&'static str, Vec<ProbeKind>)> = match programs {
            Programs::Tracing { .. } => ProbeKind::ALL
                .iter()
                .map(|&kind| (kind.program(), vec![kind]))
                .collect(),
            Programs::Floor => vec![(tracer_common::programs::FLOOR, ProbeKind::ALL.to_vec())],
        };
        let mut links = Vec::new();
        for (program, kinds) in groups {
            let uprobe = uprobe(&mut ebpf, program)?;
            uprobe.load().map_err(|source| ProbeError::Program {
                program,
                source: Box::new(source),
            })?;
            for site in plan.sites.iter().filter(|site| kinds.contains(&site.kind)) {
                links.push((program, attach_site(uprobe, program, site, exe, pid)?));
                attached += 1;
            }
        }
        Ok((
            Probes {
                ebpf,
                attached,
                links,
            },
            outputs,
        ))
    }

    /// How many uprobes are live.
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Takes every live uprobe off its program, programs and maps staying loaded; the
    /// uprobes stay in place (and trap) until the returned value is dropped.
    pub fn take_links(&mut self) -> Result<Detaching, ProbeError> {
        let mut taken = Vec::with_capacity(self.links.len());
        for (program, id) in std::mem::take(&mut self.links) {
            let link = uprobe(&mut self.ebpf, program)?
                .take_link(id)
                .map_err(|source| ProbeError::Program {
                    program,
                    source: Box::new(source),
                })?;
            taken.push(link);
        }
        self.attached = 0;
        Ok(Detaching(taken))
    }

    /// Attaches the tracing programs, still loaded, at every plan site again (after
    /// [`Probes::take_links`]): the discovery windows of `--mode sampled`.
    pub fn reattach(&mut self, plan: &ProbePlan, exe: &Path, pid: u32) -> Result<(), ProbeError> {
        let pid = NonZeroU32::new(pid).ok_or(ProbeError::PidZero)?;
        for site in &plan.sites {
            let program = site.kind.program();
            let uprobe = uprobe(&mut self.ebpf, program)?;
            let id = attach_site(uprobe, program, site, exe, pid)?;
            self.links.push((program, id));
            self.attached += 1;
        }
        Ok(())
    }

    /// Detaches every probe now. After this returns no new event is produced, so draining
    /// the ring buffer once more sees everything.
    pub fn detach(self) {
        drop(self.ebpf);
    }
}

/// Attaches `uprobe` (a loaded `program`) at one plan site, for `pid` only.
fn attach_site(
    uprobe: &mut UProbe,
    program: &'static str,
    site: &crate::plan::ProbeSite,
    exe: &Path,
    pid: NonZeroU32,
) -> Result<UProbeLinkId, ProbeError> {
    uprobe
        .attach(
            UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(site.file_offset),
                cookie: Some(site.cookie),
            },
            exe,
            UProbeScope::OneProcess(pid),
        )
        .map_err(|source| ProbeError::Attach {
            program,
            function: site.function.clone(),
            offset: site.file_offset,
            source: Box::new(source),
        })
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(name)
        .and_then(|program| <&mut UProbe>::try_from(program).ok())
        .ok_or(ProbeError::Missing(name))
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, ProbeError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Missing(name))?;
    M::try_from(map).map_err(|source| ProbeError::Map {
        name,
        source: Box::new(source),
    })
}
