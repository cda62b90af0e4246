//! Fuzz target `token`: see `iamlet::fuzzing::token` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iamlet::fuzzing::token(data));
