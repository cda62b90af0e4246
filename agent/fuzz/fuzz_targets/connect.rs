//! Fuzz target `connect`: see `iamlet::fuzzing::connect` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iamlet::fuzzing::connect(data));
