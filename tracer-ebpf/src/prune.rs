//! Tombstone pruning of swiss tables (Go 1.25+): a probe after the stack check of
//! `(*table).pruneTombstones(typ, m)`. Whether it cleared anything is decided in userspace: a
//! prune that cannot free enough is followed at once by the table's growth.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{emit::EmitError, entry::observe_entry};

/// The program userspace attaches by the name [`tracer_common::programs::PRUNE`].
#[uprobe]
pub fn map_prune(ctx: ProbeContext) -> u32 {
    let _ = try_map_prune(&ctx);
    0
}

fn try_map_prune(ctx: &ProbeContext) -> Result<(), EmitError> {
    observe_entry(ctx, kind::PRUNE)
}
