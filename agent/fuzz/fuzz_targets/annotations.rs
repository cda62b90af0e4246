//! Fuzz target `annotations`: see `iamlet::fuzzing::annotations` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iamlet::fuzzing::annotations(data));
