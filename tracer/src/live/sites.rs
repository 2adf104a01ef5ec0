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
        if verdict::judge(record, window, &setup.thresholds).is_some() {
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
