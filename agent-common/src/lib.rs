//! Types and decision logic shared by iamlet's eBPF programs (`agent-ebpf`) and its user-space
//! agent (`agent`).
//!
//! Everything here is `no_std`, `#[repr(C)]` with explicit padding and free of `bool`, so the
//! kernel side and user space agree on every byte. The decision logic (is a destination the
//! instance metadata service, what does a connect get rewritten to, which key does a socket get
//! in the peers map, which packets the egress hook drops) lives here as pure functions so that it is unit-tested
//! on the host, and the eBPF programs only move bytes between the kernel context and these functions.
//!
//! # Byte order
//! Addresses are kept exactly as the kernel hands them over: `u32` words whose in-memory bytes
//! are in network order (`bpf_sock_addr.user_ip4`, `user_ip6[]`, `bpf_sock_ops.local_ip4`, ...).
//! Ports are kept in host order. The helpers [`ipv4_raw`] and [`ipv6_raw`] build the raw form
//! from std-style octets.
#![no_std]

pub mod decision;
pub mod egress;
pub mod maps;
#[cfg(feature = "user")]
mod pod;

pub use decision::{
    decide_connect4, decide_connect6, peer_key_from_sock_ops, Action, Connect, AF_INET, AF_INET6,
};
pub use egress::{decide_egress, Destination, DropReason, EgressVerdict};
pub use maps::{
    ConfigV1, ConnInfoV1, PeerKeyV1, CONFIG_FLAG_V4, CONFIG_FLAG_V6, CONN_KIND_DIRECT,
    CONN_KIND_REDIRECTED, COUNTER_COUNT, EXEMPT_SLOTS, IMDS_PORT,
};

/// The raw (network byte order in memory) form of an IPv4 address given as octets.
pub const fn ipv4_raw(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The raw (network byte order in memory, word by word) form of an IPv6 address given as octets.
pub const fn ipv6_raw(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// Octets of a raw IPv4 address (inverse of [`ipv4_raw`]).
pub const fn ipv4_octets(raw: u32) -> [u8; 4] {
    raw.to_ne_bytes()
}

/// Octets of a raw IPv6 address (inverse of [`ipv6_raw`]).
pub const fn ipv6_octets(raw: [u32; 4]) -> [u8; 16] {
    let a = raw[0].to_ne_bytes();
    let b = raw[1].to_ne_bytes();
    let c = raw[2].to_ne_bytes();
    let d = raw[3].to_ne_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// The EC2 instance metadata service's IPv4 address, 169.254.169.254, in raw form.
pub const IMDS_V4: u32 = ipv4_raw([169, 254, 169, 254]);

/// The EC2 instance metadata service's IPv6 address, `fd00:ec2::254`, in raw form.
pub const IMDS_V6: [u32; 4] = ipv6_raw([
    0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54,
]);
