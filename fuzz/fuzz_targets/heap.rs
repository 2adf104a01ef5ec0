//! libFuzzer target: `tracer::fuzzing::Target::Heap` (see that module).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::Target::Heap.run(data));
