//! What the target's memory says, beyond single map headers: whether a heap object is still
//! allocated ([`heap`]), and which maps the program has dropped ([`release`]).

pub mod heap;
pub mod release;
