//! libFuzzer target: `tracer::fuzzing::Target::Elf` (see that module).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::Target::Elf.run(data));
