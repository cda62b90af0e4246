//! `aya::Pod` for the shared types, so user space can read and write them in maps.
#![allow(
    unsafe_code,
    reason = "`aya::Pod` is an unsafe trait: each impl promises a plain-bytes type"
)]

use crate::maps::{ConfigV1, ConnInfoV1, PeerKeyV1};

// SAFETY: each type is #[repr(C)], Copy, made only of integers and arrays of integers, and has
// no implicit padding (checked by `maps::tests::layouts_have_no_implicit_padding`), so every
// byte pattern is a valid value and no uninitialised byte is ever read.
unsafe impl aya::Pod for ConfigV1 {}
// SAFETY: as above.
unsafe impl aya::Pod for ConnInfoV1 {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerKeyV1 {}
