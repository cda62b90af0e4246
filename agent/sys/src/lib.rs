//! The raw system calls of iamlet, each behind a safe function: the `bpf(2)` commands aya 0.14
//! does not expose for cgroup links ([`bpf`]) and giving free heap back to the kernel
//! ([`heap`]).
//!
//! This is the only crate of the agent with `unsafe` code, so that the agent library itself
//! can `#![forbid(unsafe_code)]`. Every `unsafe` block carries its `SAFETY:` argument.
#![allow(
    unsafe_code,
    reason = "the one crate of the agent that makes raw system calls"
)]

pub mod bpf;
pub mod heap;
