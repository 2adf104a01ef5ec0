//! libFuzzer target: `tracer::fuzzing::Target::GoSections` (see that module).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::Target::GoSections.run(data));
