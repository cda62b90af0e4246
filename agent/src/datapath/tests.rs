//! Unit tests of the datapath's pure parts: map values, peer keys, the object check.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

#[test]
fn config_needs_a_listener() {
    assert!(matches!(
        config_value(None, None, [0; 2]),
        Err(Error::NoListener)
    ));
    let v4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 8181);
    let cfg = config_value(Some(v4), None, [9, 0]).expect("v4 config");
    assert_eq!(cfg.exempt_cgroup_ids, [9, 0]);
    assert_eq!(cfg.flags, CONFIG_FLAG_V4);
    assert_eq!(cfg.v4_port, 8181);
    assert_eq!(agent_common::ipv4_octets(cfg.v4_addr), [198, 18, 0, 1]);
}

#[test]
fn a_stub_object_is_refused_with_what_to_do() {
    let Err(err) = load_object(&[]) else {
        panic!("an empty object loaded");
    };
    assert!(err.to_string().contains("cargo xtask build-ebpf"), "{err}");
}

#[test]
fn the_object_needs_no_kernel_btf() {
    // `load_object` skips the kernel's BTF; a CO-RE relocation would then go unresolved.
    if EBPF_OBJECT.is_empty() {
        eprintln!("no eBPF object embedded (cargo xtask build-ebpf); nothing to check");
        return;
    }
    let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
    assert!(
        !object.has_btf_relocations(),
        "the eBPF programs now have CO-RE relocations: load_object must pass the kernel's BTF \
         (aya::Btf::from_sys_fs) to the loader"
    );
}

#[test]
fn mapped_peers_are_keyed_as_ipv4() {
    let v4: SocketAddr = "198.18.1.2:40000".parse().expect("addr");
    let mapped: SocketAddr = "[::ffff:198.18.1.2]:40000".parse().expect("addr");
    assert_eq!(peer_key(v4), peer_key(mapped));
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1);
    assert_eq!(peer_key(v6).family, AF_INET6);
    // Matches what sock_ops computes for the same endpoint.
    let from_kernel =
        agent_common::peer_key_from_sock_ops(AF_INET, ipv4_raw([198, 18, 1, 2]), [0; 4], 40000);
    assert_eq!(Some(peer_key(v4)), from_kernel);
}
