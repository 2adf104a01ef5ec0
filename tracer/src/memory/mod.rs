//! What the target's memory says, beyond single map headers: whether a heap object is still
//! allocated ([`heap`]).

pub mod heap;
