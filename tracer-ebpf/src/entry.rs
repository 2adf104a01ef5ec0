//! What every entry probe does: find the map, its type and (for a sample) the key's hash in
//! the registers the attach cookie names, and record the map's header.

use aya_ebpf::programs::ProbeContext;
use tracer_common::cookie;

use crate::{
    emit::{emit, read_header, CarriedRun, EmitError, Observation},
    go_abi::{self, Arguments},
    key_hash::sampled_key_hash,
};

/// Records an entry into a map function of `kind`.
#[inline(always)]
pub fn observe_entry(ctx: &ProbeContext, kind: u8) -> Result<(), EmitError> {
    emit(read_entry(ctx, kind))
}

/// What an entry into a map function of `kind` sees, before it becomes a record.
#[inline(always)]
pub fn read_entry(ctx: &ProbeContext, kind: u8) -> Observation {
    let cookie = go_abi::cookie(ctx);
    let arguments = Arguments::read(ctx);
    let map_type = arguments.get(cookie::map_type(cookie));
    let map = arguments.get(cookie::map(cookie));
    Observation {
        kind,
        map,
        map_type,
        key_hash: sampled_key_hash(cookie::key(cookie), &arguments, map_type),
        header: if map == 0 {
            None
        } else {
            read_header(ctx, map)
        },
        carried: CarriedRun::default(),
    }
}
