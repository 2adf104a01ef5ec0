//! Classic growth: a probe after the stack check of `runtime.hashGrow(t, h)`. Whether it
//! doubles the buckets or only packs the entries again is decided in userspace, from the
//! header's `B` now and at the map's next observation.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{emit::EmitError, entry::observe_entry};

/// The program userspace attaches by the name [`tracer_common::programs::HASH_GROW`].
#[uprobe]
pub fn map_hash_grow(ctx: ProbeContext) -> u32 {
    let _ = try_map_hash_grow(&ctx);
    0
}

fn try_map_hash_grow(ctx: &ProbeContext) -> Result<(), EmitError> {
    observe_entry(ctx, kind::HASH_GROW)
}
