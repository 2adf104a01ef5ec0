//! gomaptrace on a program nobody wrote for it: Debian's Prometheus server (a stripped Go
//! 1.19 build, installed by `cargo xtask setup`), traced while it answers queries on
//! loopback. The debug build runs here, so any arithmetic overflow on what the target's
//! memory says panics and fails the test.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{read_report, report_path, Tracer};

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// How long the server is traced under load.
const LOAD: Duration = Duration::from_secs(8);

/// A Prometheus server of its own on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Server {
    fn start(test: &str) -> Server {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run `cargo xtask setup`"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = std::env::temp_dir().join(format!("gomaptrace-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("server directory");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ),
        )
        .expect("write the configuration");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let server = Server { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server
            .get("/-/ready")
            .is_some_and(|body| body.contains("Ready"))
        {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// One HTTP/1.1 request on its own connection; the body, or `None` if it failed.
    fn get(&self, path: &str) -> Option<String> {
        get(self.port, path)
    }
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Queries the server from two threads for [`LOAD`]; returns how many answers came back.
fn query_load(port: u16) -> usize {
    let queries = [
        "/api/v1/query?query=up",
        "/api/v1/query?query=rate(prometheus_http_requests_total%5B10s%5D)",
        "/api/v1/query?query=sum%20by%20(handler)(prometheus_http_requests_total)",
        "/api/v1/label/__name__/values",
        "/metrics",
    ];
    let deadline = Instant::now() + LOAD;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut answered = 0;
                for query in queries.iter().cycle() {
                    if Instant::now() >= deadline {
                        break;
                    }
                    answered += usize::from(get(port, query).is_some());
                }
                answered
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|worker| worker.join().unwrap())
        .sum()
}

#[test]
fn a_released_server_under_load_is_traced_exactly_and_located() {
    let server = Server::start("realworld");
    let json = report_path("realworld_prometheus");
    let pid = server.child.id().to_string();
    let tracer = Tracer::attach(&[
        "--pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
        // Every map listed: the checks below are on all of them.
        "--max-maps",
        "1000000",
    ]);
    let answered = query_load(server.port);
    assert!(
        answered > 100,
        "the server answered only {answered} queries"
    );
    let (status, stderr) = tracer.interrupt();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    let report = read_report(&json);

    assert!(report["target"]["go_version"]
        .as_str()
        .is_some_and(|version| version.starts_with("go1.")));
    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(report["events"]["malformed"], 0);
    let resident = report["target"]["peak_rss_bytes"]
        .as_u64()
        .expect("the server's peak resident memory was read");
    let maps = report["maps"].as_array().unwrap();
    assert!(maps.len() > 1_000, "{} maps", maps.len());
    for map in maps {
        assert_eq!(map["unexplained"], 0, "{map}");
        for estimate in ["est_bytes", "peak_est_bytes"] {
            if let Some(bytes) = map[estimate].as_u64() {
                assert!(bytes <= resident, "{estimate} above the RSS: {map}");
            }
        }
    }
    for site in report["sites"].as_array().unwrap() {
        if let Some(bytes) = site["est_bytes"].as_u64() {
            assert!(bytes <= resident, "site above the RSS: {site}");
        }
    }
    let located = maps
        .iter()
        .filter(|map| {
            !map["site"].is_null()
                || map["writers"]
                    .as_array()
                    .is_some_and(|writers| !writers.is_empty())
        })
        .count();
    assert!(
        located * 10 >= maps.len() * 9,
        "only {located} of {} maps have a creation or writer site",
        maps.len()
    );
}
