//! The binary reader and the probe plan against real programs built by Go 1.17 and 1.18,
//! releases no toolchain here can build: esbuild's npm releases, fetched by `cargo xtask
//! setup`. They are stripped, so every function comes from the pclntab alone (Go 1.17's
//! with the older layout: absolute entries, no `textStart`), checked against the standard
//! library's `debug/gosym` and the toolchain's `go tool addr2line`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::Object;
use tracer_common::cookie;

use super::lines::tests::frames_match_addr2line;
use super::tests::one_build_at_a_time;
use super::*;
use crate::gofixture::{self, Flavor};
use crate::plan::{self, MapImplementation, ProbeKind};

/// A released program: which esbuild, for which `GOARCH`, built by which Go.
#[derive(Clone, Copy, Debug)]
struct Released {
    esbuild: &'static str,
    goarch: &'static str,
    go: &'static str,
}

impl Released {
    fn path(self) -> std::path::PathBuf {
        gofixture::released_go_program(self.esbuild, self.goarch)
    }

    fn open(self) -> GoBinary {
        GoBinary::open(&self.path()).unwrap_or_else(|error| panic!("{self:?}: {error}"))
    }
}

const AMD64_GO117: Released = Released {
    esbuild: "0.13.15",
    goarch: "amd64",
    go: "go1.17.2",
};
const AMD64_GO118: Released = Released {
    esbuild: "0.14.30",
    goarch: "amd64",
    go: "go1.18",
};
const ARM64_GO117: Released = Released {
    esbuild: "0.13.15",
    goarch: "arm64",
    go: "go1.17.2",
};
const ARM64_GO118: Released = Released {
    esbuild: "0.14.30",
    goarch: "arm64",
    go: "go1.18",
};

/// Every release gomaptrace accepts (Go 1.17 on arm64 passes arguments on the stack).
const TRACEABLE: [Released; 3] = [AMD64_GO117, AMD64_GO118, ARM64_GO118];

#[test]
fn reads_the_release_from_the_build_info_of_stripped_binaries() {
    for released in TRACEABLE {
        let bytes = std::fs::read(released.path()).unwrap();
        let file = object::File::parse(bytes.as_slice()).unwrap();
        assert!(
            file.section_by_name(".symtab").is_none(),
            "{released:?} is stripped: only the pclntab names functions"
        );
        let binary = GoBinary::parse(bytes).unwrap();
        assert_eq!(binary.raw_go_version(), released.go, "{released:?}");
        assert_eq!(binary.go_version().to_string(), released.go, "{released:?}");
        assert_eq!(binary.arch().to_string(), released.goarch);
        assert!(
            binary.types_base().is_some(),
            "{released:?}: moduledata.types"
        );
    }
}

/// `debug/gosym` (`tests/fixtures/gosym`, built with Go 1.27) on the same file: name, entry
/// and end of every function.
fn gosym_functions(path: &Path) -> Vec<Function> {
    let gosym = {
        let _one_at_a_time = one_build_at_a_time();
        gofixture::build("gosym", "1.27.3", Flavor::Plain, &[])
    };
    let output = Command::new(&gosym).arg(path).output().expect("run gosym");
    assert!(
        output.status.success(),
        "gosym {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("gosym prints UTF-8")
        .lines()
        .map(|line| {
            let mut fields = line.splitn(3, ' ');
            let mut address = || u64::from_str_radix(fields.next().unwrap(), 16).unwrap();
            let (entry, end) = (address(), address());
            Function {
                name: fields.next().unwrap().to_owned(),
                vaddr: entry,
                size: end - entry,
            }
        })
        .collect()
}

#[test]
fn lists_the_functions_debug_gosym_lists() {
    for released in TRACEABLE {
        let binary = released.open();
        let expected = gosym_functions(&released.path());
        assert!(expected.len() > 5000, "{released:?}: {}", expected.len());
        let listed: Vec<Function> = binary.functions().cloned().collect();
        assert_eq!(listed, expected, "{released:?}");
    }
}

/// Creation sites are symbolized through the pclntab's line tables and inline trees, whose
/// Go 1.17 form (absolute funcdata pointers) no toolchain here emits.
#[test]
fn source_lines_match_go_tool_addr2line() {
    for released in TRACEABLE {
        let binary = released.open();
        // A third into every third function: inside its code, before the padding.
        let addresses: Vec<u64> = binary
            .functions()
            .step_by(3)
            .map(|f| f.vaddr + f.size / 3)
            .collect();
        // Go 1.27's addr2line reads these older pclntabs too.
        let context = format!("{released:?}");
        let inlined =
            frames_match_addr2line(&binary, "1.27.3", &released.path(), &addresses, &context);
        assert!(
            inlined > 100,
            "{released:?}: only {inlined} inlined samples"
        );
    }
}

/// Functions of the classic runtime that create, fill, empty or grow a map, and the
/// collector's mark termination: what the plan must probe wherever the linker kept them.
fn changes_maps(name: &str) -> bool {
    let Some(name) = name.strip_prefix("runtime.") else {
        return false;
    };
    matches!(
        name,
        "makemap" | "makemap_small" | "mapclear" | "hashGrow" | "gcMarkTermination"
    ) || name.starts_with("mapassign")
        || name.starts_with("mapdelete")
}

/// What the plan does with a function that [`changes_maps`].
fn kind_of(name: &str) -> ProbeKind {
    match name.trim_start_matches("runtime.") {
        "makemap" | "makemap_small" => ProbeKind::Create,
        "mapclear" => ProbeKind::Clear,
        "hashGrow" => ProbeKind::HashGrow,
        "gcMarkTermination" => ProbeKind::Collected,
        other if other.starts_with("mapassign") => ProbeKind::Assign,
        _ => ProbeKind::Delete,
    }
}

#[test]
fn plans_every_map_function_the_binary_has() {
    for released in TRACEABLE {
        let binary = released.open();
        let plan = plan::plan(&binary).unwrap_or_else(|error| panic!("{released:?}: {error}"));
        assert_eq!(plan.implementation, MapImplementation::Classic);
        let expected: BTreeMap<&str, ProbeKind> = binary
            .functions()
            .map(|f| f.name.as_str())
            .filter(|name| changes_maps(name))
            .map(|name| (name, kind_of(name)))
            .collect();
        let planned: BTreeMap<&str, ProbeKind> = plan
            .sites
            .iter()
            .map(|site| (site.function.as_str(), site.kind))
            .collect();
        assert_eq!(planned, expected, "{released:?}");
        // Every kind but Clear: esbuild never clears a map (none of these builds links
        // `runtime.mapclear`), which the derived set above accounts for.
        for kind in [
            ProbeKind::Create,
            ProbeKind::Assign,
            ProbeKind::Delete,
            ProbeKind::HashGrow,
            ProbeKind::Collected,
        ] {
            assert!(
                planned.values().any(|&k| k == kind),
                "{released:?}: {kind:?}"
            );
        }
    }
}

#[test]
fn entry_probes_follow_the_stack_check() {
    for released in TRACEABLE {
        let binary = released.open();
        let plan = plan::plan(&binary).unwrap();
        let entries = plan.sites.iter().filter(|site| {
            matches!(
                site.kind,
                ProbeKind::Assign
                    | ProbeKind::Delete
                    | ProbeKind::Clear
                    | ProbeKind::Grow
                    | ProbeKind::HashGrow
                    | ProbeKind::Prune
                    | ProbeKind::Collected
            )
        });
        let mut checked = 0;
        for site in entries {
            let f = binary.function(&site.function).unwrap();
            let (code, start) = binary.code(f).unwrap();
            let context = format!("{released:?} {}", f.name);
            let after_check = match binary.arch() {
                Arch::Amd64 => amd64_stack_check_end(code, &context),
                Arch::Arm64 => arm64_stack_check_end(code, &context),
            };
            assert_eq!(site.file_offset, start + after_check, "{context}");
            checked += 1;
        }
        assert!(checked >= 10, "{released:?}: {checked} entry probes");
    }
}

/// Where the check ends, from an independent decode: the function starts with `CMPQ SP,
/// 0x10(R14)` (or `LEAQ -x(SP), R12; CMPQ R12, 0x10(R14)`), then `JBE`.
fn amd64_stack_check_end(code: &[u8], context: &str) -> u64 {
    let prologue: Vec<Instruction> = Decoder::with_ip(64, code, 0, DecoderOptions::NONE)
        .iter()
        .take(3)
        .collect();
    let compare_at = usize::from(prologue[0].mnemonic() == Mnemonic::Lea);
    if compare_at == 1 {
        assert_eq!(prologue[0].op0_register(), Register::R12, "{context}");
        assert_eq!(prologue[0].memory_base(), Register::RSP, "{context}");
    }
    let compare = &prologue[compare_at];
    assert_eq!(compare.mnemonic(), Mnemonic::Cmp, "{context}: {compare}");
    assert_eq!(compare.op1_kind(), OpKind::Memory, "{context}: {compare}");
    assert_eq!(compare.memory_base(), Register::R14, "{context}: g");
    assert_eq!(
        compare.memory_displacement64(),
        0x10,
        "{context}: stackguard0"
    );
    let branch = &prologue[compare_at + 1];
    assert!(
        matches!(branch.code(), Code::Jbe_rel8_64 | Code::Jbe_rel32_64),
        "{context}: {branch}"
    );
    branch.next_ip()
}

/// Little-endian instruction words.
fn words(code: &[u8]) -> Vec<u32> {
    code.chunks_exact(4)
        .map(|word| u32::from_le_bytes(word.try_into().unwrap()))
        .collect()
}

/// Where the check ends. Go 1.18 starts every map function with `MOVD 16(R28), R16`,
/// `R17 = RSP - frame` (`MOVD RSP, R17` when the frame fits the guard slack), `CMP R16, R17`
/// and `BLS`; later releases compare RSP directly when they can.
fn arm64_stack_check_end(code: &[u8], context: &str) -> u64 {
    let words = words(code);
    let prologue = &words[..4];
    assert_eq!(prologue[0], 0xf940_0b90, "{context}: MOVD 16(R28), R16");
    assert_eq!(
        prologue[1] & 0xbf80_03ff,
        0x9100_03f1,
        "{context}: ADD/SUB $x, RSP, R17 in {prologue:08x?}"
    );
    assert_eq!(prologue[2], 0xeb10_023f, "{context}: CMP R16, R17");
    assert_eq!(prologue[3] & 0xff00_001f, 0x5400_0009, "{context}: BLS");
    16
}

#[test]
fn constructors_are_probed_on_every_ret() {
    for released in TRACEABLE {
        let binary = released.open();
        let plan = plan::plan(&binary).unwrap();
        let mut by_function: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for site in plan.sites.iter().filter(|s| s.kind == ProbeKind::Create) {
            // Go before 1.22 inlines `fastrand`: there is no seed call to probe.
            assert_eq!(site.cookie & cookie::HEADER_IN_SLOT, 0, "{site:?}");
            by_function
                .entry(site.function.as_str())
                .or_default()
                .push(site.file_offset);
        }
        assert_eq!(
            by_function.keys().copied().collect::<Vec<_>>(),
            ["runtime.makemap", "runtime.makemap_small"],
            "{released:?}"
        );
        for (name, sites) in by_function {
            let f = binary.function(name).unwrap();
            let (code, start) = binary.code(f).unwrap();
            let context = format!("{released:?} {name}");
            let rets: Vec<u64> = match binary.arch() {
                Arch::Amd64 => Decoder::with_ip(64, code, start, DecoderOptions::NONE)
                    .iter()
                    .filter(|instruction| instruction.code() == Code::Retnq)
                    .map(|instruction| instruction.ip())
                    .collect(),
                Arch::Arm64 => words(code)
                    .into_iter()
                    .zip((start..).step_by(4))
                    .filter(|&(word, _)| word == 0xd65f_03c0)
                    .map(|(_, offset)| offset)
                    .collect(),
            };
            assert!(!rets.is_empty(), "{context}");
            assert_eq!(sites, rets, "{context}");
        }
    }
}

#[test]
fn refuses_go_1_17_on_arm64() {
    let error = GoBinary::open(&ARM64_GO117.path()).unwrap_err();
    assert!(
        matches!(error, InspectError::UnsupportedGoVersion { .. }),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "go1.17.2 uses the stack-based ABI; gomaptrace needs Go 1.18 or newer on arm64: \
         rebuild the program with a newer Go"
    );
}
