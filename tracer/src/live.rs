//! What a person watching the trace sees while it runs: on a terminal, a view redrawn in
//! place (like `top`) with the suspects and the sites of code that make maps (and, on
//! request, the growing and the busiest maps by address); otherwise one plain line per
//! tick, fit for a log.

mod sites;

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::model::MapRecord;
use crate::pipeline::Pipeline;

/// Rows of each table in the terminal view.
const ROWS: usize = 10;

/// Remembers the previous tick, to show rates.
#[derive(Debug, Default)]
pub struct LiveView {
    /// Per map: (live, operations) at the previous tick.
    previous: HashMap<u64, (u64, u64)>,
    previous_events: u64,
    ticks: u64,
    /// Also show maps by address (`--live-addresses`).
    addresses: bool,
    /// Site names by stack, resolved once each.
    site_names: sites::SiteNames,
}

/// One map's change since the previous tick.
struct Change<'a> {
    record: &'a MapRecord,
    growth: i64,
    operations: u64,
}

/// What a screen section ranks maps by, per tick.
type Rate = fn(&Change) -> i64;

impl LiveView {
    /// An empty view.
    pub fn new() -> LiveView {
        LiveView::default()
    }

    /// A view that also lists maps by address, below the sites.
    pub fn with_addresses(addresses: bool) -> LiveView {
        LiveView {
            addresses,
            ..LiveView::default()
        }
    }

    fn changes<'a>(&mut self, records: &[&'a MapRecord]) -> Vec<Change<'a>> {
        let mut current = HashMap::with_capacity(records.len());
        let changes = records
            .iter()
            .filter(|record| !record.is_released())
            .map(|record| {
                let operations =
                    record.inserts + record.overwrites + record.deletes + record.clears;
                let (live, seen) = self
                    .previous
                    .get(&record.addr)
                    .copied()
                    .unwrap_or((record.first_count, 0));
                current.insert(record.addr, (record.live, operations));
                Change {
                    record,
                    growth: record.live as i64 - live as i64,
                    operations: operations.saturating_sub(seen),
                }
            })
            .collect();
        self.previous = current;
        changes
    }

    /// The terminal view: a screen to draw over the previous one.
    pub fn render_screen(&mut self, pipeline: &Pipeline, tick_s: f64) -> String {
        let model = pipeline.model();
        let records = model.maps();
        let events = model.received();
        let mut changes = self.changes(&records);
        let mut text = String::from("\x1b[H\x1b[2J");
        let _ = writeln!(
            text,
            "gomaptrace  pid {}  {} maps  {:.0} events/s  (Ctrl-C for the report)",
            pipeline.setup().target.pid,
            records
                .iter()
                .filter(|record| !record.is_released())
                .count(),
            events.saturating_sub(self.previous_events) as f64 / tick_s,
        );
        self.previous_events = events;
        if let Some(schedule) = &pipeline.setup().sampling {
            let _ = writeln!(
                text,
                "mode: sampled (probes {} ms every {} ms): entries exact at each poll, \
                 events/s only in windows",
                schedule.window_ms, schedule.period_ms
            );
        }
        let now_ns = crate::session::monotonic_ns();
        let rows = sites::rows(pipeline, &changes, &mut self.site_names, now_ns);
        let _ = writeln!(
            text,
            "\n{:<50} {:<24} {:>9} {:>10} {:>9} {:>10} {:>8}",
            "SITE", "type", "live maps", "entries", "growth/s", "est bytes", "suspects"
        );
        for row in rows.iter().take(2 * ROWS) {
            let _ = writeln!(
                text,
                "{:<50} {:<24} {:>9} {:>10} {:>+9.0} {:>10} {:>8}",
                row.name,
                row.map_type,
                row.live_maps,
                row.entries,
                row.growth as f64 / tick_s,
                crate::report::human_bytes(row.bytes),
                row.suspects
            );
        }
        if !self.addresses {
            return text;
        }
        let name = |record: &MapRecord| {
            pipeline
                .resolved()
                .types
                .get(&record.map_type)
                .map_or("?".to_string(), |facts| facts.name.clone())
        };
        let sections: [(&str, &str, Rate); 2] = [
            ("GROWING", "growth/s", |change| change.growth),
            ("BUSIEST", "ops/s", |change| {
                i64::try_from(change.operations).unwrap_or(i64::MAX)
            }),
        ];
        for (title, per_second, rate) in sections {
            changes.sort_by_key(|change| std::cmp::Reverse(rate(change)));
            let _ = writeln!(
                text,
                "\n{title}\n{:<16} {:>10} {:>10}  type",
                "map", "live", per_second
            );
            for change in changes.iter().take(ROWS).filter(|change| rate(change) > 0) {
                let _ = writeln!(
                    text,
                    "{:<16} {:>10} {:>10.0}  {}",
                    format!("{:#x}", change.record.addr),
                    change.record.live,
                    rate(change) as f64 / tick_s,
                    name(change.record)
                );
            }
        }
        text
    }

    /// The plain view: one line per tick.
    pub fn render_line(&mut self, pipeline: &Pipeline, tick_s: f64) -> String {
        let model = pipeline.model();
        let records = model.maps();
        let changes = self.changes(&records);
        self.ticks += 1;
        let events = model.received();
        let rate = events.saturating_sub(self.previous_events) as f64 / tick_s;
        self.previous_events = events;
        let live_entries: u64 = changes.iter().map(|change| change.record.live).sum();
        let top = changes.iter().max_by_key(|change| change.growth);
        let mut line = format!(
            "gomaptrace: t={:.0}s maps={} entries={} events/s={:.0}",
            self.ticks as f64 * tick_s,
            changes.len(),
            live_entries,
            rate
        );
        if pipeline.setup().sampling.is_some() {
            line.push_str(" mode=sampled");
        }
        if self.addresses {
            if let Some(top) = top.filter(|top| top.growth > 0) {
                let _ = write!(
                    line,
                    " fastest-growing={:#x} (+{:.0}/s)",
                    top.record.addr,
                    top.growth as f64 / tick_s
                );
            }
            return line;
        }
        let now_ns = crate::session::monotonic_ns();
        let rows = sites::rows(pipeline, &changes, &mut self.site_names, now_ns);
        if let Some(top) = rows.iter().max_by_key(|row| row.growth) {
            if top.growth > 0 {
                let _ = write!(
                    line,
                    " fastest-growing={} (+{:.0}/s)",
                    top.name,
                    top.growth as f64 / tick_s
                );
            }
        }
        let suspects: u64 = rows.iter().map(|row| row.suspects).sum();
        let _ = write!(line, " suspects={suspects}");
        line
    }
}
