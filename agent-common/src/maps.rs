//! The maps shared between the eBPF programs and user space, and their value types.
//!
//! | map (pinned under `<bpffs>/iamlet/`) | kind | key | value | written by | read by |
//! |---|---|---|---|---|---|
//! | `CONFIG_V1` | array, 1 entry | `u32` (0) | [`ConfigV1`] | agent at start-up | connect4/connect6 |
//! | `COOKIES_V1` | LRU hash | socket cookie `u64` | [`ConnInfoV1`] | connect4/connect6 | `sock_ops` (moves it to `PEERS_V1`, deletes on close) |
//! | `PEERS_V1` | LRU hash | [`PeerKeyV1`] | [`ConnInfoV1`] | `sock_ops` at `TCP_CONNECT_CB`, deleted at `TCP_CLOSE` | agent, for each accepted connection |
//! | `COUNTERS_V2` | per-CPU array | `u32` index `COUNTER_*` | `u64` | all programs | agent (metrics) |
//!
//! `COUNTERS_V2` replaced `COUNTERS_V1` (5 slots, one for all errors) when the egress program
//! came and errors were split by site; an agent removes a `COUNTERS_V1` pin it finds.
//!
//! The programs' cgroup links are pinned next to the maps (`link_<program>`), so they outlive
//! the agent; a new agent swaps its own programs (and so its own maps) in with
//! `BPF_LINK_UPDATE` and reads its predecessor's `PEERS_V1` for the connections made before.
//!
//! Both hashes are LRU so that an entry whose socket never reached `TCP_CONNECT_CB` (a connect
//! that failed before the SYN) cannot fill the map; their size bounds the number of
//! concurrently open metadata connections on one node, far above anything real.

/// Name of the configuration map.
pub const CONFIG_MAP: &str = "CONFIG_V1";
/// Name of the socket cookie map.
pub const COOKIES_MAP: &str = "COOKIES_V1";
/// Name of the peers map.
pub const PEERS_MAP: &str = "PEERS_V1";
/// Name of the counters map.
pub const COUNTERS_MAP: &str = "COUNTERS_V2";
/// Name of the counters map before `COUNTERS_V2` (its pin is removed).
pub const LEGACY_COUNTERS_MAP: &str = "COUNTERS_V1";
/// Capacity of `COOKIES_V1`.
pub const COOKIES_MAX_ENTRIES: usize = 16384;
/// Capacity of `PEERS_V1`.
pub const PEERS_MAX_ENTRIES: usize = 16384;

/// The instance metadata service's TCP port.
pub const IMDS_PORT: u16 = 80;

/// Number of `ConfigV1::exempt_cgroup_ids` slots: the agent and its predecessor.
pub const EXEMPT_SLOTS: usize = 2;

/// `ConfigV1::flags` bit: an IPv4 listener is configured (`v4_addr`, `v4_port` are valid).
pub const CONFIG_FLAG_V4: u32 = 1;
/// `ConfigV1::flags` bit: an IPv6 listener is configured (`v6_addr`, `v6_port` are valid).
pub const CONFIG_FLAG_V6: u32 = 2;

/// Where the agent's metadata proxy listens. Written once by the agent before it attaches the
/// programs; a zero `flags` (map not yet written) makes every program pass connects through
/// untouched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigV1 {
    /// IPv6 listener address, raw (network order words).
    pub v6_addr: [u32; 4],
    /// cgroup ids whose connects are never touched: the agent's own, when it runs inside the
    /// attached cgroup (a hostNetwork DaemonSet pod does), so that its connects to the real
    /// metadata service are not sent back to itself; and, during an upgrade handover, the
    /// predecessor's, which is still draining. 0: unused slot.
    pub exempt_cgroup_ids: [u64; EXEMPT_SLOTS],
    /// IPv4 listener address, raw (network order).
    pub v4_addr: u32,
    /// `CONFIG_FLAG_*` bits.
    pub flags: u32,
    /// IPv4 listener port, host order.
    pub v4_port: u16,
    /// IPv6 listener port, host order.
    pub v6_port: u16,
    /// Explicit padding, always zero.
    #[allow(
        clippy::pub_underscore_fields,
        reason = "explicit padding, public so the struct is built with a literal"
    )]
    pub _pad: u32,
}

impl ConfigV1 {
    /// This config with `id` among its exemptions, or `None` when it is there already (or is
    /// 0). A free slot is taken first; otherwise the last slot that does not hold `keep` is
    /// overwritten. A successor (or an adopting agent) writes itself into the pinned config
    /// of the programs still attached, whose owner `keep` is, so that its own connects to the
    /// metadata service reach it before its own programs replace those.
    #[must_use]
    pub fn with_exemption(self, id: u64, keep: u64) -> Option<ConfigV1> {
        if id == 0 || self.exempt_cgroup_ids.contains(&id) {
            return None;
        }
        let ids = self.exempt_cgroup_ids;
        let slot = ids
            .iter()
            .position(|&e| e == 0)
            .or_else(|| ids.iter().rposition(|&e| e != keep))?;
        let mut next = self;
        next.exempt_cgroup_ids[slot] = id;
        Some(next)
    }
}

/// `ConnInfoV1::kind`: the connect was aimed at the metadata service and rewritten.
pub const CONN_KIND_REDIRECTED: u32 = 1;
/// `ConnInfoV1::kind`: the connect was aimed straight at the proxy's own address.
pub const CONN_KIND_DIRECT: u32 = 2;

/// What the kernel saw when a pod connected: who (cgroup) and where to (original destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnInfoV1 {
    /// `bpf_get_current_cgroup_id()` of the connecting task: the inode number of its cgroup2
    /// directory.
    pub cgroup_id: u64,
    /// The connecting socket's cookie.
    pub socket_cookie: u64,
    /// Original destination address, raw; IPv4 in word 0, other words zero.
    pub orig_addr: [u32; 4],
    /// Original destination port, host order.
    pub orig_port: u32,
    /// `AF_INET` or `AF_INET6` of the original destination (a v4-mapped destination is
    /// `AF_INET6` with the mapped address kept as is).
    pub orig_family: u32,
    /// `CONN_KIND_*`.
    pub kind: u32,
    /// Explicit padding, always zero.
    #[allow(
        clippy::pub_underscore_fields,
        reason = "explicit padding, public so the struct is built with a literal"
    )]
    pub _pad: u32,
}

/// The connecting socket's local endpoint, which is what the proxy sees as the peer of the
/// connection it accepts. A v4-mapped IPv6 endpoint is stored as IPv4, since that is how an
/// IPv4 listener sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKeyV1 {
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    /// Local (source) port of the connecting socket, host order.
    pub port: u32,
    /// Local (source) address, raw; IPv4 in word 0, other words zero.
    pub addr: [u32; 4],
}

/// `COUNTERS_V2` index: connects rewritten to the proxy.
pub const COUNTER_REDIRECTED: u32 = 0;
/// `COUNTERS_V2` index: direct connects to the proxy address recorded.
pub const COUNTER_DIRECT: u32 = 1;
/// `COUNTERS_V2` index: peers map entries stored at `TCP_CONNECT_CB`.
pub const COUNTER_PEERS_STORED: u32 = 2;
/// `COUNTERS_V2` index: peers map entries removed at close.
pub const COUNTER_PEERS_REMOVED: u32 = 3;
/// `COUNTERS_V2` index, error: a connect record could not be stored in `COOKIES_V1`.
pub const COUNTER_ERROR_COOKIE_INSERT: u32 = 4;
/// `COUNTERS_V2` index, error: a recorded socket of an unknown family reached `TCP_CONNECT_CB`.
pub const COUNTER_ERROR_PEER_KEY: u32 = 5;
/// `COUNTERS_V2` index, error: a connect record could not be moved to `PEERS_V1`.
pub const COUNTER_ERROR_PEER_INSERT: u32 = 6;
/// `COUNTERS_V2` index, error: the close callback could not be requested for a socket (its
/// records then stay until the LRU drops them).
pub const COUNTER_ERROR_CB_FLAGS: u32 = 7;
/// `COUNTERS_V2` index: IPv4 packets to 169.254.169.254 dropped at egress.
pub const COUNTER_EGRESS_DROP_V4: u32 = 8;
/// `COUNTERS_V2` index: IPv6 packets to `fd00:ec2::254` dropped at egress.
pub const COUNTER_EGRESS_DROP_V6: u32 = 9;
/// `COUNTERS_V2` index: IPv6 packets to 169.254.169.254 in v4-mapped, v4-compatible or NAT64
/// form dropped at egress.
pub const COUNTER_EGRESS_DROP_V4_IN_V6: u32 = 10;
/// `COUNTERS_V2` index, error: the egress program could not read a packet's IP header (the
/// packet was let through: it is too short to be an IP packet to anywhere).
pub const COUNTER_ERROR_EGRESS_READ: u32 = 11;
/// Number of `COUNTERS_V2` slots.
pub const COUNTER_COUNT: u32 = 12;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    fn exempting(ids: [u64; EXEMPT_SLOTS]) -> ConfigV1 {
        ConfigV1 {
            exempt_cgroup_ids: ids,
            v4_addr: 7,
            flags: CONFIG_FLAG_V4,
            v4_port: 8181,
            ..ConfigV1::default()
        }
    }

    #[test]
    fn a_successor_takes_a_free_slot_or_the_one_its_predecessor_does_not_hold() {
        // The running agent B exempts itself and its own predecessor A: C replaces A.
        let next = exempting([11, 10]).with_exemption(12, 11).expect("changed");
        assert_eq!(next.exempt_cgroup_ids, [11, 12]);
        assert_eq!(
            (next.v4_addr, next.v4_port, next.flags),
            (7, 8181, CONFIG_FLAG_V4)
        );
        let cases = [
            // B had no predecessor, or runs outside the attached cgroup.
            ([11, 0], 11, [11, 12]),
            ([0, 0], 0, [12, 0]),
            // Adopting a crashed agent's programs (no predecessor to keep): the last slot.
            ([11, 10], 0, [11, 12]),
            // The predecessor's own id is kept even when it sits in the last slot.
            ([10, 11], 11, [12, 11]),
        ];
        for (before, keep, after) in cases {
            let next = exempting(before).with_exemption(12, keep);
            assert_eq!(next.map(|c| c.exempt_cgroup_ids), Some(after), "{before:?}");
        }
    }

    #[test]
    fn nothing_changes_for_an_exempt_id_or_none() {
        assert_eq!(exempting([11, 12]).with_exemption(12, 11), None);
        assert_eq!(exempting([11, 10]).with_exemption(0, 11), None);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ConfigV1>(), 16 + 16 + 4 + 4 + 2 + 2 + 4);
        assert_eq!(size_of::<ConnInfoV1>(), 8 + 8 + 16 + 4 + 4 + 4 + 4);
        assert_eq!(size_of::<PeerKeyV1>(), 4 + 4 + 16);
        assert!(align_of::<ConnInfoV1>() <= 8);
    }
}
