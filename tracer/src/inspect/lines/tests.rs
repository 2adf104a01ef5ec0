//! Source lines against the `symbols` fixture built by every installed toolchain (plain,
//! stripped and PIE, amd64 and arm64): return addresses of known calls must resolve to the
//! fixture's marked lines, inlined frame first; sampled addresses must agree with
//! `go tool addr2line`; corrupted tables must never panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};
use object::{Object, ObjectSection};

use super::super::tests::{one_build_at_a_time, XorShift};
use super::super::{Arch, Function, GoBinary};
use super::SourceFrame;
use crate::gofixture;

pub(in super::super) use gofixture::GO_VERSIONS as VERSIONS;

/// The fixture's main file as `-trimpath` builds record it.
const MAIN_GO: &str = "symbolsfixture/main.go";

/// How the fixture is built. Builds that keep DWARF leave it uncompressed, so the type tests
/// can read it without a decompressor (nothing else changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in super::super) enum Build {
    /// Static, with `.symtab` and DWARF.
    Plain,
    /// `-ldflags=-s -w`: only the pclntab is left.
    Stripped,
    /// `-buildmode=pie`, with `.symtab` and DWARF.
    Pie,
}

impl Build {
    pub(in super::super) const ALL: [Build; 3] = [Build::Plain, Build::Stripped, Build::Pie];

    fn args(self) -> &'static [&'static str] {
        match self {
            Build::Plain => &["-ldflags=-compressdwarf=false"],
            Build::Stripped => &["-ldflags=-s -w"],
            Build::Pie => &["-buildmode=pie", "-ldflags=-compressdwarf=false"],
        }
    }
}

/// Builds `tests/fixtures/symbols` with `build`'s flags (DWARF uncompressed, which the
/// `object` crate cannot inflate), through the shared fixture builder and its cache.
pub(in super::super) fn build(
    version: &str,
    build: Build,
    env: &[(&str, &str)],
    goarch: &str,
) -> PathBuf {
    let _one_at_a_time = one_build_at_a_time();
    gofixture::build_with(
        "symbols",
        version,
        &format!("{build:?}"),
        build.args(),
        env,
        goarch,
    )
}

pub(in super::super) fn open(path: &Path) -> GoBinary {
    GoBinary::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The line of the fixture's `MARK:<mark>` comment.
fn marked_line(mark: &str) -> u32 {
    let path = gofixture::workspace_root().join("tests/fixtures/symbols/main.go");
    let source = std::fs::read_to_string(path).expect("fixture source");
    let needle = format!("// MARK:{mark}");
    let index = source
        .lines()
        .position(|line| line.trim_end().ends_with(&needle))
        .unwrap_or_else(|| panic!("no {needle} in the fixture"));
    u32::try_from(index + 1).unwrap()
}

fn frame(function: &str, mark: &str) -> SourceFrame {
    SourceFrame {
        function: function.to_owned(),
        file: MAIN_GO.to_owned(),
        line: marked_line(mark),
    }
}

/// Return addresses of the calls in `caller` whose target is a function named by `callee`,
/// found by decoding the caller's code.
fn return_addresses(binary: &GoBinary, caller: &str, callee: impl Fn(&str) -> bool) -> Vec<u64> {
    let f = binary
        .function(caller)
        .unwrap_or_else(|| panic!("no {caller}"));
    let names: HashMap<u64, &str> = binary
        .functions()
        .map(|function| (function.vaddr, function.name.as_str()))
        .collect();
    let is_callee = |target: u64| names.get(&target).is_some_and(|name| callee(name));
    let (code, _) = binary.code(f).unwrap();
    match binary.arch() {
        Arch::Amd64 => Decoder::with_ip(64, code, f.vaddr, DecoderOptions::NONE)
            .into_iter()
            .filter(|instruction| {
                instruction.mnemonic() == Mnemonic::Call
                    && instruction.op0_kind() == OpKind::NearBranch64
                    && is_callee(instruction.near_branch_target())
            })
            .map(|instruction| instruction.next_ip())
            .collect(),
        Arch::Arm64 => code
            .chunks_exact(4)
            .zip((f.vaddr..).step_by(4))
            .filter_map(|(word, pc)| {
                let word = u32::from_le_bytes(word.try_into().unwrap());
                // BL imm26: bits 31–26 are 100101; the offset counts words, signed.
                if word & 0xfc00_0000 != 0x9400_0000 {
                    return None;
                }
                let offset = i64::from(((word << 6) as i32) >> 6) * 4;
                let target = pc.checked_add_signed(offset)?;
                is_callee(target).then_some(pc + 4)
            })
            .collect(),
    }
}

/// The frames at each return address of `caller`'s calls to `callee`, which must exist.
fn frames_after_calls(binary: &GoBinary, caller: &str, callee: &str) -> Vec<Vec<SourceFrame>> {
    let addresses = return_addresses(binary, caller, |name| name.starts_with(callee));
    assert!(!addresses.is_empty(), "no call from {caller} to {callee}");
    addresses
        .into_iter()
        .map(|address| binary.frames_at(address - 1))
        .collect()
}

#[test]
fn return_addresses_resolve_to_the_marked_lines_with_inlined_frames_first() {
    let mut checked = 0;
    for version in VERSIONS {
        for (build, goarch) in Build::ALL
            .into_iter()
            .map(|build| (build, "amd64"))
            .chain([(Build::Plain, "arm64")])
        {
            let binary = open(&self::build(version, build, &[], goarch));
            let context = format!("go{version} {build:?} {goarch}");
            for frames in frames_after_calls(&binary, "main.outer", "main.leaf") {
                let expected = [
                    frame("main.middle", "middle-call"),
                    frame("main.outer", "outer-call"),
                ];
                assert_eq!(frames, expected, "{context}");
                checked += 1;
            }
            for frames in frames_after_calls(&binary, "main.direct", "main.leaf") {
                assert_eq!(frames, [frame("main.direct", "direct-call")], "{context}");
                checked += 1;
            }
            for frames in frames_after_calls(&binary, "main.leaf", "runtime.makemap") {
                assert_eq!(frames, [frame("main.leaf", "leaf-make")], "{context}");
                checked += 1;
            }
        }
    }
    assert!(checked >= VERSIONS.len() * 4 * 3, "{checked} calls checked");
}

/// Every function's entry resolves to the function itself (the last, physical frame). Names
/// come from the pclntab of the stripped build, which the symbolizer must agree with.
#[test]
fn every_function_entry_resolves_to_its_function() {
    for version in VERSIONS {
        let binary = open(&build(version, Build::Stripped, &[], "amd64"));
        let mut resolved = 0;
        for f in binary.functions() {
            let frames = binary.frames_at(f.vaddr);
            let physical = frames.last().map(|frame| frame.function.as_str());
            assert_eq!(
                physical,
                Some(f.name.as_str()),
                "go{version} {:#x}",
                f.vaddr
            );
            resolved += 1;
        }
        assert!(resolved > 1000, "go{version}: only {resolved} functions");
    }
}

#[test]
fn addresses_outside_go_code_have_no_frames() {
    let binary = open(&build("1.24.11", Build::Plain, &[], "amd64"));
    let first = binary.functions().map(|f| f.vaddr).min().unwrap();
    let end = binary.functions().map(|f| f.vaddr + f.size).max().unwrap();
    for vaddr in [0, 1, first - 1, end, end + 4096, u64::MAX] {
        assert_eq!(binary.frames_at(vaddr), [], "{vaddr:#x}");
    }
}

/// Checks [`GoBinary::frames_at`] against `go tool addr2line` of toolchain `tool` at every
/// address: the physical function, and the innermost inlined call's file and line. Returns how
/// many addresses lay inside inlined code, so callers can insist the inline tree was used.
pub(in super::super) fn frames_match_addr2line(
    binary: &GoBinary,
    tool: &str,
    path: &Path,
    addresses: &[u64],
    context: &str,
) -> usize {
    let reference = addr2line(tool, path, addresses);
    assert_eq!(reference.len(), addresses.len(), "{context}");
    let mut inlined = 0;
    for (address, (function, file, line)) in addresses.iter().zip(&reference) {
        let frames = binary.frames_at(*address);
        let context = format!("{context} {address:#x}");
        let (innermost, physical) = (frames.first().unwrap(), frames.last().unwrap());
        assert_eq!(&physical.function, function, "{context}");
        assert_eq!(
            (&innermost.file, innermost.line),
            (file, *line),
            "{context}"
        );
        inlined += usize::from(frames.len() > 1);
    }
    inlined
}

/// What `go tool addr2line` says for each address: (function, file, line). It knows no
/// inlining: the function is the physical one, file and line those of the innermost call.
/// Where the tables have no position (some assembly functions), it prints `:-1`, which
/// [`GoBinary::frames_at`] reports as `?` and 0.
fn addr2line(version: &str, path: &Path, addresses: &[u64]) -> Vec<(String, String, u32)> {
    let input: String = addresses.iter().map(|a| format!("{a:#x}\n")).collect();
    let mut child = Command::new(gofixture::go_tool(version))
        .args(["tool", "addr2line"])
        .arg(path)
        .env("GOTOOLCHAIN", "local")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run go tool addr2line");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        std::io::Write::write_all(&mut stdin, input.as_bytes()).expect("write addresses");
    });
    let output = child.wait_with_output().expect("addr2line output");
    writer.join().unwrap();
    assert!(output.status.success(), "go{version} addr2line failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks_exact(2)
        .map(|pair| match pair[1].rsplit_once(':').unwrap() {
            ("", "-1") => (pair[0].to_owned(), "?".to_owned(), 0),
            (file, line) => (pair[0].to_owned(), file.to_owned(), line.parse().unwrap()),
        })
        .collect()
}

/// Instruction addresses spread over the binary: for every `step`-th function, the start of
/// the instruction halfway through its decoded code (amd64).
fn sample_addresses(binary: &GoBinary, step: usize) -> Vec<u64> {
    binary
        .functions()
        .step_by(step)
        .filter_map(|f: &Function| {
            let (code, _) = binary.code(f).ok()?;
            let starts: Vec<u64> = Decoder::with_ip(64, code, f.vaddr, DecoderOptions::NONE)
                .into_iter()
                .take_while(|instruction| !instruction.is_invalid())
                .map(|instruction| instruction.ip())
                .collect();
            starts.get(starts.len() / 3).copied()
        })
        .collect()
}

#[test]
fn agrees_with_go_tool_addr2line() {
    for version in VERSIONS {
        for build in Build::ALL {
            let path = self::build(version, build, &[], "amd64");
            let binary = open(&path);
            let addresses = sample_addresses(&binary, 4);
            // Go 1.19's addr2line cannot find the pclntab of its own PIE builds (it looks for
            // `.gopclntab` only); 1.21's reads them.
            let tool = match (version, build) {
                ("1.19", Build::Pie) => "1.21.13",
                _ => version,
            };
            let context = format!("go{version} {build:?}");
            let inlined = frames_match_addr2line(&binary, tool, &path, &addresses, &context);
            assert!(
                addresses.len() > 300,
                "go{version}: {} samples",
                addresses.len()
            );
            assert!(
                inlined > 10,
                "go{version} {build:?}: only {inlined} inlined samples"
            );
        }
    }
}

#[test]
fn file_offsets_map_back_to_addresses() {
    for build in Build::ALL {
        let path = self::build("1.24.11", build, &[], "amd64");
        let binary = open(&path);
        for f in binary.functions().step_by(50) {
            let offset = binary.file_offset(f.vaddr).unwrap();
            assert_eq!(
                binary.vaddr_of_file_offset(offset),
                Some(f.vaddr),
                "{build:?}"
            );
        }
        // Data is not code, and nothing is mapped past the end of the file.
        let bytes = std::fs::read(&path).unwrap();
        let file = object::File::parse(bytes.as_slice()).unwrap();
        for name in [".rodata", ".noptrdata"] {
            let (offset, _) = file.section_by_name(name).unwrap().file_range().unwrap();
            assert_eq!(
                binary.vaddr_of_file_offset(offset),
                None,
                "{build:?} {name}"
            );
        }
        let len = u64::try_from(bytes.len()).unwrap();
        for offset in [len, u64::MAX] {
            assert_eq!(binary.vaddr_of_file_offset(offset), None, "{build:?}");
        }
    }
}

/// Random bytes written over the pclntab, the inline trees and the header fields the decoder
/// trusts: results may be anything, but decoding must return.
#[test]
fn corrupted_tables_never_panic() {
    let path = build("1.24.11", Build::Stripped, &[], "amd64");
    let pristine = open(&path);
    let addresses: Vec<u64> = pristine
        .functions()
        .step_by(3)
        .map(|f| f.vaddr + 5)
        .collect();
    let tables = pristine.tables.lines.clone().expect("line tables");
    let table_start =
        usize::try_from(pristine.file_offset(tables.located.vaddr).unwrap_or(0)).unwrap_or(0);
    let mut random = XorShift(0x517c_c1b7_2722_0a95);
    for round in 0..40 {
        let mut binary = open(&path);
        for _ in 0..200 {
            // Most changes land in the pclntab; some anywhere (inline trees live elsewhere).
            let at = if round % 4 == 0 {
                random.below(binary.bytes.len())
            } else {
                table_start + random.below(binary.bytes.len() - table_start)
            };
            binary.bytes[at] = random.bytes(1)[0];
        }
        if let Some(lines) = binary.tables.lines.as_mut() {
            let header = &mut lines.located.header;
            match round % 8 {
                1 => header.nfunc = u64::MAX,
                2 => header.pctab_offset = u64::MAX - 3,
                3 => header.cu_offset = random.below(1 << 30) as u64,
                4 => header.quantum = 0,
                5 => lines.gofunc = Some(u64::MAX),
                6 => lines.located.code_base = u64::MAX,
                _ => {}
            }
        }
        for &address in &addresses {
            let _ = binary.frames_at(address);
        }
    }
}

#[test]
fn pc_value_tables_decode_as_go_encodes_them() {
    assert_eq!(super::zigzag(0), 0);
    assert_eq!(super::zigzag(1), -1);
    assert_eq!(super::zigzag(2), 1);
    assert_eq!(super::zigzag(u32::MAX), i32::MIN);
    assert_eq!(super::read_uvarint(&[0x96, 0x01], 0), Some((150, 2)));
    assert_eq!(super::read_uvarint(&[0x80, 0x80], 0), None);
    assert_eq!(super::read_uvarint(&[0xff; 8], 0), None);
    assert_eq!(super::read_uvarint(&[1], u64::MAX), None);
}
