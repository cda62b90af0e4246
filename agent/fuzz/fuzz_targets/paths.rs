//! Fuzz target `paths`: see `iamlet::fuzzing::paths` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iamlet::fuzzing::paths(data));
