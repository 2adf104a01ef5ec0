//! Growth: a probe after the stack check of the functions that start growing a map (classic
//! `hashGrow`; swiss `growToSmall`, `growToTable`, `(*table).rehash`). The attach cookie says
//! which arguments hold the map and its type.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{emit::EmitError, entry::observe_entry};

#[uprobe]
pub fn map_grow(ctx: ProbeContext) -> u32 {
    let _ = try_map_grow(&ctx);
    0
}

fn try_map_grow(ctx: &ProbeContext) -> Result<(), EmitError> {
    observe_entry(ctx, kind::GROW)
}
