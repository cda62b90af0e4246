//! Fuzz target `role_arn`: see `iamlet::fuzzing::role_arn` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iamlet::fuzzing::role_arn(data));
