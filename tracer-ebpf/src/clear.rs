//! `clear(m)` and the range-delete idiom: a probe after the stack check of `runtime.mapclear`
//! (classic maps) or of `(*Map).Clear` (swiss maps, which `reflect.Value.Clear` calls
//! directly). The attach cookie says which arguments hold the map and its type.
//!
//! Every entry goes at once, so the count before the call is all userspace needs. The record
//! carries the writes folded since the map's last one, and ends the fold (see `writers`).

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{
    emit::{emit, EmitError},
    entry::read_entry,
    writers,
};

#[uprobe]
pub fn map_clear(ctx: ProbeContext) -> u32 {
    let _ = try_map_clear(&ctx);
    0
}

fn try_map_clear(ctx: &ProbeContext) -> Result<(), EmitError> {
    let mut observation = read_entry(ctx, kind::CLEAR);
    observation.carried = writers::take_folded(observation.map);
    emit(observation)
}
