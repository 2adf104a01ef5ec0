//! What the target's memory says, read the way viewcore and goref do: starting from what the
//! binary says about the program's data and following pointers in the live process. Which
//! maps package variables hold ([`roots`], [`inventory`]), whether a heap object is still
//! allocated ([`heap`]), which map headers the heap and goroutine stacks hold ([`scan`]),
//! and which maps the program has dropped ([`release`]).

pub mod heap;
pub mod inventory;
pub mod release;
pub mod roots;
pub mod scan;
