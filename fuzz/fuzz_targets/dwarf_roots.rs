//! libFuzzer target: `tracer::fuzzing::Target::DwarfRoots` (see that module).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::Target::DwarfRoots.run(data));
