//! Grouped uprobes: one `BPF_LINK_TYPE_UPROBE_MULTI` link (kernel 6.6+) per program, holding
//! every plan site of that program, for `--mode sampled`, whose probes come and go at every
//! discovery window.
//!
//! Why: removing a per-site uprobe (a perf event) ends with a wait for handlers still
//! running, taken under the kernel's global `event_mutex`, so the removals run one after
//! another, about 0.1 s each, and the probes not yet removed keep trapping meanwhile. A
//! grouped link unregisters all its sites and then waits once, and links of different
//! programs do not share a lock, so their waits overlap.
//!
//! aya 0.14 can neither load a uprobe program for this attach type nor create the link, so
//! this module loads the programs a second time itself, from the same object, relocated
//! against the maps aya already created (the same ring buffer, the same globals), and makes
//! the links with the `bpf` system call.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya::maps::Map;
use aya::Ebpf;
use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_insn, bpf_prog_type};

use crate::plan::{ProbeKind, ProbePlan};

/// Why grouped links cannot be used; the caller falls back to one uprobe per site.
#[derive(Debug, thiserror::Error)]
pub enum GroupedError {
    /// The embedded object could not be parsed or relocated again.
    #[error("cannot prepare the BPF object for grouped uprobes: {0}")]
    Object(String),
    /// A map of the object was not created by aya, or has a type this module does not know.
    #[error("BPF map {0} has no file descriptor to relocate against")]
    Map(String),
    /// The kernel refused to load a program for this attach type (before 6.6, it does not
    /// know it).
    #[error("the kernel refused {program} as a uprobe-multi program: {source}")]
    Load {
        /// The BPF program.
        program: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// The kernel refused a grouped link.
    #[error("cannot attach {program} at {sites} sites as one uprobe-multi link: {source}")]
    Attach {
        /// The BPF program.
        program: &'static str,
        /// How many sites the link held.
        sites: usize,
        /// What the kernel said.
        source: io::Error,
    },
}

/// The tracing programs loaded for grouped links, one per probe kind.
pub struct GroupedPrograms {
    loaded: Vec<(ProbeKind, OwnedFd)>,
}

/// Grouped links in place: dropping one removes its sites.
pub struct GroupedLinks {
    links: Vec<OwnedFd>,
    /// Plan sites the links hold, all together.
    sites: usize,
}

impl GroupedLinks {
    /// How many sites the links hold.
    pub fn sites(&self) -> usize {
        self.sites
    }

    /// Removes every link, each on a thread of its own, so that their grace periods overlap.
    pub fn detach(self) {
        std::thread::scope(|scope| {
            for link in self.links {
                scope.spawn(move || drop(link));
            }
        });
    }
}

impl GroupedPrograms {
    /// Loads every tracing program of `object` for uprobe-multi links, relocated against the
    /// maps `ebpf` created from the same object (call it before any map is taken out of it).
    pub fn load(object: &[u8], ebpf: &Ebpf) -> Result<GroupedPrograms, GroupedError> {
        let mut parsed = aya_obj::Object::parse(object)
            .map_err(|error| GroupedError::Object(error.to_string()))?;
        let maps: Vec<(String, aya_obj::Map)> = parsed.maps.drain().collect();
        let fds = maps
            .iter()
            .map(|(name, _)| {
                ebpf.maps()
                    .find(|(created, _)| *created == name.as_str())
                    .and_then(|(_, map)| map_fd(map))
                    .ok_or_else(|| GroupedError::Map(name.clone()))
            })
            .collect::<Result<Vec<RawFd>, _>>()?;
        let text_sections: HashSet<usize> = parsed
            .functions
            .keys()
            .map(|(section, _)| *section)
            .collect();
        parsed
            .relocate_maps(
                maps.iter()
                    .zip(&fds)
                    .map(|((name, map), &fd)| (name.as_str(), fd, map)),
                &text_sections,
            )
            .map_err(|error| GroupedError::Object(error.to_string()))?;
        parsed
            .relocate_calls(&text_sections)
            .map_err(|error| GroupedError::Object(error.to_string()))?;
        let mut loaded = Vec::with_capacity(ProbeKind::ALL.len());
        for kind in ProbeKind::ALL {
            let program = kind.program();
            let function = parsed
                .programs
                .get(program)
                .and_then(|found| parsed.functions.get(&found.function_key()))
                .ok_or_else(|| GroupedError::Object(format!("no program {program}")))?;
            let fd = load_program(program, &function.instructions, &parsed.license)
                .map_err(|source| GroupedError::Load { program, source })?;
            loaded.push((kind, fd));
        }
        Ok(GroupedPrograms { loaded })
    }

    /// Attaches every program at its plan sites in `exe`, one link per program, for `pid`
    /// only.
    pub fn attach(
        &self,
        plan: &ProbePlan,
        exe: &Path,
        pid: u32,
    ) -> Result<GroupedLinks, GroupedError> {
        let path = CString::new(exe.as_os_str().as_bytes())
            .map_err(|_| GroupedError::Object(format!("{} has a NUL byte", exe.display())))?;
        let mut links = Vec::with_capacity(self.loaded.len());
        for (kind, program) in &self.loaded {
            let sites: Vec<_> = plan
                .sites
                .iter()
                .filter(|site| site.kind == *kind)
                .collect();
            if sites.is_empty() {
                continue;
            }
            let offsets: Vec<u64> = sites.iter().map(|site| site.file_offset).collect();
            let cookies: Vec<u64> = sites.iter().map(|site| site.cookie).collect();
            let link = create_link(program.as_fd().as_raw_fd(), &path, &offsets, &cookies, pid)
                .map_err(|source| GroupedError::Attach {
                    program: kind.program(),
                    sites: sites.len(),
                    source,
                })?;
            links.push(link);
        }
        Ok(GroupedLinks {
            links,
            sites: plan.sites.len(),
        })
    }
}

/// The file descriptor of a map of the types the object defines.
fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::RingBuf(data)
        | Map::StackTraceMap(data) => data,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// `BPF_PROG_LOAD`'s attributes, as far as this module sets them (the kernel reads the rest
/// as zero).
#[repr(C)]
#[derive(Default)]
struct ProgramLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `BPF_LINK_CREATE`'s attributes for a uprobe-multi link.
#[repr(C)]
#[derive(Default)]
struct UprobeMultiLink {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    padding: u32,
}

fn load_program(name: &str, instructions: &[bpf_insn], license: &CString) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    for (slot, byte) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    let mut attr = ProgramLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32,
        insn_cnt: u32::try_from(instructions.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32,
        ..ProgramLoad::default()
    };
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

fn create_link(
    program: RawFd,
    path: &CString,
    offsets: &[u64],
    cookies: &[u64],
    pid: u32,
) -> io::Result<OwnedFd> {
    let mut attr = UprobeMultiLink {
        prog_fd: program as u32,
        attach_type: bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt: u32::try_from(offsets.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        pid,
        ..UprobeMultiLink::default()
    };
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// The `bpf` system call for a command that returns a new file descriptor.
fn bpf<T>(command: bpf_cmd, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `repr(C)` prefix of `union bpf_attr` for `command`, its size passed
    // along; every pointer in it stays valid for the call, which the kernel finishes before
    // returning.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_int,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(result as RawFd) })
}
