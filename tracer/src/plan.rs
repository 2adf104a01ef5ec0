//! Where the probes go: which runtime functions, at which file offsets, with which program.
//!
//! The plan is computed from the binary alone, before anything is loaded, so it can be
//! checked in tests and printed for a user who wants to know what will be touched.

use tracer_common::arg;

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
    /// A RET instruction of a clone function: the clone is the first result.
    CloneReturn,
    /// After the stack check of a function that starts a map's growth.
    Grow,
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
            ProbeKind::CloneReturn => programs::CLONE_RET,
            ProbeKind::Grow => programs::GROW,
        }
    }

    /// Every kind, in the order programs are loaded.
    pub const ALL: [ProbeKind; 6] = [
        ProbeKind::CreateReturn,
        ProbeKind::Assign,
        ProbeKind::Delete,
        ProbeKind::Clear,
        ProbeKind::CloneReturn,
        ProbeKind::Grow,
    ];
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
    /// Which argument holds the map (`tracer_common::arg`), for programs that read it from
    /// the attach cookie.
    pub map_argument: u64,
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

/// Where a runtime function is probed, and which argument holds the map.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// Every RET: the map is the first result.
    Returns,
    /// After the stack check, with the map in the given argument.
    Entry(u64),
}

/// The probes for one map implementation: (kind, placement, function names). Missing
/// functions are skipped (the linker drops what a program does not use).
///
/// - Classic maps: `makemap` creates; `mapdelete*` deletes; `mapclone2` (Go 1.21+) clones;
///   `hashGrow` starts a growth.
/// - Swiss maps: `makemap` calls `NewMap`, and so do reflect and `mapclone2`, so creation is
///   probed in `NewMap` (and in `makemap_small`, which does not call it). Every delete, runtime
///   or reflect, goes through `(*Map).Delete`, and every clear through `(*Map).Clear` (reflect
///   calls it without `runtime.mapclear`). Go 1.25+ clones with `(*Map).Clone`.
///
/// `_fast32ptr` exists only on 32-bit targets and there is no `mapdelete_*ptr`: pointer keys
/// use `mapdelete_fast64`.
fn probe_table(implementation: MapImplementation) -> Vec<(ProbeKind, Placement, Vec<String>)> {
    let variants = |base: &str| {
        ["", "_fast32", "_fast64", "_fast64ptr", "_faststr"]
            .iter()
            .map(|suffix| format!("{base}{suffix}"))
            .collect::<Vec<_>>()
    };
    let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect::<Vec<_>>();
    let swiss = |name: &str| format!("internal/runtime/maps.{name}");
    let assign = (
        ProbeKind::Assign,
        Placement::Entry(arg::SECOND),
        variants("runtime.mapassign"),
    );
    match implementation {
        MapImplementation::Classic => vec![
            (
                ProbeKind::CreateReturn,
                Placement::Returns,
                names(&["runtime.makemap", "runtime.makemap_small"]),
            ),
            assign,
            (
                ProbeKind::Delete,
                Placement::Entry(arg::SECOND),
                variants("runtime.mapdelete"),
            ),
            (
                ProbeKind::Clear,
                Placement::Entry(arg::SECOND),
                names(&["runtime.mapclear"]),
            ),
            (
                ProbeKind::CloneReturn,
                Placement::Returns,
                names(&["runtime.mapclone2"]),
            ),
            (
                ProbeKind::Grow,
                Placement::Entry(arg::SECOND),
                names(&["runtime.hashGrow"]),
            ),
        ],
        MapImplementation::Swiss => vec![
            (
                ProbeKind::CreateReturn,
                Placement::Returns,
                vec![swiss("NewMap"), "runtime.makemap_small".into()],
            ),
            assign,
            (
                ProbeKind::Delete,
                Placement::Entry(arg::FIRST),
                vec![swiss("(*Map).Delete")],
            ),
            (
                ProbeKind::Clear,
                Placement::Entry(arg::FIRST),
                vec![swiss("(*Map).Clear")],
            ),
            (
                ProbeKind::CloneReturn,
                Placement::Returns,
                vec!["runtime.mapclone2".into(), swiss("(*Map).Clone")],
            ),
            (
                ProbeKind::Grow,
                Placement::Entry(arg::FIRST),
                vec![swiss("(*Map).growToSmall"), swiss("(*Map).growToTable")],
            ),
            (
                ProbeKind::Grow,
                Placement::Entry(arg::THIRD),
                vec![swiss("(*table).rehash")],
            ),
        ],
    }
}

/// Plans probes for every map function the binary contains. Missing variants are normal
/// (the linker drops what is unused); a binary with no `mapassign*` at all is an error, since
/// no map in it could ever gain an entry.
pub fn plan(binary: &GoBinary) -> Result<ProbePlan, PlanError> {
    let implementation = MapImplementation::of(binary);
    let mut sites = Vec::new();
    for (kind, placement, names) in probe_table(implementation) {
        for function in names.iter().filter_map(|name| binary.function(name)) {
            sites.extend(place(binary, kind, placement, function)?);
        }
    }
    if !sites.iter().any(|site| site.kind == ProbeKind::Assign) {
        return Err(PlanError::NoMapFunctions);
    }
    Ok(ProbePlan {
        sites,
        implementation,
    })
}

fn place(
    binary: &GoBinary,
    kind: ProbeKind,
    placement: Placement,
    function: &Function,
) -> Result<Vec<ProbeSite>, PlanError> {
    let decode_error = |source| PlanError::Decode {
        function: function.name.clone(),
        source,
    };
    let (offsets, map_argument) = match placement {
        Placement::Returns => (binary.return_offsets(function).map_err(decode_error)?, 0),
        Placement::Entry(argument) => (
            vec![binary.entry_probe_offset(function).map_err(decode_error)?],
            argument,
        ),
    };
    Ok(offsets
        .into_iter()
        .map(|file_offset| ProbeSite {
            kind,
            function: function.name.clone(),
            file_offset,
            map_argument,
        })
        .collect())
}
