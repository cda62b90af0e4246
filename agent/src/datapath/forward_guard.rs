//! The node-side guard: policy routing rules that refuse to *forward* anything to a metadata
//! address, while the node's own traffic (`iif lo`) is routed as before.
//!
//! The cgroup programs see what the pods' sockets do, even after the pod's own netfilter
//! rules (`cgroup_skb/egress`). They cannot see a frame a pod writes below IP (an
//! `AF_PACKET` socket, `CAP_NET_RAW`, a default container capability, and with it a userspace
//! TCP stack) or traffic a pod forwards for something else (a VM, a tunnel). All of that
//! reaches the metadata service only by being forwarded by the node, since the service is
//! off the node and a pod's own namespace cannot route it anywhere else. So, per family:
//!
//! | pref | rule | meaning |
//! |---|---|---|
//! | [`GUARD_PRIORITY`] | `iif lo to <metadata address> lookup main` | the node's own connections (and the agent's) are routed as before |
//! | [`GUARD_PRIORITY`] + 1 | `to <metadata address> prohibit` | anything forwarded is refused (ICMP administratively prohibited) |
//!
//! A pod's metadata connects never need forwarding: the kernel sends them to the agent's
//! listener on the node. The rules carry protocol [`GUARD_PROTOCOL`] so they are told apart
//! from anyone else's, and they stay when the agent exits (fail closed) unless it detaches.
//! They are plain netlink (`ip rule` shows them), no netfilter.

use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// Preference of the first rule (the second takes the next one). Low, so that no rule of a
/// CNI or routing daemon can route forwarded metadata traffic before it; above 0 (`local`).
pub(crate) const GUARD_PRIORITY: u32 = 5;
/// `FRA_PROTOCOL` of the guard's rules (what `ip rule` shows as `proto 195`).
pub(crate) const GUARD_PROTOCOL: u8 = 195;

const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_GETRULE: u16 = 34;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const FRA_DST: u16 = 1;
const FRA_IIFNAME: u16 = 3;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FRA_PROTOCOL: u16 = 21;
const FR_ACT_TO_TBL: u8 = 1;
const FR_ACT_PROHIBIT: u8 = 8;
const RT_TABLE_MAIN: u8 = 254;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Errors of installing or checking the guard.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{what} rule pref {priority} to {dst}: {source}")]
    Rule {
        what: &'static str,
        priority: u32,
        dst: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("reading the routing rules: {0}")]
    Dump(#[source] io::Error),
}

/// One policy routing rule of the guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GuardRule {
    /// Preference.
    pub priority: u32,
    /// Destination (a host route: /32 or /128).
    pub dst: IpAddr,
    /// `iif lo` (the node's own traffic), then `lookup main`; else `prohibit`.
    pub local_only: bool,
}

/// The guard's rules for the metadata addresses.
pub(crate) fn rules() -> Vec<GuardRule> {
    let v4 = IpAddr::from(agent_common::ipv4_octets(agent_common::IMDS_V4));
    let v6 = IpAddr::from(agent_common::ipv6_octets(agent_common::IMDS_V6));
    [v4, v6]
        .into_iter()
        .flat_map(|dst| {
            [
                GuardRule {
                    priority: GUARD_PRIORITY,
                    dst,
                    local_only: true,
                },
                GuardRule {
                    priority: GUARD_PRIORITY + 1,
                    dst,
                    local_only: false,
                },
            ]
        })
        .collect()
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "attributes here are addresses and table ids, at most 20 bytes"
)]
fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn family_and_bytes(dst: IpAddr) -> (u8, Vec<u8>) {
    match dst {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    }
}

/// The netlink message adding (`RTM_NEWRULE`) or deleting (`RTM_DELRULE`) `rule`.
pub(crate) fn rule_message(kind: u16, rule: &GuardRule, seq: u32) -> Vec<u8> {
    let (family, dst) = family_and_bytes(rule.dst);
    let (action, table) = if rule.local_only {
        (FR_ACT_TO_TBL, RT_TABLE_MAIN)
    } else {
        (FR_ACT_PROHIBIT, 0)
    };
    let prefix_bits = if dst.len() == 4 { 32 } else { 128 };
    let mut body = vec![family, prefix_bits, 0, 0, table, 0, 0, action];
    body.extend_from_slice(&0u32.to_ne_bytes());
    push_attr(&mut body, FRA_DST, &dst);
    push_attr(&mut body, FRA_PRIORITY, &rule.priority.to_ne_bytes());
    push_attr(&mut body, FRA_PROTOCOL, &[GUARD_PROTOCOL]);
    if rule.local_only {
        push_attr(&mut body, FRA_IIFNAME, b"lo\0");
        push_attr(
            &mut body,
            FRA_TABLE,
            &u32::from(RT_TABLE_MAIN).to_ne_bytes(),
        );
    }
    let flags = match kind {
        RTM_NEWRULE => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        _ => NLM_F_REQUEST | NLM_F_ACK,
    };
    message(kind, flags, seq, &body)
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "a rule message is under 100 bytes"
)]
fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    msg
}

/// The guard's rules found in a `RTM_GETRULE` dump reply (those with [`GUARD_PROTOCOL`]).
pub(crate) fn parse_rules(mut data: &[u8]) -> Vec<GuardRule> {
    let mut found = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            break;
        }
        if kind == RTM_NEWRULE && len >= 28 {
            if let Some(rule) = parse_rule(&data[16..len]) {
                found.push(rule);
            }
        }
        data = data.get((len + 3) & !3..).unwrap_or_default();
    }
    found
}

fn parse_rule(body: &[u8]) -> Option<GuardRule> {
    let family = body[0];
    let action = body[7];
    let mut attrs = &body[12..];
    let (mut dst, mut priority, mut protocol, mut iif_lo) = (None, 0, 0, false);
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let payload = &attrs[4..len];
        match kind {
            FRA_DST if family == AF_INET && payload.len() == 4 => {
                dst = Some(IpAddr::from([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
            }
            FRA_DST if family == AF_INET6 && payload.len() == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(payload);
                dst = Some(IpAddr::from(o));
            }
            FRA_PRIORITY if payload.len() == 4 => {
                priority = u32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
            }
            FRA_PROTOCOL if !payload.is_empty() => protocol = payload[0],
            FRA_IIFNAME => iif_lo = payload.split(|b| *b == 0).next() == Some(b"lo"),
            _ => {}
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
    }
    let local_only = match action {
        FR_ACT_TO_TBL if iif_lo => true,
        FR_ACT_PROHIBIT if !iif_lo => false,
        _ => return None,
    };
    (protocol == GUARD_PROTOCOL).then_some(GuardRule {
        priority,
        dst: dst?,
        local_only,
    })
}

/// A netlink route socket.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Self, GuardError> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| GuardError::Socket(e.into()))?;
        Ok(Netlink { fd, seq: 0 })
    }

    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        rustix::net::sendto(
            &self.fd,
            msg,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 32 * 1024];
        let (_, n) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty())?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Sends a request and waits for its acknowledgement.
    fn request(&mut self, kind: u16, rule: &GuardRule) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.send(&rule_message(kind, rule, self.seq))?;
        let reply = self.recv()?;
        match ack_error(&reply) {
            Some(0) => Ok(()),
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Err(io::Error::other("no acknowledgement from the kernel")),
        }
    }

    fn dump(&mut self) -> io::Result<Vec<GuardRule>> {
        self.seq = self.seq.wrapping_add(1);
        // An AF_UNSPEC fib_rule_hdr: every family.
        self.send(&message(
            RTM_GETRULE,
            NLM_F_REQUEST | NLM_F_DUMP,
            self.seq,
            &[0u8; 12],
        ))?;
        let mut rules = Vec::new();
        loop {
            let reply = self.recv()?;
            if let Some(errno) = ack_error(&reply).filter(|e| *e != 0) {
                return Err(io::Error::from_raw_os_error(errno));
            }
            rules.extend(parse_rules(&reply));
            if contains_done(&reply) || reply.is_empty() {
                return Ok(rules);
            }
        }
    }
}

/// The (positive) errno of the first `NLMSG_ERROR` in a reply, 0 for an acknowledgement.
fn ack_error(reply: &[u8]) -> Option<i32> {
    let mut data = reply;
    while data.len() >= 20 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if kind == NLMSG_ERROR {
            return Some(-i32::from_ne_bytes([
                data[16], data[17], data[18], data[19],
            ]));
        }
        if len < 16 || len > data.len() {
            return None;
        }
        data = data.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

fn contains_done(reply: &[u8]) -> bool {
    let mut data = reply;
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if u16::from_ne_bytes([data[4], data[5]]) == NLMSG_DONE {
            return true;
        }
        if len < 16 || len > data.len() {
            return false;
        }
        data = data.get((len + 3) & !3..).unwrap_or_default();
    }
    false
}

/// The guard's rules that are not in place (`iamlet doctor`); reads, changes nothing.
pub(crate) fn missing() -> Result<Vec<GuardRule>, GuardError> {
    let present = Netlink::open()?.dump().map_err(GuardError::Dump)?;
    Ok(rules()
        .into_iter()
        .filter(|rule| !present.contains(rule))
        .collect())
}

/// Adds the guard's rules that are missing; returns how many it added.
pub(crate) fn install() -> Result<usize, GuardError> {
    let mut nl = Netlink::open()?;
    let present = nl.dump().map_err(GuardError::Dump)?;
    let mut added = 0;
    for rule in rules() {
        if present.contains(&rule) {
            continue;
        }
        match nl.request(RTM_NEWRULE, &rule) {
            Ok(()) => added += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(GuardError::Rule {
                    what: "adding",
                    priority: rule.priority,
                    dst: rule.dst,
                    source,
                })
            }
        }
    }
    Ok(added)
}

/// Removes the guard's rules; returns how many it removed.
pub(crate) fn remove() -> Result<usize, GuardError> {
    let mut nl = Netlink::open()?;
    let mut removed = 0;
    for rule in rules() {
        match nl.request(RTM_DELRULE, &rule) {
            Ok(()) => removed += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(GuardError::Rule {
                    what: "removing",
                    priority: rule.priority,
                    dst: rule.dst,
                    source,
                })
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_back_to_the_rules() {
        let mut dump = Vec::new();
        for (seq, rule) in (0u32..).zip(rules().iter()) {
            let mut msg = rule_message(RTM_NEWRULE, rule, seq);
            while !msg.len().is_multiple_of(4) {
                msg.push(0);
            }
            dump.extend(msg);
        }
        dump.extend(message(NLMSG_DONE, 0, 9, &[0; 4]));
        assert_eq!(parse_rules(&dump), rules());
        assert!(contains_done(&dump));
        assert_eq!(rules().len(), 4);
    }

    #[test]
    fn rules_of_others_are_ignored() {
        let rule = rules()[1];
        let mut msg = rule_message(RTM_NEWRULE, &rule, 1);
        // Someone else's protocol.
        let at = msg
            .windows(5)
            .position(|w| w == [5, 0, 21, 0, GUARD_PROTOCOL])
            .expect("protocol attribute");
        msg[at + 4] = 4;
        assert!(parse_rules(&msg).is_empty());
    }

    #[test]
    fn acknowledgements_and_errors() {
        let mut ack = message(NLMSG_ERROR, 0, 1, &0i32.to_ne_bytes());
        ack.extend_from_slice(&[0; 16]);
        assert_eq!(ack_error(&ack), Some(0));
        let mut err = message(NLMSG_ERROR, 0, 1, &(-libc::EEXIST).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        assert_eq!(ack_error(&err), Some(libc::EEXIST));
        assert_eq!(ack_error(&[1, 2, 3]), None);
    }
}
