//! The text report, for people: the suspects first, then idle maps, sites and maps.

use std::fmt::Write as _;

use crate::memory::release::ReleaseDetection;
use crate::verdict::Verdict;

use super::contract::{MapReport, Report, SiteKind, SourceFrame, TargetInfo, UNKNOWN_HOLDER};

impl TargetInfo {
    /// ` in podman container NAME (ID), pid N inside` for the text report's first line, or
    /// nothing on the host.
    fn container_text(&self) -> String {
        let Some(container) = &self.container else {
            return String::new();
        };
        let runtime = container
            .runtime
            .as_deref()
            .map(|runtime| format!("{runtime} "))
            .unwrap_or_default();
        let inside = self
            .ns_pid
            .map(|pid| format!(", pid {pid} inside"))
            .unwrap_or_default();
        format!(" in {runtime}container {}{inside}", container.label())
    }
}

impl SourceFrame {
    /// `function (file:line)` with the file's directories dropped, for one text line.
    fn short(&self) -> String {
        let file = self.file.rsplit('/').next().unwrap_or(&self.file);
        format!("{} ({file}:{})", self.function, self.line)
    }
}

impl Report {
    /// The report for a person: a summary, the suspects, the creation sites, the biggest
    /// maps, and what was lost.
    pub fn render_text(&self, max_rows: usize) -> String {
        let mut text = String::new();
        let target = &self.target;
        let released =
            self.maps.iter().filter(|map| map.released).count() as u64 + self.released_unlisted;
        let _ = writeln!(
            text,
            "gomaptrace: pid {} ({}, {}){}{}: {:.1} s, {} maps ({} released), {} events, {} lost",
            target.pid,
            target.exe,
            target.go_version,
            target.container_text(),
            if target.exited { ", exited" } else { "" },
            self.duration_s,
            self.maps.len() as u64 + self.released_unlisted,
            released,
            self.events.received,
            self.events.lost,
        );
        if let Some(line) = crate::sampled::text_line(self) {
            let _ = writeln!(text, "{line}");
        }
        self.render_suspects(&mut text);
        self.render_idle(&mut text, max_rows);
        self.render_sites(&mut text, max_rows);
        self.render_maps(&mut text, max_rows);
        let _ = writeln!(text);
        if self.events.lost > 0 {
            let _ = writeln!(
                text,
                "LOST: {} events were lost (ring buffer full); per-map counts are incomplete",
                self.events.lost
            );
        } else {
            let _ = writeln!(text, "lost events: 0");
        }
        if self.events.folded_uncredited > 0 {
            let _ = writeln!(
                text,
                "FOLDS: {} of {} writes folded on the BPF side reached no map (the record \
                 carrying them was lost, or a new map at their map's address took over \
                 their run while the tracer read it): the counts of the maps they belonged \
                 to, listed or not, are short by that many",
                self.events.folded_uncredited, self.events.folded
            );
        }
        match self.release_detection {
            Some(ReleaseDetection::Heap) => {
                let _ = writeln!(text, "dropped maps: released when the heap frees them");
            }
            Some(ReleaseDetection::Header) => {
                let _ = writeln!(
                    text,
                    "dropped maps: released once their memory is reused (no symbols to read \
                     the heap)"
                );
            }
            None => {}
        }
        text
    }

    fn render_suspects(&self, text: &mut String) {
        let _ = writeln!(text);
        if self.verdicts.is_empty() {
            let _ = writeln!(text, "SUSPECTS: none");
            return;
        }
        let _ = writeln!(text, "SUSPECTS");
        for suspect in &self.verdicts {
            let _ = writeln!(
                text,
                "  {:<17} {}  {}",
                suspect.verdict.name().to_uppercase(),
                suspect.map_type.as_deref().unwrap_or("map (type not seen)"),
                suspect
                    .site
                    .as_ref()
                    .map_or("created before the trace".to_string(), SourceFrame::short),
            );
            let _ = writeln!(
                text,
                "  {:<17} {}  live {}  peak {}  {}/s ({} in 1 h)  holds ~{}{}",
                "",
                suspect.addr,
                suspect.live,
                suspect.peak,
                signed_rate(suspect.growth_per_s),
                signed_rate(suspect.projected_growth_1h),
                suspect.est_bytes.map_or("?".to_string(), human_bytes),
                suspect
                    .confidence
                    .filter(|_| suspect.verdict == Verdict::NeverReleased)
                    .map_or(String::new(), |confidence| format!(
                        "  rising in {}/{} of {:.1} s",
                        confidence.rising, confidence.intervals, confidence.window_s
                    )),
            );
            if let (true, Some(capacity)) = (suspect.idle, suspect.capacity) {
                let _ = writeln!(
                    text,
                    "  {:<17} idle at attach: {} slots, once held ≥ {}; rebuilt it would give back ~{}",
                    "",
                    capacity.slots,
                    capacity.once_held(),
                    suspect.reclaimable_bytes.map_or("?".to_string(), human_bytes),
                );
            }
            if suspect.held_by != UNKNOWN_HOLDER {
                let _ = writeln!(text, "  {:<17} held by {}", "", suspect.held_by);
            }
            if suspect.site.is_none() {
                let _ = writeln!(
                    text,
                    "  {:<17} written at {}",
                    "",
                    suspect
                        .written_at
                        .as_ref()
                        .map_or("(no write stack seen)".to_string(), SourceFrame::short),
                );
            }
        }
    }

    /// The inventory's line, then the idle maps it found, biggest first.
    fn render_idle(&self, text: &mut String, max_rows: usize) {
        let Some(inventory) = &self.inventory else {
            return;
        };
        let _ = writeln!(text);
        let _ = writeln!(
            text,
            "INVENTORY ({}): {} maps in view at attach, {:.1} ms; cannot see {}",
            inventory.method, inventory.found, inventory.time_ms, inventory.blind_to
        );
        let mut idle: Vec<&MapReport> = self
            .maps
            .iter()
            .filter(|map| map.idle && !map.released)
            .collect();
        if idle.is_empty() {
            return;
        }
        idle.sort_by(|a, b| {
            (b.peak_est_bytes, b.live, &a.addr).cmp(&(a.peak_est_bytes, a.live, &b.addr))
        });
        let _ = writeln!(
            text,
            "{:<16} {:>8} {:>9} {:>10} {:>11}  type / held by",
            "IDLE MAP", "live", "slots", "holds", "reclaimable"
        );
        for map in idle.iter().take(max_rows) {
            let _ = writeln!(
                text,
                "{:<16} {:>8} {:>9} {:>10} {:>11}  {} / {}",
                map.addr,
                map.live,
                map.capacity
                    .map_or("?".to_string(), |capacity| capacity.slots.to_string()),
                map.peak_est_bytes.map_or("?".to_string(), human_bytes),
                map.reclaimable_bytes.map_or("?".to_string(), human_bytes),
                map.map_type.as_deref().unwrap_or("?"),
                map.held_by,
            );
        }
        if idle.len() > max_rows {
            let _ = writeln!(text, "… and {} smaller idle maps", idle.len() - max_rows);
        }
    }

    fn render_sites(&self, text: &mut String, max_rows: usize) {
        let _ = writeln!(text);
        let _ = writeln!(
            text,
            "{:<56} {:>8} {:>9} {:>12} {:>10} {:>8}",
            "CREATION SITE", "created", "live maps", "live entries", "est bytes", "suspects"
        );
        for site in self.sites.iter().take(max_rows) {
            let name = site
                .site
                .as_ref()
                .map_or("(creation not seen)".to_string(), SourceFrame::short);
            let name = match site.by {
                SiteKind::Creation => name,
                SiteKind::Writer => format!("{name} (written)"),
            };
            let _ = writeln!(
                text,
                "{:<56} {:>8} {:>9} {:>12} {:>10} {:>8}",
                name,
                site.maps_created,
                site.live_maps,
                site.live_entries,
                site.est_bytes.map_or("?".to_string(), human_bytes),
                site.suspects
            );
        }
        if self.sites.len() > max_rows {
            let _ = writeln!(text, "… and {} more sites", self.sites.len() - max_rows);
        }
    }

    fn render_maps(&self, text: &mut String, max_rows: usize) {
        let mut alive: Vec<&MapReport> = self.maps.iter().filter(|map| !map.released).collect();
        alive.sort_by(|a, b| b.live.cmp(&a.live).then(b.peak.cmp(&a.peak)));
        let _ = writeln!(text);
        let _ = writeln!(
            text,
            "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}  type / seen",
            "MAP", "live", "peak", "inserts", "overwr", "deletes", "clears"
        );
        for map in alive.iter().take(max_rows) {
            let _ = writeln!(
                text,
                "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}  {} / {}{}",
                map.addr,
                map.live,
                map.peak,
                map.inserts,
                map.overwrites,
                map.deletes,
                map.clears,
                map.map_type.as_deref().unwrap_or("?"),
                match (map.created, map.idle) {
                    (true, _) => "created",
                    (false, true) => "idle at attach",
                    (false, false) => "already in use",
                },
                if map.unexplained > 0 {
                    " (inexact)"
                } else {
                    ""
                },
            );
        }
        if alive.len() > max_rows {
            let _ = writeln!(text, "… and {} smaller maps", alive.len() - max_rows);
        }
        let released = self.maps.len() - alive.len();
        if released > 0 || self.released_unlisted > 0 {
            let _ = writeln!(
                text,
                "{} maps were released during the trace (another map took their address); \
                 maps not listed as released may be idle but still reachable",
                released as u64 + self.released_unlisted
            );
        }
    }
}

/// `1.2 MiB`-style sizes.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A rate as a signed whole number, with a decimal only when it is small (`+0.4`, `+20`).
fn signed_rate(rate: f64) -> String {
    if rate.abs() < 10.0 && rate != 0.0 {
        format!("{rate:+.1}")
    } else {
        format!("{rate:+.0}")
    }
}
