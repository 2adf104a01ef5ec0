//! Seeds for the fuzz targets (`tracer::fuzzing`), made from what real Go toolchains and real
//! traces produce: sections of fixture binaries built by the project's toolchains (cut to a
//! few KiB, plus one whole pclntab so the fuzzer starts from binaries that parse), type
//! descriptors and heap metadata read from a live fixture, and a recording made by
//! gomaptrace. Every seed must go through its reader without a panic.
//!
//! With `GOMAPTRACE_WRITE_FUZZ_SEEDS=1` the seeds are also written to `fuzz/corpus/<target>/`
//! (the committed corpus, which `tracer::fuzzing`'s unit test replays in every default run).
//!
//! This test loads BPF programs (for the recording): it needs root and fails, never skips,
//! without it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::{build, report_path, Fixture, Flavor, Tracer};
use object::{Object as _, ObjectSection as _};
use tracer::fuzzing::{encode_sections, FuzzSection, Recorded, Target, SECTION_NAMES};
use tracer::gofixture::build_for_arch;
use tracer::inspect::{map_type_info, Arch, GoBinary};
use tracer::memory::heap::Heap;
use tracer::memory::inventory;
use tracer::memory::roots::{MapRoot, Roots};
use tracer::plan::MapImplementation;

/// What a section is cut to in the small seeds.
const CUT: usize = 4096;
/// Mutated variants kept of each seed.
const MUTATIONS: usize = 1;

/// Collects seeds per target, named so that a rerun overwrites instead of adding.
#[derive(Default)]
struct Seeds(Vec<(Target, String, Vec<u8>)>);

impl Seeds {
    fn add(&mut self, target: Target, name: impl Into<String>, data: Vec<u8>) {
        self.0.push((target, name.into(), data));
    }

    /// A few deterministic mutations of `data` (bytes flipped at spread-out places), named
    /// after it: what a fuzzer would try first, kept so the regression test tries it too.
    fn add_mutated(&mut self, target: Target, name: &str, data: &[u8]) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ data.len() as u64;
        for variant in 0..MUTATIONS {
            let mut mutated = data.to_vec();
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if !mutated.is_empty() {
                    let at = (state % mutated.len() as u64) as usize;
                    mutated[at] ^= (state >> 32) as u8 | 1;
                }
            }
            self.add(target, format!("{name}-mutated{variant}"), mutated);
        }
    }
}

fn name_index(name: &str) -> u8 {
    SECTION_NAMES
        .iter()
        .position(|known| *known == name)
        .expect("a known section name") as u8
}

/// The sections of `bytes` that [`SECTION_NAMES`] knows, each cut to `cut(name)` bytes.
fn sections_of(bytes: &[u8], cut: impl Fn(&str) -> usize) -> Vec<FuzzSection> {
    let file = object::File::parse(bytes).expect("a fixture is ELF");
    file.sections()
        .filter_map(|section| {
            let name = section.name().ok()?;
            SECTION_NAMES.contains(&name).then_some(())?;
            let data = section.data().ok()?;
            let compressed = matches!(
                section.flags(),
                object::SectionFlags::Elf { sh_flags } if sh_flags & 0x800 != 0
            );
            Some(FuzzSection {
                name: name_index(name),
                compressed,
                vaddr: section.address(),
                data: data[..data.len().min(cut(name))].to_vec(),
            })
        })
        .collect()
}

/// Seeds from one binary's file: sections, the ELF's first bytes, type descriptors.
/// `whole`: also a seed with the whole pclntab and build info (that parses as a Go binary)
/// and one with the whole DWARF (whose compressed sections inflate), each a few hundred KiB.
fn binary_seeds(seeds: &mut Seeds, path: &Path, tag: &str, arch: Arch, whole: bool) {
    let bytes = std::fs::read(path).unwrap();
    let small = sections_of(
        &bytes,
        |name| if name == ".go.buildinfo" { 512 } else { CUT },
    );
    let small_input = encode_sections(arch, false, &small);
    seeds.add_mutated(Target::GoSections, &format!("{tag}-small"), &small_input);
    seeds.add(Target::GoSections, format!("{tag}-small"), small_input);
    if whole {
        let parseable: Vec<FuzzSection> = sections_of(&bytes, |name| match name {
            ".gopclntab" | ".go.buildinfo" => usize::MAX,
            ".text" => CUT,
            _ => 0,
        })
        .into_iter()
        .filter(|section| !section.data.is_empty())
        .collect();
        let (parsed, _) =
            tracer::fuzzing::decode_sections(&encode_sections(arch, false, &parseable));
        let parsed = GoBinary::parse(parsed);
        assert!(
            parsed.is_ok(),
            "{tag}: the pclntab seed does not parse: {parsed:?}"
        );
        let input = encode_sections(arch, false, &parseable);
        seeds.add(Target::GoSections, format!("{tag}-pclntab"), input);
    }
    let elf = tracer::fuzzing::assemble_elf(arch, false, &small);
    seeds.add_mutated(Target::Elf, &format!("{tag}-assembled"), &elf);
    seeds.add(Target::Elf, format!("{tag}-assembled"), elf);
    seeds.add(Target::Elf, format!("{tag}-head"), bytes[..CUT].to_vec());

    let dwarf: Vec<FuzzSection> =
        sections_of(&bytes, |name| match (name.contains("debug_"), whole) {
            (false, _) => 0,
            (true, true) => usize::MAX,
            (true, false) => CUT,
        })
        .into_iter()
        .filter(|section| !section.data.is_empty())
        .collect();
    if !dwarf.is_empty() {
        seeds.add(
            Target::DwarfRoots,
            format!("{tag}-dwarf"),
            encode_sections(arch, false, &dwarf),
        );
    }

    let binary = GoBinary::parse(bytes.clone()).expect("a fixture parses");
    let Ok(roots) = Roots::from_elf(&bytes) else {
        return;
    };
    let swiss = MapImplementation::of(&binary) == MapImplementation::Swiss;
    let start = binary.types_start().expect("a fixture has type data");
    let memory = binary.file_memory();
    for (index, root) in roots
        .paths()
        .iter()
        .filter(|root| root.runtime_type.is_some())
        .take(4)
        .enumerate()
    {
        let maptype = start + root.runtime_type.unwrap();
        let recorded = Recorded::new(&memory);
        let info = map_type_info(&recorded, &binary, 0, maptype);
        assert!(info.is_ok(), "{tag}: {}: {info:?}", root.path);
        let mut input = vec![u8::from(swiss) | 2];
        for word in [start, 0, 0, maptype] {
            input.extend_from_slice(&word.to_le_bytes());
        }
        input.extend_from_slice(&recorded.regions().encode());
        seeds.add_mutated(Target::MapTypes, &format!("{tag}-{index}"), &input);
        seeds.add(Target::MapTypes, format!("{tag}-{index}"), input);
    }
}

/// Seeds from a live `idle` fixture: what the inventory and the heap reader read from it,
/// and a recording of a trace of it.
fn live_seeds(seeds: &mut Seeds, version: &str, minor: u8) {
    let path = build("idle", version, Flavor::Plain, &[]);
    let bytes = std::fs::read(&path).unwrap();
    let binary = GoBinary::parse(bytes.clone()).unwrap();
    let implementation = MapImplementation::of(&binary);
    let roots = Roots::from_elf(&bytes).unwrap();
    let test = format!("fuzz_seeds_{minor}");
    let json = report_path(&test);
    let recording = json.with_extension("gmt");
    let mut fixture = Fixture::start(&path);
    let pid = fixture.pid();
    let target = tracer::target::Target::open(pid).unwrap();

    let kept: Vec<MapRoot> = roots
        .paths()
        .iter()
        .filter(|root| root.path.starts_with("main.") && root.offsets.len() < 8)
        .take(7)
        .cloned()
        .collect();
    let recorded = Recorded::new(&target);
    let sightings = inventory::find(
        &Roots::from_paths(kept.clone()),
        &recorded,
        0,
        implementation,
        binary.types_start(),
    );
    assert!(!sightings.is_empty(), "go{version}: no map found");
    let mut input = vec![u8::from(implementation == MapImplementation::Swiss)];
    input.extend_from_slice(&0u64.to_le_bytes());
    input.extend_from_slice(&binary.types_start().unwrap_or(0).to_le_bytes());
    input.push(kept.len() as u8);
    for root in &kept {
        input.extend_from_slice(&root.address.to_le_bytes());
        input.push(root.offsets.len() as u8);
        for offset in &root.offsets {
            input.extend_from_slice(&offset.to_le_bytes());
        }
        input.extend_from_slice(&root.runtime_type.unwrap_or(0).to_le_bytes());
    }
    input.extend_from_slice(&recorded.regions().encode());
    seeds.add_mutated(Target::Inventory, &format!("go1.{minor}"), &input);
    seeds.add(Target::Inventory, format!("go1.{minor}"), input);

    let mut heap = Heap::find(&binary, 0).unwrap();
    let addrs: Vec<u64> = sightings.iter().map(|sighting| sighting.addr).collect();
    let recorded = Recorded::new(&target);
    let _ = heap.object_states(&recorded, &addrs);
    let releases = [19u8, 21, 22, 23, 24, 25, 26, 27];
    let selector = releases.iter().position(|&r| r == minor).unwrap() as u8
        | if minor >= 26 { 0x40 } else { 0 };
    let mut input = vec![selector];
    input.extend_from_slice(&binary.data_symbol("runtime.mheap_").unwrap().to_le_bytes());
    input.push(addrs.len().min(15) as u8);
    for addr in addrs.iter().take(15) {
        input.extend_from_slice(&addr.to_le_bytes());
    }
    input.extend_from_slice(&recorded.regions().encode());
    seeds.add_mutated(Target::Heap, &format!("go1.{minor}"), &input);
    seeds.add(Target::Heap, format!("go1.{minor}"), input);

    let tracer = Tracer::attach(&[
        "--pid",
        &pid.to_string(),
        "--json",
        json.to_str().unwrap(),
        "--record",
        recording.to_str().unwrap(),
    ]);
    fixture.run_operations();
    std::thread::sleep(Duration::from_millis(300));
    let (status, stderr) = tracer.interrupt();
    assert!(status.success(), "gomaptrace failed: {stderr:#?}");
    assert!(fixture.finish().success());
    let recorded = std::fs::read(&recording).unwrap();
    seeds.add(
        Target::Recording,
        format!("go1.{minor}-head"),
        recorded[..recorded.len().min(CUT)].to_vec(),
    );
    seeds.add(Target::Recording, format!("go1.{minor}"), recorded);
}

#[test]
fn seeds_from_real_binaries_and_traces_pass_every_reader() {
    let mut seeds = Seeds::default();
    for (version, tag, whole) in [
        ("1.19", "go1.19", false),
        ("1.22.10", "go1.22", true),
        ("1.26.6", "go1.26", false),
    ] {
        let path = build("idle", version, Flavor::Plain, &[]);
        binary_seeds(
            &mut seeds,
            &path,
            &format!("{tag}-amd64"),
            Arch::Amd64,
            whole,
        );
    }
    let stripped = build("idle", "1.24.11", Flavor::Stripped, &[]);
    binary_seeds(
        &mut seeds,
        &stripped,
        "go1.24-amd64-stripped",
        Arch::Amd64,
        true,
    );
    let arm64 = build_for_arch("idle", "1.27.3", Flavor::Plain, &[], "arm64");
    binary_seeds(&mut seeds, &arm64, "go1.27-arm64", Arch::Arm64, false);
    live_seeds(&mut seeds, "1.22.10", 22);
    live_seeds(&mut seeds, "1.26.6", 26);

    for target in Target::ALL {
        assert!(
            seeds.0.iter().any(|(seeded, _, _)| *seeded == target),
            "no seed for {}",
            target.name()
        );
    }
    for (target, name, data) in &seeds.0 {
        let run = std::panic::catch_unwind(|| target.run(data));
        assert!(run.is_ok(), "{} seed {name} panics", target.name());
    }
    if std::env::var_os("GOMAPTRACE_WRITE_FUZZ_SEEDS").is_some() {
        let corpus = tracer::gofixture::workspace_root().join("fuzz/corpus");
        for (target, name, data) in &seeds.0 {
            let dir: PathBuf = corpus.join(target.name());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}
