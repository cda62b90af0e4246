//! The eBPF datapath: loads the embedded object, writes the listener addresses into
//! `CONFIG_V1`, pins the maps under the bpffs directory, attaches the three programs to the
//! pods' cgroup, and answers "which cgroup made the connection from this peer address".
//!
//! Dropping a [`Datapath`] detaches every program (the links are owned by this process) and
//! removes the pins, so nothing of iamlet stays in the kernel after the agent exits.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use agent_common::maps::{CONFIG_MAP, COOKIES_MAP, COUNTERS_MAP, PEERS_MAP};
use agent_common::{
    ipv4_raw, ipv6_raw, ConfigV1, ConnInfoV1, PeerKeyV1, AF_INET, AF_INET6, CONFIG_FLAG_V4,
    CONFIG_FLAG_V6, COUNTER_COUNT,
};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps};
use aya::Ebpf;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time (see build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("IAMLET_EBPF_OBJECT"));

/// Program names in the object, with what they hook.
const PROGRAMS: [(&str, &str); 3] = [
    ("iamlet_connect4", "cgroup/connect4"),
    ("iamlet_connect6", "cgroup/connect6"),
    ("iamlet_sock_ops", "sock_ops"),
];

/// Errors of loading, attaching and reading the datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not load the eBPF object into the kernel: {source}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF object has no {what} named {name}")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("could not load program {name} ({hook}): {source}")]
    ProgramLoad {
        name: &'static str,
        hook: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("could not attach program {name} ({hook}) to cgroup {}: {source} (another single-mode program of this type may already be attached there)", cgroup.display())]
    Attach {
        name: &'static str,
        hook: &'static str,
        cgroup: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("could not open cgroup {}: {source}", path.display())]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("could not pin map {name} at {}: {source}", path.display())]
    Pin {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("bpffs at {}: {reason}", path.display())]
    Bpffs { path: PathBuf, reason: String },
    #[error("at least one listener address (IPv4 or IPv6) is required")]
    NoListener,
}

/// What the datapath needs to know.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// The cgroup directory to attach to (already validated: below the cgroup2 root).
    pub cgroup: PathBuf,
    /// Directory on a bpffs where the maps are pinned, e.g. `/sys/fs/bpf/iamlet`.
    pub pin_dir: PathBuf,
    /// IPv4 listener the metadata connects are rewritten to.
    pub listen_v4: Option<SocketAddrV4>,
    /// IPv6 listener the metadata connects are rewritten to.
    pub listen_v6: Option<SocketAddrV6>,
    /// cgroup id whose connects are left alone (the agent's own when it runs inside the
    /// attached cgroup); 0 for none.
    pub exempt_cgroup_id: u64,
}

/// The loaded and attached programs, and the maps the agent reads.
pub struct Datapath {
    // Field order is drop order: the maps, the programs (detaching their links), the pins.
    peers: HashMap<MapData, PeerKeyV1, ConnInfoV1>,
    counters: PerCpuArray<MapData, u64>,
    /// Owns the programs and their cgroup links; never touched after start-up (the Mutex only
    /// makes the datapath shareable between tasks).
    _ebpf: Mutex<Ebpf>,
    pins: Pins,
    cgroup: PathBuf,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("cgroup", &self.cgroup)
            .field("pin_dir", &self.pins.dir)
            .finish_non_exhaustive()
    }
}

/// Builds the `CONFIG_V1` value for the given listeners.
pub fn config_value(
    listen_v4: Option<SocketAddrV4>,
    listen_v6: Option<SocketAddrV6>,
    exempt_cgroup_id: u64,
) -> Result<ConfigV1, Error> {
    let mut cfg = ConfigV1 {
        exempt_cgroup_id,
        ..ConfigV1::default()
    };
    if let Some(v4) = listen_v4 {
        cfg.v4_addr = ipv4_raw(v4.ip().octets());
        cfg.v4_port = v4.port();
        cfg.flags |= CONFIG_FLAG_V4;
    }
    if let Some(v6) = listen_v6 {
        cfg.v6_addr = ipv6_raw(v6.ip().octets());
        cfg.v6_port = v6.port();
        cfg.flags |= CONFIG_FLAG_V6;
    }
    if cfg.flags == 0 {
        return Err(Error::NoListener);
    }
    Ok(cfg)
}

/// The peers map key under which the kernel recorded the connection the proxy accepted from
/// `peer`. A v4-mapped IPv6 peer (seen by a dual-stack listener) is keyed as IPv4, like
/// `agent_common::peer_key_from_sock_ops` does.
pub fn peer_key(peer: SocketAddr) -> PeerKeyV1 {
    match peer.ip().to_canonical() {
        IpAddr::V4(ip) => PeerKeyV1 {
            family: AF_INET,
            port: u32::from(peer.port()),
            addr: [ipv4_raw(ip.octets()), 0, 0, 0],
        },
        IpAddr::V6(ip) => PeerKeyV1 {
            family: AF_INET6,
            port: u32::from(peer.port()),
            addr: ipv6_raw(ip.octets()),
        },
    }
}

impl Datapath {
    /// Loads, configures, pins and attaches everything, in that order: the programs only see
    /// connects once `CONFIG_V1` holds the listeners.
    pub fn start(cfg: &DatapathConfig) -> Result<Self, Error> {
        let value = config_value(cfg.listen_v4, cfg.listen_v6, cfg.exempt_cgroup_id)?;
        ensure_bpffs(&cfg.pin_dir)?;

        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| Error::Load {
            source: Box::new(e),
        })?;

        {
            let map = ebpf.map_mut(CONFIG_MAP).ok_or(Error::Missing {
                what: "map",
                name: CONFIG_MAP,
            })?;
            let mut config: Array<&mut MapData, ConfigV1> =
                Array::try_from(map).map_err(|source| Error::Map {
                    name: CONFIG_MAP,
                    source: Box::new(source),
                })?;
            config.set(0, value, 0).map_err(|source| Error::Map {
                name: CONFIG_MAP,
                source: Box::new(source),
            })?;
        }

        let mut pins = Pins {
            dir: cfg.pin_dir.clone(),
            paths: Vec::new(),
        };
        for name in [CONFIG_MAP, COOKIES_MAP, PEERS_MAP, COUNTERS_MAP] {
            let path = cfg.pin_dir.join(name);
            remove_stale_pin(&path);
            let map = ebpf.map(name).ok_or(Error::Missing { what: "map", name })?;
            map.pin(&path).map_err(|source| Error::Pin {
                name,
                path: path.clone(),
                source,
            })?;
            pins.paths.push(path);
        }

        let peers_map = ebpf.take_map(PEERS_MAP).ok_or(Error::Missing {
            what: "map",
            name: PEERS_MAP,
        })?;
        let peers = HashMap::try_from(peers_map).map_err(|source| Error::Map {
            name: PEERS_MAP,
            source: Box::new(source),
        })?;
        let counters_map = ebpf.take_map(COUNTERS_MAP).ok_or(Error::Missing {
            what: "map",
            name: COUNTERS_MAP,
        })?;
        let counters = PerCpuArray::try_from(counters_map).map_err(|source| Error::Map {
            name: COUNTERS_MAP,
            source: Box::new(source),
        })?;

        attach_all(&mut ebpf, &cfg.cgroup)?;
        Ok(Datapath {
            peers,
            counters,
            _ebpf: Mutex::new(ebpf),
            pins,
            cgroup: cfg.cgroup.clone(),
        })
    }

    /// The record of the connection whose client end is `peer`, if the kernel made one.
    pub fn lookup(&self, peer: SocketAddr) -> Result<Option<ConnInfoV1>, Error> {
        match self.peers.get(&peer_key(peer), 0) {
            Ok(info) => Ok(Some(info)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::Map {
                name: PEERS_MAP,
                source: Box::new(source),
            }),
        }
    }

    /// The per-CPU counters summed over CPUs, indexed by `COUNTER_*`.
    pub fn counters(&self) -> Result<[u64; COUNTER_COUNT as usize], Error> {
        let mut out = [0u64; COUNTER_COUNT as usize];
        for (index, slot) in (0u32..).zip(out.iter_mut()) {
            let values = self.counters.get(&index, 0).map_err(|source| Error::Map {
                name: COUNTERS_MAP,
                source: Box::new(source),
            })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pins.dir
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        tracing::info!(cgroup = %self.cgroup.display(), "detaching eBPF programs and removing pins");
    }
}

fn attach_all(ebpf: &mut Ebpf, cgroup_path: &Path) -> Result<(), Error> {
    let cgroup = File::open(cgroup_path).map_err(|source| Error::OpenCgroup {
        path: cgroup_path.to_owned(),
        source,
    })?;
    for (name, hook) in PROGRAMS {
        let program = ebpf.program_mut(name).ok_or(Error::Missing {
            what: "program",
            name,
        })?;
        let load_err = |source| Error::ProgramLoad {
            name,
            hook,
            source: Box::new(source),
        };
        let attach_err = |source| Error::Attach {
            name,
            hook,
            cgroup: cgroup_path.to_owned(),
            source: Box::new(source),
        };
        if hook == "sock_ops" {
            let prog: &mut SockOps = program.try_into().map_err(load_err)?;
            prog.load().map_err(load_err)?;
            prog.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(attach_err)?;
        } else {
            let prog: &mut CgroupSockAddr = program.try_into().map_err(load_err)?;
            prog.load().map_err(load_err)?;
            prog.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(attach_err)?;
        }
        tracing::info!(program = name, hook, cgroup = %cgroup_path.display(), "attached");
    }
    Ok(())
}

/// The pinned maps of one run; removed (with their directory) on drop.
struct Pins {
    dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        for path in &self.paths {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove pin");
                }
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn remove_stale_pin(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "removed a stale pin left by an earlier run")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove stale pin"),
    }
}

/// Makes sure `pin_dir` exists on a bpffs, mounting bpffs on its parent if that is the
/// conventional `/sys/fs/bpf` and nothing is mounted there yet.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), Error> {
    let parent = pin_dir.parent().ok_or_else(|| Error::Bpffs {
        path: pin_dir.to_owned(),
        reason: "has no parent directory".into(),
    })?;
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| Error::Bpffs {
        path: pin_dir.to_owned(),
        reason: format!("cannot read /proc/mounts: {e}"),
    })?;
    let on_bpffs = mounts.lines().any(|line| {
        let mut f = line.split_whitespace();
        let (_, mnt, fstype) = (f.next(), f.next(), f.next());
        fstype == Some("bpf") && mnt.is_some_and(|m| parent.starts_with(m))
    });
    if !on_bpffs {
        if parent != Path::new("/sys/fs/bpf") {
            return Err(Error::Bpffs {
                path: parent.to_owned(),
                reason: "is not on a bpf filesystem (mount one with `mount -t bpf bpf <dir>`)"
                    .into(),
            });
        }
        tracing::info!("mounting bpffs at /sys/fs/bpf");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .map_err(|e| Error::Bpffs {
                path: parent.to_owned(),
                reason: format!("cannot run mount: {e}"),
            })?;
        if !status.success() {
            return Err(Error::Bpffs {
                path: parent.to_owned(),
                reason: format!("`mount -t bpf bpf /sys/fs/bpf` failed with {status}"),
            });
        }
    }
    std::fs::create_dir_all(pin_dir).map_err(|e| Error::Bpffs {
        path: pin_dir.to_owned(),
        reason: format!("cannot create directory: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn config_needs_a_listener() {
        assert!(matches!(
            config_value(None, None, 0),
            Err(Error::NoListener)
        ));
        let v4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 8181);
        let cfg = config_value(Some(v4), None, 9).expect("v4 config");
        assert_eq!(cfg.exempt_cgroup_id, 9);
        assert_eq!(cfg.flags, CONFIG_FLAG_V4);
        assert_eq!(cfg.v4_port, 8181);
        assert_eq!(agent_common::ipv4_octets(cfg.v4_addr), [198, 18, 0, 1]);
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
}
