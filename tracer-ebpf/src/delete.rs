//! Deletes: a probe after the stack check of every `runtime.mapdelete*` (classic maps), or of
//! `(*Map).Delete` (swiss maps), which every runtime and reflect delete goes through. The
//! attach cookie says which arguments hold the map, its type and the key.
//!
//! A delete of a missing key makes the same call; the count at the map's next observation
//! says whether anything was removed.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{emit::EmitError, writers::observe_write};

#[uprobe]
pub fn map_delete(ctx: ProbeContext) -> u32 {
    let _ = try_map_delete(&ctx);
    0
}

fn try_map_delete(ctx: &ProbeContext) -> Result<(), EmitError> {
    observe_write(ctx, kind::DELETE)
}
