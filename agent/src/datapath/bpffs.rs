//! The pin directory on a bpffs: mounting it if needed, and the map pins.

use std::io;
use std::path::Path;
use std::process::Command;

use agent_common::maps::{CONFIG_MAP, COOKIES_MAP, COUNTERS_MAP, LEGACY_COUNTERS_MAP, PEERS_MAP};
use agent_common::{ConnInfoV1, PeerKeyV1};
use aya::maps::{HashMap, MapData};

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
