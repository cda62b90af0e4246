//! Fuzz target `egress`: see `iamlet::fuzzing::egress` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iamlet::fuzzing::egress(data));
