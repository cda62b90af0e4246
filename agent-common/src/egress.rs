//! What the `cgroup_skb/egress` program does with a packet leaving a socket of the pods'
//! cgroup, as a pure function.
//!
//! The connect hooks only see the address a socket connects to. A pod can reach the metadata
//! service without such a connect: its own NAT rule (`iptables -t nat ... -j DNAT --to
//! 169.254.169.254`, `CAP_NET_ADMIN`), a raw socket (`CAP_NET_RAW`, a default container
//! capability) or a userspace TCP stack over one. The egress hook runs after netfilter and
//! routing, on the packet's final destination, for every socket in the cgroup: any packet to
//! a metadata address is dropped, whatever the protocol or port, unless it comes from an
//! exempt cgroup (the agent itself). A redirected connect never sends one: its packets go to
//! the agent's listener.

use crate::decision::exempt;
use crate::maps::{ConfigV1, CONFIG_FLAG_V4, CONFIG_FLAG_V6};
use crate::{IMDS_V4, IMDS_V6};

/// Why a packet was dropped (also the `COUNTERS_V2` slot it is counted in, see
/// [`EgressVerdict::counter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// IPv4 packet to 169.254.169.254.
    ImdsV4,
    /// IPv6 packet to `fd00:ec2::254`.
    ImdsV6,
    /// IPv6 packet to 169.254.169.254 written as an IPv6 address: v4-mapped
    /// (`::ffff:169.254.169.254`), v4-compatible (`::169.254.169.254`) or NAT64
    /// (`64:ff9b::169.254.169.254`).
    ImdsV4InV6,
}

/// The egress hook's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressVerdict {
    /// Let the packet go.
    Pass,
    /// Drop it.
    Drop(DropReason),
}

impl EgressVerdict {
    /// The `COUNTERS_V2` slot of a drop.
    pub const fn counter(self) -> Option<u32> {
        match self {
            EgressVerdict::Pass => None,
            EgressVerdict::Drop(DropReason::ImdsV4) => Some(crate::maps::COUNTER_EGRESS_DROP_V4),
            EgressVerdict::Drop(DropReason::ImdsV6) => Some(crate::maps::COUNTER_EGRESS_DROP_V6),
            EgressVerdict::Drop(DropReason::ImdsV4InV6) => {
                Some(crate::maps::COUNTER_EGRESS_DROP_V4_IN_V6)
            }
        }
    }
}

/// A packet's destination, raw (network order words), as the IP header carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// IPv4 destination.
    V4(u32),
    /// IPv6 destination.
    V6([u32; 4]),
}

/// `64:ff9b::/96`, the NAT64 well-known prefix (RFC 6052), first three words.
const NAT64_PREFIX: [u32; 3] = [u32::from_ne_bytes([0, 0x64, 0xff, 0x9b]), 0, 0];

/// Whether an IPv6 address carries 169.254.169.254 in its last word under a prefix that some
/// stack may turn into an IPv4 packet to it.
fn is_imds_v4_in_v6(a: &[u32; 4]) -> bool {
    if a[3] != IMDS_V4 {
        return false;
    }
    let head = [a[0], a[1], a[2]];
    head == [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])]
        || head == [0, 0, 0]
        || head == NAT64_PREFIX
}

/// Decision for a packet to `dst` leaving a socket of cgroup `cgroup_id`. Nothing is dropped
/// until the agent has written its configuration (`flags` non-zero).
pub fn decide_egress(cfg: &ConfigV1, cgroup_id: u64, dst: Destination) -> EgressVerdict {
    if cfg.flags & (CONFIG_FLAG_V4 | CONFIG_FLAG_V6) == 0 || exempt(cfg, cgroup_id) {
        return EgressVerdict::Pass;
    }
    match dst {
        Destination::V4(a) if a == IMDS_V4 => EgressVerdict::Drop(DropReason::ImdsV4),
        Destination::V6(a) if a == IMDS_V6 => EgressVerdict::Drop(DropReason::ImdsV6),
        Destination::V6(a) if is_imds_v4_in_v6(&a) => EgressVerdict::Drop(DropReason::ImdsV4InV6),
        _ => EgressVerdict::Pass,
    }
}

/// IP version of a packet from the first byte of its header.
pub const fn ip_version(first_byte: u8) -> u8 {
    first_byte >> 4
}

/// Byte offset of the destination address in an IPv4 header.
pub const IPV4_DADDR_OFFSET: usize = 16;
/// Byte offset of the destination address in an IPv6 header.
pub const IPV6_DADDR_OFFSET: usize = 24;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ipv4_raw, ipv6_raw};

    fn cfg() -> ConfigV1 {
        ConfigV1 {
            flags: CONFIG_FLAG_V4,
            exempt_cgroup_ids: [5, 0],
            ..ConfigV1::default()
        }
    }

    fn v6(o: [u8; 16]) -> Destination {
        Destination::V6(ipv6_raw(o))
    }

    #[test]
    fn metadata_destinations_are_dropped() {
        let c = cfg();
        assert_eq!(
            decide_egress(&c, 7, Destination::V4(IMDS_V4)),
            EgressVerdict::Drop(DropReason::ImdsV4)
        );
        assert_eq!(
            decide_egress(&c, 7, Destination::V6(IMDS_V6)),
            EgressVerdict::Drop(DropReason::ImdsV6)
        );
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 169, 254, 169, 254];
        let compat = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 169, 254, 169, 254];
        let nat64 = [
            0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 169, 254, 169, 254,
        ];
        for a in [mapped, compat, nat64] {
            assert_eq!(
                decide_egress(&c, 7, v6(a)),
                EgressVerdict::Drop(DropReason::ImdsV4InV6),
                "{a:?}"
            );
        }
    }

    #[test]
    fn everything_else_passes() {
        let c = cfg();
        for other in [
            ipv4_raw([169, 254, 169, 253]),
            ipv4_raw([169, 254, 170, 2]),
            ipv4_raw([198, 18, 0, 1]),
            ipv4_raw([254, 169, 254, 169]),
        ] {
            assert_eq!(
                decide_egress(&c, 7, Destination::V4(other)),
                EgressVerdict::Pass
            );
        }
        // fd00:ec2::253 (DNS), a prefix that is not one of the v4-in-v6 forms.
        let dns = [
            0xfd, 0, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x53,
        ];
        let odd = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 169, 254, 169, 254];
        assert_eq!(decide_egress(&c, 7, v6(dns)), EgressVerdict::Pass);
        assert_eq!(decide_egress(&c, 7, v6(odd)), EgressVerdict::Pass);
    }

    #[test]
    fn the_agent_and_an_unconfigured_map_pass() {
        assert_eq!(
            decide_egress(&cfg(), 5, Destination::V4(IMDS_V4)),
            EgressVerdict::Pass
        );
        assert_eq!(
            decide_egress(&ConfigV1::default(), 7, Destination::V4(IMDS_V4)),
            EgressVerdict::Pass
        );
        // Cgroup id 0 is never exempt.
        let mut c = cfg();
        c.exempt_cgroup_ids = [0, 0];
        assert_ne!(
            decide_egress(&c, 0, Destination::V4(IMDS_V4)),
            EgressVerdict::Pass
        );
    }

    #[test]
    fn version_nibble_and_counters() {
        assert_eq!(ip_version(0x45), 4);
        assert_eq!(ip_version(0x60), 6);
        let counters = [
            EgressVerdict::Drop(DropReason::ImdsV4).counter(),
            EgressVerdict::Drop(DropReason::ImdsV6).counter(),
            EgressVerdict::Drop(DropReason::ImdsV4InV6).counter(),
        ];
        assert!(counters.iter().all(Option::is_some));
        assert_eq!(EgressVerdict::Pass.counter(), None);
    }
}
