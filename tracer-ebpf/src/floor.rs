//! The cost floor: a program that does nothing, attached by `gomaptrace --floor` at every
//! site the real programs use. What a traced call pays with it is the uprobe itself (trap,
//! emulation or single-step, program dispatch), which `cargo xtask bench` subtracts to show
//! what gomaptrace's own work adds.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};

#[uprobe]
pub fn floor(_ctx: ProbeContext) -> u32 {
    0
}
