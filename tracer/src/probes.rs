//! Loading the BPF programs and attaching them where the [`ProbePlan`] says.
//!
//! Probes are restricted to the target process by the kernel (a uprobe perf event filtered on
//! the target's pid), so other processes running the same binary pay nothing.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{
    UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope,
};
use aya::programs::UProbe;
use aya::{Ebpf, EbpfLoader};
use tracer_common::{globals, maps, writers::FoldRun, LOST_SLOT};

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
    /// Grouped links that worked at the trace's start were refused later.
    #[error(transparent)]
    Grouped(#[from] GroupedError),
}

mod grouped;

pub use grouped::GroupedError;
use grouped::{GroupedLinks, GroupedPrograms};

/// How probes are tied to their sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linking {
    /// One uprobe per site: attached once, detached at the trace's end.
    PerSite,
    /// One uprobe-multi link per program where the kernel has them (6.6+), one uprobe per
    /// site otherwise: for probes that come and go (`--mode sampled`), since the kernel
    /// removes a grouped link in one wait instead of one per site.
    Grouped,
}

/// Attached probes; dropping this value detaches them all.
pub struct Probes {
    ebpf: Ebpf,
    /// Every live uprobe, so that they can be detached without unloading anything (see
    /// [`Probes::take_links`]).
    links: Links,
    /// The programs loaded for grouped links, when they were asked for and the kernel took
    /// them.
    grouped: Option<GroupedPrograms>,
    /// How the probes are linked, in words, for the report.
    linked: String,
}

/// Live uprobes, by how they were made.
enum Links {
    PerSite(Vec<(&'static str, UProbeLinkId)>),
    Grouped(GroupedLinks),
}

/// Uprobes taken off their programs: dropping this value detaches them, which takes the
/// kernel a grace period per link (per site, with per-site links), so it is dropped on a
/// thread of its own.
pub enum Detaching {
    /// One uprobe per site.
    PerSite(Vec<UProbeLink>),
    /// One uprobe-multi link per program.
    Grouped(GroupedLinks),
}

impl Detaching {
    /// Detaches every uprobe, each link on a thread of its own: the kernel waits out a grace
    /// period for each, and in parallel those waits overlap as far as the kernel lets them
    /// (per-site uprobes are removed one at a time under a global lock).
    pub fn detach(self) {
        match self {
            Detaching::PerSite(links) => std::thread::scope(|scope| {
                for link in links {
                    scope.spawn(move || drop(link));
                }
            }),
            Detaching::Grouped(links) => links.detach(),
        }
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
    /// The writes the programs fold instead of sending.
    pub folds: Folds,
}

/// The BPF side's folded writes (see `tracer_common::writers::FoldRun`): switched on for
/// exact mode once attached, off when the window ends, read once a second for the maps no
/// record carried them for yet, and read back once the probes are gone.
pub struct Folds {
    switch: Array<MapData, u32>,
    total: PerCpuArray<MapData, u64>,
    runs: HashMap<MapData, u64, [u8; FoldRun::SIZE]>,
    /// The fold epoch the programs were last given (0: folding off).
    epoch: u32,
}

impl Folds {
    fn take(ebpf: &mut Ebpf) -> Result<Folds, ProbeError> {
        Ok(Folds {
            switch: take_map(ebpf, maps::FOLDING)?,
            total: take_map(ebpf, maps::FOLDED)?,
            runs: take_map(ebpf, maps::FOLD_RUNS)?,
            epoch: 0,
        })
    }

    /// Lets the programs fold writes, or makes them send every write from now on.
    pub fn set(&mut self, on: bool) -> Result<(), ProbeError> {
        self.give_epoch(u32::from(on))
    }

    /// Starts a new fold epoch: runs opened before it take no more writes (see
    /// [`Folds::epoch`]). No effect while folding is off.
    pub fn advance(&mut self) -> Result<(), ProbeError> {
        if self.epoch == 0 {
            return Ok(());
        }
        self.give_epoch(self.epoch.checked_add(1).unwrap_or(1))
    }

    fn give_epoch(&mut self, epoch: u32) -> Result<(), ProbeError> {
        self.switch
            .set(0, epoch, 0)
            .map_err(|source| map_error(maps::FOLDING, source))?;
        self.epoch = epoch;
        Ok(())
    }

    /// The fold epoch the programs were last given (0: folding is off). A write folds only
    /// in the epoch of its map's last write, so a run of an earlier epoch takes no more
    /// writes, but for a program that read the epoch before it changed and is still running.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Every write folded so far, summed over CPUs.
    pub fn total(&self) -> Result<u64, ProbeError> {
        let per_cpu = self
            .total
            .get(&0, 0)
            .map_err(|source| map_error(maps::FOLDED, source))?;
        Ok(per_cpu.iter().sum())
    }

    /// Takes the run open at `addr` if `owned` accepts it: the run a dropped map left open,
    /// which no record of its own will carry, or a run of a quiet map already credited in
    /// full, which would otherwise hold its slot until that map is written again. The read
    /// and the removal are two calls: a map made (or a write sent) at this address in between
    /// takes the run with its record, and may then open a run of its own that this removal
    /// ends, leaving those folds uncredited (and counted so).
    pub fn take_if(
        &mut self,
        addr: u64,
        owned: impl Fn(&FoldRun) -> bool,
    ) -> Result<Option<FoldRun>, ProbeError> {
        let bytes = match self.runs.get(&addr, 0) {
            Ok(bytes) => bytes,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(source) => return Err(map_error(maps::FOLD_RUNS, source)),
        };
        let run = FoldRun::from_bytes(&bytes);
        if !owned(&run) {
            return Ok(None);
        }
        match self.runs.remove(&addr) {
            // Gone already: a record at this address took it first, and carries these folds
            // again; the model counts them once (`Model::read_run`).
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(map_error(maps::FOLD_RUNS, source)),
        }
        Ok(Some(run))
    }

    /// The runs still open, by map address. While probes run, a run of a recent epoch may
    /// change under the read (see [`Folds::epoch`]), and a walk of a hash that loses entries
    /// meanwhile may meet some twice: the last read of each address is kept.
    pub fn held(&self) -> BTreeMap<u64, FoldRun> {
        self.runs
            .iter()
            .filter_map(Result::ok)
            .map(|(addr, bytes)| (addr, FoldRun::from_bytes(&bytes)))
            .filter(|(_, run)| run.folded > 0)
            .collect()
    }
}

fn map_error(name: &'static str, source: aya::maps::MapError) -> ProbeError {
    ProbeError::Map {
        name,
        source: Box::new(source),
    }
}

/// Events the ring buffer had no room for so far, summed over CPUs, from the `LOST` map of
/// [`Outputs`].
pub fn events_lost(lost: &PerCpuArray<MapData, u64>) -> Result<u64, ProbeError> {
    let per_cpu = lost
        .get(&LOST_SLOT, 0)
        .map_err(|source| map_error(maps::LOST, source))?;
    Ok(per_cpu.iter().sum())
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
    /// Loads the programs and attaches them at every plan site in `exe`, for `pid` only,
    /// linked as `linking` says (grouped links only for the tracing programs).
    pub fn attach(
        plan: &ProbePlan,
        exe: &Path,
        pid: u32,
        programs: Programs,
        linking: Linking,
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
        // Before any map is taken out of `ebpf`: the grouped programs are relocated
        // against all of them.
        let grouped = match (linking, programs) {
            (Linking::Grouped, Programs::Tracing { .. }) => {
                Some(GroupedPrograms::load(BPF_OBJECT, &ebpf))
            }
            _ => None,
        };
        let outputs = Outputs {
            events: take_map(&mut ebpf, maps::EVENTS)?,
            lost: take_map(&mut ebpf, maps::LOST)?,
            folds: Folds::take(&mut ebpf)?,
            diagnostics: if verbose {
                Some(crate::diagnostics::Diagnostics::take(&mut ebpf)?)
            } else {
                None
            },
        };
        let mut probes = Probes {
            ebpf,
            links: Links::PerSite(Vec::new()),
            grouped: None,
            linked: PER_SITE.to_string(),
        };
        match grouped {
            Some(Ok(grouped)) => match grouped.attach(plan, exe, pid.get()) {
                Ok(links) => {
                    probes.links = Links::Grouped(links);
                    probes.grouped = Some(grouped);
                    probes.linked = GROUPED.to_string();
                    return Ok((probes, outputs));
                }
                Err(refused) => probes.linked = format!("{PER_SITE} ({refused})"),
            },
            Some(Err(refused)) => probes.linked = format!("{PER_SITE} ({refused})"),
            None => {}
        }
        let groups: Vec<(&'static str, Vec<ProbeKind>)> = match programs {
            Programs::Tracing { .. } => ProbeKind::ALL
                .iter()
                .map(|&kind| (kind.program(), vec![kind]))
                .collect(),
            Programs::Floor => vec![(tracer_common::programs::FLOOR, ProbeKind::ALL.to_vec())],
        };
        let mut links = Vec::new();
        for (program, kinds) in groups {
            let uprobe = uprobe(&mut probes.ebpf, program)?;
            uprobe.load().map_err(|source| ProbeError::Program {
                program,
                source: Box::new(source),
            })?;
            for site in plan.sites.iter().filter(|site| kinds.contains(&site.kind)) {
                links.push((program, attach_site(uprobe, program, site, exe, pid)?));
            }
        }
        probes.links = Links::PerSite(links);
        Ok((probes, outputs))
    }

    /// How many uprobes are live.
    pub fn attached(&self) -> usize {
        match &self.links {
            Links::PerSite(links) => links.len(),
            Links::Grouped(links) => links.sites(),
        }
    }

    /// Whether the probes are grouped links: attaching them again needs only the `bpf`
    /// call, not the perf events per-site uprobes are made of.
    pub fn grouped(&self) -> bool {
        self.grouped.is_some()
    }

    /// How the probes are linked, for the report: grouped, or per site and why not grouped
    /// when that was asked for.
    pub fn linked(&self) -> &str {
        &self.linked
    }

    /// Takes every live uprobe off its program, programs and maps staying loaded; the
    /// uprobes stay in place (and trap) until the returned value is dropped.
    pub fn take_links(&mut self) -> Result<Detaching, ProbeError> {
        let taken = match std::mem::replace(&mut self.links, Links::PerSite(Vec::new())) {
            Links::Grouped(links) => return Ok(Detaching::Grouped(links)),
            Links::PerSite(links) => links,
        };
        let mut detaching = Vec::with_capacity(taken.len());
        for (program, id) in taken {
            let link = uprobe(&mut self.ebpf, program)?
                .take_link(id)
                .map_err(|source| ProbeError::Program {
                    program,
                    source: Box::new(source),
                })?;
            detaching.push(link);
        }
        Ok(Detaching::PerSite(detaching))
    }

    /// Attaches the tracing programs, still loaded, at every plan site again (after
    /// [`Probes::take_links`]), linked as they were the first time: the discovery windows
    /// of `--mode sampled`.
    pub fn reattach(&mut self, plan: &ProbePlan, exe: &Path, pid: u32) -> Result<(), ProbeError> {
        let pid = NonZeroU32::new(pid).ok_or(ProbeError::PidZero)?;
        if let Some(grouped) = &self.grouped {
            self.links = Links::Grouped(grouped.attach(plan, exe, pid.get())?);
            return Ok(());
        }
        let mut links = Vec::with_capacity(plan.sites.len());
        for site in &plan.sites {
            let program = site.kind.program();
            let uprobe = uprobe(&mut self.ebpf, program)?;
            links.push((program, attach_site(uprobe, program, site, exe, pid)?));
        }
        self.links = Links::PerSite(links);
        Ok(())
    }

    /// Detaches every probe now. After this returns no new event is produced, so draining
    /// the ring buffer once more sees everything.
    pub fn detach(self) {
        if let Links::Grouped(links) = self.links {
            links.detach();
        }
        drop(self.ebpf);
    }
}

/// [`Probes::linked`] for per-site uprobes.
const PER_SITE: &str = "per site";
/// [`Probes::linked`] for grouped links.
const GROUPED: &str = "grouped: one uprobe-multi link per program";

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
    M::try_from(map).map_err(|source| map_error(name, source))
}
