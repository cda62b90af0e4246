//! The eBPF datapath: loads the embedded object, writes the listener addresses into
//! `CONFIG_V1`, pins the maps under the bpffs directory, puts the three programs on the pods'
//! cgroup through pinned links (see [`links`]), and answers "which cgroup made the connection
//! from this peer address".
//!
//! Start-up is two steps so that an upgrade loses no connection: [`Datapath::load`] (programs
//! and maps, nothing visible to pods yet), then, once this agent serves, [`Datapath::attach`],
//! which swaps its programs in. Until [`PREVIOUS_WINDOW`] after that, a connection the
//! predecessor's programs recorded is found in the predecessor's peers map.
//!
//! On exit ([`OnExit`]) the links either stay pinned (fail closed: pods get connection refused
//! from the metadata address until an agent runs again) or are removed with the pins. An agent
//! that handed over to a successor leaves everything to it.
//!
//! The agent owns its attachment while it runs:
//! * one agent per pin directory ([`pin_lock`]): a second one refuses to start unless it
//!   takes over through the handover;
//! * it keeps a descriptor of each link, so removing the pins detaches nothing;
//! * [`Datapath::check`] (run every second by the agent) puts back what was removed behind
//!   its back: link and map pins, a program detached from the cgroup or swapped out of its
//!   link (`bpftool link detach`, `BPF_LINK_UPDATE`), the node's forwarding guard
//!   ([`forward_guard`]); what it cannot put back makes the agent not ready.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_common::maps::{CONFIG_MAP, COOKIES_MAP, COUNTERS_MAP, LEGACY_COUNTERS_MAP, PEERS_MAP};
use agent_common::{
    ipv4_raw, ipv6_raw, ConfigV1, ConnInfoV1, PeerKeyV1, AF_INET, AF_INET6, CONFIG_FLAG_V4,
    CONFIG_FLAG_V6, COUNTER_COUNT, EXEMPT_SLOTS,
};
use aya::maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray};
use aya::programs::{CgroupSkb, CgroupSockAddr, ProgramError, SockOps};
use aya::{Ebpf, EbpfLoader};

mod bpffs;
pub(crate) mod forward_guard;
pub(crate) mod kernel_support;
pub(crate) mod links;
pub(crate) mod pin_lock;
mod repair;

use pin_lock::PinLock;

use crate::clock;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time (see build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("IAMLET_EBPF_OBJECT"));

/// How long after [`Datapath::attach`] the predecessor's peers map is still consulted: the
/// connections its programs recorded are accepted within milliseconds; later, its leftover
/// entries are stale.
pub(crate) const PREVIOUS_WINDOW: Duration = Duration::from_secs(30);

/// What an agent leaves in the kernel when it exits without a successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Links and maps stay pinned: pods' metadata connects are refused until an agent runs
    /// again (fail closed). Remove the pin directory to detach.
    Keep,
    /// Links and pins are removed: pods reach the real metadata service again.
    Detach,
}

/// Errors of loading, attaching and reading the datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this iamlet was built without its eBPF programs (the object was missing at build time): run `cargo xtask build-ebpf`, then build again")]
    NoPrograms,
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
    #[error("could not {what} the pinned link of {name} at {}: {source}", path.display())]
    Link {
        name: &'static str,
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
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
    #[error(transparent)]
    Lock(#[from] pin_lock::LockError),
    #[error(transparent)]
    Kernel(#[from] kernel_support::Unsupported),
    #[error("the node's forwarding guard: {0}")]
    ForwardGuard(#[from] forward_guard::GuardError),
    #[error("listing the programs attached to {} ({hook}): {source}", cgroup.display())]
    Query {
        hook: &'static str,
        cgroup: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the datapath needs to know.
#[derive(Clone, Debug)]
pub(crate) struct DatapathConfig {
    /// The cgroup directory to attach to (already validated: below the cgroup2 root).
    pub cgroup: PathBuf,
    /// Directory on a bpffs where the maps and links are pinned, e.g. `/sys/fs/bpf/iamlet`.
    pub pin_dir: PathBuf,
    /// IPv4 listener the metadata connects are rewritten to.
    pub listen_v4: Option<SocketAddrV4>,
    /// IPv6 listener the metadata connects are rewritten to.
    pub listen_v6: Option<SocketAddrV6>,
    /// cgroup ids whose connects are left alone: the agent's own when it runs inside the
    /// attached cgroup, and a predecessor's during a handover; 0 for none.
    pub exempt_cgroup_ids: [u64; EXEMPT_SLOTS],
    /// What to leave behind on exit.
    pub on_exit: OnExit,
    /// Install (and keep) the node's forwarding guard (see [`forward_guard`]).
    pub forward_guard: bool,
}

/// The loaded programs, the maps the agent reads, and what to leave behind on exit.
pub(crate) struct Datapath {
    peers: HashMap<MapData, PeerKeyV1, ConnInfoV1>,
    /// The predecessor's peers map (from its pin) and until when it is consulted; the deadline
    /// is set by [`Datapath::attach`].
    previous: Mutex<Option<Previous>>,
    counters: PerCpuArray<MapData, u64>,
    /// Owns the programs; locked only by [`Datapath::attach`].
    ebpf: Mutex<Ebpf>,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    on_exit: OnExit,
    /// A successor took over: leave every pin to it.
    handed_over: AtomicBool,
    /// The programs are on the cgroup (so detaching on exit has something to undo).
    attached: AtomicBool,
    /// The pin directory's lock, held for the agent's life (taken again on a re-created
    /// directory).
    lock: Mutex<PinLock>,
    /// This agent's link of each of [`links::HOOKS`], once attached.
    links: Mutex<Vec<Option<OwnedFd>>>,
    /// Kernel ids of this agent's programs, in [`links::HOOKS`] order.
    prog_ids: Vec<u32>,
    forward_guard: bool,
}

struct Previous {
    peers: HashMap<MapData, PeerKeyV1, ConnInfoV1>,
    until: Option<Instant>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("cgroup", &self.cgroup)
            .field("pin_dir", &self.pin_dir)
            .field("on_exit", &self.on_exit)
            .finish_non_exhaustive()
    }
}

/// Builds the `CONFIG_V1` value for the given listeners.
pub(crate) fn config_value(
    listen_v4: Option<SocketAddrV4>,
    listen_v6: Option<SocketAddrV6>,
    exempt_cgroup_ids: [u64; EXEMPT_SLOTS],
) -> Result<ConfigV1, Error> {
    let mut cfg = ConfigV1 {
        exempt_cgroup_ids,
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
pub(crate) fn peer_key(peer: SocketAddr) -> PeerKeyV1 {
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

fn map_err(name: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map {
        name,
        source: Box::new(source),
    }
}

impl Datapath {
    /// Takes the pin directory (a predecessor's lock when it handed one over, else a fresh
    /// one: another live agent makes this fail), loads and configures the programs. Pods see
    /// nothing of it until [`Datapath::attach`], which also pins this agent's maps in place of
    /// a predecessor's (whose peers map is kept open for [`Datapath::lookup`]).
    pub(crate) fn load(
        cfg: &DatapathConfig,
        inherited_lock: Option<OwnedFd>,
    ) -> Result<Self, Error> {
        if EBPF_OBJECT.is_empty() {
            return Err(Error::NoPrograms);
        }
        kernel_support::lift_memlock_limit();
        kernel_support::check()?;
        let value = config_value(cfg.listen_v4, cfg.listen_v6, cfg.exempt_cgroup_ids)?;
        bpffs::ensure(&cfg.pin_dir)?;
        let lock = match inherited_lock {
            Some(fd) => PinLock::inherit(fd, &cfg.pin_dir)?,
            None => PinLock::acquire(&cfg.pin_dir)?,
        };

        let mut ebpf = load_object(EBPF_OBJECT)?;
        {
            let map = ebpf.map_mut(CONFIG_MAP).ok_or(Error::Missing {
                what: "map",
                name: CONFIG_MAP,
            })?;
            let mut config: Array<&mut MapData, ConfigV1> =
                Array::try_from(map).map_err(map_err(CONFIG_MAP))?;
            config.set(0, value, 0).map_err(map_err(CONFIG_MAP))?;
        }
        let mut prog_ids = Vec::new();
        for hook in links::HOOKS {
            prog_ids.push(load_program(&mut ebpf, &hook)?);
        }

        let [own, predecessor] = cfg.exempt_cgroup_ids;
        bpffs::exempt_in_pinned_config(&cfg.pin_dir.join(CONFIG_MAP), own, predecessor);
        let previous = bpffs::open_previous_peers(&cfg.pin_dir.join(PEERS_MAP)).map(|peers| {
            tracing::info!("found a predecessor's peers map; consulting it during the switch-over");
            Previous { peers, until: None }
        });
        let peers_map = ebpf.take_map(PEERS_MAP).ok_or(Error::Missing {
            what: "map",
            name: PEERS_MAP,
        })?;
        let peers = HashMap::try_from(peers_map).map_err(map_err(PEERS_MAP))?;
        let counters_map = ebpf.take_map(COUNTERS_MAP).ok_or(Error::Missing {
            what: "map",
            name: COUNTERS_MAP,
        })?;
        let counters = PerCpuArray::try_from(counters_map).map_err(map_err(COUNTERS_MAP))?;
        Ok(Datapath {
            peers,
            previous: Mutex::new(previous),
            counters,
            ebpf: Mutex::new(ebpf),
            cgroup: cfg.cgroup.clone(),
            pin_dir: cfg.pin_dir.clone(),
            on_exit: cfg.on_exit,
            handed_over: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            lock: Mutex::new(lock),
            links: Mutex::new(links::HOOKS.iter().map(|_| None).collect()),
            prog_ids,
            forward_guard: cfg.forward_guard,
        })
    }

    /// The attached cgroup, opened, and its id.
    fn open_cgroup(&self) -> Result<(File, u64), Error> {
        let cgroup = File::open(&self.cgroup).map_err(|source| Error::OpenCgroup {
            path: self.cgroup.clone(),
            source,
        })?;
        let id = crate::caller::cgroup::cgroup_id(&self.cgroup).map_err(|e| Error::OpenCgroup {
            path: self.cgroup.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok((cgroup, id))
    }

    /// The maps this agent pins, by name.
    fn maps_to_pin<'a>(&'a self, ebpf: &'a Ebpf) -> [(&'static str, Option<&'a MapData>); 4] {
        [
            (CONFIG_MAP, ebpf.map(CONFIG_MAP).and_then(map_data)),
            (COOKIES_MAP, ebpf.map(COOKIES_MAP).and_then(map_data)),
            (PEERS_MAP, Some(IterableMap::map(&self.peers))),
            (COUNTERS_MAP, Some(IterableMap::map(&self.counters))),
        ]
    }

    /// Puts this agent's program of `hook` on the cgroup (see [`links::install`]).
    fn install(
        &self,
        ebpf: &mut Ebpf,
        hook: &links::Hook,
        cgroup: &File,
        cgroup_id: u64,
    ) -> Result<(links::Outcome, OwnedFd), Error> {
        let program = ebpf.program_mut(hook.program).ok_or(Error::Missing {
            what: "program",
            name: hook.program,
        })?;
        links::install(
            program,
            hook,
            cgroup,
            &self.cgroup,
            cgroup_id,
            &self.pin_dir,
        )
    }

    /// A copy of the pin directory's locked descriptor, for a successor.
    pub(crate) fn share_lock(&self) -> io::Result<OwnedFd> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .share()
    }

    /// Puts the programs on the cgroup: adopts the pinned links of a predecessor (swapping
    /// the programs atomically) or attaches and pins new ones.
    pub(crate) fn attach(&self) -> Result<(), Error> {
        let (cgroup, cgroup_id) = self.open_cgroup()?;
        let mut ebpf = self
            .ebpf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // This agent's maps replace the predecessor's pins only now that it takes over, so
        // an agent that fails to start leaves the running one's pins alone.
        let pins = self.maps_to_pin(&ebpf);
        bpffs::remove_pin(&self.pin_dir.join(LEGACY_COUNTERS_MAP));
        for (name, data) in pins {
            let data = data.ok_or(Error::Missing { what: "map", name })?;
            let path = self.pin_dir.join(name);
            bpffs::remove_pin(&path);
            data.pin(&path).map_err(|source| Error::Pin {
                name,
                path: path.clone(),
                source,
            })?;
        }
        if self.forward_guard {
            let added = forward_guard::install()?;
            tracing::info!(
                added,
                priority = forward_guard::GUARD_PRIORITY,
                "forwarding guard in place: the node forwards nothing to the metadata service"
            );
        }
        let mut held = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (slot, hook) in held.iter_mut().zip(links::HOOKS) {
            let (outcome, fd) = self.install(&mut ebpf, &hook, &cgroup, cgroup_id)?;
            *slot = Some(fd);
            self.attached.store(true, Ordering::SeqCst);
            tracing::info!(program = hook.program, hook = hook.section, cgroup = %self.cgroup.display(), ?outcome, "program in place");
        }
        drop(held);
        if let Some(previous) = self
            .previous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            previous.until = Some(clock::now() + PREVIOUS_WINDOW);
        }
        Ok(())
    }

    /// Whether a successor has this agent's listeners and adopts its links (exit then leaves
    /// every pin), or went away before it touched them.
    pub(crate) fn set_handed_over(&self, handed_over: bool) {
        self.handed_over.store(handed_over, Ordering::SeqCst);
    }

    /// The record of the connection whose client end is `peer`, if the kernel made one.
    pub(crate) fn lookup(&self, peer: SocketAddr) -> Result<Option<ConnInfoV1>, Error> {
        let key = peer_key(peer);
        match self.peers.get(&key, 0) {
            Ok(info) => return Ok(Some(info)),
            Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(map_err(PEERS_MAP)(source)),
        }
        let mut previous = self
            .previous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(prev) = previous.as_ref() else {
            return Ok(None);
        };
        if prev.until.is_some_and(|until| clock::now() > until) {
            tracing::info!("the predecessor's peers map is no longer consulted");
            *previous = None;
            return Ok(None);
        }
        match prev.peers.get(&key, 0) {
            Ok(info) => Ok(Some(info)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_err(PEERS_MAP)(source)),
        }
    }

    /// The per-CPU counters summed over CPUs, indexed by `COUNTER_*`.
    pub(crate) fn counters(&self) -> Result<[u64; COUNTER_COUNT as usize], Error> {
        let mut out = [0u64; COUNTER_COUNT as usize];
        for (index, slot) in (0u32..).zip(out.iter_mut()) {
            let values = self
                .counters
                .get(&index, 0)
                .map_err(map_err(COUNTERS_MAP))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let cgroup = self.cgroup.display();
        if self.handed_over.load(Ordering::SeqCst) {
            tracing::info!(%cgroup, "handed over: the successor owns the links and pins");
            return;
        }
        if !self.attached.load(Ordering::SeqCst) {
            // Never attached (start-up failed before): the pins may be a predecessor's links.
            return;
        }
        match self.on_exit {
            OnExit::Keep => {
                // The links outlive this process only through their pins: put back any that
                // went missing since the last check.
                if let Err(e) = self.check() {
                    tracing::error!(error = %e, "could not check the pins before exiting");
                }
                tracing::warn!(
                    %cgroup,
                    pin_dir = %self.pin_dir.display(),
                    "leaving the programs attached (--on-exit keep): pods' metadata connects are refused until an agent runs again; remove the pin directory to detach"
                );
            }
            OnExit::Detach => {
                let links = links::unpin_all(&self.pin_dir);
                bpffs::remove_map_pins(&self.pin_dir);
                if self.forward_guard {
                    match forward_guard::remove() {
                        Ok(rules) => tracing::info!(rules, "removed the forwarding guard"),
                        Err(e) => {
                            tracing::error!(error = %e, "could not remove the forwarding guard");
                        }
                    }
                }
                tracing::info!(%cgroup, links, "detached the programs and removed the pins");
            }
        }
    }
}

/// The map data behind a loaded map.
fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(d) | Map::LruHashMap(d) | Map::HashMap(d) | Map::PerCpuArray(d) => Some(d),
        _ => None,
    }
}

/// Parses and loads the embedded object (an empty stub, embedded when the object was missing
/// at build time, is refused with what to do).
///
/// The kernel's own BTF is not read: iamlet's programs have no CO-RE relocations (a unit
/// test checks the object), and aya's default loader would parse all of
/// `/sys/kernel/btf/vmlinux` (5.5 MB on 6.18, some 150,000 types) only to find nothing to
/// relocate. That parse was most of the agent's start-up memory peak.
fn load_object(object: &[u8]) -> Result<Ebpf, Error> {
    if object.is_empty() {
        return Err(Error::NoPrograms);
    }
    EbpfLoader::new()
        .btf(None)
        .load(object)
        .map_err(|e| Error::Load {
            source: Box::new(e),
        })
}

/// Loads the program of `hook` and returns its kernel id.
fn load_program(ebpf: &mut Ebpf, hook: &links::Hook) -> Result<u32, Error> {
    let program = ebpf.program_mut(hook.program).ok_or(Error::Missing {
        what: "program",
        name: hook.program,
    })?;
    let load_err = |source| Error::ProgramLoad {
        name: hook.program,
        hook: hook.section,
        source: Box::new(source),
    };
    match hook.section {
        "sock_ops" => {
            let prog: &mut SockOps = (&mut *program).try_into().map_err(load_err)?;
            prog.load().map_err(load_err)?;
        }
        "cgroup_skb/egress" => {
            let prog: &mut CgroupSkb = (&mut *program).try_into().map_err(load_err)?;
            prog.load().map_err(load_err)?;
        }
        _ => {
            let prog: &mut CgroupSockAddr = (&mut *program).try_into().map_err(load_err)?;
            prog.load().map_err(load_err)?;
        }
    }
    Ok(program.info().map_err(load_err)?.id())
}

#[cfg(test)]
mod tests;
