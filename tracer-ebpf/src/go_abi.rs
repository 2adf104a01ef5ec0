//! Go's internal register ABI (ABIInternal), which is not the C calling convention.
//!
//! `ProbeContext::arg` follows the C ABI (RDI, RSI, …); Go passes integer arguments in
//! RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11 and returns results in the same order.

use aya_ebpf::{helpers::generated::bpf_get_attach_cookie, programs::ProbeContext, EbpfContext};
use tracer_common::arg;

/// The first four integer argument registers, read once per probe hit.
pub struct Arguments {
    registers: [u64; 4],
}

impl Arguments {
    /// Loads RAX, RBX, RCX and RDI. The verifier only accepts context reads at constant
    /// offsets, so all four are loaded (volatile, so that LLVM cannot turn a later choice by
    /// index into a computed context offset) and chosen from afterwards.
    #[inline(always)]
    pub fn read(ctx: &ProbeContext) -> Arguments {
        // SAFETY: `regs` points at the pt_regs the kernel hands every uprobe program.
        let registers = unsafe {
            [
                core::ptr::read_volatile(&(*ctx.regs).rax),
                core::ptr::read_volatile(&(*ctx.regs).rbx),
                core::ptr::read_volatile(&(*ctx.regs).rcx),
                core::ptr::read_volatile(&(*ctx.regs).rdi),
            ]
        };
        Arguments { registers }
    }

    /// The argument at `index` ([`tracer_common::arg`]); 0 for [`arg::NONE`].
    #[inline(always)]
    pub fn get(&self, index: u8) -> u64 {
        match index {
            arg::FIRST => self.registers[0],
            arg::SECOND => self.registers[1],
            arg::THIRD => self.registers[2],
            arg::FOURTH => self.registers[3],
            _ => 0,
        }
    }
}

/// The probe's attach cookie (`tracer_common::cookie`): where this function keeps the map,
/// its type and its key.
#[inline(always)]
pub fn cookie(ctx: &ProbeContext) -> u64 {
    // SAFETY: the helper only reads the cookie of the running uprobe.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// The first integer result, read at a RET instruction: the map pointer a constructor
/// returns.
#[inline(always)]
pub fn first_result(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    unsafe { (*ctx.regs).rax }
}

/// The stack pointer: at a RET it points at the return address, inside a function at its
/// spill slots.
#[inline(always)]
pub fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    unsafe { (*ctx.regs).rsp }
}
