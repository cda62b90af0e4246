//! What the connect hooks and `sock_ops` do with a socket, as pure functions.

use crate::maps::{ConfigV1, PeerKeyV1, CONFIG_FLAG_V4, CONFIG_FLAG_V6, IMDS_PORT};
use crate::{IMDS_V4, IMDS_V6};

/// `AF_INET`.
pub const AF_INET: u32 = 2;
/// `AF_INET6`.
pub const AF_INET6: u32 = 10;

/// What a connect hook does with a TCP connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Not ours: leave the connect alone, record nothing.
    Pass,
    /// Aimed at the metadata service: record it and rewrite the destination.
    Redirect {
        /// New destination address, raw; for `connect6` all four words are used (a v4 target
        /// comes back v4-mapped), for `connect4` only word 0.
        addr: [u32; 4],
        /// New destination port, host order.
        port: u16,
    },
    /// Aimed straight at the proxy: record it (so the proxy can attribute it), do not rewrite.
    RecordDirect,
}

const fn v4_mapped(v4: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

/// Whether a raw IPv6 address is v4-mapped (`::ffff:a.b.c.d`).
pub const fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// What a connect hook knows about the connect it is called for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect<A> {
    /// False for UDP and anything else that is not TCP, which is always passed.
    pub is_tcp: bool,
    /// cgroup id of the connecting task.
    pub cgroup_id: u64,
    /// Destination address, raw.
    pub dst_addr: A,
    /// Destination port, host order.
    pub dst_port: u16,
}

/// Whether `cgroup_id` is one of the configured exemptions (the agent, its predecessor).
pub(crate) fn exempt(cfg: &ConfigV1, cgroup_id: u64) -> bool {
    // Unrolled over the fixed slots: the verifier sees two compares, no loop.
    let [a, b] = cfg.exempt_cgroup_ids;
    cgroup_id != 0 && (a == cgroup_id || b == cgroup_id)
}

/// Decision for an `AF_INET` connect.
pub fn decide_connect4(cfg: &ConfigV1, c: Connect<u32>) -> Action {
    let Connect {
        is_tcp,
        cgroup_id,
        dst_addr,
        dst_port,
    } = c;
    if !is_tcp || cfg.flags & CONFIG_FLAG_V4 == 0 || exempt(cfg, cgroup_id) {
        return Action::Pass;
    }
    if dst_addr == IMDS_V4 && dst_port == IMDS_PORT {
        return Action::Redirect {
            addr: [cfg.v4_addr, 0, 0, 0],
            port: cfg.v4_port,
        };
    }
    if dst_addr == cfg.v4_addr && dst_port == cfg.v4_port {
        return Action::RecordDirect;
    }
    Action::Pass
}

/// Decision for an `AF_INET6` connect.
///
/// Handles `[fd00:ec2::254]:80` and the v4-mapped `[::ffff:169.254.169.254]:80` that a
/// dual-stack socket uses (such a socket never reaches `connect4`). The IPv6 metadata address
/// goes to the IPv6 listener, or, when none is configured, to the v4-mapped IPv4 listener, so
/// that it never falls through to the real service.
pub fn decide_connect6(cfg: &ConfigV1, c: Connect<[u32; 4]>) -> Action {
    let Connect {
        is_tcp,
        cgroup_id,
        dst_addr,
        dst_port,
    } = c;
    if !is_tcp || cfg.flags & (CONFIG_FLAG_V4 | CONFIG_FLAG_V6) == 0 || exempt(cfg, cgroup_id) {
        return Action::Pass;
    }
    let has_v4 = cfg.flags & CONFIG_FLAG_V4 != 0;
    let has_v6 = cfg.flags & CONFIG_FLAG_V6 != 0;
    let v4_target = Action::Redirect {
        addr: v4_mapped(cfg.v4_addr),
        port: cfg.v4_port,
    };
    if dst_port == IMDS_PORT {
        if is_v4_mapped(&dst_addr) && dst_addr[3] == IMDS_V4 {
            // A v4-mapped destination can only be served by the IPv4 listener.
            return if has_v4 { v4_target } else { Action::Pass };
        }
        if dst_addr == IMDS_V6 {
            if has_v6 {
                return Action::Redirect {
                    addr: cfg.v6_addr,
                    port: cfg.v6_port,
                };
            }
            return v4_target;
        }
    }
    if has_v6 && dst_addr == cfg.v6_addr && dst_port == cfg.v6_port {
        return Action::RecordDirect;
    }
    if has_v4 && is_v4_mapped(&dst_addr) && dst_addr[3] == cfg.v4_addr && dst_port == cfg.v4_port {
        return Action::RecordDirect;
    }
    Action::Pass
}

/// The peers map key of a connecting socket, from what `sock_ops` reports at
/// `TCP_CONNECT_CB`: its family, local addresses (raw) and local port (host order). A
/// dual-stack socket connected to a v4-mapped address is keyed as IPv4, which is how the
/// proxy's IPv4 listener sees its peer.
pub fn peer_key_from_sock_ops(
    family: u32,
    local_ip4: u32,
    local_ip6: [u32; 4],
    local_port: u32,
) -> Option<PeerKeyV1> {
    match family {
        AF_INET => Some(PeerKeyV1 {
            family: AF_INET,
            port: local_port,
            addr: [local_ip4, 0, 0, 0],
        }),
        AF_INET6 if is_v4_mapped(&local_ip6) => Some(PeerKeyV1 {
            family: AF_INET,
            port: local_port,
            addr: [local_ip6[3], 0, 0, 0],
        }),
        AF_INET6 => Some(PeerKeyV1 {
            family: AF_INET6,
            port: local_port,
            addr: local_ip6,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ipv4_raw, ipv6_raw};

    const PROXY_V4: u32 = ipv4_raw([198, 18, 0, 1]);
    const PROXY_V6: [u32; 4] = ipv6_raw([0xfd, 0, 0x1a, 0x3e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

    fn cfg(flags: u32) -> ConfigV1 {
        ConfigV1 {
            v4_addr: PROXY_V4,
            v4_port: 8181,
            v6_addr: PROXY_V6,
            v6_port: 8182,
            flags,
            exempt_cgroup_ids: [0; 2],
            _pad: 0,
        }
    }

    fn tcp<A>(is_tcp: bool, dst_addr: A, dst_port: u16) -> Connect<A> {
        Connect {
            is_tcp,
            cgroup_id: 7,
            dst_addr,
            dst_port,
        }
    }

    #[test]
    fn the_exempt_cgroup_is_never_touched() {
        let mut c = both();
        c.exempt_cgroup_ids = [7, 0];
        assert_eq!(decide_connect4(&c, tcp(true, IMDS_V4, 80)), Action::Pass);
        assert_eq!(decide_connect6(&c, tcp(true, IMDS_V6, 80)), Action::Pass);
        // The predecessor's slot during a handover.
        c.exempt_cgroup_ids = [9, 7];
        assert_eq!(decide_connect4(&c, tcp(true, IMDS_V4, 80)), Action::Pass);
        c.exempt_cgroup_ids = [8, 9];
        assert_ne!(decide_connect4(&c, tcp(true, IMDS_V4, 80)), Action::Pass);
        // 0 means "no exemption", even for a (bogus) cgroup id 0.
        c.exempt_cgroup_ids = [0, 0];
        let mut conn = tcp(true, IMDS_V4, 80);
        conn.cgroup_id = 0;
        assert_ne!(decide_connect4(&c, conn), Action::Pass);
    }

    fn both() -> ConfigV1 {
        cfg(CONFIG_FLAG_V4 | CONFIG_FLAG_V6)
    }

    fn mapped(o: [u8; 4]) -> [u32; 4] {
        v4_mapped(ipv4_raw(o))
    }

    #[test]
    fn imds_v4_is_redirected() {
        assert_eq!(
            decide_connect4(&both(), tcp(true, IMDS_V4, 80)),
            Action::Redirect {
                addr: [PROXY_V4, 0, 0, 0],
                port: 8181
            }
        );
    }

    #[test]
    fn other_v4_destinations_pass() {
        let c = both();
        assert_eq!(decide_connect4(&c, tcp(true, IMDS_V4, 81)), Action::Pass);
        assert_eq!(decide_connect4(&c, tcp(true, IMDS_V4, 443)), Action::Pass);
        let dns = ipv4_raw([169, 254, 169, 253]);
        assert_eq!(decide_connect4(&c, tcp(true, dns, 80)), Action::Pass);
        let other = ipv4_raw([198, 18, 0, 2]);
        assert_eq!(decide_connect4(&c, tcp(true, other, 80)), Action::Pass);
        assert_eq!(decide_connect4(&c, tcp(true, PROXY_V4, 8182)), Action::Pass);
    }

    #[test]
    fn udp_is_never_touched() {
        assert_eq!(
            decide_connect4(&both(), tcp(false, IMDS_V4, 80)),
            Action::Pass
        );
        assert_eq!(
            decide_connect6(&both(), tcp(false, IMDS_V6, 80)),
            Action::Pass
        );
        let m = mapped([169, 254, 169, 254]);
        assert_eq!(decide_connect6(&both(), tcp(false, m, 80)), Action::Pass);
    }

    #[test]
    fn unconfigured_map_passes_everything() {
        let c = ConfigV1::default();
        assert_eq!(decide_connect4(&c, tcp(true, IMDS_V4, 80)), Action::Pass);
        assert_eq!(decide_connect6(&c, tcp(true, IMDS_V6, 80)), Action::Pass);
    }

    #[test]
    fn direct_connect_to_proxy_is_recorded() {
        let c = both();
        assert_eq!(
            decide_connect4(&c, tcp(true, PROXY_V4, 8181)),
            Action::RecordDirect
        );
        assert_eq!(
            decide_connect6(&c, tcp(true, PROXY_V6, 8182)),
            Action::RecordDirect
        );
        assert_eq!(
            decide_connect6(&c, tcp(true, mapped([198, 18, 0, 1]), 8181)),
            Action::RecordDirect
        );
    }

    #[test]
    fn imds_v6_goes_to_v6_listener() {
        assert_eq!(
            decide_connect6(&both(), tcp(true, IMDS_V6, 80)),
            Action::Redirect {
                addr: PROXY_V6,
                port: 8182
            }
        );
        assert_eq!(
            decide_connect6(&both(), tcp(true, IMDS_V6, 8080)),
            Action::Pass
        );
    }

    #[test]
    fn imds_v6_without_v6_listener_goes_to_mapped_v4() {
        assert_eq!(
            decide_connect6(&cfg(CONFIG_FLAG_V4), tcp(true, IMDS_V6, 80)),
            Action::Redirect {
                addr: mapped([198, 18, 0, 1]),
                port: 8181
            }
        );
    }

    #[test]
    fn v4_mapped_imds_goes_to_mapped_v4_listener() {
        let m = mapped([169, 254, 169, 254]);
        assert_eq!(
            decide_connect6(&both(), tcp(true, m, 80)),
            Action::Redirect {
                addr: mapped([198, 18, 0, 1]),
                port: 8181
            }
        );
        assert_eq!(
            decide_connect6(&cfg(CONFIG_FLAG_V6), tcp(true, m, 80)),
            Action::Pass
        );
    }

    #[test]
    fn other_v6_destinations_pass() {
        let c = both();
        let other = ipv6_raw([
            0xfd, 0, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x53,
        ]);
        assert_eq!(decide_connect6(&c, tcp(true, other, 80)), Action::Pass);
        assert_eq!(
            decide_connect6(&c, tcp(true, mapped([169, 254, 169, 253]), 80)),
            Action::Pass
        );
        // Not v4-mapped, just ends in the same word.
        let mut odd = mapped([169, 254, 169, 254]);
        odd[1] = 1;
        assert_eq!(decide_connect6(&c, tcp(true, odd, 80)), Action::Pass);
    }

    #[test]
    fn peer_keys() {
        let v4 = ipv4_raw([198, 18, 1, 2]);
        assert_eq!(
            peer_key_from_sock_ops(AF_INET, v4, [0; 4], 40000),
            Some(PeerKeyV1 {
                family: AF_INET,
                port: 40000,
                addr: [v4, 0, 0, 0]
            })
        );
        assert_eq!(
            peer_key_from_sock_ops(AF_INET6, v4, mapped([198, 18, 1, 2]), 40001),
            Some(PeerKeyV1 {
                family: AF_INET,
                port: 40001,
                addr: [v4, 0, 0, 0]
            })
        );
        assert_eq!(
            peer_key_from_sock_ops(AF_INET6, 0, PROXY_V6, 40002),
            Some(PeerKeyV1 {
                family: AF_INET6,
                port: 40002,
                addr: PROXY_V6
            })
        );
        assert_eq!(peer_key_from_sock_ops(1, 0, [0; 4], 1), None);
    }

    #[test]
    fn raw_forms_round_trip() {
        assert_eq!(crate::ipv4_octets(IMDS_V4), [169, 254, 169, 254]);
        let o = crate::ipv6_octets(IMDS_V6);
        assert_eq!(&o[..4], &[0xfd, 0x00, 0x0e, 0xc2]);
        assert_eq!(&o[14..], &[0x02, 0x54]);
    }
}
