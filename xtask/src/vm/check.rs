//! Reads what a guest printed on its serial console (see `init.sh`) and checks each traced
//! fixture by the host tests' rule (`tests/tests/trace.rs`): the fixture ran and exited 3,
//! gomaptrace exited cleanly, nothing was lost, and for every map the fixture reported, the
//! report's counts equal the fixture's own tally with `unexplained == 0`.
//!
//! QEMU exits 0 whatever happens inside, so only these lines say whether a guest passed.

use std::io::Read as _;

use anyhow::{bail, Context as _};
use serde_json::Value;

/// One fixture's run inside a guest, as its console lines tell it.
#[derive(Debug, Default)]
pub struct Case {
    /// The fixture's name in the guest (`maps-go<version>`).
    pub name: String,
    /// Lines the fixture printed.
    pub fixture: Vec<String>,
    /// Lines gomaptrace printed on stderr.
    pub tracer: Vec<String>,
    /// gomaptrace's exit status, when it was started.
    pub tracer_exit: Option<i32>,
    /// The fixture's exit status.
    pub fixture_exit: Option<i32>,
    /// The gzipped report, in base64.
    pub report: String,
    /// What the guest itself found wrong.
    pub problems: Vec<String>,
    /// Seconds from the fixture's start to gomaptrace's `attached`, and to the case's end.
    pub attach_seconds: Option<u64>,
    /// Seconds the whole case took.
    pub seconds: Option<u64>,
}

/// Everything one boot printed that the host reads.
#[derive(Debug, Default)]
pub struct Console {
    /// `uname -r` inside the guest.
    pub kernel: Option<String>,
    /// Each fixture's run, in order.
    pub cases: Vec<Case>,
    /// Whether init reached its last line.
    pub finished: bool,
}

/// Parses a guest's console output; lines that are not init's (kernel messages) are skipped.
pub fn parse(output: &str) -> Console {
    let mut console = Console::default();
    for line in output.lines().map(|line| line.trim_end_matches('\r')) {
        // The firmware's terminal resets can precede init's first line on the same line.
        let init_line = line.find("vm: ").map(|at| &line[at + 4..]);
        if let Some(rest) = init_line {
            let (word, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let case = console.cases.last_mut();
            match (word, case) {
                ("kernel", _) => {
                    console.kernel = rest.split_whitespace().next().map(str::to_string);
                }
                ("case", _) => console.cases.push(Case {
                    name: rest.to_string(),
                    ..Case::default()
                }),
                ("finished", _) => console.finished = true,
                ("problem", Some(case)) => case.problems.push(rest.to_string()),
                ("attached", Some(case)) => case.attach_seconds = seconds_in(rest),
                ("end", Some(case)) => case.seconds = seconds_in(rest),
                ("tracer-exit", Some(case)) => case.tracer_exit = last_number(rest),
                ("fixture-exit", Some(case)) => case.fixture_exit = last_number(rest),
                _ => {}
            }
        } else if let Some(case) = console.cases.last_mut() {
            if let Some(rest) = line.strip_prefix("fixture: ") {
                case.fixture.push(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("tracer: ") {
                case.tracer.push(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("b64: ") {
                case.report.push_str(rest.trim());
            }
        }
    }
    console
}

fn last_number(text: &str) -> Option<i32> {
    text.split_whitespace().last()?.parse().ok()
}

/// The number in `… after N s`.
fn seconds_in(text: &str) -> Option<u64> {
    let (_, after) = text.rsplit_once(" after ")?;
    after.split_whitespace().next()?.parse().ok()
}

/// What one passing case found, for the summary.
#[derive(Debug)]
pub struct Passed {
    /// Maps compared.
    pub maps: usize,
    /// The Go release the report names.
    pub go_version: String,
}

/// Checks a case that traced a fixture with Go `version`.
pub fn check_traced(case: &Case, version: &str) -> anyhow::Result<Passed> {
    let Traced {
        report,
        go_version,
        truths,
    } = traced_report(case, version)?;
    for truth in &truths {
        check_map(&report, truth)?;
    }
    Ok(Passed {
        maps: truths.len(),
        go_version,
    })
}

/// Checks a case that traced a fixture with Go `version` in sampled mode, on a kernel that
/// takes grouped (uprobe-multi) links or not: labelled sampled, windows opened again after
/// a detach, the windows' probes linked as the kernel allows, and every fixture map the
/// windows saw counted `live == len` by the last poll (a map made and never touched again
/// between two windows is never seen, by design).
pub fn check_sampled(case: &Case, version: &str, grouped: bool) -> anyhow::Result<Passed> {
    let Traced {
        report,
        go_version,
        truths,
    } = traced_report(case, version)?;
    let sampling = &report["sampling"];
    if report["mode"] != "sampled" || sampling["windows"].as_u64() < Some(2) {
        bail!("not sampled, or fewer than two windows: {sampling}");
    }
    let links = sampling["probe_links"].as_str().unwrap_or_default();
    let expected = if grouped { "grouped" } else { "per site" };
    if !links.starts_with(expected) {
        bail!("the windows' probes are linked {links:?}, not {expected} as this kernel allows");
    }
    let mut seen = 0;
    for truth in &truths {
        let (name, addr, len) = (
            field(truth, "name")?,
            field(truth, "addr")?,
            number(truth, "len")?,
        );
        let Some(map) = live_map(&report, addr) else {
            continue;
        };
        seen += 1;
        if map["live"] != len || map["unexplained"] != 0 {
            bail!("{name}: live should be {len} with nothing unexplained: {map}");
        }
    }
    if seen == 0 {
        bail!("no fixture map was seen in a window: {}", report["maps"]);
    }
    Ok(Passed {
        maps: seen,
        go_version,
    })
}

/// Whether a kernel release (`6.1.0-57-amd64`) has uprobe-multi links (6.6 and later).
pub fn takes_grouped_links(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// One fixture map's line: its `key=value` pairs.
type Truth = Vec<(String, String)>;

/// A traced case's report and what it is checked against.
struct Traced {
    report: Value,
    /// The Go release the report names.
    go_version: String,
    /// The fixture's own tally of its maps.
    truths: Vec<Truth>,
}

/// A traced case's report, once the run itself is known good (both exits, nothing lost, the
/// right Go release), with the fixture's own tally of its maps.
fn traced_report(case: &Case, version: &str) -> anyhow::Result<Traced> {
    let context = || format!("{}: gomaptrace said {:#?}", case.name, case.tracer);
    if !case.problems.is_empty() {
        bail!("{}; {}", case.problems.join("; "), context());
    }
    if case.tracer_exit != Some(0) {
        bail!(
            "gomaptrace exited with {:?}; {}",
            case.tracer_exit,
            context()
        );
    }
    if case.fixture_exit != Some(3) {
        bail!("the fixture exited with {:?}", case.fixture_exit);
    }
    let report = decode_report(&case.report).with_context(context)?;
    for field in ["lost", "malformed"] {
        if report["events"][field] != 0 {
            bail!("{field} events: {}", report["events"]);
        }
    }
    let go_version = report["target"]["go_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !go_version.starts_with(&format!("go{version}")) {
        bail!("the report names {go_version:?}, not go{version}");
    }
    let truths = truths(&case.fixture);
    if truths.is_empty() {
        bail!("the fixture reported no maps: {:#?}", case.fixture);
    }
    Ok(Traced {
        report,
        go_version,
        truths,
    })
}

/// Checks a case on a kernel older than gomaptrace's minimum: it must have refused with its
/// one-line error, before attaching anything.
pub fn check_refused(case: &Case) -> anyhow::Result<String> {
    let refusal = case
        .tracer
        .iter()
        .find(|line| line.contains("is too old for gomaptrace"))
        .with_context(|| format!("no refusal from gomaptrace: {:#?}", case.tracer))?;
    if case.tracer_exit == Some(0) || case.tracer_exit.is_none() {
        bail!("gomaptrace exited with {:?}", case.tracer_exit);
    }
    if !case.report.is_empty() {
        bail!("gomaptrace wrote a report on a kernel it refused");
    }
    Ok(refusal.clone())
}

/// The fixture's `map key=value…` lines, each as its pairs.
fn truths(lines: &[String]) -> Vec<Truth> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("map "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect()
        })
        .collect()
}

/// The value of `key` on a fixture's map line.
fn field<'t>(truth: &'t [(String, String)], key: &str) -> anyhow::Result<&'t str> {
    truth
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
        .with_context(|| format!("fixture line without {key}: {truth:?}"))
}

/// The number `key` on a fixture's map line.
fn number(truth: &[(String, String)], key: &str) -> anyhow::Result<u64> {
    field(truth, key)?
        .parse()
        .with_context(|| format!("{key} is no number: {truth:?}"))
}

/// The report's live map at `addr`.
fn live_map<'r>(report: &'r Value, addr: &str) -> Option<&'r Value> {
    report["maps"]
        .as_array()?
        .iter()
        .find(|map| map["addr"] == addr && map["released"] == false)
}

fn check_map(report: &Value, truth: &[(String, String)]) -> anyhow::Result<()> {
    let field = |key: &str| field(truth, key);
    let number = |key: &str| number(truth, key);
    let (name, addr) = (field("name")?, field("addr")?);
    let map = live_map(report, addr)
        .with_context(|| format!("no live map at {addr} ({name}) in the report"))?;
    let mut expected: Vec<(&str, Value)> = vec![
        ("live", number("len")?.into()),
        ("unexplained", 0.into()),
        ("unsettled", 0.into()),
        ("inserts", number("inserts")?.into()),
    ];
    if field("created")? == "after" {
        expected.push(("created", true.into()));
        expected.push(("cloned", (field("cloned")? == "true").into()));
        for counted in ["overwrites", "deletes", "clears"] {
            expected.push((counted, number(counted)?.into()));
        }
    } else {
        expected.push(("created", false.into()));
    }
    for (key, value) in expected {
        if map[key] != value {
            bail!(
                "{key} of {name} is {}, the fixture says {value}: {map}",
                map[key]
            );
        }
    }
    // A map created while traced was seen being made: its type and the function that made
    // it come from the target's binary, which on arm64 or a PIE only a right load bias and
    // register table give. The fixture makes every such map from `main.main`, so its
    // creation stack reaches that frame only if the BPF side's frame-pointer walk follows
    // this architecture's frame records.
    if field("created")? == "after" {
        let named = map["type"].as_str().is_some_and(|name| !name.is_empty())
            && map["site"]["function"].is_string();
        if !named {
            bail!("{name} has no type or creation site: {map}");
        }
        let reaches_main = map["stack"]
            .as_array()
            .is_some_and(|frames| frames.iter().any(|frame| frame["function"] == "main.main"));
        if !reaches_main {
            bail!("{name}'s creation stack does not reach main.main: {map}");
        }
    }
    Ok(())
}

/// The JSON report from its gzipped base64 form.
fn decode_report(base64: &str) -> anyhow::Result<Value> {
    if base64.is_empty() {
        bail!("the guest printed no report");
    }
    let gzipped = decode_base64(base64).context("the report's base64 is damaged")?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gzipped.as_slice())
        .read_to_end(&mut json)
        .context("the report's gzip stream is damaged")?;
    serde_json::from_slice(&json).context("the report is not JSON")
}

/// Standard base64 (RFC 4648, with padding), as busybox's `base64` writes it.
fn decode_base64(text: &str) -> anyhow::Result<Vec<u8>> {
    let value = |byte: u8| -> anyhow::Result<u32> {
        Ok(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            other => bail!("{:?} is not base64", other as char),
        }
        .into())
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace())
        .collect();
    let body = digits.strip_suffix(b"==").or(digits.strip_suffix(b"="));
    let body = body.unwrap_or(&digits);
    if !digits.len().is_multiple_of(4) {
        bail!("{} digits is not a multiple of four", digits.len());
    }
    let mut bytes = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut word = 0u32;
        for &digit in chunk {
            word = word << 6 | value(digit)?;
        }
        word <<= 6 * (4 - chunk.len() as u32);
        let full = word.to_be_bytes();
        bytes.extend_from_slice(&full[1..chunk.len()]);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64_with_and_without_padding() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8h\naGk=").unwrap(), b"hello!hi");
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
        assert!(decode_base64("a$==").is_err());
        assert!(decode_base64("abc").is_err());
    }

    #[test]
    fn a_map_passes_only_when_every_count_equals_the_tally() {
        let truth = truths(&["map name=m addr=0x1 len=2 created=after cloned=false \
             inserts=3 overwrites=1 deletes=1 clears=0"
            .to_string()]);
        let report = |inserts: u64, unexplained: u64| {
            serde_json::json!({"maps": [
                {"addr": "0x1", "released": true, "live": 0},
                {"addr": "0x1", "released": false, "live": 2, "unexplained": unexplained,
                 "unsettled": 0, "inserts": inserts, "overwrites": 1, "deletes": 1,
                 "clears": 0, "created": true, "cloned": false, "type": "map[int]int",
                 "site": {"function": "main.f"},
                 "stack": [{"function": "main.f"}, {"function": "main.main"}]},
            ]})
        };
        check_map(&report(3, 0), &truth[0]).unwrap();
        let wrong = check_map(&report(2, 0), &truth[0]).unwrap_err().to_string();
        assert!(wrong.contains("inserts of m is 2"), "{wrong}");
        assert!(check_map(&report(3, 1), &truth[0]).is_err());
        let mut unnamed = report(3, 0);
        unnamed["maps"][1]["site"] = serde_json::Value::Null;
        assert!(check_map(&unnamed, &truth[0]).is_err());
        let mut cut = report(3, 0);
        cut["maps"][1]["stack"] = serde_json::json!([{"function": "main.f"}]);
        let cut = check_map(&cut, &truth[0]).unwrap_err().to_string();
        assert!(cut.contains("does not reach main.main"), "{cut}");
        let missing = serde_json::json!({"maps": []});
        assert!(check_map(&missing, &truth[0]).is_err());
    }

    #[test]
    fn reads_cases_between_kernel_messages() {
        let output = "[    1.0] Run /init as init process\r\n\
            \x1bc\x1b[?7lvm: kernel 6.1.0-57-arm64 aarch64\r\n\
            vm: case maps-go1.23.9\n\
            vm: attached maps-go1.23.9 after 9 s\n\
            [   20.1] random kernel line\n\
            vm: tracer-exit maps-go1.23.9 0\n\
            vm: fixture-exit maps-go1.23.9 3\n\
            fixture: ready\n\
            fixture: map name=fast32 addr=0xc000 len=1\n\
            tracer: gomaptrace: attached 24 probes\n\
            vm: report maps-go1.23.9\n\
            b64: aGVsbG8=\n\
            vm: end maps-go1.23.9 after 30 s\n\
            vm: finished\n";
        let console = parse(output);
        assert_eq!(console.kernel.as_deref(), Some("6.1.0-57-arm64"));
        assert!(console.finished);
        let [case] = console.cases.as_slice() else {
            panic!("{console:?}")
        };
        assert_eq!(case.name, "maps-go1.23.9");
        assert_eq!((case.tracer_exit, case.fixture_exit), (Some(0), Some(3)));
        assert_eq!((case.attach_seconds, case.seconds), (Some(9), Some(30)));
        assert_eq!(case.fixture.len(), 2);
        assert_eq!(
            truths(&case.fixture)[0][0],
            ("name".into(), "fast32".into())
        );
        assert_eq!(case.report, "aGVsbG8=");
        assert!(check_traced(case, "1.23.9").is_err(), "hello is no gzip");
    }

    #[test]
    fn grouped_links_come_with_6_6() {
        assert!(!takes_grouped_links("6.1.0-57-amd64"));
        assert!(!takes_grouped_links("5.10.0-35-amd64"));
        assert!(takes_grouped_links("6.6.0"));
        assert!(takes_grouped_links("6.12.57+deb12-arm64"));
        assert!(takes_grouped_links("7.0.1"));
        assert!(!takes_grouped_links(""));
    }
}
