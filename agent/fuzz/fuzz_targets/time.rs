//! Fuzz target `time`: see `iamlet::fuzzing::time` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iamlet::fuzzing::time(data));
