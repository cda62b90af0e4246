//! Fuzz target `bindings`: see `iamlet::fuzzing::bindings` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iamlet::fuzzing::bindings(data));
