//! libFuzzer target: `tracer::fuzzing::Target::Inventory` (see that module).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::Target::Inventory.run(data));
