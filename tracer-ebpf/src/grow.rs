//! Capacity growth of swiss maps: a probe after the stack check of each function that gives a
//! map more room (`(*Map).growToSmall`, `(*Map).growToTable`, `(*table).grow`,
//! `(*table).split`). The attach cookie says which arguments hold the map and its type.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{emit::EmitError, entry::observe_entry};

/// The program userspace attaches by the name [`tracer_common::programs::GROW`].
#[uprobe]
pub fn map_grow(ctx: ProbeContext) -> u32 {
    let _ = try_map_grow(&ctx);
    0
}

fn try_map_grow(ctx: &ProbeContext) -> Result<(), EmitError> {
    observe_entry(ctx, kind::GROW)
}
