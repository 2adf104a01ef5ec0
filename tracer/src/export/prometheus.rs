//! `--serve ADDR`: `/metrics` in the OpenMetrics text format (which Prometheus scrapes), on
//! a small TCP server in the trace's own event loop.
//!
//! The metrics are encoded with `prometheus-client` from each interval's snapshot and served
//! as they stand until the next one. Label sets are bounded: per-site series exist for the
//! [`TOP_SITES`] sites holding the most memory, the rest are summed under
//! `function="other"`; no address, pid or key is ever a label (the pid is only in the single
//! `gomaptrace_target_info` series).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Export, ExportError, Snapshot};
use crate::report::{Report, SiteKind, SourceFrame};

/// Sites with their own series; the others are folded into `function="other"`.
pub const TOP_SITES: usize = 20;
/// The largest request the server reads; anything longer is answered and closed.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request and read the answer.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long to wait after a failed accept before the next.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// The content type Prometheus negotiates for this format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// The metrics text served, replaced at every interval.
#[derive(Clone)]
pub struct Metrics {
    text: Arc<Mutex<String>>,
    container: String,
}

impl Metrics {
    /// Binds `addr` now (so that a bad address is an error before tracing starts) and
    /// serves `/metrics` from a task on the current tokio runtime until the process ends.
    /// `container` names the target's cgroup in `gomaptrace_target_info`.
    pub fn serve(addr: &str, container: String) -> Result<Metrics, ExportError> {
        let serve_error = |source| ExportError::Serve {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(serve_error)?;
        listener.set_nonblocking(true).map_err(serve_error)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(serve_error)?;
        let metrics = Metrics {
            text: Arc::new(Mutex::new("# EOF\n".to_string())),
            container,
        };
        let text = Arc::clone(&metrics.text);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, most likely: wait for some to close.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                };
                let text = Arc::clone(&text);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &text)).await;
                });
            }
        });
        Ok(metrics)
    }
}

/// Answers one HTTP/1.x request: `GET /metrics` gets the metrics, anything else a 404.
async fn answer(mut stream: tokio::net::TcpStream, text: &Mutex<String>) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let first_line = request.split(|&byte| byte == b'\r').next().unwrap_or(&[]);
    let mut parts = first_line.split(|&byte| byte == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|target| target.split(|&byte| byte == b'?').next().unwrap_or(target));
    let response = if method == Some(b"GET") && path == Some(b"/metrics") {
        let body = text.lock().map(|text| text.clone()).unwrap_or_default();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = "gomaptrace serves /metrics only\n";
        format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

impl Export for Metrics {
    fn write(&mut self, snapshot: &Snapshot<'_>) -> Result<(), ExportError> {
        let text = encode(snapshot, &self.container);
        if let Ok(mut current) = self.text.lock() {
            *current = text;
        }
        Ok(())
    }
}

/// A histogram already counted (by HdrHistogram), encoded as a Prometheus histogram.
#[derive(Debug)]
struct Counted {
    sum: f64,
    count: u64,
    /// (upper bound, values in this bucket only), the last bound `f64::MAX` (`+Inf`).
    buckets: Vec<(f64, u64)>,
}

impl Counted {
    /// Buckets `histogram`'s values, multiplied by `scale`, at `bounds`.
    fn of(histogram: &Histogram<u64>, scale: f64, bounds: &[f64]) -> Counted {
        let mut buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain([f64::MAX])
            .map(|bound| (bound, 0))
            .collect();
        let mut sum = 0.0;
        for value in histogram.iter_recorded() {
            let scaled = histogram.median_equivalent(value.value_iterated_to()) as f64 * scale;
            let count = value.count_at_value();
            sum += scaled * count as f64;
            let bucket = buckets
                .iter_mut()
                .find(|(bound, _)| scaled <= *bound)
                .expect("the last bound is f64::MAX");
            bucket.1 += count;
        }
        Counted {
            sum,
            count: histogram.len(),
            buckets,
        }
    }
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Per-site totals behind the site series.
#[derive(Default, Clone, Copy)]
struct SiteTotals {
    live_maps: i64,
    entries: i64,
    bytes: i64,
    created: u64,
    suspects: i64,
}

/// The labels of a site: where it is, what it groups by, and the type of its biggest map.
fn site_labels(site: Option<&SourceFrame>, by: SiteKind, map_type: &str) -> Labels {
    let (function, file, line) = match site {
        Some(site) => (
            site.function.clone(),
            site.file.clone(),
            site.line.to_string(),
        ),
        None => ("unknown".to_string(), String::new(), String::new()),
    };
    let by = match by {
        SiteKind::Creation => "creation",
        SiteKind::Writer => "writer",
    };
    vec![
        ("function".to_string(), function),
        ("file".to_string(), file),
        ("line".to_string(), line),
        ("type".to_string(), map_type.to_string()),
        ("by".to_string(), by.to_string()),
    ]
}

/// The type of the biggest live map of each site, by (site, kind).
fn site_types(report: &Report) -> HashMap<(Option<&SourceFrame>, SiteKind), (u64, String)> {
    let mut types: HashMap<(Option<&SourceFrame>, SiteKind), (u64, String)> = HashMap::new();
    for map in report.maps.iter().filter(|map| !map.released) {
        let key = match (&map.site, map.main_writer_site()) {
            (Some(site), _) => (Some(site), SiteKind::Creation),
            (None, Some(writer)) => (Some(writer), SiteKind::Writer),
            (None, None) => (None, SiteKind::Creation),
        };
        let bytes = map.peak_est_bytes.unwrap_or(0);
        let name = map.map_type.clone().unwrap_or_default();
        let entry = types.entry(key).or_insert((bytes, name.clone()));
        if bytes > entry.0 {
            *entry = (bytes, name);
        }
    }
    types
}

/// The metrics text of one snapshot.
pub fn encode(snapshot: &Snapshot<'_>, container: &str) -> String {
    let report = snapshot.report;
    let mut registry = Registry::default();
    let live = Family::<Labels, Gauge>::default();
    let entries = Family::<Labels, Gauge>::default();
    let bytes = Family::<Labels, Gauge>::default();
    let created = Family::<Labels, Counter>::default();
    let suspects = Family::<Labels, Gauge>::default();

    let types = site_types(report);
    let mut ranked: Vec<&crate::report::SiteReport> = report.sites.iter().collect();
    ranked.sort_by_key(|site| {
        (
            std::cmp::Reverse(site.est_bytes.unwrap_or(0)),
            std::cmp::Reverse(site.live_entries),
            std::cmp::Reverse(site.maps_created),
        )
    });
    let mut other = SiteTotals::default();
    let estimated = Family::<Labels, Gauge>::default();
    let mut other_estimated = 0.0;
    for (rank, site) in ranked.iter().enumerate() {
        let totals = SiteTotals {
            live_maps: site.live_maps as i64,
            entries: site.live_entries as i64,
            bytes: site.est_bytes.unwrap_or(0) as i64,
            created: site.maps_created,
            suspects: site.suspects as i64,
        };
        if rank >= TOP_SITES {
            other_estimated += site.maps_created_estimated.unwrap_or(0.0);
            other.live_maps += totals.live_maps;
            other.entries += totals.entries;
            other.bytes += totals.bytes;
            other.created += totals.created;
            other.suspects += totals.suspects;
            continue;
        }
        let map_type = types
            .get(&(site.site.as_ref(), site.by))
            .map_or("", |(_, name)| name.as_str());
        let labels = site_labels(site.site.as_ref(), site.by, map_type);
        set(
            &live, &entries, &bytes, &created, &suspects, &labels, totals,
        );
        if let Some(scaled) = site.maps_created_estimated {
            estimated.get_or_create(&labels).set(scaled as i64);
        }
    }
    if ranked.len() > TOP_SITES {
        let mut labels = site_labels(None, SiteKind::Creation, "");
        labels[0].1 = "other".to_string();
        labels[4].1 = "other".to_string();
        set(&live, &entries, &bytes, &created, &suspects, &labels, other);
        if report.sampling.is_some() {
            estimated.get_or_create(&labels).set(other_estimated as i64);
        }
    }
    if let Some(sampling) = &report.sampling {
        // Sampled mode only: the mode, and the creation counts scaled from the windows
        // (`gomaptrace_maps_created` counts what the windows saw).
        registry.register(
            "gomaptrace_maps_created_estimated",
            "Sampled mode: maps created at the site, estimated from the discovery windows",
            estimated,
        );
        registry.register(
            "gomaptrace_sampling",
            "How the trace samples: live entries are exact at each poll, creations estimated",
            Info::new(vec![
                ("mode".to_string(), "sampled".to_string()),
                ("window_s".to_string(), sampling.window_s.to_string()),
                ("period_s".to_string(), sampling.period_s.to_string()),
                ("poll_s".to_string(), sampling.poll_s.to_string()),
            ]),
        );
    }
    registry.register(
        "gomaptrace_maps_live",
        "Maps from the site not known released",
        live,
    );
    registry.register(
        "gomaptrace_map_entries",
        "Live entries of the site's maps",
        entries,
    );
    registry.register(
        "gomaptrace_map_est_bytes",
        "Estimated bytes the site's maps hold",
        bytes,
    );
    registry.register(
        "gomaptrace_maps_created",
        "Maps created at the site since the trace started",
        created,
    );
    registry.register(
        "gomaptrace_suspects",
        "Maps from the site with a verdict (never-released, retains-capacity)",
        suspects,
    );
    registry.register(
        "gomaptrace_map_lifetime_seconds",
        "Map lifetimes (maps still alive: so far)",
        Counted::of(
            &snapshot.histograms.map_lifetime_us,
            1e-6,
            &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 36000.0],
        ),
    );
    registry.register(
        "gomaptrace_map_peak_entries",
        "Most entries each map held at once",
        Counted::of(
            &snapshot.histograms.map_peak_entries,
            1.0,
            &[
                0.0, 1.0, 8.0, 64.0, 512.0, 4096.0, 32768.0, 262144.0, 2097152.0,
            ],
        ),
    );
    let events = Counter::<u64>::default();
    events.inc_by(report.events.received);
    registry.register("gomaptrace_events", "Map events received", events);
    let lost = Counter::<u64>::default();
    lost.inc_by(report.events.lost);
    registry.register(
        "gomaptrace_events_lost",
        "Map events the kernel could not deliver",
        lost,
    );
    registry.register(
        "gomaptrace_target",
        "The traced process",
        Info::new(vec![
            ("pid".to_string(), report.target.pid.to_string()),
            ("exe".to_string(), report.target.exe.clone()),
            ("go_version".to_string(), report.target.go_version.clone()),
            ("container".to_string(), container.to_string()),
        ]),
    );
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text = "# EOF\n".to_string();
    }
    text
}

#[allow(clippy::too_many_arguments)]
fn set(
    live: &Family<Labels, Gauge>,
    entries: &Family<Labels, Gauge>,
    bytes: &Family<Labels, Gauge>,
    created: &Family<Labels, Counter>,
    suspects: &Family<Labels, Gauge>,
    labels: &Labels,
    totals: SiteTotals,
) {
    live.get_or_create(labels).set(totals.live_maps);
    entries.get_or_create(labels).set(totals.entries);
    bytes.get_or_create(labels).set(totals.bytes);
    created.get_or_create(labels).inc_by(totals.created);
    suspects.get_or_create(labels).set(totals.suspects);
}

/// The target's cgroup (v2 path, or the first v1 one), as `gomaptrace_target_info` names its
/// container; empty when it cannot be read.
pub fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| {
            text.lines()
                .next()
                .and_then(|line| line.splitn(3, ':').nth(2))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_histograms_fall_in_their_buckets() {
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        histogram.record(1).unwrap();
        histogram.record_n(100, 3).unwrap();
        let counted = Counted::of(&histogram, 1.0, &[1.0, 10.0]);
        assert_eq!(counted.count, 4);
        assert_eq!(counted.buckets, vec![(1.0, 1), (10.0, 0), (f64::MAX, 3)]);
        assert!((counted.sum - 301.0).abs() < 1.0);
    }

    #[test]
    fn an_empty_trace_still_names_its_target() {
        let report = crate::export::json::tests::empty_report();
        let histograms = crate::model::Model::new(
            crate::plan::MapImplementation::Swiss,
            crate::model::Limits::default(),
        )
        .histograms(0);
        let snapshot = Snapshot {
            report: &report,
            histograms: &histograms,
            at_s: 1.0,
            last: false,
        };
        let text = encode(&snapshot, "/");
        assert!(text.contains("gomaptrace_target_info{pid=\"1\""), "{text}");
        assert!(text.contains("gomaptrace_events_total 0"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
