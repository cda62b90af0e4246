//! [`Datapath::check`]: the agent's periodic look at its own attachment, putting back what
//! was removed behind its back (see the module doc of `datapath`).

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use super::pin_lock::PinLock;
use iamlet_sys::bpf as bpf_sys;

use super::{bpffs, forward_guard, links, Datapath, Error};

/// What [`Datapath::check`] had to put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Repair {
    /// A program was no longer attached to the cgroup (or no longer in its link): attached
    /// or swapped back in.
    Program(&'static str),
    /// A link's pin was missing or named another link.
    LinkPin(&'static str),
    /// A map's pin was missing.
    MapPin(&'static str),
    /// Rules of the forwarding guard were missing.
    ForwardGuard,
}

impl Repair {
    /// What was repaired, for metrics (`program`, `link_pin`, `map_pin`, `forward_guard`).
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Repair::Program(_) => "program",
            Repair::LinkPin(_) => "link_pin",
            Repair::MapPin(_) => "map_pin",
            Repair::ForwardGuard => "forward_guard",
        }
    }
}

impl Datapath {
    /// Checks that this agent's programs are attached to the cgroup through its links, that
    /// the links and maps are pinned, and that the forwarding guard is in place; puts back
    /// whatever is missing and says what it did. Does nothing once a successor took over.
    pub(crate) fn check(&self) -> Result<Vec<Repair>, Error> {
        let mut repairs = Vec::new();
        if self.handed_over.load(Ordering::SeqCst) || !self.attached.load(Ordering::SeqCst) {
            return Ok(repairs);
        }
        let (cgroup, cgroup_id) = self.open_cgroup()?;
        // A removed pin directory comes back, locked again (else a second agent could take
        // the new one).
        bpffs::ensure(&self.pin_dir)?;
        {
            let mut lock = self
                .lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !lock.is_current(&self.pin_dir) {
                *lock = PinLock::acquire(&self.pin_dir)?;
                tracing::warn!(pin_dir = %self.pin_dir.display(), "the pin directory was re-created; locked it again");
            }
        }
        let mut ebpf = self
            .ebpf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut held = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((slot, hook), prog_id) in held.iter_mut().zip(links::HOOKS).zip(&self.prog_ids) {
            let attached =
                bpf_sys::prog_query(cgroup.as_fd(), hook.attach_type).map_err(|source| {
                    Error::Query {
                        hook: hook.section,
                        cgroup: self.cgroup.clone(),
                        source,
                    }
                })?;
            if !attached.contains(prog_id) {
                tracing::error!(program = hook.program, hook = hook.section, cgroup = %self.cgroup.display(), "this agent's program is no longer attached; putting it back");
                let (outcome, fd) = self.install(&mut ebpf, &hook, &cgroup, cgroup_id)?;
                tracing::warn!(program = hook.program, ?outcome, "program back in place");
                *slot = Some(fd);
                repairs.push(Repair::Program(hook.program));
            } else if let Some(fd) = slot.as_ref() {
                if links::repin(fd, &hook, &self.pin_dir)? {
                    tracing::warn!(program = hook.program, pin_dir = %self.pin_dir.display(), "the link's pin was removed; pinned it again (the program stayed attached)");
                    repairs.push(Repair::LinkPin(hook.program));
                }
            }
        }
        drop(held);
        for (name, data) in self.maps_to_pin(&ebpf) {
            let path = self.pin_dir.join(name);
            if path.exists() {
                continue;
            }
            let data = data.ok_or(Error::Missing { what: "map", name })?;
            data.pin(&path).map_err(|source| Error::Pin {
                name,
                path: path.clone(),
                source,
            })?;
            repairs.push(Repair::MapPin(name));
        }
        drop(ebpf);
        if self.forward_guard && forward_guard::install()? > 0 {
            tracing::warn!("rules of the forwarding guard were removed; added them again");
            repairs.push(Repair::ForwardGuard);
        }
        Ok(repairs)
    }
}
