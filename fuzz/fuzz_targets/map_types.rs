//! libFuzzer target: `tracer::fuzzing::Target::MapTypes` (see that module).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::Target::MapTypes.run(data));
