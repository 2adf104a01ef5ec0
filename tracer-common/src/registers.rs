//! Where Go's internal register ABI (ABIInternal) keeps values, per architecture, as byte
//! offsets into the registers the kernel saves for a uprobe.
//!
//! The BPF programs read arguments at these offsets, and the tracer's tests check the same
//! table against the DWARF location lists the Go compiler writes for every probed runtime
//! function (on real amd64 and arm64 binaries). Keeping the table here is what ties the two:
//! a wrong register is caught on a binary even for an architecture there is no machine to
//! run on.
//!
//! - amd64: integer arguments and results in RAX, RBX, RCX, RDI, RSI, R8–R11; the kernel's
//!   `struct pt_regs`; at a `RET` the return address is at `[RSP]`.
//! - arm64 (Go 1.18+): arguments and results in R0–R15; the uprobe context starts with
//!   `struct user_pt_regs` (`regs[31]`, `sp`, `pc`, `pstate`); at a `RET` the return
//!   address is in the link register R30, which Go's epilogue has already restored.

/// One machine register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    /// The register's name in the architecture's assembly, for messages.
    pub name: &'static str,
    /// Its number in DWARF (System V psABI for amd64, AAPCS64 DWARF for arm64): how the Go
    /// compiler's location lists name it.
    pub dwarf: u16,
    /// Byte offset of its saved value in the uprobe context.
    pub offset: usize,
}

/// Where the caller's return address is when a probe sits on a `RET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnAddress {
    /// In memory at the stack pointer (amd64 `CALL` pushes it).
    AtStackPointer,
    /// In a register (arm64's link register).
    InRegister(Register),
}

/// The registers gomaptrace reads on one architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterFile {
    /// The first four integer argument registers, in ABIInternal order: the index is a
    /// [`crate::arg`] position. Results use the same registers, so the first is also where a
    /// constructor returns its map.
    pub arguments: [Register; 4],
    /// The stack pointer: a constructor's spill slots are addressed from it.
    pub stack_pointer: Register,
    /// The frame pointer, where the walk of the call stack starts: Go keeps a frame-pointer
    /// chain on both architectures, each record holding the caller's frame pointer and then
    /// the return address into it.
    pub frame_pointer: Register,
    /// The instruction pointer: the probed instruction, the stack's innermost frame.
    pub instruction_pointer: Register,
    /// Where a `RET` finds the address it returns to: the direct caller of a constructor.
    pub return_address: ReturnAddress,
}

/// Offset of the `n`th 8-byte field.
const fn word(n: usize) -> usize {
    n * 8
}

/// amd64, `struct pt_regs`: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi
/// orig_rax rip cs eflags rsp ss.
pub const AMD64: RegisterFile = RegisterFile {
    arguments: [
        Register {
            name: "RAX",
            dwarf: 0,
            offset: word(10),
        },
        Register {
            name: "RBX",
            dwarf: 3,
            offset: word(5),
        },
        Register {
            name: "RCX",
            dwarf: 2,
            offset: word(11),
        },
        Register {
            name: "RDI",
            dwarf: 5,
            offset: word(14),
        },
    ],
    stack_pointer: Register {
        name: "RSP",
        dwarf: 7,
        offset: word(19),
    },
    frame_pointer: Register {
        name: "RBP",
        dwarf: 6,
        offset: word(4),
    },
    instruction_pointer: Register {
        name: "RIP",
        dwarf: 16,
        offset: word(16),
    },
    return_address: ReturnAddress::AtStackPointer,
};

/// arm64, `struct user_pt_regs`: regs[0..31], sp, pc, pstate.
pub const ARM64: RegisterFile = RegisterFile {
    arguments: [
        Register {
            name: "R0",
            dwarf: 0,
            offset: word(0),
        },
        Register {
            name: "R1",
            dwarf: 1,
            offset: word(1),
        },
        Register {
            name: "R2",
            dwarf: 2,
            offset: word(2),
        },
        Register {
            name: "R3",
            dwarf: 3,
            offset: word(3),
        },
    ],
    stack_pointer: Register {
        name: "RSP",
        dwarf: 31,
        offset: word(31),
    },
    frame_pointer: Register {
        name: "R29",
        dwarf: 29,
        offset: word(29),
    },
    instruction_pointer: Register {
        name: "PC",
        dwarf: 32,
        offset: word(32),
    },
    return_address: ReturnAddress::InRegister(Register {
        name: "R30",
        dwarf: 30,
        offset: word(30),
    }),
};
