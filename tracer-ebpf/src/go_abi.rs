//! Go's internal register ABI (ABIInternal), which is not the C calling convention.
//!
//! `ProbeContext::arg` follows the C ABI (RDI, RSI, … on amd64); Go passes integer arguments
//! and results in RAX, RBX, RCX, RDI, … on amd64 and R0, R1, … on arm64. The registers and
//! their places in the uprobe context come from [`tracer_common::registers`], the table the
//! tracer's tests check against the Go compiler's DWARF; the architecture is chosen when the
//! object is built (`--cfg bpf_target_arch`, see `tracer/build.rs`).

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_get_attach_cookie},
    programs::ProbeContext,
    EbpfContext,
};
use tracer_common::{
    arg,
    registers::{Register, RegisterFile, ReturnAddress},
};

/// The registers of the architecture this object is built for.
#[cfg(bpf_target_arch = "x86_64")]
const REGISTERS: RegisterFile = tracer_common::registers::AMD64;
/// The registers of the architecture this object is built for.
#[cfg(bpf_target_arch = "aarch64")]
const REGISTERS: RegisterFile = tracer_common::registers::ARM64;

/// The table's offsets must be where aya's binding of the kernel's saved registers puts
/// them: a mismatch fails the build, not a trace.
#[cfg(bpf_target_arch = "x86_64")]
const _: () = {
    use aya_ebpf::bindings::pt_regs;
    use core::mem::offset_of;
    let [rax, rbx, rcx, rdi] = REGISTERS.arguments;
    assert!(rax.offset == offset_of!(pt_regs, rax));
    assert!(rbx.offset == offset_of!(pt_regs, rbx));
    assert!(rcx.offset == offset_of!(pt_regs, rcx));
    assert!(rdi.offset == offset_of!(pt_regs, rdi));
    assert!(REGISTERS.stack_pointer.offset == offset_of!(pt_regs, rsp));
    assert!(REGISTERS.frame_pointer.offset == offset_of!(pt_regs, rbp));
    assert!(REGISTERS.instruction_pointer.offset == offset_of!(pt_regs, rip));
    assert!(matches!(
        REGISTERS.return_address,
        ReturnAddress::AtStackPointer
    ));
};

/// As above, for arm64's `user_pt_regs` layout (`regs[31]`, `sp`, …).
#[cfg(bpf_target_arch = "aarch64")]
const _: () = {
    use aya_ebpf::bindings::pt_regs;
    use core::mem::{offset_of, size_of};
    let regs = offset_of!(pt_regs, regs);
    let mut index = 0;
    while index < REGISTERS.arguments.len() {
        assert!(REGISTERS.arguments[index].offset == regs + index * size_of::<u64>());
        index += 1;
    }
    assert!(REGISTERS.stack_pointer.offset == offset_of!(pt_regs, sp));
    assert!(REGISTERS.frame_pointer.offset == regs + 29 * size_of::<u64>());
    assert!(REGISTERS.instruction_pointer.offset == offset_of!(pt_regs, pc));
    match REGISTERS.return_address {
        ReturnAddress::InRegister(link) => assert!(link.offset == regs + 30 * size_of::<u64>()),
        ReturnAddress::AtStackPointer => panic!("arm64 keeps the return address in R30"),
    }
};

/// Loads one saved register. The offset is a constant once inlined, which is the only kind
/// of context read the verifier accepts; the read is volatile so that LLVM cannot merge a
/// later choice between registers into a computed context offset.
#[inline(always)]
fn load(ctx: &ProbeContext, register: Register) -> u64 {
    // SAFETY: `regs` points at the registers the kernel saved for this uprobe, and the
    // offset is inside them (checked against the bindings above).
    unsafe { core::ptr::read_volatile(ctx.regs.cast::<u8>().add(register.offset).cast::<u64>()) }
}

/// The first four integer argument registers, read once per probe hit.
pub struct Arguments {
    registers: [u64; 4],
}

impl Arguments {
    /// Loads all four: an argument chosen by index at run time can only be picked from values
    /// already loaded at constant offsets.
    #[inline(always)]
    pub fn read(ctx: &ProbeContext) -> Arguments {
        let [first, second, third, fourth] = REGISTERS.arguments;
        Arguments {
            registers: [
                load(ctx, first),
                load(ctx, second),
                load(ctx, third),
                load(ctx, fourth),
            ],
        }
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
    load(ctx, REGISTERS.arguments[0])
}

/// The stack pointer: inside a function it addresses the spill slots.
#[inline(always)]
pub fn stack_pointer(ctx: &ProbeContext) -> u64 {
    load(ctx, REGISTERS.stack_pointer)
}

/// The frame pointer: the newest record of the frame-pointer chain the stack walk follows.
#[inline(always)]
pub fn frame_pointer(ctx: &ProbeContext) -> u64 {
    load(ctx, REGISTERS.frame_pointer)
}

/// The probed instruction's address: the innermost frame of a call stack.
#[inline(always)]
pub fn instruction_pointer(ctx: &ProbeContext) -> u64 {
    load(ctx, REGISTERS.instruction_pointer)
}

/// At a RET instruction, the address it returns to: inside the direct caller, which the
/// frame-pointer walk ([`crate::emit`]) no longer sees once the callee's frame is popped.
/// 0 when it cannot be read.
#[inline(always)]
pub fn return_address(ctx: &ProbeContext) -> u64 {
    match REGISTERS.return_address {
        ReturnAddress::AtStackPointer => {
            let sp = stack_pointer(ctx);
            // SAFETY: a faulting user read returns an error.
            unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
        }
        ReturnAddress::InRegister(link) => load(ctx, link),
    }
}
