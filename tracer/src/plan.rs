//! Where the probes go: which runtime functions, at which file offsets, with which program.
//!
//! The plan is computed from the binary alone, before anything is loaded, so it can be
//! checked in tests and printed for a user who wants to know what will be touched.

use tracer_common::{arg, cookie, key};

use crate::inspect::{Function, GoBinary, InspectError};

/// The BPF program a probe site runs; one per kind of map operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// A map constructor's seed call (the header in a stack slot) or, failing that, each of
    /// its RET instructions (the header is the first result).
    Create,
    /// After the stack check of a `mapassign*`.
    Assign,
    /// After the stack check of a `mapdelete*`.
    Delete,
    /// After the stack check of `mapclear`.
    Clear,
    /// A RET instruction of a clone function: the clone is the first result.
    CloneReturn,
    /// After the stack check of a swiss function that gives a map more room.
    Grow,
    /// After the stack check of classic `hashGrow`: a doubling or a same-size reorganisation.
    HashGrow,
    /// After the stack check of swiss `(*table).pruneTombstones`: maybe a reorganisation.
    Prune,
    /// After the stack check of `runtime.gcMarkTermination`: marking is done, and the tracer
    /// reads the headers of the maps it listed (see `tracer_common::settle`).
    Collected,
}

impl ProbeKind {
    /// The name of the BPF program in `tracer-ebpf` that implements this kind.
    pub fn program(self) -> &'static str {
        use tracer_common::programs;
        match self {
            ProbeKind::Create => programs::CREATE,
            ProbeKind::Assign => programs::ASSIGN,
            ProbeKind::Delete => programs::DELETE,
            ProbeKind::Clear => programs::CLEAR,
            ProbeKind::CloneReturn => programs::CLONE_RET,
            ProbeKind::Grow => programs::GROW,
            ProbeKind::HashGrow => programs::HASH_GROW,
            ProbeKind::Prune => programs::PRUNE,
            ProbeKind::Collected => programs::COLLECTED,
        }
    }

    /// Every kind, in the order programs are loaded.
    pub const ALL: [ProbeKind; 9] = [
        ProbeKind::Create,
        ProbeKind::Assign,
        ProbeKind::Delete,
        ProbeKind::Clear,
        ProbeKind::CloneReturn,
        ProbeKind::Grow,
        ProbeKind::HashGrow,
        ProbeKind::Prune,
        ProbeKind::Collected,
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
    /// The attach cookie (`tracer_common::cookie`): where the program finds the map, its
    /// type and its key, or the stack slot of a new header.
    pub cookie: u64,
}

/// The target runtime's map implementation, which decides the header layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapImplementation {
    /// `runtime.hmap` (Go ≤ 1.23, and 1.24–1.25 with `GOEXPERIMENT=noswissmap`).
    Classic,
    /// `internal/runtime/maps.Map` (Go 1.24+ by default).
    Swiss,
}

impl MapImplementation {
    /// The implementation `binary` was built with ([`GoBinary::has_swiss_maps`]).
    pub fn of(binary: &GoBinary) -> MapImplementation {
        if binary.has_swiss_maps() {
            MapImplementation::Swiss
        } else {
            MapImplementation::Classic
        }
    }

    /// Where the hash seed sits in the header's second word (see `tracer_common::seed_shift`).
    pub fn seed_shift(self) -> u64 {
        match self {
            MapImplementation::Classic => tracer_common::seed_shift::CLASSIC,
            MapImplementation::Swiss => tracer_common::seed_shift::SWISS,
        }
    }

    /// The seed's offset in the header: where a constructor stores what its seed call
    /// returned (classic `hash0`, swiss `seed`).
    fn seed_offset(self) -> u64 {
        match self {
            MapImplementation::Classic => 12,
            MapImplementation::Swiss => 8,
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

/// Where a runtime function is probed.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// A constructor: its seed call when the code has the expected shape, else every RET.
    Constructor,
    /// Every RET: the map is the first result.
    Returns,
    /// After the stack check, with this cookie (`tracer_common::cookie::entry`).
    Entry(u64),
}

/// The seed generators map constructors call (Go 1.22+; earlier releases inline
/// `fastrand`, whose constructors are probed at their RETs).
const SEED_FUNCTIONS: [&str; 3] = [
    "runtime.rand",
    "internal/runtime/maps.rand",
    "runtime.fastrand",
];

/// The probes for one map implementation: (kind, placement, function names). Missing
/// functions are skipped (the linker drops what a program does not use).
///
/// - Classic maps: `makemap` creates; `mapdelete*` deletes; `mapclone2` (Go 1.21+) clones;
///   `hashGrow` starts a growth, bigger or the same size.
/// - Swiss maps: `makemap` calls `NewMap`, and so do reflect and `mapclone2`, so creation is
///   probed in `NewMap` (and in `makemap_small`, which does not call it). Every delete, runtime
///   or reflect, goes through `(*Map).Delete`, and every clear through `(*Map).Clear` (reflect
///   calls it without `runtime.mapclear`). Go 1.25+ clones with `(*Map).Clone`.
/// - Swiss growth is probed where the room is made, not in `(*table).rehash`, which only
///   chooses between `(*table).grow` and `(*table).split` (and may one day rehash in place,
///   as its comments plan). `(*table).pruneTombstones` (Go 1.25+) is called by the fast
///   assigns before they rehash; it may clear tombstones, or do nothing.
///
/// `_fast32ptr` exists only on 32-bit targets and there is no `mapdelete_*ptr`: pointer keys
/// use `mapdelete_fast64`.
fn probe_table(implementation: MapImplementation) -> Vec<(ProbeKind, Placement, Vec<String>)> {
    // (suffix, how the key is passed) for the runtime's assign and delete variants, whose
    // arguments are (type, map, key).
    const VARIANTS: [(&str, u8); 5] = [
        ("", key::POINTER),
        ("_fast32", key::VALUE32),
        ("_fast64", key::VALUE64),
        ("_fast64ptr", key::VALUE64),
        ("_faststr", key::STRING),
    ];
    let runtime_variants = |kind: ProbeKind, base: &'static str| {
        VARIANTS.iter().map(move |(suffix, key)| {
            (
                kind,
                Placement::Entry(cookie::entry(arg::SECOND, arg::FIRST, *key)),
                vec![format!("{base}{suffix}")],
            )
        })
    };
    let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect::<Vec<_>>();
    let swiss = |name: &str| format!("internal/runtime/maps.{name}");
    // Swiss methods take (receiver map, type, ...).
    let swiss_method = cookie::entry(arg::FIRST, arg::SECOND, key::NONE);
    // Table methods take (receiver table, type, map, ...).
    let table_method = cookie::entry(arg::THIRD, arg::SECOND, key::NONE);
    let mut table: Vec<_> = runtime_variants(ProbeKind::Assign, "runtime.mapassign").collect();
    table.push((
        ProbeKind::Collected,
        Placement::Entry(0),
        names(&["runtime.gcMarkTermination"]),
    ));
    match implementation {
        MapImplementation::Classic => {
            let type_and_map = cookie::entry(arg::SECOND, arg::FIRST, key::NONE);
            table.push((
                ProbeKind::Create,
                Placement::Constructor,
                names(&["runtime.makemap", "runtime.makemap_small"]),
            ));
            table.extend(runtime_variants(ProbeKind::Delete, "runtime.mapdelete"));
            table.extend([
                (
                    ProbeKind::Clear,
                    Placement::Entry(type_and_map),
                    names(&["runtime.mapclear"]),
                ),
                (
                    ProbeKind::CloneReturn,
                    Placement::Returns,
                    names(&["runtime.mapclone2"]),
                ),
                (
                    ProbeKind::HashGrow,
                    Placement::Entry(type_and_map),
                    names(&["runtime.hashGrow"]),
                ),
            ]);
        }
        MapImplementation::Swiss => table.extend([
            (
                ProbeKind::Create,
                Placement::Constructor,
                vec![swiss("NewMap"), "runtime.makemap_small".into()],
            ),
            (
                ProbeKind::Delete,
                Placement::Entry(cookie::entry(arg::FIRST, arg::SECOND, key::POINTER)),
                vec![swiss("(*Map).Delete")],
            ),
            (
                ProbeKind::Clear,
                Placement::Entry(swiss_method),
                vec![swiss("(*Map).Clear")],
            ),
            (
                ProbeKind::CloneReturn,
                Placement::Returns,
                vec!["runtime.mapclone2".into(), swiss("(*Map).Clone")],
            ),
            (
                ProbeKind::Grow,
                Placement::Entry(swiss_method),
                vec![swiss("(*Map).growToSmall"), swiss("(*Map).growToTable")],
            ),
            (
                ProbeKind::Grow,
                Placement::Entry(table_method),
                vec![swiss("(*table).grow"), swiss("(*table).split")],
            ),
            (
                ProbeKind::Prune,
                Placement::Entry(table_method),
                vec![swiss("(*table).pruneTombstones")],
            ),
        ]),
    }
    table.sort_by_key(|(kind, _, _)| ProbeKind::ALL.iter().position(|k| k == kind));
    table
}

/// Plans probes for every map function the binary contains. Missing variants are normal
/// (the linker drops what is unused); a binary with no `mapassign*` at all is an error, since
/// no map in it could ever gain an entry.
pub fn plan(binary: &GoBinary) -> Result<ProbePlan, PlanError> {
    let implementation = MapImplementation::of(binary);
    let seed_functions: Vec<u64> = SEED_FUNCTIONS
        .iter()
        .filter_map(|name| binary.function(name))
        .map(|function| function.vaddr)
        .collect();
    let placer = Placer {
        binary,
        seed_functions,
        seed_offset: implementation.seed_offset(),
    };
    let mut sites = Vec::new();
    for (kind, placement, names) in probe_table(implementation) {
        for function in names.iter().filter_map(|name| binary.function(name)) {
            sites.extend(placer.place(kind, placement, function)?);
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

/// Turns a placement into file offsets for one binary.
struct Placer<'a> {
    binary: &'a GoBinary,
    /// Addresses of the seed generators constructors call.
    seed_functions: Vec<u64>,
    /// Where constructors store the seed in the header.
    seed_offset: u64,
}

impl Placer<'_> {
    fn place(
        &self,
        kind: ProbeKind,
        placement: Placement,
        function: &Function,
    ) -> Result<Vec<ProbeSite>, PlanError> {
        let decode_error = |source| PlanError::Decode {
            function: function.name.clone(),
            source,
        };
        let returns = || -> Result<Vec<(u64, u64)>, PlanError> {
            Ok(self
                .binary
                .return_offsets(function)
                .map_err(decode_error)?
                .into_iter()
                .map(|offset| (offset, 0))
                .collect())
        };
        let offsets = match placement {
            Placement::Constructor => {
                let seed_calls = self
                    .binary
                    .seed_calls(function, &self.seed_functions, self.seed_offset)
                    .map_err(decode_error)?;
                if seed_calls.is_empty() {
                    returns()?
                } else {
                    seed_calls
                        .iter()
                        .map(|call| (call.file_offset, cookie::header_slot(call.header_slot)))
                        .collect()
                }
            }
            Placement::Returns => returns()?,
            Placement::Entry(cookie) => vec![(
                self.binary
                    .entry_probe_offset(function)
                    .map_err(decode_error)?,
                cookie,
            )],
        };
        Ok(offsets
            .into_iter()
            .map(|(file_offset, cookie)| ProbeSite {
                kind,
                function: function.name.clone(),
                file_offset,
                cookie,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gofixture::{self, Flavor};

    /// The growth probes planned for the maps fixture built by Go `version` with `env`: the
    /// implementation, and (kind, function, cookie) of each growth site.
    fn growth_sites(
        version: &str,
        env: &[(&str, &str)],
    ) -> (MapImplementation, Vec<(ProbeKind, String, u64)>) {
        let path = gofixture::build("maps", version, Flavor::Plain, env);
        let binary =
            GoBinary::open(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let plan = plan(&binary).unwrap();
        let sites = plan
            .sites
            .into_iter()
            .filter(|site| {
                matches!(
                    site.kind,
                    ProbeKind::Grow | ProbeKind::HashGrow | ProbeKind::Prune
                )
            })
            .map(|site| (site.kind, site.function, site.cookie))
            .collect();
        (plan.implementation, sites)
    }

    /// Every release links the growth functions as real functions (none is inlined into its
    /// callers), so each is probed once; the arguments holding the map and its type were
    /// checked against each release's DWARF.
    #[test]
    fn growth_is_probed_where_each_release_makes_room() {
        let noswiss = [("GOEXPERIMENT", "noswissmap")];
        let hash_grow = vec![(
            ProbeKind::HashGrow,
            "runtime.hashGrow".to_string(),
            cookie::entry(arg::SECOND, arg::FIRST, key::NONE),
        )];
        for (version, env) in [
            ("1.19", &[][..]),
            ("1.21.13", &[]),
            ("1.22.10", &[]),
            ("1.23.9", &[]),
            ("1.24.11", &noswiss),
            ("1.25.5", &noswiss),
        ] {
            assert_eq!(
                growth_sites(version, env),
                (MapImplementation::Classic, hash_grow.clone()),
                "Go {version} {env:?}"
            );
        }

        let method = cookie::entry(arg::FIRST, arg::SECOND, key::NONE);
        let table = cookie::entry(arg::THIRD, arg::SECOND, key::NONE);
        let swiss =
            |kind, name: &str, cookie| (kind, format!("internal/runtime/maps.{name}"), cookie);
        for version in ["1.24.11", "1.25.5", "1.26.6", "1.27.3"] {
            let mut expected = vec![
                swiss(ProbeKind::Grow, "(*Map).growToSmall", method),
                swiss(ProbeKind::Grow, "(*Map).growToTable", method),
                swiss(ProbeKind::Grow, "(*table).grow", table),
                swiss(ProbeKind::Grow, "(*table).split", table),
            ];
            // Tombstone pruning came with Go 1.25.
            if version != "1.24.11" {
                expected.push(swiss(ProbeKind::Prune, "(*table).pruneTombstones", table));
            }
            assert_eq!(
                growth_sites(version, &[]),
                (MapImplementation::Swiss, expected),
                "Go {version}"
            );
        }
    }
}
