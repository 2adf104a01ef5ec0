//! libFuzzer target: `tracer::fuzzing::Target::Recording` (see that module).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::Target::Recording.run(data));
