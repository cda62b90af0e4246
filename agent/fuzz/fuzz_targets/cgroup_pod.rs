//! Fuzz target `cgroup_pod`: see `iamlet::fuzzing::cgroup_pod` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iamlet::fuzzing::cgroup_pod(data));
