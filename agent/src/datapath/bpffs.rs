//! The pin directory on a bpffs: mounting it if needed, and the map pins.

use std::io;
use std::path::Path;
use std::process::Command;

use agent_common::maps::{CONFIG_MAP, COOKIES_MAP, COUNTERS_MAP, LEGACY_COUNTERS_MAP, PEERS_MAP};
use agent_common::{ConfigV1, ConnInfoV1, PeerKeyV1};
use aya::maps::{Array, HashMap, MapData};

use super::Error;

/// Removes one pin, if present.
pub(crate) fn remove_pin(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "replaced an earlier agent's pin"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove pin"),
    }
}

/// Removes this agent's map pins, and the directory once it is empty.
pub(crate) fn remove_map_pins(pin_dir: &Path) {
    for name in [
        CONFIG_MAP,
        COOKIES_MAP,
        PEERS_MAP,
        COUNTERS_MAP,
        LEGACY_COUNTERS_MAP,
    ] {
        remove_pin(&pin_dir.join(name));
    }
    let _ = std::fs::remove_dir(pin_dir);
}

/// The peers map an earlier agent pinned at `path`, if there is a usable one.
pub(crate) fn open_previous_peers(path: &Path) -> Option<HashMap<MapData, PeerKeyV1, ConnInfoV1>> {
    if !path.exists() {
        return None;
    }
    let opened = MapData::from_pin(path)
        .and_then(aya::maps::Map::from_map_data)
        .and_then(HashMap::try_from);
    match opened {
        Ok(map) => Some(map),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable pinned peers map");
            None
        }
    }
}

/// Exempts this agent's cgroup `own` in the config map an earlier agent pinned at `path`,
/// whose programs stay attached until [`super::Datapath::attach`] replaces them; `keep` is that
/// agent's own cgroup id (0 when it is gone or runs outside the attached cgroup). Without
/// this, the new agent's connects to the metadata service while it starts (the node's
/// `iam/info` for bare role names, its upstream token) would be redirected to the proxy.
/// Only the exemption slots change; the programs read the rest as before.
pub(crate) fn exempt_in_pinned_config(path: &Path, own: u64, keep: u64) {
    if own == 0 || !path.exists() {
        return;
    }
    let opened = MapData::from_pin(path)
        .and_then(aya::maps::Map::from_map_data)
        .and_then(Array::<MapData, ConfigV1>::try_from);
    let mut config = match opened {
        Ok(map) => map,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not open the pinned config map to exempt this agent; its own metadata requests may be redirected until it takes over");
            return;
        }
    };
    let written = config
        .get(&0, 0)
        .and_then(|current| match current.with_exemption(own, keep) {
            Some(next) => config.set(0, next, 0).map(|()| true),
            None => Ok(false),
        });
    match written {
        Ok(true) => tracing::info!(
            cgroup_id = own,
            "exempted this agent in the attached programs' config until its own replace them"
        ),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not exempt this agent in the pinned config map; its own metadata requests may be redirected until it takes over");
        }
    }
}

/// Makes sure `pin_dir` exists on a bpffs, mounting bpffs on its parent if that is the
/// conventional `/sys/fs/bpf` and nothing is mounted there yet.
pub(crate) fn ensure(pin_dir: &Path) -> Result<(), Error> {
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
