//! Where the probes go: which runtime functions, at which file offsets, with which program.
//!
//! The plan is computed from the binary alone, before anything is loaded, so it can be
//! checked in tests and printed for a user who wants to know what will be touched.

use crate::inspect::{Function, GoBinary, InspectError};

/// The BPF program a probe site runs; one per kind of map operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// A RET instruction of `makemap*`: the new map is the first result.
    CreateReturn,
    /// After the stack check of a `mapassign*`.
    Assign,
    /// After the stack check of a `mapdelete*`.
    Delete,
    /// After the stack check of `mapclear`.
    Clear,
}

impl ProbeKind {
    /// The name of the BPF program in `tracer-ebpf` that implements this kind.
    pub fn program(self) -> &'static str {
        use tracer_common::programs;
        match self {
            ProbeKind::CreateReturn => programs::CREATE_RET,
            ProbeKind::Assign => programs::ASSIGN,
            ProbeKind::Delete => programs::DELETE,
            ProbeKind::Clear => programs::CLEAR,
        }
    }
}

/// One uprobe to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    /// The program to run.
    pub kind: ProbeKind,
    /// The runtime function probed, for messages.
    pub function: String,
    /// Offset in the executable file, as the kernel's uprobe interface wants it.
    pub file_offset: u64,
}

/// The target runtime's map implementation, which decides the header layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapImplementation {
    /// `runtime.hmap` (Go ≤ 1.23, and 1.24–1.25 with `GOEXPERIMENT=noswissmap`).
    Classic,
    /// `internal/runtime/maps.Map` (Go 1.24+ by default).
    Swiss,
}

impl MapImplementation {
    /// Tells the implementations apart by a function only the classic one has: guessing from
    /// the version would be wrong for `noswissmap` builds.
    pub fn of(binary: &GoBinary) -> MapImplementation {
        if binary.function("runtime.hashGrow").is_some() {
            MapImplementation::Classic
        } else {
            MapImplementation::Swiss
        }
    }

    /// Where the hash seed sits in the header's second word (see `tracer_common::seed_shift`).
    pub fn seed_shift(self) -> u64 {
        match self {
            MapImplementation::Classic => tracer_common::seed_shift::CLASSIC,
            MapImplementation::Swiss => tracer_common::seed_shift::SWISS,
        }
    }
}

/// Every probe site for one binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePlan {
    /// The sites, in a stable order.
    pub sites: Vec<ProbeSite>,
    /// The map implementation the probes will read headers of.
    pub implementation: MapImplementation,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The binary links no map function at all: not a Go program that uses maps, or one
    /// built in a way this version does not understand.
    #[error(
        "none of the Go runtime's map functions (runtime.makemap, runtime.mapassign, …) \
         were found in the binary: nothing to trace"
    )]
    NoMapFunctions,
    /// A function was found but its code could not be decoded.
    #[error("cannot place probes in {function}: {source}")]
    Decode {
        /// The function.
        function: String,
        /// What went wrong.
        source: InspectError,
    },
}

const CREATE_FUNCTIONS: &[&str] = &["runtime.makemap", "runtime.makemap_small"];
/// `_fast32ptr` exists only on 32-bit targets and there is no `mapdelete_*ptr`: pointer keys
/// use `mapdelete_fast64`. The linker drops the variants a program does not use.
const KEY_VARIANTS: &[&str] = &["", "_fast32", "_fast64", "_fast64ptr", "_faststr"];

/// Plans probes for every map function the binary contains. Missing variants are normal
/// (the linker drops what is unused); finding none at all is an error.
pub fn plan(binary: &GoBinary) -> Result<ProbePlan, PlanError> {
    let mut sites = Vec::new();
    for function in present(binary, CREATE_FUNCTIONS.iter().map(|name| name.to_string())) {
        let offsets = binary
            .return_offsets(function)
            .map_err(|source| decode_error(function, source))?;
        sites.extend(offsets.into_iter().map(|file_offset| ProbeSite {
            kind: ProbeKind::CreateReturn,
            function: function.name.clone(),
            file_offset,
        }));
    }
    let entries = [
        (ProbeKind::Assign, "runtime.mapassign"),
        (ProbeKind::Delete, "runtime.mapdelete"),
    ];
    for (kind, base) in entries {
        let names = KEY_VARIANTS.iter().map(|suffix| format!("{base}{suffix}"));
        for function in present(binary, names) {
            sites.push(entry_site(binary, kind, function)?);
        }
    }
    for function in present(binary, ["runtime.mapclear".to_string()].into_iter()) {
        sites.push(entry_site(binary, ProbeKind::Clear, function)?);
    }
    if sites.is_empty() {
        return Err(PlanError::NoMapFunctions);
    }
    Ok(ProbePlan {
        sites,
        implementation: MapImplementation::of(binary),
    })
}

fn present(
    binary: &GoBinary,
    names: impl Iterator<Item = String>,
) -> impl Iterator<Item = &Function> {
    names.filter_map(|name| binary.function(&name))
}

fn entry_site(
    binary: &GoBinary,
    kind: ProbeKind,
    function: &Function,
) -> Result<ProbeSite, PlanError> {
    let file_offset = binary
        .entry_probe_offset(function)
        .map_err(|source| decode_error(function, source))?;
    Ok(ProbeSite {
        kind,
        function: function.name.clone(),
        file_offset,
    })
}

fn decode_error(function: &Function, source: InspectError) -> PlanError {
    PlanError::Decode {
        function: function.name.clone(),
        source,
    }
}
