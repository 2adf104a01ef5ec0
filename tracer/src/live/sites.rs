//! The live view by code: per creation (or writer) site, with its type, live maps, entries,
//! growth per second and estimated bytes, suspects first. Addresses mean nothing to a
//! person watching a service; the line of code that makes the maps does.

use std::collections::HashMap;

use super::Change;
use crate::model::StackId;
use crate::pipeline::Pipeline;
use crate::verdict::{self, Window};

/// One site's maps, this tick.
#[derive(Debug, Default)]
pub(super) struct SiteRow {
    /// `function (file:line)`, `… (written)` for a writer site.
    pub name: String,
    /// The Go type of its biggest map.
    pub map_type: String,
    /// Maps not known released.
    pub live_maps: u64,
    /// Their entries.
    pub entries: u64,
    /// Their net growth since the previous tick.
    pub growth: i64,
    /// What they hold, estimated (sized for their peaks).
    pub bytes: u64,
    /// Of them, those with a verdict now.
    pub suspects: u64,
    /// Bytes of the biggest map, to pick `map_type`.
    biggest: u64,
}

/// Names of sites by stack, resolved once each.
#[derive(Debug, Default)]
pub(super) struct SiteNames {
    names: HashMap<StackId, String>,
}

impl SiteNames {
    /// The first frame of `stack` outside the runtime's map machinery, `None` while its
    /// frames are not resolved yet.
    fn name(&mut self, pipeline: &Pipeline, stack: StackId) -> Option<String> {
        if let Some(name) = self.names.get(&stack) {
            return Some(name.clone());
        }
        let frames = pipeline.frames();
        let addresses = pipeline.model().stacks().get(stack as usize)?;
        let mut resolved_any = false;
        for address in addresses {
            let Some(frames) = frames.get(address) else {
                continue;
            };
            resolved_any = true;
            if let Some(frame) = frames.iter().find(|frame| {
                !crate::report::RUNTIME_PREFIXES
                    .iter()
                    .any(|prefix| frame.function.starts_with(prefix))
            }) {
                let file = frame.file.rsplit('/').next().unwrap_or(&frame.file);
                let name = format!("{} ({file}:{})", frame.function, frame.line);
                self.names.insert(stack, name.clone());
                return Some(name);
            }
        }
        resolved_any.then(|| "(runtime only)".to_string())
    }
}

/// The rows of this tick: every site with a map not known released, suspects first, then
/// by growth and bytes.
pub(super) fn rows(
    pipeline: &Pipeline,
    changes: &[Change<'_>],
    names: &mut SiteNames,
    now_ns: u64,
) -> Vec<SiteRow> {
    let setup = pipeline.setup();
    let window = Window {
        start_ns: setup.start_ns,
        end_ns: now_ns.max(setup.start_ns),
    };
    let mut rows: HashMap<String, SiteRow> = HashMap::new();
    for change in changes {
        let record = change.record;
        let name = match (record.stack, record.writers.main()) {
            (Some(stack), _) => names.name(pipeline, stack),
            (None, Some(writer)) => names
                .name(pipeline, writer.stack)
                .map(|name| format!("{name} (written)")),
            (None, None) => Some("created before the trace".to_string()),
        }
        .unwrap_or_else(|| "?".to_string());
        let facts = pipeline.resolved().types.get(&record.map_type);
        let bytes = facts
            .and_then(|facts| {
                verdict::estimate_bytes(
                    setup.implementation,
                    facts.storage,
                    record.peak,
                    record.log2_buckets,
                )
            })
            .unwrap_or(0);
        let row = rows.entry(name.clone()).or_insert_with(|| SiteRow {
            name,
            ..SiteRow::default()
        });
        row.live_maps += 1;
        row.entries += record.live;
        row.growth += change.growth;
        row.bytes = row.bytes.saturating_add(bytes);
        // No verdict is possible below either threshold: a leak's growth, or the peak a map
        // that retains capacity must have had. This keeps small maps' trends unread.
        let thresholds = &setup.thresholds;
        let judged = record.peak >= thresholds.leak_min_growth.min(thresholds.retain_min_peak);
        if judged && verdict::judge(record, window, thresholds).is_some() {
            row.suspects += 1;
        }
        if bytes >= row.biggest {
            row.biggest = bytes;
            row.map_type = facts.map_or_else(|| "?".to_string(), |facts| facts.name.clone());
        }
    }
    let mut rows: Vec<SiteRow> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        (b.suspects > 0, b.growth, b.bytes, &a.name).cmp(&(
            a.suspects > 0,
            a.growth,
            a.bytes,
            &b.name,
        ))
    });
    rows
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tracer_common::{kind, CreateEvent, MapEvent, STACK_DEPTH};

    use crate::inspect::SourceFrame;
    use crate::live::LiveView;
    use crate::pipeline::{Pipeline, SessionInput, Setup};
    use crate::plan::MapImplementation;
    use crate::report::{MapTypeInfo, TargetInfo};
    use crate::verdict::{Storage, Thresholds};

    const MAP: u64 = 0x00c0_000a_0000;
    const MAP_TYPE: u64 = 0x4a_b000;
    const CALLER: u64 = 0x40_2000;

    fn event(kind: u8, count: u64, at: u64) -> MapEvent {
        MapEvent {
            ktime_ns: 1_000_000_000 + at * 500_000_000,
            map: MAP,
            count,
            header_word: 7,
            map_type: if kind == kind::ASSIGN { MAP_TYPE } else { 0 },
            key_hash: 0,
            kind,
            flags: 0,
            folded: 0,
        }
    }

    /// A pipeline that saw one map made at `main.newIndex` get two entries.
    fn pipeline() -> Pipeline {
        let setup = Setup {
            target: TargetInfo {
                pid: 42,
                exe: "/srv/app".into(),
                go_version: "go1.24.11".into(),
                exited: false,
                peak_rss_bytes: None,
                container: None,
                ns_pid: None,
            },
            implementation: MapImplementation::Swiss,
            start_ns: 1_000_000_000,
            thresholds: Thresholds::default(),
            sample_one_in: 0,
            sampling: None,
            probe_links: None,
        };
        let mut pipeline = Pipeline::new(setup, None);
        let mut stack = [0u64; STACK_DEPTH];
        stack[0] = 0x40_1000;
        let create = CreateEvent {
            event: event(kind::CREATE, 0, 0),
            caller: CALLER,
            stack_len: 1,
            gc_cycle: 0,
            stack,
        };
        // SAFETY: both records are repr(C) plain data; viewing them as bytes is what the ring
        // buffer does.
        let create: [u8; CreateEvent::SIZE] = unsafe { core::mem::transmute(create) };
        pipeline.record(&create);
        for (count, at) in [(0, 1), (1, 2), (2, 3)] {
            let assign: [u8; MapEvent::SIZE] =
                unsafe { core::mem::transmute(event(kind::ASSIGN, count, at)) };
            pipeline.record(&assign);
        }
        let frame = |function: &str, line| SourceFrame {
            function: function.into(),
            file: "/src/app/main.go".into(),
            line,
        };
        let mut frames = BTreeMap::new();
        frames.insert(0x40_1000, vec![frame("runtime.makemap_small", 3)]);
        frames.insert(CALLER, vec![frame("main.newIndex", 17)]);
        pipeline.add_live_frames(frames);
        pipeline.note(SessionInput::Type {
            map_type: MAP_TYPE,
            facts: MapTypeInfo {
                name: "map[string]int".into(),
                storage: Storage {
                    bucket_bytes: 136,
                    slots_per_bucket: 8,
                },
            },
        });
        pipeline
    }

    #[test]
    fn the_view_names_code_not_addresses() {
        let pipeline = pipeline();
        let screen = LiveView::new().render_screen(&pipeline, 1.0);
        assert!(screen.contains("main.newIndex (main.go:17)"), "{screen}");
        assert!(screen.contains("map[string]int"), "{screen}");
        assert!(!screen.contains("0xc0000a0000"), "{screen}");
        let line = LiveView::new().render_line(&pipeline, 1.0);
        assert!(
            line.contains("fastest-growing=main.newIndex (main.go:17) (+2/s)"),
            "{line}"
        );
        let screen = LiveView::with_addresses(true).render_screen(&pipeline, 1.0);
        assert!(screen.contains("0xc0000a0000"), "{screen}");
    }
}
