//! The programs' cgroup links, pinned under the bpffs directory (`link_<program>`) so that they
//! outlive the agent: a crashed, killed or upgrading agent leaves pods redirected to its
//! listener address (connection refused while nobody listens: fail closed), never to the real
//! metadata service.
//!
//! Starting, an agent either adopts the pinned link of each hook, swapping its own program in
//! with `BPF_LINK_UPDATE` (atomic: every connect sees the old or the new program, never
//! neither), or, when there is none (or it targets another cgroup), attaches a new link in
//! single mode and pins it. Either way the agent keeps a descriptor of the link while it runs,
//! so removing the pin cannot detach anything behind its back (see `Datapath::check`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSkbAttachType, Program};

use super::Error;
use iamlet_sys::bpf::{self as bpf_sys, BPF_LINK_TYPE_CGROUP};

/// One hook: program name in the object, hook, kernel attach type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hook {
    /// Program name in the eBPF object.
    pub program: &'static str,
    /// Section / hook name, for messages.
    pub section: &'static str,
    /// `enum bpf_attach_type` value of the hook.
    pub attach_type: u32,
    /// `enum bpf_prog_type` value of its program.
    pub prog_type: u32,
    /// The first Linux release with this program and attach type.
    pub since: &'static str,
}

/// The four hooks, in attach order. The egress filter comes first, so that no moment exists
/// in which a pod's connects are watched but its other packets are not.
pub(crate) const HOOKS: [Hook; 4] = [
    Hook {
        program: "iamlet_egress",
        section: "cgroup_skb/egress",
        attach_type: 1, // BPF_CGROUP_INET_EGRESS
        prog_type: 8,   // BPF_PROG_TYPE_CGROUP_SKB
        since: "4.10",
    },
    Hook {
        program: "iamlet_connect4",
        section: "cgroup/connect4",
        attach_type: 10, // BPF_CGROUP_INET4_CONNECT
        prog_type: 18,   // BPF_PROG_TYPE_CGROUP_SOCK_ADDR
        since: "4.17",
    },
    Hook {
        program: "iamlet_connect6",
        section: "cgroup/connect6",
        attach_type: 11, // BPF_CGROUP_INET6_CONNECT
        prog_type: 18,   // BPF_PROG_TYPE_CGROUP_SOCK_ADDR
        since: "4.17",
    },
    Hook {
        program: "iamlet_sock_ops",
        section: "sock_ops",
        attach_type: 3, // BPF_CGROUP_SOCK_OPS
        prog_type: 13,  // BPF_PROG_TYPE_SOCK_OPS
        since: "4.13",
    },
];

/// Where the link of `hook` is pinned.
pub(crate) fn link_pin(pin_dir: &Path, hook: &Hook) -> PathBuf {
    pin_dir.join(format!("link_{}", hook.program))
}

/// What happened to one hook's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A new link was attached and pinned.
    Attached,
    /// The pinned link of an earlier agent now runs this agent's program.
    Adopted,
}

/// Puts `program` (loaded) on `hook` of `cgroup`, adopting a pinned link if one targets it;
/// returns what happened and a descriptor of the link (pinned either way).
pub(crate) fn install(
    program: &mut Program,
    hook: &Hook,
    cgroup: &File,
    cgroup_path: &Path,
    cgroup_id: u64,
    pin_dir: &Path,
) -> Result<(Outcome, OwnedFd), Error> {
    let pin = link_pin(pin_dir, hook);
    let link_err = |what: &'static str, source: io::Error| Error::Link {
        name: hook.program,
        path: pin.clone(),
        what,
        source,
    };
    if pin.exists() {
        match adoptable(&pin, hook, cgroup_id) {
            Ok(Some(link)) => {
                let prog = program.fd().map_err(|source| Error::ProgramLoad {
                    name: hook.program,
                    hook: hook.section,
                    source: Box::new(source),
                })?;
                bpf_sys::link_update(link.as_fd(), prog.as_fd())
                    .map_err(|e| link_err("replace the program of", e))?;
                return Ok((Outcome::Adopted, link));
            }
            Ok(None) => {
                tracing::warn!(pin = %pin.display(), "pinned link targets another cgroup or a removed one; replacing it");
            }
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "unusable pinned link; replacing it");
            }
        }
        // Unpinning the last reference detaches the stale link.
        std::fs::remove_file(&pin).map_err(|e| link_err("remove", e))?;
    }
    let attach_err = |source| Error::Attach {
        name: hook.program,
        hook: hook.section,
        cgroup: cgroup_path.to_owned(),
        source: Box::new(source),
    };
    let link: FdLink = match program {
        Program::SockOps(p) => {
            let id = p
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link = p.take_link(id).map_err(attach_err)?;
            FdLink::try_from(link).map_err(|e| link_err("own", io::Error::other(e)))?
        }
        Program::CgroupSockAddr(p) => {
            let id = p
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link = p.take_link(id).map_err(attach_err)?;
            FdLink::try_from(link).map_err(|e| link_err("own", io::Error::other(e)))?
        }
        Program::CgroupSkb(p) => {
            let id = p
                .attach(
                    cgroup,
                    CgroupSkbAttachType::Egress,
                    CgroupAttachMode::Single,
                )
                .map_err(attach_err)?;
            let link = p.take_link(id).map_err(attach_err)?;
            FdLink::try_from(link).map_err(|e| link_err("own", io::Error::other(e)))?
        }
        _ => {
            return Err(Error::Missing {
                what: "cgroup program",
                name: hook.program,
            })
        }
    };
    link.pin(&pin)
        .map_err(|e| link_err("pin", io::Error::other(e)))?;
    let fd = bpf_sys::obj_get(&pin).map_err(|e| link_err("open", e))?;
    Ok((Outcome::Attached, fd))
}

/// Pins the link `fd` at `hook`'s pin path again (a pin that is missing or names another
/// link is replaced); returns whether anything changed.
pub(crate) fn repin(fd: &OwnedFd, hook: &Hook, pin_dir: &Path) -> Result<bool, Error> {
    let pin = link_pin(pin_dir, hook);
    let link_err = |what: &'static str, source: io::Error| Error::Link {
        name: hook.program,
        path: pin.clone(),
        what,
        source,
    };
    let ours = bpf_sys::cgroup_link_info(fd.as_fd()).map_err(|e| link_err("read", e))?;
    if let Ok(pinned) = bpf_sys::obj_get(&pin) {
        if bpf_sys::cgroup_link_info(pinned.as_fd()).is_ok_and(|info| info.id == ours.id) {
            return Ok(false);
        }
        std::fs::remove_file(&pin).map_err(|e| link_err("remove", e))?;
    }
    bpf_sys::obj_pin(fd.as_fd(), &pin).map_err(|e| link_err("pin", e))?;
    Ok(true)
}

/// The pinned link at `pin`, if it is a live cgroup link of `hook`'s type on `cgroup_id`.
fn adoptable(pin: &Path, hook: &Hook, cgroup_id: u64) -> io::Result<Option<OwnedFd>> {
    let fd = bpf_sys::obj_get(pin)?;
    let info = bpf_sys::cgroup_link_info(fd.as_fd())?;
    let ours = info.link_type == BPF_LINK_TYPE_CGROUP
        && info.cgroup_id == cgroup_id
        && info.attach_type == hook.attach_type;
    Ok(ours.then_some(fd))
}

/// Removes the pinned links (detaching them); returns how many were removed.
pub(crate) fn unpin_all(pin_dir: &Path) -> usize {
    HOOKS
        .iter()
        .filter(|hook| {
            let pin = link_pin(pin_dir, hook);
            match std::fs::remove_file(&pin) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    tracing::warn!(pin = %pin.display(), error = %e, "could not remove pinned link");
                    false
                }
            }
        })
        .count()
}
