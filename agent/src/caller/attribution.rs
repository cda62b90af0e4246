//! Who is on the other end of an accepted connection: the kernel's record (cgroup id and
//! original destination, looked up by peer address) turned into a cgroup path and pod UID.
//!
//! The pod is named from the cgroup the connecting task was in, never from its IP address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use agent_common::{ipv4_octets, ipv6_octets, ConnInfoV1, AF_INET, CONN_KIND_DIRECT};
use serde::Serialize;

use crate::caller::cgroup::CgroupIndex;
use crate::caller::pod_identity;
use crate::datapath::Datapath;

/// Looks up the kernel's record of a connection by its client endpoint.
pub(crate) trait ConnLookup: Send + Sync + 'static {
    /// The record for `peer`, `Ok(None)` if the kernel made none.
    fn lookup(&self, peer: SocketAddr) -> Result<Option<ConnInfoV1>, LookupError>;
}

/// Reading the kernel's record failed (the lookup's own error, shared so that the refusal
/// it causes can be cloned to every request of the connection).
#[derive(Clone, Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct LookupError(Arc<dyn std::error::Error + Send + Sync>);

impl LookupError {
    /// Wraps the error of a lookup.
    pub(crate) fn new(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        LookupError(Arc::new(source))
    }
}

impl ConnLookup for Datapath {
    fn lookup(&self, peer: SocketAddr) -> Result<Option<ConnInfoV1>, LookupError> {
        Datapath::lookup(self, peer).map_err(LookupError::new)
    }
}

/// Resolves cgroup ids to paths relative to the cgroup2 root.
pub(crate) trait CgroupPaths: Send + Sync + 'static {
    /// The path (e.g. `/kubepods.slice/...`) of `id` if the index has it; never blocks.
    fn cached(&self, id: u64) -> Option<String>;
    /// The path of `id`, if it exists; on a miss of the index this walks the cgroup tree
    /// (file system I/O), so it runs on a blocking thread.
    fn path_of(&self, id: u64) -> Option<String>;
}

impl CgroupPaths for CgroupIndex {
    fn cached(&self, id: u64) -> Option<String> {
        CgroupIndex::cached(self, id)
    }

    fn path_of(&self, id: u64) -> Option<String> {
        CgroupIndex::path_of(self, id)
    }
}

/// How the connection reached the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConnKind {
    /// A connect to the metadata service, rewritten by the kernel.
    Redirected,
    /// A connect straight to the proxy's address from inside the pods' cgroup.
    Direct,
}

/// The identity of the client of one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Caller {
    /// cgroup id (inode of the cgroup2 directory) of the connecting task.
    pub cgroup_id: u64,
    /// Its cgroup path relative to the cgroup2 root, if it still exists.
    pub cgroup_path: Option<String>,
    /// Pod UID parsed from the cgroup path, if it is a kubelet pod cgroup.
    pub pod_uid: Option<String>,
    /// Where the client meant to connect.
    pub original_destination: SocketAddr,
    /// How it got here.
    pub kind: ConnKind,
}

/// Why a connection cannot be attributed; the proxy answers 403 with this text.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum Unattributed {
    #[error("connection from {peer} was not made from a cgroup iamlet is attached to (no kernel record for it)")]
    NoRecord { peer: SocketAddr },
    #[error("looking up the kernel record for {peer} failed: {source}")]
    LookupFailed {
        peer: SocketAddr,
        #[source]
        source: LookupError,
    },
}

/// Attributes accepted connections.
#[derive(Clone)]
pub(crate) struct Attributor {
    conns: Arc<dyn ConnLookup>,
    cgroups: Arc<dyn CgroupPaths>,
}

impl std::fmt::Debug for Attributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attributor")
    }
}

impl Attributor {
    /// An attributor over the given lookups.
    pub(crate) fn new(conns: Arc<dyn ConnLookup>, cgroups: Arc<dyn CgroupPaths>) -> Self {
        Attributor { conns, cgroups }
    }

    /// Who made the connection whose client end is `peer`. A cgroup the index does not have
    /// yet is looked for on a blocking thread: the thread serving connections never waits
    /// for the file system.
    pub(crate) async fn attribute(&self, peer: SocketAddr) -> Result<Caller, Unattributed> {
        let info = match self.conns.lookup(peer) {
            Ok(Some(info)) => info,
            Ok(None) => return Err(Unattributed::NoRecord { peer }),
            Err(source) => return Err(Unattributed::LookupFailed { peer, source }),
        };
        let id = info.cgroup_id;
        let cgroup_path = if let Some(path) = self.cgroups.cached(id) {
            Some(path)
        } else {
            let cgroups = self.cgroups.clone();
            tokio::task::spawn_blocking(move || cgroups.path_of(id))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(cgroup_id = id, error = %e, "looking up a cgroup path failed");
                    None
                })
        };
        let pod_uid = cgroup_path
            .as_deref()
            .and_then(pod_identity::parse_pod_cgroup)
            .map(|p| p.pod_uid);
        Ok(Caller {
            cgroup_id: info.cgroup_id,
            cgroup_path,
            pod_uid,
            original_destination: original_destination(&info),
            kind: if info.kind == CONN_KIND_DIRECT {
                ConnKind::Direct
            } else {
                ConnKind::Redirected
            },
        })
    }
}

/// The original destination recorded by the kernel, as a socket address.
pub(crate) fn original_destination(info: &ConnInfoV1) -> SocketAddr {
    let port = u16::try_from(info.orig_port).unwrap_or(0);
    let ip = if info.orig_family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(ipv4_octets(info.orig_addr[0])))
    } else {
        IpAddr::V6(Ipv6Addr::from(ipv6_octets(info.orig_addr)))
    };
    SocketAddr::new(ip, port)
}

#[cfg(test)]
impl Caller {
    /// For tests: a redirected connection to the metadata service from the cgroup
    /// `cgroup_id` at `cgroup_path`, of the pod `pod_uid` if any.
    pub(crate) fn redirected(cgroup_id: u64, cgroup_path: &str, pod_uid: Option<&str>) -> Caller {
        Caller {
            cgroup_id,
            cgroup_path: Some(cgroup_path.to_owned()),
            pod_uid: pod_uid.map(str::to_owned),
            original_destination: SocketAddr::from(([169, 254, 169, 254], 80)),
            kind: ConnKind::Redirected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{ipv4_raw, ipv6_raw, AF_INET6, CONN_KIND_REDIRECTED};
    use std::collections::HashMap;

    struct Table(HashMap<SocketAddr, ConnInfoV1>);
    impl ConnLookup for Table {
        fn lookup(&self, peer: SocketAddr) -> Result<Option<ConnInfoV1>, LookupError> {
            if peer.port() == 666 {
                return Err(LookupError::new(std::io::Error::other("map gone")));
            }
            Ok(self.0.get(&peer).copied())
        }
    }
    /// Paths by id: the ones below 100 are in the index, the others found by a walk.
    struct Paths(HashMap<u64, String>);
    impl CgroupPaths for Paths {
        fn cached(&self, id: u64) -> Option<String> {
            self.0.get(&id).filter(|_| id < 100).cloned()
        }
        fn path_of(&self, id: u64) -> Option<String> {
            self.0.get(&id).cloned()
        }
    }

    fn info(cgroup_id: u64, family: u32, addr: [u32; 4], kind: u32) -> ConnInfoV1 {
        ConnInfoV1 {
            cgroup_id,
            socket_cookie: 1,
            orig_addr: addr,
            orig_port: 80,
            orig_family: family,
            kind,
            _pad: 0,
        }
    }

    #[tokio::test]
    async fn attributes_by_cgroup_not_by_ip() {
        let a: SocketAddr = "198.18.1.2:40000".parse().expect("addr");
        let b: SocketAddr = "198.18.1.2:40001".parse().expect("addr");
        let c: SocketAddr = "[fd00:1a3e:1::2]:40002".parse().expect("addr");
        let d: SocketAddr = "198.18.1.3:40003".parse().expect("addr");
        let imds4 = [ipv4_raw([169, 254, 169, 254]), 0, 0, 0];
        let imds6 = ipv6_raw([0xfd, 0, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x54]);
        let conns = Table(HashMap::from([
            (a, info(10, AF_INET, imds4, CONN_KIND_REDIRECTED)),
            (b, info(11, AF_INET, imds4, CONN_KIND_DIRECT)),
            (c, info(12, AF_INET6, imds6, CONN_KIND_REDIRECTED)),
            (d, info(200, AF_INET, imds4, CONN_KIND_REDIRECTED)),
        ]));
        let paths = Paths(HashMap::from([
            (
                10,
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1d4a6c37_5b2e_4c8e_9a6f_0e5e2d7c9b11.slice".to_string(),
            ),
            (11, "/system.slice/foo.service".to_string()),
            (200, "/kubepods.slice/kubepods-pod0b4e9a77_1c2d_4e5f_8a9b_0c1d2e3f4a5b.slice".to_string()),
        ]));
        let at = Attributor::new(Arc::new(conns), Arc::new(paths));

        let ca = at.attribute(a).await.expect("a");
        assert_eq!(ca.cgroup_id, 10);
        assert_eq!(
            ca.pod_uid.as_deref(),
            Some("1d4a6c37-5b2e-4c8e-9a6f-0e5e2d7c9b11")
        );
        assert_eq!(
            ca.original_destination,
            "169.254.169.254:80".parse().expect("addr")
        );
        assert_eq!(ca.kind, ConnKind::Redirected);

        let cb = at.attribute(b).await.expect("b");
        assert_eq!((cb.cgroup_id, cb.pod_uid.as_deref()), (11, None));
        assert_eq!(cb.kind, ConnKind::Direct);

        let cc = at.attribute(c).await.expect("c");
        assert_eq!(cc.cgroup_path, None);
        assert_eq!(
            cc.original_destination,
            "[fd00:ec2::254]:80".parse().expect("addr")
        );

        // Not in the index yet: found by the walk (on a blocking thread).
        let cd = at.attribute(d).await.expect("d");
        assert_eq!(
            cd.pod_uid.as_deref(),
            Some("0b4e9a77-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
        );

        let unknown: SocketAddr = "198.18.1.2:1".parse().expect("addr");
        assert!(matches!(
            at.attribute(unknown).await,
            Err(Unattributed::NoRecord { peer }) if peer == unknown
        ));
        let broken: SocketAddr = "198.18.1.2:666".parse().expect("addr");
        let err = at.attribute(broken).await.expect_err("lookup failed");
        assert!(matches!(err, Unattributed::LookupFailed { .. }));
        assert!(err.to_string().ends_with("failed: map gone"), "{err}");
    }
}
