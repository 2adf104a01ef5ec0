//! Reading the target's memory the way viewcore and goref do: starting from what the binary
//! says about the program's data, and following pointers in the live process.

pub mod inventory;
pub mod roots;
