//! The register table (`tracer_common::registers`) and the plan's attach cookies against the
//! Go compiler's own account of where each argument is: the DWARF location lists it writes
//! for every probed runtime function, read at the probe's address, on real amd64 and arm64
//! builds of every installed toolchain (arm64 ones are cross-built: there is no arm64
//! machine here, so this is where an arm64 register mistake is caught).

use std::collections::BTreeSet;

use tracer_common::registers::ReturnAddress;
use tracer_common::{arg, cookie, key};

use super::*;
use crate::dwarf_oracle::{
    each_entry, string_attr, with_dwarf, Dwarf, Entry, Unit, MAP_TYPE_STRUCTS,
};
use crate::gofixture::{self, GO_VERSIONS};
use crate::inspect::GoBinary;
use crate::plan::{self, ProbeKind};

/// An input parameter of a function as DWARF describes it at one address.
#[derive(Debug)]
struct Parameter {
    name: String,
    type_name: String,
    /// The DWARF numbers of the registers holding it (one per piece), or `None` when it is not
    /// wholly in registers there.
    registers: Option<Vec<u16>>,
}

/// What DWARF says about a function's parameters at `pc`: inputs in declaration order, and
/// the type of the first result.
struct Signature {
    inputs: Vec<Parameter>,
    first_result_type: Option<String>,
}

impl Signature {
    /// The parameter that the ABI's integer register `position` belongs to, and whether that
    /// register is the parameter's first: Go assigns registers to the inputs in order, one
    /// per piece, and the pieces DWARF lists say how many each input took.
    fn register_owner(&self, position: u8) -> Option<(&Parameter, bool)> {
        let mut next = 0usize;
        for parameter in &self.inputs {
            let taken = parameter.registers.as_ref()?.len();
            if usize::from(position) < next + taken {
                return Some((parameter, usize::from(position) == next));
            }
            next += taken;
        }
        None
    }

    /// Every register of every input, in ABI order, as DWARF numbers; `None` when an input is
    /// not in registers at this address.
    fn register_sequence(&self) -> Option<Vec<u16>> {
        let mut sequence = Vec::new();
        for parameter in &self.inputs {
            sequence.extend(parameter.registers.as_ref()?);
        }
        Some(sequence)
    }
}

/// Reads `function`'s signature from DWARF, locations taken at `pc` (an address as linked).
fn signature(dwarf: &Dwarf<'_>, types: &TypeNames, function: &str, pc: u64) -> Option<Signature> {
    let mut units = dwarf.units();
    while let Some(header) = units.next().unwrap() {
        let unit = dwarf.unit(header).unwrap();
        let mut entries = unit.entries();
        let mut inside: Option<isize> = None;
        let mut found: Option<Signature> = None;
        while let Some(entry) = entries.next_dfs().unwrap() {
            let depth = entry.depth();
            if let Some(subprogram_depth) = inside {
                if depth <= subprogram_depth {
                    return found;
                }
                if depth != subprogram_depth + 1 || entry.tag() != gimli::DW_TAG_formal_parameter {
                    continue;
                }
                let signature = found.as_mut().expect("set with `inside`");
                let type_name = type_name(types, &unit, entry);
                let output = matches!(
                    entry.attr_value(gimli::DW_AT_variable_parameter),
                    Some(gimli::AttributeValue::Flag(true))
                );
                if output {
                    signature.first_result_type.get_or_insert(type_name);
                } else {
                    signature.inputs.push(Parameter {
                        name: string_attr(dwarf, &unit, entry, gimli::DW_AT_name),
                        type_name,
                        registers: registers_at(dwarf, &unit, entry, pc),
                    });
                }
            } else if entry.tag() == gimli::DW_TAG_subprogram
                && string_attr(dwarf, &unit, entry, gimli::DW_AT_name) == function
            {
                inside = Some(depth);
                found = Some(Signature {
                    inputs: Vec::new(),
                    first_result_type: None,
                });
            }
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The name of the type an entry's `DW_AT_type` refers to. Go refers to types in other
/// units (`DW_FORM_ref_addr`), so names are looked up by their offset in `.debug_info`.
fn type_name(types: &TypeNames, unit: &Unit<'_>, entry: &Entry<'_>) -> String {
    let offset = match entry.attr_value(gimli::DW_AT_type) {
        Some(gimli::AttributeValue::UnitRef(offset)) => offset.to_debug_info_offset(&unit.header),
        Some(gimli::AttributeValue::DebugInfoRef(offset)) => Some(offset),
        _ => None,
    };
    offset
        .and_then(|offset| types.get(&offset.0))
        .cloned()
        .unwrap_or_default()
}

/// Type names by their `.debug_info` offset.
type TypeNames = std::collections::HashMap<usize, String>;

/// Every named type entry of the binary.
fn type_names(dwarf: &Dwarf<'_>) -> TypeNames {
    let mut names = TypeNames::new();
    each_entry(dwarf, |unit, entry| {
        let is_type = matches!(
            entry.tag(),
            gimli::DW_TAG_pointer_type
                | gimli::DW_TAG_base_type
                | gimli::DW_TAG_typedef
                | gimli::DW_TAG_structure_type
                | gimli::DW_TAG_unspecified_type
        );
        if let (true, Some(offset)) = (is_type, entry.offset().to_debug_info_offset(&unit.header)) {
            names.insert(offset.0, string_attr(dwarf, unit, entry, gimli::DW_AT_name));
        }
    });
    names
}

/// The registers holding the parameter at `pc`, from its location expression or the entry of
/// its location list that covers `pc`.
fn registers_at(
    dwarf: &Dwarf<'_>,
    unit: &Unit<'_>,
    entry: &Entry<'_>,
    pc: u64,
) -> Option<Vec<u16>> {
    let location = entry.attr_value(gimli::DW_AT_location)?;
    let expression = match location {
        gimli::AttributeValue::Exprloc(expression) => expression,
        other => {
            let mut list = dwarf.attr_locations(unit, other).unwrap()?;
            loop {
                let item = list.next().unwrap()?;
                if item.range.begin <= pc && pc < item.range.end {
                    break item.data;
                }
            }
        }
    };
    let mut operations = expression.operations(unit.encoding());
    let mut registers = Vec::new();
    while let Some(operation) = operations.next().unwrap() {
        match operation {
            gimli::Operation::Register { register } => registers.push(register.0),
            gimli::Operation::Piece { .. } => {}
            _ => return None,
        }
    }
    (!registers.is_empty()).then_some(registers)
}

/// The map header types of both implementations, as DWARF names pointers to them.
const MAP_POINTERS: [&str; 2] = ["*runtime.hmap", "*internal/runtime/maps.Map"];

/// The DWARF type a key access ([`tracer_common::key`]) expects in the third register.
fn key_types(access: u8) -> &'static [&'static str] {
    match access {
        key::VALUE32 => &["uint32"],
        key::VALUE64 => &["uint64", "unsafe.Pointer"],
        key::STRING => &["string"],
        key::POINTER => &["unsafe.Pointer"],
        _ => &[],
    }
}

/// Whether the arm64 code just before a `RET` (the end of `code`) reloads the link register
/// `link` from the frame, with no call in between: then, at the `RET`, the register holds the
/// address the function returns to, which is what the creation probes read as the caller.
/// Go's epilogues are `MOVD.P n(RSP), R30` (`LDR` post-index) or `LDP -8(RSP), (R29, R30)`
/// followed by `ADD $n, RSP, RSP`.
fn restores_before_return(code: &[u8], link: u16) -> bool {
    const WINDOW: usize = 4;
    let link = u32::from(link);
    let words: Vec<u32> = code
        .rchunks_exact(4)
        .take(WINDOW)
        .map(|bytes| u32::from_le_bytes(bytes.try_into().unwrap()))
        .collect();
    for word in words {
        let is_call = word & 0xfc00_0000 == 0x9400_0000 || word & 0xffff_fc1f == 0xd63f_0000;
        if is_call {
            return false;
        }
        let ldr_post_index = word & 0xffe0_0c00 == 0xf840_0400 && word & 0x1f == link;
        let ldp =
            matches!(word & 0xffc0_0000, 0xa940_0000 | 0xa8c0_0000) && (word >> 10) & 0x1f == link;
        if ldr_post_index || ldp {
            return true;
        }
    }
    false
}

/// Checks one binary; returns how many (site, role) pairs were checked, and the binary's
/// architecture.
fn check_binary(binary_path: &std::path::Path, context: &str) -> (usize, Arch) {
    let binary = GoBinary::open(binary_path).unwrap();
    let table = registers(binary.arch());
    let plan = plan::plan(&binary).unwrap_or_else(|error| panic!("{context}: {error}"));
    let file = std::fs::read(binary_path).unwrap();
    let mut checked = 0;
    with_dwarf(binary_path, |dwarf| {
        let types = type_names(dwarf);
        for site in &plan.sites {
            let function = binary.function(&site.function).unwrap();
            let pc =
                function.vaddr + site.file_offset - binary.file_offset(function.vaddr).unwrap();
            let at = format!("{context} {} at {pc:#x}", site.function);
            let signature = signature(dwarf, &types, &site.function, pc)
                .unwrap_or_else(|| panic!("{at}: no DWARF subprogram"));
            match site.kind {
                // Reads no register: it only counts the pause and reads listed headers.
                ProbeKind::Collected => {}
                ProbeKind::Create | ProbeKind::CloneReturn => {
                    // RET sites read the first result register; seed-call sites read a slot.
                    let result = signature.first_result_type.as_deref().unwrap_or_default();
                    assert!(MAP_POINTERS.contains(&result), "{at}: returns {result}");
                    checked += 1;
                    let at_ret = site.cookie & cookie::HEADER_IN_SLOT == 0;
                    if let (true, ReturnAddress::InRegister(link)) = (at_ret, table.return_address)
                    {
                        let code = &file[..usize::try_from(site.file_offset).unwrap()];
                        assert!(restores_before_return(code, link.dwarf), "{at}");
                        checked += 1;
                    }
                }
                ProbeKind::Assign
                | ProbeKind::Delete
                | ProbeKind::Clear
                | ProbeKind::Grow
                | ProbeKind::HashGrow
                | ProbeKind::Prune => {
                    let sequence = signature.register_sequence().unwrap_or_else(|| {
                        panic!("{at}: inputs not in registers: {:?}", signature.inputs)
                    });
                    for (position, (register, dwarf_number)) in
                        table.arguments.iter().zip(&sequence).enumerate()
                    {
                        assert_eq!(
                            register.dwarf, *dwarf_number,
                            "{at}: ABI register {position} is DWARF {dwarf_number}, the table says {}",
                            register.name
                        );
                    }
                    let role = |position: u8, wanted: &[&str], what: &str| {
                        let (parameter, first) = signature
                            .register_owner(position)
                            .unwrap_or_else(|| panic!("{at}: no {what} in register {position}"));
                        assert!(
                            first && wanted.contains(&parameter.type_name.as_str()),
                            "{at}: register {position} ({what}) holds {} {}",
                            parameter.name,
                            parameter.type_name
                        );
                    };
                    role(cookie::map(site.cookie), &MAP_POINTERS, "map");
                    checked += 1;
                    if cookie::map_type(site.cookie) != arg::NONE {
                        let pointers = MAP_TYPE_STRUCTS.map(|name| format!("*{name}"));
                        let pointers = pointers.each_ref().map(String::as_str);
                        role(cookie::map_type(site.cookie), &pointers, "map type");
                        checked += 1;
                    }
                    let access = cookie::key(site.cookie);
                    if access != key::NONE {
                        role(arg::THIRD, key_types(access), "key");
                        checked += 1;
                    }
                }
            }
        }
    });
    (checked, binary.arch())
}

/// Every probe site of the ground-truth fixture, on every toolchain, amd64 and arm64, and
/// the classic-map builds of the releases that default to swiss maps.
#[test]
fn registers_and_cookies_match_the_compilers_dwarf() {
    const NOSWISSMAP: &[(&str, &str)] = &[("GOEXPERIMENT", "noswissmap")];
    let every_release = GO_VERSIONS
        .iter()
        .flat_map(|version| [(*version, "amd64", &[][..]), (*version, "arm64", &[][..])]);
    let classic_maps = ["1.24.11", "1.25.5"]
        .iter()
        .map(|version| (*version, "arm64", NOSWISSMAP));
    let mut arches = BTreeSet::new();
    for (version, goarch, env) in every_release.chain(classic_maps) {
        let path = gofixture::build_with(
            "maps",
            version,
            "dwarf",
            &["-ldflags=-compressdwarf=false"],
            env,
            goarch,
        );
        let context = format!("go{version}/{goarch} {env:?}");
        let (checked, arch) = check_binary(&path, &context);
        // The fixture reaches every assign and delete variant, a clear and a growth.
        assert!(checked >= 20, "{context}: only {checked} checks");
        arches.insert(arch.to_string());
    }
    assert_eq!(arches.len(), 2);
}

#[test]
fn only_the_build_architecture_is_traceable() {
    assert!(check_traceable(HOST).is_ok());
    let other = match HOST {
        Arch::Amd64 => Arch::Arm64,
        Arch::Arm64 => Arch::Amd64,
    };
    let error = check_traceable(other).unwrap_err().to_string();
    assert!(error.contains(&format!("linux/{other} program")), "{error}");
}
