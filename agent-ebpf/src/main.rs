//! iamlet's eBPF programs, attached to the pods' cgroup.
//!
//! * `iamlet_connect4` / `iamlet_connect6` (`cgroup/connect4`, `cgroup/connect6`): a TCP
//!   connect to the instance metadata service is rewritten to the agent's listener; that
//!   connect, and any direct connect to the listener, is recorded in `COOKIES_V1` under the
//!   socket's cookie together with the caller's cgroup id and original destination.
//! * `iamlet_sock_ops` (`sockops`): at `TCP_CONNECT_CB` the source port is bound and no SYN has
//!   left yet, so the record moves to `PEERS_V1` under the socket's local endpoint (what the
//!   proxy sees as its peer) before the proxy can possibly accept; at `TCP_CLOSE` it is removed.
//! * `iamlet_egress` (`cgroup_skb/egress`): the second line. Every packet a socket of the
//!   cgroup sends towards a metadata address (after netfilter and routing: a pod's own DNAT
//!   rule, a raw socket, a userspace TCP stack) is dropped and counted; a redirected connect
//!   sends none, its packets go to the listener.
//!
//! The decisions are made by the pure functions of `agent_common::decision`; this crate only
//! moves bytes between the kernel's context structs and those functions. Every map is
//! documented in `agent_common::maps`.
// Built for bpfel-unknown-none by `cargo xtask build-ebpf`; on the host it only type-checks
// (so clippy sees it) with an empty main.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![allow(
    unsafe_code,
    reason = "kernel helpers and context structs are raw pointers"
)]
#![allow(
    clippy::inline_always,
    reason = "each program is verified as one flat function: its helpers inline into every entry"
)]
#![allow(
    clippy::needless_pass_by_value,
    reason = "aya hands each program its context by value"
)]

use agent_common::{
    decide_connect4, decide_connect6, decide_egress,
    egress::{ip_version, IPV4_DADDR_OFFSET, IPV6_DADDR_OFFSET},
    maps::{
        COOKIES_MAX_ENTRIES, COUNTER_DIRECT, COUNTER_ERROR_CB_FLAGS, COUNTER_ERROR_COOKIE_INSERT,
        COUNTER_ERROR_EGRESS_READ, COUNTER_ERROR_PEER_INSERT, COUNTER_ERROR_PEER_KEY,
        COUNTER_PEERS_REMOVED, COUNTER_PEERS_STORED, COUNTER_REDIRECTED, PEERS_MAX_ENTRIES,
    },
    peer_key_from_sock_ops, Action, ConfigV1, ConnInfoV1, Connect, Destination, PeerKeyV1, AF_INET,
    AF_INET6, CONN_KIND_DIRECT, CONN_KIND_REDIRECTED, COUNTER_COUNT,
};
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE,
    },
    btf_maps::{Array, LruHashMap, PerCpuArray},
    helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_skb_cgroup_id},
    macros::{btf_map, cgroup_skb, cgroup_sock_addr, sock_ops},
    programs::{SkBuffContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};

/// Where the proxy listens; written by the agent (see `agent_common::maps`).
#[btf_map]
static CONFIG_V1: Array<ConfigV1, 1> = Array::new();

/// Socket cookie → connection record, from connect until `TCP_CONNECT_CB`/close.
#[btf_map]
static COOKIES_V1: LruHashMap<u64, ConnInfoV1, COOKIES_MAX_ENTRIES> = LruHashMap::new();

/// Local endpoint of a connecting socket → connection record, read by the agent on accept.
#[btf_map]
static PEERS_V1: LruHashMap<PeerKeyV1, ConnInfoV1, PEERS_MAX_ENTRIES> = LruHashMap::new();

/// Per-CPU event counters, indexed by `COUNTER_*`.
#[btf_map]
static COUNTERS_V2: PerCpuArray<u64, { COUNTER_COUNT as usize }> = PerCpuArray::new();

/// `bpf_sock_addr.protocol` of TCP.
const IPPROTO_TCP: u32 = 6;
/// The connect hooks' verdict that lets the connect proceed (and `cgroup_skb`'s "pass").
const ALLOW: i32 = 1;
/// `cgroup_skb`'s verdict that drops the packet.
const DROP: i32 = 0;

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS_V2.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by programs running on this CPU, which do not
        // preempt each other; the pointer comes from a successful lookup.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn config() -> Option<ConfigV1> {
    CONFIG_V1.get(0).copied()
}

/// Records a connect the decision says is ours (cookie → who and where to) and counts it;
/// returns the destination to rewrite it to, if any.
#[inline(always)]
fn record_decision(
    ctx: &SockAddrContext,
    action: Action,
    cgroup_id: u64,
    orig_family: u32,
    orig_addr: [u32; 4],
    orig_port: u16,
) -> Option<([u32; 4], u16)> {
    let (kind, counter, target) = match action {
        Action::Pass => return None,
        Action::RecordDirect => (CONN_KIND_DIRECT, COUNTER_DIRECT, None),
        Action::Redirect { addr, port } => {
            (CONN_KIND_REDIRECTED, COUNTER_REDIRECTED, Some((addr, port)))
        }
    };
    // SAFETY: the socket cookie helper is allowed in cgroup sock_addr programs and only reads
    // the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let info = ConnInfoV1 {
        cgroup_id,
        socket_cookie: cookie,
        orig_addr,
        orig_port: u32::from(orig_port),
        orig_family,
        kind,
        _pad: 0,
    };
    if COOKIES_V1.insert(cookie, info, 0).is_err() {
        count(COUNTER_ERROR_COOKIE_INSERT);
    }
    count(counter);
    target
}

#[inline(always)]
fn current_cgroup_id() -> u64 {
    // SAFETY: a side-effect-free helper that reads the current task's cgroup.
    unsafe { bpf_get_current_cgroup_id() }
}

#[cgroup_sock_addr(connect4)]
pub(crate) fn iamlet_connect4(ctx: SockAddrContext) -> i32 {
    try_connect4(&ctx);
    ALLOW
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) {
    let Some(cfg) = config() else { return };
    // SAFETY: the kernel hands sock_addr programs a valid bpf_sock_addr; these fields are
    // readable in connect4.
    let (protocol, dst, dst_port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.protocol, sa.user_ip4, port_of(sa.user_port))
    };
    let cgroup_id = current_cgroup_id();
    let connect = Connect {
        is_tcp: protocol == IPPROTO_TCP,
        cgroup_id,
        dst_addr: dst,
        dst_port,
    };
    let action = decide_connect4(&cfg, connect);
    if let Some((addr, port)) =
        record_decision(ctx, action, cgroup_id, AF_INET, [dst, 0, 0, 0], dst_port)
    {
        // SAFETY: user_ip4/user_port are writable in connect4.
        unsafe {
            (*ctx.sock_addr).user_ip4 = addr[0];
            (*ctx.sock_addr).user_port = u32::from(u16::to_be(port));
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub(crate) fn iamlet_connect6(ctx: SockAddrContext) -> i32 {
    try_connect6(&ctx);
    ALLOW
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext) {
    let Some(cfg) = config() else { return };
    // SAFETY: the kernel hands sock_addr programs a valid bpf_sock_addr; user_ip6 must be read
    // word by word (narrower or wider loads are rejected by the verifier).
    let (protocol, dst, dst_port) = unsafe {
        let sa = &*ctx.sock_addr;
        (
            sa.protocol,
            [
                sa.user_ip6[0],
                sa.user_ip6[1],
                sa.user_ip6[2],
                sa.user_ip6[3],
            ],
            port_of(sa.user_port),
        )
    };
    let cgroup_id = current_cgroup_id();
    let connect = Connect {
        is_tcp: protocol == IPPROTO_TCP,
        cgroup_id,
        dst_addr: dst,
        dst_port,
    };
    let action = decide_connect6(&cfg, connect);
    if let Some((addr, port)) = record_decision(ctx, action, cgroup_id, AF_INET6, dst, dst_port) {
        // SAFETY: user_ip6 (word stores) and user_port are writable in connect6.
        unsafe {
            let sa = &mut *ctx.sock_addr;
            sa.user_ip6[0] = addr[0];
            sa.user_ip6[1] = addr[1];
            sa.user_ip6[2] = addr[2];
            sa.user_ip6[3] = addr[3];
            sa.user_port = u32::from(u16::to_be(port));
        }
    }
}

#[sock_ops]
pub(crate) fn iamlet_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    1
}

#[inline(always)]
fn socket_cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the socket cookie helper is allowed in sock_ops programs.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn peer_key(ctx: &SockOpsContext) -> Option<PeerKeyV1> {
    let family = ctx.family();
    let local6 = if family == AF_INET6 {
        ctx.local_ip6()
    } else {
        [0; 4]
    };
    peer_key_from_sock_ops(family, ctx.local_ip4(), local6, ctx.local_port())
}

#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    let cookie = socket_cookie(ctx);
    // SAFETY: the value is copied out at once; nothing is inserted into this map in between.
    let Some(info) = (unsafe { COOKIES_V1.get(cookie) }).copied() else {
        return;
    };
    let Some(key) = peer_key(ctx) else {
        count(COUNTER_ERROR_PEER_KEY);
        return;
    };
    if PEERS_V1.insert(key, info, 0).is_err() {
        count(COUNTER_ERROR_PEER_INSERT);
        return;
    }
    count(COUNTER_PEERS_STORED);
    // Ask for state callbacks so the entries go away when this socket closes.
    if ctx
        .set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG).cast_signed())
        .is_err()
    {
        count(COUNTER_ERROR_CB_FLAGS);
    }
}

#[inline(always)]
fn on_close(ctx: &SockOpsContext) {
    let cookie = socket_cookie(ctx);
    // Only sockets we recorded asked for state callbacks; remove both records.
    let _ = COOKIES_V1.remove(cookie);
    if let Some(key) = peer_key(ctx) {
        if PEERS_V1.remove(key).is_ok() {
            count(COUNTER_PEERS_REMOVED);
        }
    }
}

#[cgroup_skb(egress)]
pub(crate) fn iamlet_egress(ctx: SkBuffContext) -> i32 {
    try_egress(&ctx)
}

#[inline(always)]
fn try_egress(ctx: &SkBuffContext) -> i32 {
    let Some(cfg) = config() else { return ALLOW };
    // cgroup_skb sees the packet from its network header on.
    let Ok(first) = ctx.load::<u8>(0) else {
        count(COUNTER_ERROR_EGRESS_READ);
        return ALLOW;
    };
    let dst = match ip_version(first) {
        4 => {
            if let Ok(a) = ctx.load::<u32>(IPV4_DADDR_OFFSET) {
                Destination::V4(a)
            } else {
                count(COUNTER_ERROR_EGRESS_READ);
                return ALLOW;
            }
        }
        6 => {
            if let Ok(a) = ctx.load::<[u32; 4]>(IPV6_DADDR_OFFSET) {
                Destination::V6(a)
            } else {
                count(COUNTER_ERROR_EGRESS_READ);
                return ALLOW;
            }
        }
        _ => return ALLOW,
    };
    // SAFETY: reads the cgroup of the socket the packet belongs to; allowed in cgroup_skb.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    match decide_egress(&cfg, cgroup_id, dst).counter() {
        Some(counter) => {
            count(counter);
            DROP
        }
        None => ALLOW,
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// The port of `bpf_sock_addr.user_port`: 16 bits in network order in the low half of a `u32`.
#[inline(always)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "the upper half of user_port is always zero"
)]
fn port_of(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}
