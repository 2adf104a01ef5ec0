//! Every export read by its real consumer, on a traced service whose maps each come from
//! their own function (the `exports` fixture: a growing session cache, the most memory by
//! far, settings, a balanced queue and per-request maps): `go tool pprof` reads `--pprof`
//! (its `-top` and its `-http` web UI) and the cache's creation site leads; the
//! `hdrhistogram` crate, PyPI's `hdrhistogram` and Java's `HistogramLogProcessor` read
//! `--hlog`; the `--plot` SVG names the cache's site; the JSON is rewritten while
//! tracing and bounded by `--max-maps`; a real Prometheus scrapes `--serve` and answers a
//! query for the cache's site.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use integration_tests::{build, map_at, read_report, Fixture, Flavor, Tracer, Truth};

const GO: &str = "1.24.11";
/// The function that creates the leaking cache.
const LEAK: &str = "main.newSessionCache";

fn output_dir(test: &str) -> PathBuf {
    let dir = tracer::gofixture::workspace_root()
        .join("target/test-reports")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test's output directory");
    dir
}

fn cache_truth(truths: &[Truth]) -> &Truth {
    truths
        .iter()
        .find(|truth| truth.text("name") == "cache")
        .expect("the fixture reports its cache")
}

/// The rows of `go tool pprof -top` (after its header), with `extra` arguments.
fn pprof_top(profile: &Path, extra: &[&str]) -> Vec<String> {
    let output = Command::new(tracer::gofixture::go_tool(GO))
        .args(["tool", "pprof", "-top"])
        .args(extra)
        .arg(profile)
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "pprof failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .skip_while(|line| !line.contains("flat%"))
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[test]
fn file_exports_are_read_by_their_tools() {
    file_exports_on(GO, "exports_files");
}

/// The same on a classic-map runtime (Go 1.21): other bucket sizes, other growth.
#[test]
fn file_exports_on_classic_maps() {
    file_exports_on("1.21.13", "exports_files_go1_21");
}

fn file_exports_on(version: &str, test: &str) {
    let binary = build("exports", version, Flavor::Plain, &[]);
    let dir = output_dir(test);
    let (json, profile, hlog, plot) = (
        dir.join("report.json"),
        dir.join("maps.pb.gz"),
        dir.join("maps.hlog"),
        dir.join("maps.svg"),
    );
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid().to_string();
    let tracer = Tracer::attach(&[
        "--pid",
        &pid,
        "--interval",
        "1s",
        "--max-maps",
        "5",
        "--json",
        json.to_str().unwrap(),
        "--pprof",
        profile.to_str().unwrap(),
        "--hlog",
        hlog.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let truths = Truth::parse(&fixture.run_operations());
    // Written while tracing, at the intervals: a reader has a whole, recent file.
    let during = read_report(&json);
    assert!(during["duration_s"].as_f64().unwrap() >= 1.0, "{during}");
    let (status, stderr) = tracer.interrupt();
    assert!(status.success(), "gomaptrace failed: {stderr:#?}");
    assert!(fixture.finish().success());
    let cache = cache_truth(&truths);

    // The JSON: the suspects and the 5 biggest other maps; every site; the rest counted.
    let report = read_report(&json);
    assert_eq!(report["events"]["lost"], 0);
    let listed = report["maps"].as_array().unwrap();
    let suspects = listed
        .iter()
        .filter(|map| !map["verdicts"].as_array().unwrap().is_empty())
        .count();
    assert!(listed.len() <= suspects + 5, "{} listed", listed.len());
    assert!(report["maps_unlisted"].as_u64().unwrap() > 100, "{report}");
    let map = map_at(&report, cache.text("addr"));
    assert_eq!(map["live"], cache.number("len"));
    assert_eq!(map["unexplained"], 0);
    for name in [
        LEAK,
        "main.handleRequest",
        "main.loadSettings",
        "main.newQueue",
    ] {
        assert!(
            report["sites"]
                .as_array()
                .unwrap()
                .iter()
                .any(|site| site["site"]["function"] == name),
            "no site {name}"
        );
    }

    // pprof: the cache's creation site leads by memory and by entries, at its line too.
    let by_bytes = pprof_top(&profile, &[]);
    assert!(by_bytes[0].ends_with(LEAK), "{by_bytes:#?}");
    let by_entries = pprof_top(&profile, &["-sample_index=entries"]);
    assert!(by_entries[0].ends_with(LEAK), "{by_entries:#?}");
    let by_line = pprof_top(&profile, &["-lines"]);
    let line = format!("main.go:{}", cache.text("line"));
    assert!(
        by_line[0].contains(LEAK) && by_line[0].contains(&line),
        "{by_line:#?}"
    );
    let maps = pprof_top(&profile, &["-sample_index=maps"]);
    assert!(maps[0].ends_with("main.handleRequest"), "{maps:#?}");
    // …and its web UI (`-http`), the way people browse a profile.
    let web = pprof_web_leaders(&profile, &["/ui/top", "/ui/top?si=entries"]);
    assert_eq!(
        web,
        [LEAK, LEAK],
        "the web UI's top tables lead with the cache"
    );

    // The interval log, read by the Rust crate: every tag at every interval.
    let log = std::fs::read(&hlog).unwrap();
    let mut per_tag: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(interval) = entry.expect("a valid interval log") {
            let tag = interval.tag().expect("every interval is tagged");
            per_tag
                .entry(tag.as_str().to_string())
                .or_default()
                .push(interval.max());
        }
    }
    let tags: Vec<&str> = per_tag.keys().map(String::as_str).collect();
    assert_eq!(
        tags,
        [
            "entry_lifetime_us",
            "map_est_bytes",
            "map_lifetime_us",
            "map_peak_entries"
        ]
    );
    let intervals = per_tag["map_peak_entries"].len();
    assert!(intervals >= 3, "{per_tag:?}");
    assert!(per_tag.values().all(|maxima| maxima.len() == intervals));
    let peak_max = *per_tag["map_peak_entries"].last().unwrap();
    assert!(peak_max >= cache.number("len") as f64, "{per_tag:?}");

    // …and by PyPI's hdrhistogram: the last interval is the report's distribution.
    let python = tracer::gofixture::workspace_root().join(".tools/venvs/hdrhistogram/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    let script = r#"
import sys
from hdrh.log import HistogramLogReader
from hdrh.histogram import HdrHistogram
reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 2**62, 3))
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    print(h.get_tag(), h.get_total_count(), h.get_max_value())
"#;
    let output = Command::new(&python)
        .args(["-c", script])
        .arg(&hlog)
        .output()
        .expect("run python");
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), intervals * 4, "{lines:#?}");
    let last_peak = lines
        .iter()
        .rev()
        .find(|line| line.starts_with("map_peak_entries "))
        .unwrap();
    let fields: Vec<u64> = last_peak
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap())
        .collect();
    assert_eq!(
        fields[0],
        report["histograms"]["map_peak_entries"]["count"]
            .as_u64()
            .unwrap(),
        "{lines:#?}"
    );
    assert!(fields[1] >= cache.number("len"), "{lines:#?}");

    // …and by Java's HdrHistogram (Debian's libhdrhistogram-java), whose
    // HistogramLogProcessor is what capacity tooling runs on such logs: it merges every
    // interval of a tag, so its total is the sum of the intervals' counts.
    let java_total = java_log_processor_total(&hlog, "map_peak_entries");
    let interval_total: u64 = lines
        .iter()
        .filter_map(|line| line.strip_prefix("map_peak_entries "))
        .map(|fields| {
            fields
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(java_total, interval_total, "{lines:#?}");

    // The plot names the leaking site.
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains(&format!("{LEAK} (main.go:{})", cache.text("line"))));
}

/// The first function of each page of `go tool pprof -http`'s web UI at `pages`: the rows
/// of its top tables come sorted by flat value, largest first.
fn pprof_web_leaders(profile: &Path, pages: &[&str]) -> Vec<String> {
    // The tool itself, not `go tool pprof`: `go` runs it as a child that would outlive
    // the `go` process this test stops.
    let tool_dir = Command::new(tracer::gofixture::go_tool(GO))
        .args(["env", "GOTOOLDIR"])
        .output()
        .expect("run go env GOTOOLDIR");
    let pprof = Path::new(String::from_utf8_lossy(&tool_dir.stdout).trim()).join("pprof");
    let port = free_port();
    let server = Reaped(
        Command::new(&pprof)
            .arg("-no_browser")
            .arg(format!("-http=127.0.0.1:{port}"))
            .arg(profile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run go tool pprof -http"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let leaders = pages
        .iter()
        .map(|page| loop {
            if let Some(body) = http_get(port, page) {
                let (_, rest) = body
                    .split_once("\"Name\":\"")
                    .unwrap_or_else(|| panic!("no table rows in {page}"));
                break rest.split('"').next().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "pprof's web UI never answered");
            std::thread::sleep(Duration::from_millis(200));
        })
        .collect();
    drop(server);
    leaders
}

/// The total count Java's `HistogramLogProcessor` reads for `tag` in the interval log at
/// `path`, all intervals merged (its CSV's last row).
fn java_log_processor_total(path: &Path, tag: &str) -> u64 {
    let jar = Path::new("/usr/share/java/hdrhistogram.jar");
    assert!(
        jar.exists(),
        "{} is missing: run `cargo xtask setup`",
        jar.display()
    );
    let output = Command::new("java")
        .arg("-cp")
        .arg(jar)
        .arg("org.HdrHistogram.HistogramLogProcessor")
        .args(["-csv", "-outputValueUnitRatio", "1", "-tag", tag, "-i"])
        .arg(path)
        .output()
        .expect("run java: run `cargo xtask setup`");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "HistogramLogProcessor failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = text
        .lines()
        .rfind(|line| line.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no rows from HistogramLogProcessor: {text}"));
    last.split(',')
        .nth(2)
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total count in {last}"))
}

/// A free loopback port, for servers the test starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GET path` on a loopback HTTP server; the body, or `None` when it does not answer yet.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// Stops a child this test started, when the test ends either way.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `query` percent-encoded for a URL.
fn encoded(query: &str) -> String {
    query
        .bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_metrics_endpoint() {
    let binary = build("exports", GO, Flavor::Plain, &[]);
    let dir = output_dir("exports_prometheus");
    let (metrics_port, prometheus_port) = (free_port(), free_port());
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid().to_string();
    let serve = format!("127.0.0.1:{metrics_port}");
    let tracer = Tracer::attach(&["--pid", &pid, "--interval", "1s", "--serve", &serve]);
    let truths = Truth::parse(&fixture.run_operations());
    let cache = cache_truth(&truths);

    // Our own scrape first: OpenMetrics text, bounded labels, no addresses.
    let metrics = http_get(metrics_port, "/metrics").expect("gomaptrace serves /metrics");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert!(
        !metrics.contains("0xc0"),
        "no address is a label: {metrics}"
    );
    assert!(
        metrics.contains(&format!("gomaptrace_target_info{{pid=\"{pid}\"")),
        "{metrics}"
    );
    assert!(http_get(metrics_port, "/other").is_none());

    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: gomaptrace\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("Debian's prometheus is installed by `cargo xtask setup`");
    let _prometheus = Reaped(prometheus);

    let query = "topk(1, gomaptrace_map_est_bytes{job=\"gomaptrace\"})";
    let url = format!("/api/v1/query?query={}", encoded(query));
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let body = http_get(prometheus_port, &url);
        if let Some(body) = body.as_deref() {
            let json: serde_json::Value = serde_json::from_str(body).expect("Prometheus JSON");
            if json["data"]["result"]
                .as_array()
                .is_some_and(|result| !result.is_empty())
            {
                break json;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had the metric; last answer: {body:?}; log in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let top = &answer["data"]["result"][0];
    assert_eq!(top["metric"]["function"], LEAK, "{answer}");
    assert_eq!(top["metric"]["line"], cache.text("line"), "{answer}");
    assert_eq!(top["metric"]["type"], "map[string][]uint8", "{answer}");
    let entries = format!("gomaptrace_map_entries{{function=\"{LEAK}\"}}");
    let body = http_get(
        prometheus_port,
        &format!("/api/v1/query?query={}", encoded(&entries)),
    )
    .expect("Prometheus answers");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let value: u64 = json["data"]["result"][0]["value"][1]
        .as_str()
        .expect("a sample")
        .parse()
        .unwrap();
    // While tracing, each map's last operation is settled by its next one (or, at the
    // end, by reading its header): a live value may lack that one.
    let len = cache.number("len");
    assert!(value == len || value + 1 == len, "{len}: {json}");

    let (status, stderr) = tracer.interrupt();
    assert!(status.success(), "gomaptrace failed: {stderr:#?}");
    assert!(fixture.finish().success());
}
