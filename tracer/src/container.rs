//! Where the target is: which container a process runs in, and which processes a container
//! holds, so that `--container NAME|ID` needs no host pid and every report says where its
//! target ran.
//!
//! The kernel's view comes first and needs no runtime daemon: each process's
//! `/proc/PID/cgroup` names the cgroup its runtime put it in, and runtimes write the container
//! id into that path in recognisable ways (podman `libpod-<id>`, docker `docker-<id>.scope`
//! and `/docker/<id>`, containerd `cri-containerd-<id>.scope` and `/k8s.io/<id>`, CRI-O
//! `crio-<id>.scope`, Kubernetes `kubepods…/pod<uid>/<id>`), in cgroup v1, v2 and hybrid
//! layouts alike. Names, and containers whose cgroup path carries no such mark (plain `runc
//! run` puts a container in `/<its id>`), are resolved through the runtime's own command-line
//! tool when it is installed (`podman`, `docker`, `nerdctl`, `crictl`, `runc`), never through a
//! hand-written API client.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::inspect::{GoBinary, InspectError};

/// How long a runtime's command-line tool may take to answer before it counts as not knowing.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime tools asked for a container's name, in this order.
const NAME_CLIS: [&str; 5] = ["podman", "docker", "nerdctl", "crictl", "runc"];

/// The shortest id prefix accepted, as with `docker`/`podman`.
pub const MIN_PREFIX: usize = 4;

/// Why `--container` names no traceable process; each message is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Nothing on this host matches.
    #[error("no running container `{query}` on this host{asked}")]
    NoSuchContainer {
        /// What the user gave.
        query: String,
        /// Which runtime tools were asked for the name, as `(asked podman, docker)`.
        asked: String,
    },
    /// An id prefix that fits several containers.
    #[error("`{query}` matches {} containers: {}; give more of the id", matches.len(), matches.join(", "))]
    Ambiguous {
        /// What the user gave.
        query: String,
        /// The ids it fits, with their names when known.
        matches: Vec<String>,
    },
    /// A name (not an id), and no runtime tool to resolve it with.
    #[error(
        "`{0}` is not a container id and no runtime tool to resolve names is installed \
         (podman, docker, nerdctl, crictl or runc): give the container id or use --pid"
    )]
    NoRuntimeCli(String),
    /// The container runs no Go program.
    #[error("container {container} has no Go process (its processes: {processes})")]
    NoGoProcess {
        /// The container, as named in reports.
        container: String,
        /// Its processes as `pid (exe)`.
        processes: String,
    },
    /// Several Go programs: the user picks one.
    #[error(
        "container {container} has several Go processes: {processes}; trace one with --pid PID"
    )]
    SeveralGoProcesses {
        /// The container, as named in reports.
        container: String,
        /// The Go processes as `pid (exe)`.
        processes: String,
    },
}

/// The container runtimes recognised from a cgroup path or a runtime tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// podman (libpod), with any OCI runtime underneath.
    Podman,
    /// Docker (moby).
    Docker,
    /// containerd (CRI plugin, nerdctl).
    Containerd,
    /// CRI-O.
    CriO,
    /// A Kubernetes pod whose cgroup path does not say which CRI runtime runs it.
    Kubernetes,
    /// Plain `runc run`.
    Runc,
}

impl Runtime {
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Kubernetes => "kubernetes",
            Runtime::Runc => "runc",
        }
    }
}

/// Where a containerized target ran, as the report's `target.container` says it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The container id (64 hex digits for every runtime but plain runc).
    pub id: String,
    /// Its name, when a runtime tool could tell it.
    pub name: Option<String>,
    /// The runtime, when the cgroup path or a runtime tool says which.
    pub runtime: Option<String>,
    /// The cgroup path the container id was read from.
    pub cgroup: String,
}

impl ContainerInfo {
    /// `name (id)` or the id alone, for messages and the text report; a 64-digit id is
    /// shortened to 12 digits as runtimes print it, any other id (plain runc) is kept whole.
    pub fn label(&self) -> String {
        let short = if is_full_id(&self.id) {
            &self.id[..12]
        } else {
            &self.id
        };
        match &self.name {
            Some(name) if name != &self.id => format!("{name} ({short})"),
            _ => short.to_string(),
        }
    }
}

/// A container id read from one cgroup file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMatch {
    /// The container id.
    pub id: String,
    /// The runtime its path layout belongs to, if it says.
    pub runtime: Option<Runtime>,
    /// The cgroup path it came from.
    pub cgroup: String,
}

/// Reads the container id from the text of a `/proc/PID/cgroup`: the cgroup v2 line first,
/// then the v1 lines (hybrid hosts leave the v2 line at `/`). `None` outside containers and
/// for a runtime's own monitor (conmon sits in `libpod-conmon-<id>`, outside the container).
pub fn parse_cgroup(text: &str) -> Option<CgroupMatch> {
    let paths = || {
        text.lines().filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            Some((fields.next()?, fields.nth(1)?))
        })
    };
    let unified = paths().filter(|(hierarchy, _)| *hierarchy == "0");
    let legacy = paths().filter(|(hierarchy, _)| *hierarchy != "0");
    unified.chain(legacy).find_map(|(_, path)| parse_path(path))
}

/// The container id in one cgroup path, looking from the innermost component outwards
/// (podman with a cgroup namespace nests the payload in `libpod-<id>.scope/container`).
fn parse_path(path: &str) -> Option<CgroupMatch> {
    let components: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    let in_kubepods = components.iter().any(|part| part.starts_with("kubepods"));
    for (at, component) in components.iter().enumerate().rev() {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        if name.starts_with("libpod-conmon-") || name.starts_with("crio-conmon-") {
            return None;
        }
        let prefixed = [
            ("libpod-", Runtime::Podman),
            ("docker-", Runtime::Docker),
            ("cri-containerd-", Runtime::Containerd),
            ("nerdctl-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
        ];
        let found = prefixed.iter().find_map(|(prefix, runtime)| {
            let id = name.strip_prefix(prefix).filter(|id| is_full_id(id))?;
            Some((id, Some(*runtime)))
        });
        let found = found.or_else(|| {
            is_full_id(name).then(|| {
                let parent = at.checked_sub(1).map(|parent| components[parent]);
                let runtime = match parent {
                    Some("docker") => Some(Runtime::Docker),
                    Some("k8s.io") => Some(Runtime::Containerd),
                    Some("crio") => Some(Runtime::CriO),
                    Some("libpod_parent") => Some(Runtime::Podman),
                    _ if in_kubepods => Some(Runtime::Kubernetes),
                    _ => None,
                };
                (name, runtime)
            })
        });
        if let Some((id, runtime)) = found {
            return Some(CgroupMatch {
                id: id.to_string(),
                runtime,
                cgroup: path.to_string(),
            });
        }
    }
    None
}

/// 64 hex digits: the id docker, podman, containerd and CRI-O give containers.
fn is_full_id(text: &str) -> bool {
    text.len() == 64 && is_hex(text)
}

fn is_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// A container seen on this host, with its processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// What reports say about it.
    pub info: ContainerInfo,
    /// Its processes (thread-group leaders), in pid order.
    pub pids: Vec<u32>,
}

/// Every process's cgroup text, by pid. Processes that vanish meanwhile are skipped.
fn cgroups_by_pid() -> BTreeMap<u32, String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            Some((
                pid,
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?,
            ))
        })
        .collect()
}

/// Every container with a process on this host: those the kernel's cgroup paths name, and
/// those `runc list` knows (their processes share the init process's cgroup). Memory: one
/// cgroup text per process, dropped on return.
pub fn scan() -> Vec<Container> {
    let cgroups = cgroups_by_pid();
    let mut containers: BTreeMap<String, Container> = BTreeMap::new();
    for (pid, text) in &cgroups {
        if let Some(found) = parse_cgroup(text) {
            containers
                .entry(found.id.clone())
                .or_insert_with(|| Container {
                    info: ContainerInfo {
                        id: found.id,
                        name: None,
                        runtime: found.runtime.map(|runtime| runtime.name().to_string()),
                        cgroup: found.cgroup,
                    },
                    pids: Vec::new(),
                })
                .pids
                .push(*pid);
        }
    }
    for (id, init) in runc_list() {
        if let Some(known) = containers.get_mut(&id) {
            known.info.runtime.get_or_insert_with(|| "runc".to_string());
            continue;
        }
        let Some(text) = cgroups.get(&init) else {
            continue;
        };
        let pids = cgroups
            .iter()
            .filter(|(_, other)| *other == text)
            .map(|(pid, _)| *pid)
            .collect();
        let cgroup = text
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .filter(|path| *path != "/")
            .or_else(|| text.lines().find_map(|line| line.splitn(3, ':').nth(2)))
            .unwrap_or_default()
            .to_string();
        containers.insert(
            id.clone(),
            Container {
                info: ContainerInfo {
                    name: Some(id.clone()),
                    id,
                    runtime: Some(Runtime::Runc.name().to_string()),
                    cgroup,
                },
                pids,
            },
        );
    }
    containers.into_values().collect()
}

/// Finds the running container `query` names: a full id, a unique id prefix of at least
/// [`MIN_PREFIX`] hex digits, or a name a runtime tool resolves.
pub fn find(query: &str) -> Result<Container, ContainerError> {
    let containers = scan();
    let lower = query.to_ascii_lowercase();
    if let Some(exact) = containers
        .iter()
        .find(|container| container.info.id == query)
    {
        return Ok(named(exact.clone()));
    }
    if query.len() >= MIN_PREFIX && is_hex(query) {
        let matches: Vec<&Container> = containers
            .iter()
            .filter(|container| container.info.id.starts_with(&lower))
            .collect();
        match matches.as_slice() {
            [one] => return Ok(named((*one).clone())),
            [] => {}
            several => {
                return Err(ContainerError::Ambiguous {
                    query: query.to_string(),
                    matches: several
                        .iter()
                        .map(|container| named((*container).clone()).info.label())
                        .collect(),
                })
            }
        }
    }
    let installed: Vec<&str> = NAME_CLIS.into_iter().filter(|cli| on_path(cli)).collect();
    if installed.is_empty() {
        if is_hex(query) {
            return Err(ContainerError::NoSuchContainer {
                query: query.to_string(),
                asked: String::new(),
            });
        }
        return Err(ContainerError::NoRuntimeCli(query.to_string()));
    }
    for cli in &installed {
        let Some(id) = id_of_name(cli, query) else {
            continue;
        };
        if let Some(found) = containers.iter().find(|container| container.info.id == id) {
            let mut found = found.clone();
            found.info.name = Some(query.trim_start_matches('/').to_string());
            return Ok(found);
        }
    }
    Err(ContainerError::NoSuchContainer {
        query: query.to_string(),
        asked: format!(" (asked {})", installed.join(", ")),
    })
}

/// `container` with its name filled in by its runtime's tool, when that is installed.
fn named(mut container: Container) -> Container {
    if container.info.name.is_none() {
        container.info.name = name_of_id(&container.info);
    }
    container
}

/// The container `pid` runs in, for the report of any trace (`--pid` too); `None` on the
/// host.
pub fn of_pid(pid: u32) -> Option<ContainerInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    if let Some(found) = parse_cgroup(&text) {
        let mut info = ContainerInfo {
            id: found.id,
            name: None,
            runtime: found.runtime.map(|runtime| runtime.name().to_string()),
            cgroup: found.cgroup,
        };
        if info.runtime.is_none() && runc_list().iter().any(|(id, _)| *id == info.id) {
            info.runtime = Some(Runtime::Runc.name().to_string());
        }
        info.name = name_of_id(&info);
        return Some(info);
    }
    // A plain runc container's cgroup carries no mark: match it through `runc list`, for
    // processes in a pid namespace of their own.
    ns_pid(pid)?;
    scan()
        .into_iter()
        .find(|container| container.pids.contains(&pid))
        .map(|container| container.info)
}

/// The pid of `pid` inside its own pid namespace (the last `NSpid` field), when that is not
/// the host's.
pub fn ns_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    ns_pid_from_status(&status)
}

fn ns_pid_from_status(status: &str) -> Option<u32> {
    let fields: Vec<&str> = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .collect();
    match fields.as_slice() {
        [_, .., inner] => inner.parse().ok(),
        _ => None,
    }
}

/// The one Go process of `container`, or an error naming its processes.
pub fn go_process(container: &Container) -> Result<u32, ContainerError> {
    let described = |pids: &[u32]| {
        pids.iter()
            .map(|pid| format!("{pid} ({})", exe_of(*pid)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let go: Vec<u32> = container
        .pids
        .iter()
        .copied()
        .filter(|pid| is_go(*pid))
        .collect();
    match go.as_slice() {
        [one] => Ok(*one),
        [] => Err(ContainerError::NoGoProcess {
            container: container.info.label(),
            processes: described(&container.pids),
        }),
        several => Err(ContainerError::SeveralGoProcesses {
            container: container.info.label(),
            processes: described(several),
        }),
    }
}

fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|exe| exe.display().to_string())
        .unwrap_or_else(|_| "no executable".to_string())
}

/// Whether `pid` runs a Go program (one gomaptrace may refuse for its version still counts:
/// tracing it then says why).
fn is_go(pid: u32) -> bool {
    match GoBinary::open(Path::new(&format!("/proc/{pid}/exe"))) {
        Ok(_) => true,
        Err(
            InspectError::Io { .. }
            | InspectError::NotElf
            | InspectError::MalformedElf { .. }
            | InspectError::NotGo,
        ) => false,
        Err(_) => true,
    }
}

/// Whether `program` is an executable on `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Runs a runtime tool; its trimmed stdout when it succeeds within [`CLI_TIMEOUT`].
fn cli(program: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        match child.try_wait().ok()? {
            Some(status) if status.success() => break,
            Some(_) => return None,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let output = std::io::read_to_string(child.stdout.take()?).ok()?;
    let output = output.trim();
    (!output.is_empty()).then(|| output.to_string())
}

/// The id `program` gives the container called `name`.
fn id_of_name(program: &str, name: &str) -> Option<String> {
    let output = match program {
        "crictl" => cli(program, &["ps", "-q", "--name", &format!("^{name}$")])?,
        "runc" => {
            return runc_list()
                .into_iter()
                .map(|(id, _)| id)
                .find(|id| id == name)
        }
        _ => cli(program, &["inspect", "--format", "{{.Id}}", name])?,
    };
    let id = output.lines().next()?.trim().to_string();
    (!id.is_empty()).then_some(id)
}

/// The name the container's runtime tool gives it, when installed.
fn name_of_id(info: &ContainerInfo) -> Option<String> {
    let name = match info.runtime.as_deref()? {
        "runc" => return Some(info.id.clone()),
        "podman" => cli("podman", &["inspect", "--format", "{{.Name}}", &info.id]),
        "docker" => cli("docker", &["inspect", "--format", "{{.Name}}", &info.id]),
        "containerd" => cli("nerdctl", &["inspect", "--format", "{{.Name}}", &info.id]),
        _ => cli(
            "crictl",
            &[
                "inspect",
                "--output",
                "go-template",
                "--template",
                "{{.status.metadata.name}}",
                &info.id,
            ],
        ),
    }?;
    Some(name.trim_start_matches('/').to_string())
}

/// `(id, init pid)` of each running container `runc list` knows; empty without runc.
fn runc_list() -> Vec<(String, u32)> {
    #[derive(Deserialize)]
    struct State {
        id: String,
        pid: u32,
        status: String,
    }
    if !on_path("runc") {
        return Vec::new();
    }
    let Some(output) = cli("runc", &["list", "--format", "json"]) else {
        return Vec::new();
    };
    serde_json::from_str::<Option<Vec<State>>>(&output)
        .ok()
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .filter(|state| state.status == "running" && state.pid != 0)
        .map(|state| (state.id, state.pid))
        .collect()
}

#[cfg(test)]
mod tests;
