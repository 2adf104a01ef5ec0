//! Checks the binary reader against what real Go toolchains emit, using the toolchains' own
//! `go tool nm` and `go tool objdump` as the reference, and feeds it broken files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use object::{Object, ObjectSection};

use super::*;
use crate::gofixture::{self, Flavor};

/// The toolchains the tests build the fixture with.
const VERSIONS: [&str; 2] = ["1.24.11", "1.19"];

/// Every map function the fixture makes the linker keep.
pub(super) const MAP_FUNCTIONS: [&str; 12] = [
    "runtime.makemap",
    "runtime.makemap_small",
    "runtime.mapassign",
    "runtime.mapassign_fast32",
    "runtime.mapassign_fast64",
    "runtime.mapassign_fast64ptr",
    "runtime.mapassign_faststr",
    "runtime.mapdelete",
    "runtime.mapdelete_fast32",
    "runtime.mapdelete_fast64",
    "runtime.mapdelete_faststr",
    "runtime.mapclear",
];

/// Held while a fixture is built: parallel tests building the same output would otherwise
/// race, one reading the binary while another is still writing it.
pub(super) fn one_build_at_a_time() -> MutexGuard<'static, ()> {
    static BUILD: Mutex<()> = Mutex::new(());
    BUILD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds `tests/fixtures/inspect`.
pub(super) fn fixture(
    version: &str,
    flavor: Flavor,
    env: &[(&str, &str)],
    goarch: &str,
) -> PathBuf {
    let _one_at_a_time = one_build_at_a_time();
    gofixture::build_for_arch("inspect", version, flavor, env, goarch)
}

fn open(version: &str, goarch: &str) -> (PathBuf, GoBinary) {
    let path = fixture(version, Flavor::Plain, &[], goarch);
    let binary =
        GoBinary::open(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    (path, binary)
}

/// Runs `go <args>` of the given toolchain and returns its standard output.
fn go(version: &str, args: &[&str]) -> String {
    let output = Command::new(gofixture::go_tool(version))
        .args(args)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("run go");
    assert!(
        output.status.success(),
        "go {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("go prints UTF-8")
}

/// `go tool nm -size`: name → (address, size) of every text symbol (`T`, or `t` when local).
pub(super) fn nm(version: &str, path: &Path) -> HashMap<String, (u64, u64)> {
    go(version, &["tool", "nm", "-size", path.to_str().unwrap()])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [address, size, "T" | "t", name @ ..] => Some((
                    name.join(" "),
                    (
                        u64::from_str_radix(address, 16).unwrap(),
                        size.parse().unwrap(),
                    ),
                )),
                _ => None,
            }
        })
        .collect()
}

/// One instruction as `go tool objdump` prints it.
#[derive(Debug)]
struct Listed {
    vaddr: u64,
    bytes: Vec<u8>,
    asm: String,
}

/// `go tool objdump` of the whole binary: function name → its instructions.
fn objdump(version: &str, path: &Path) -> HashMap<String, Vec<Listed>> {
    let mut functions: HashMap<String, Vec<Listed>> = HashMap::new();
    let mut current = String::new();
    for line in go(version, &["tool", "objdump", path.to_str().unwrap()]).lines() {
        if let Some(text) = line.strip_prefix("TEXT ") {
            current = text.split("(SB)").next().unwrap().to_owned();
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [_, address, hex, asm @ ..] = fields.as_slice() {
            let listed = Listed {
                vaddr: u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap(),
                bytes: (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect(),
                asm: asm.join(" "),
            };
            functions.entry(current.clone()).or_default().push(listed);
        }
    }
    functions
}

/// The virtual address a file offset inside `f` stands for.
fn vaddr_of(binary: &GoBinary, f: &Function, offset: u64) -> u64 {
    f.vaddr + offset - binary.file_offset(f.vaddr).unwrap()
}

#[test]
fn symbols_match_go_tool_nm() {
    for (version, goarch) in [
        ("1.24.11", "amd64"),
        ("1.19", "amd64"),
        ("1.24.11", "arm64"),
    ] {
        let (path, binary) = open(version, goarch);
        let reference = nm(version, &path);
        for name in MAP_FUNCTIONS {
            assert!(
                reference.contains_key(name),
                "go{version}/{goarch}: fixture lacks {name}"
            );
        }
        let mut compared = 0;
        for (name, &(vaddr, size)) in &reference {
            let expected = Function {
                name: name.clone(),
                vaddr,
                size,
            };
            assert_eq!(
                binary.function(name),
                Some(&expected),
                "go{version}/{goarch}"
            );
            compared += 1;
        }
        assert_eq!(
            compared,
            binary.functions().count(),
            "go{version}/{goarch}: extra functions"
        );
    }
}

#[test]
fn reads_the_go_version() {
    for version in VERSIONS {
        let expected = go(version, &["env", "GOVERSION"]);
        let expected = expected.trim();
        for goarch in ["amd64", "arm64"] {
            let (_, binary) = open(version, goarch);
            assert_eq!(binary.raw_go_version(), expected);
            // Both toolchains are point releases, so the parsed form prints the same.
            assert_eq!(binary.go_version().to_string(), expected);
            assert_eq!(binary.arch().to_string(), goarch);
        }
    }
    let (_, binary) = open("1.24.11", "amd64");
    let expected = GoVersion {
        major: 1,
        minor: 24,
        patch: 11,
    };
    assert_eq!(binary.go_version(), &expected);
}

#[test]
fn keeps_experiments_in_the_raw_version() {
    let path = fixture(
        "1.24.11",
        Flavor::Plain,
        &[("GOEXPERIMENT", "noswissmap")],
        "amd64",
    );
    let binary = GoBinary::open(&path).unwrap();
    assert_eq!(binary.raw_go_version(), "go1.24.11 X:noswissmap");
    assert_eq!(binary.go_version().to_string(), "go1.24.11");
}

#[test]
fn entry_probe_follows_the_stack_check_on_amd64() {
    for version in VERSIONS {
        let (path, binary) = open(version, "amd64");
        let listing = objdump(version, &path);
        let f = binary.function("runtime.mapassign_fast64").unwrap();
        let probe = vaddr_of(&binary, f, binary.entry_probe_offset(f).unwrap());
        let code = &listing[&f.name];
        let at = code
            .iter()
            .position(|i| i.vaddr == probe)
            .expect("probe on an instruction");
        let (compare, branch) = (&code[at - 2], &code[at - 1]);
        assert!(branch.asm.starts_with("JBE"), "go{version}: {branch:?}");
        assert!(
            matches!(branch.bytes.as_slice(), [0x0f, 0x86, ..] | [0x76, _]),
            "{branch:?}"
        );
        assert!(compare.asm.starts_with("CMPQ") && compare.asm.contains("0x10(R14)"));
        assert_eq!(
            compare.bytes,
            [0x49, 0x3b, 0x66, 0x10],
            "go{version}: CMPQ SP, 0x10(R14)"
        );
        assert_eq!(
            at, 2,
            "go{version}: the check is the first two instructions"
        );
    }
}

/// `runtime.memhash` is written in assembly as `NOSPLIT`: there is no check to skip.
#[test]
fn entry_probe_of_a_nosplit_function_is_its_start() {
    for version in VERSIONS {
        for goarch in ["amd64", "arm64"] {
            let goroot = gofixture::go_tool(version)
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .to_owned();
            let source =
                std::fs::read_to_string(goroot.join(format!("src/runtime/asm_{goarch}.s")))
                    .unwrap();
            let declaration = source
                .lines()
                .find(|line| line.starts_with("TEXT runtime·memhash<ABIInternal>(SB)"))
                .expect("memhash is assembly");
            assert!(declaration.contains("NOSPLIT"), "{declaration}");

            let (_, binary) = open(version, goarch);
            let f = binary.function("runtime.memhash").unwrap();
            let start = binary.file_offset(f.vaddr).unwrap();
            assert_eq!(
                binary.entry_probe_offset(f).unwrap(),
                start,
                "go{version}/{goarch}"
            );
        }
    }
}

#[test]
fn makemap_returns_through_ret_instructions() {
    for version in VERSIONS {
        let (_, binary) = open(version, "amd64");
        let f = binary.function("runtime.makemap").unwrap();
        let returns = binary.return_offsets(f).unwrap();
        assert!(!returns.is_empty(), "go{version}");
        for offset in returns {
            let byte = binary.bytes.get(usize::try_from(offset).unwrap()).copied();
            assert_eq!(byte, Some(0xc3), "go{version} at {offset:#x}");
        }
    }
}

/// The segment arithmetic must agree with the section headers about where code lies.
#[test]
fn file_offsets_agree_with_the_sections() {
    for (version, goarch) in [
        ("1.24.11", "amd64"),
        ("1.19", "amd64"),
        ("1.24.11", "arm64"),
    ] {
        let (path, binary) = open(version, goarch);
        let bytes = std::fs::read(&path).unwrap();
        let file = object::File::parse(bytes.as_slice()).unwrap();
        for name in MAP_FUNCTIONS {
            let f = binary.function(name).unwrap();
            let from_sections = file
                .sections()
                .find_map(|section| section.data_range(f.vaddr, f.size).ok().flatten())
                .unwrap();
            let offset = usize::try_from(binary.file_offset(f.vaddr).unwrap()).unwrap();
            let size = usize::try_from(f.size).unwrap();
            assert_eq!(
                &bytes[offset..offset + size],
                from_sections,
                "go{version}/{goarch} {name}"
            );
        }
    }
}

#[test]
fn arm64_probes_follow_bls_and_sit_on_ret() {
    let (_, binary) = open("1.24.11", "arm64");
    let word = |offset: u64| {
        let start = usize::try_from(offset).unwrap();
        u32::from_le_bytes(binary.bytes[start..start + 4].try_into().unwrap())
    };
    for name in MAP_FUNCTIONS {
        let f = binary.function(name).unwrap();
        let start = binary.file_offset(f.vaddr).unwrap();
        let probe = binary.entry_probe_offset(f).unwrap();
        assert!(probe > start, "{name} has a stack check");
        assert_eq!(word(start), 0xf940_0b90, "{name}: MOVD 16(R28), R16");
        assert_eq!(
            word(probe - 4) & 0xff00_001f,
            0x5400_0009,
            "{name}: b.ls before the probe"
        );
        let returns = binary.return_offsets(f).unwrap();
        assert!(!returns.is_empty(), "{name}");
        for offset in returns {
            assert_eq!(word(offset), 0xd65f_03c0, "{name} at {offset:#x}");
        }
    }
}

/// Every function of every fixture, against the toolchain's own disassembler: the probe is
/// right after the first JBE/BLS that follows a `g.stackguard0` read, and the returns are
/// exactly the listed RETs.
#[test]
fn probes_match_go_tool_objdump_for_every_function() {
    let builds = [
        ("1.24.11", "amd64"),
        ("1.19", "amd64"),
        ("1.24.11", "arm64"),
        ("1.19", "arm64"),
    ];
    for (version, goarch) in builds {
        let (path, binary) = open(version, goarch);
        let listing = objdump(version, &path);
        assert!(
            listing.len() > 1000,
            "go{version}/{goarch}: objdump listed too little"
        );
        for (name, code) in &listing {
            let f = binary
                .function(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            let context = format!("go{version}/{goarch} {name}");
            let probe = vaddr_of(&binary, f, binary.entry_probe_offset(f).unwrap());
            assert_eq!(probe, expected_probe(goarch, f, code), "{context}");
            let returns: Vec<u64> = binary
                .return_offsets(f)
                .unwrap_or_else(|error| panic!("{context}: {error}"))
                .into_iter()
                .map(|offset| vaddr_of(&binary, f, offset))
                .collect();
            let listed: Vec<u64> = code
                .iter()
                .filter(|i| i.asm == "RET" || i.asm.starts_with("RET "))
                .map(|i| i.vaddr)
                .collect();
            assert_eq!(returns, listed, "{context}");
        }
    }
}

/// Where the entry probe belongs according to an objdump listing.
fn expected_probe(goarch: &str, f: &Function, code: &[Listed]) -> u64 {
    let (guard, branch) = match goarch {
        "amd64" => ("0x10(R14)", "JBE "),
        _ => ("MOVD 16(R28), R16", "BLS "),
    };
    let prologue = &code[..code.len().min(8)];
    let Some(load) = prologue.iter().position(|i| i.asm.contains(guard)) else {
        return f.vaddr;
    };
    prologue[load..]
        .iter()
        .position(|i| i.asm.starts_with(branch))
        .and_then(|at| prologue.get(load + at + 1))
        .map_or(f.vaddr, |next| next.vaddr)
}

#[test]
fn reads_position_independent_binaries() {
    let path = fixture("1.24.11", Flavor::Pie, &[], "amd64");
    let binary = GoBinary::open(&path).unwrap();
    assert_eq!(binary.raw_go_version(), "go1.24.11");
    let f = binary.function("runtime.mapassign_fast64").unwrap();
    let start = binary.file_offset(f.vaddr).unwrap();
    assert_eq!(binary.entry_probe_offset(f).unwrap(), start + 10);
}

#[test]
fn refuses_functions_outside_the_code() {
    let (_, binary) = open("1.24.11", "amd64");
    let real = binary.function("runtime.makemap").unwrap();
    let beyond = [
        Function {
            name: "zero".into(),
            vaddr: 0,
            size: 1,
        },
        Function {
            name: "huge".into(),
            size: u64::MAX,
            ..real.clone()
        },
        Function {
            name: "wrap".into(),
            vaddr: u64::MAX,
            size: 2,
        },
    ];
    for f in &beyond {
        assert!(matches!(
            binary.entry_probe_offset(f),
            Err(InspectError::FunctionOutOfRange { .. })
        ));
        assert!(matches!(
            binary.return_offsets(f),
            Err(InspectError::FunctionOutOfRange { .. })
        ));
    }
    assert!(matches!(
        binary.file_offset(0),
        Err(InspectError::AddressNotInCode { vaddr: 0 })
    ));
}

#[test]
fn refuses_missing_files() {
    let error = GoBinary::open(Path::new("/nonexistent/gomaptrace-target")).unwrap_err();
    assert!(matches!(error, InspectError::Io { .. }), "{error}");
}

#[test]
fn refuses_non_go_elf_files() {
    let error = GoBinary::open(Path::new("/bin/true")).unwrap_err();
    assert!(matches!(error, InspectError::NotGo), "{error}");
}

fn real_binary() -> Vec<u8> {
    std::fs::read(fixture("1.24.11", Flavor::Plain, &[], "amd64")).unwrap()
}

#[test]
fn refuses_truncated_files() {
    let bytes = real_binary();
    let spread = (1..200).map(|step| bytes.len() / 200 * step);
    for len in (0..=256).chain(spread).chain([bytes.len() - 1]) {
        let result = GoBinary::parse(bytes[..len].to_vec());
        assert!(result.is_err(), "truncated to {len} bytes");
    }
    assert!(matches!(
        GoBinary::parse(Vec::new()),
        Err(InspectError::NotElf)
    ));
}

#[test]
fn refuses_corrupted_elf_headers() {
    let bytes = real_binary();
    let corrupt = |at: usize, patch: &[u8]| {
        let mut copy = bytes.clone();
        copy[at..at + patch.len()].copy_from_slice(patch);
        GoBinary::parse(copy).unwrap_err()
    };
    let malformed = |error: InspectError| matches!(error, InspectError::MalformedElf { .. });
    let unsupported = |error: InspectError| matches!(error, InspectError::UnsupportedArch { .. });
    assert!(matches!(corrupt(1, b"ELX"), InspectError::NotElf));
    assert!(unsupported(corrupt(4, &[1]))); // ELFCLASS32
    assert!(unsupported(corrupt(5, &[2]))); // big-endian
    assert!(malformed(corrupt(5, &[7]))); // no such byte order
    assert!(unsupported(corrupt(18, &3u16.to_le_bytes()))); // EM_386
    assert!(malformed(corrupt(32, &u64::MAX.to_le_bytes()))); // e_phoff
    assert!(malformed(corrupt(40, &(1u64 << 40).to_le_bytes()))); // e_shoff
    assert!(malformed(corrupt(54, &7u16.to_le_bytes()))); // e_phentsize
    assert!(malformed(corrupt(60, &u16::MAX.to_le_bytes()))); // e_shnum
}

/// The offset of the build info magic in the file.
fn build_info_at(bytes: &[u8]) -> usize {
    (0..bytes.len())
        .step_by(16)
        .find(|&at| bytes[at..].starts_with(b"\xff Go buildinf:"))
        .unwrap()
}

#[test]
fn refuses_corrupted_build_info() {
    let bytes = real_binary();
    let at = build_info_at(&bytes);
    let corrupt = |offset: usize, patch: &[u8]| {
        let mut copy = bytes.clone();
        copy[at + offset..at + offset + patch.len()].copy_from_slice(patch);
        GoBinary::parse(copy).unwrap_err()
    };
    let malformed = |error: InspectError| matches!(error, InspectError::MalformedBuildInfo { .. });
    assert_eq!(&bytes[at + 32..at + 42], b"\x09go1.24.11");
    assert!(malformed(corrupt(32, &[0xff; 10]))); // endless length
    assert!(malformed(corrupt(32, &[0xff, 0x7f]))); // length beyond the data
    assert!(malformed(corrupt(15, &[0]))); // pointer layout, null pointers
    assert!(malformed(corrupt(14, &[5, 0]))); // pointer layout, bad pointer size
    assert!(malformed(corrupt(33, &[0xff]))); // not UTF-8
    assert!(matches!(
        corrupt(33, b"xx"),
        InspectError::UnknownGoVersion { .. }
    ));
    let old = corrupt(33, b"go1.16.15");
    assert!(
        matches!(old, InspectError::UnsupportedGoVersion { .. }),
        "{old}"
    );
    assert_eq!(
        old.to_string(),
        "go1.16.15 uses the stack-based ABI; gomaptrace needs Go 1.17 or newer on amd64: \
         rebuild the program with a newer Go"
    );
    assert!(matches!(corrupt(0, b"\0"), InspectError::MissingBuildInfo));
}

/// A small deterministic generator: the tests must not depend on a random-number crate.
pub(super) struct XorShift(pub(super) u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(super) fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(bound).unwrap()).unwrap()
    }

    pub(super) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

#[test]
fn random_bytes_are_errors() {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..500 {
        let len = random.below(4096);
        assert!(GoBinary::parse(random.bytes(len)).is_err());
        // The same behind a valid 64-bit little-endian ELF ident, to get past the magic.
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.extend(random.bytes(len));
        assert!(GoBinary::parse(elf).is_err());
    }
}

/// Random byte changes anywhere in a real binary: parsing and decoding may succeed or fail,
/// but must not panic.
#[test]
fn mutated_binaries_never_panic() {
    let bytes = real_binary();
    let mut random = XorShift(0x2545_f491_4f6c_dd1d);
    for round in 0..200 {
        let mut copy = bytes.clone();
        for _ in 0..1 + random.below(16) {
            // Half of the changes hit the headers, where they do the most damage.
            let at = if round % 2 == 0 {
                random.below(4096)
            } else {
                random.below(copy.len())
            };
            copy[at] = random.bytes(1)[0];
        }
        if let Ok(binary) = GoBinary::parse(copy) {
            for f in binary.functions() {
                let _ = binary.entry_probe_offset(f);
                let _ = binary.return_offsets(f);
            }
        }
    }
}
