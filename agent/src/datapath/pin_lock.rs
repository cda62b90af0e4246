//! One agent per pin directory: an exclusive `flock` on the directory itself, held for the
//! agent's life.
//!
//! A second agent started on the same `--bpffs-dir` cannot take the lock and refuses to start,
//! naming the holder's pid, unless it takes over through the handover: then the running agent
//! passes its locked directory descriptor along (`SCM_RIGHTS`), and since a `flock` belongs to
//! the open file description, both hold the same lock until the old one exits. The kernel
//! releases it when the holder dies, so a crashed agent's successor starts normally.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Why the pin directory cannot be owned.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the pin directory {} to lock it: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another iamlet agent{} holds the pin directory {}: two agents must not drive the same programs and links. Stop it, or start this one with the same --handover-socket so that it takes over", holder.map(|p| format!(" (pid {p})")).unwrap_or_default(), path.display())]
    Held { path: PathBuf, holder: Option<u32> },
    #[error("cannot lock the pin directory {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The held lock (released when dropped, or shared with a successor).
#[derive(Debug)]
pub(crate) struct PinLock {
    dir: OwnedFd,
}

impl PinLock {
    /// Takes the lock on `pin_dir` (which exists), or fails at once if another process holds
    /// it.
    pub(crate) fn acquire(pin_dir: &Path) -> Result<Self, LockError> {
        let dir = File::open(pin_dir).map_err(|source| LockError::Open {
            path: pin_dir.to_owned(),
            source,
        })?;
        match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(PinLock { dir: dir.into() }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(LockError::Held {
                path: pin_dir.to_owned(),
                holder: dir.metadata().ok().and_then(|m| holder_pid(m.ino())),
            }),
            Err(e) => Err(LockError::Lock {
                path: pin_dir.to_owned(),
                source: e.into(),
            }),
        }
    }

    /// A lock a predecessor handed over (its locked directory descriptor): checked to be the
    /// directory `pin_dir` and to carry the lock.
    pub(crate) fn inherit(fd: OwnedFd, pin_dir: &Path) -> Result<Self, LockError> {
        let held = |holder| LockError::Held {
            path: pin_dir.to_owned(),
            holder,
        };
        let ours = std::fs::metadata(pin_dir).map_err(|source| LockError::Open {
            path: pin_dir.to_owned(),
            source,
        })?;
        let theirs = rustix::fs::fstat(&fd).map_err(|e| LockError::Lock {
            path: pin_dir.to_owned(),
            source: e.into(),
        })?;
        if theirs.st_ino != ours.ino() || theirs.st_dev != ours.dev() {
            return Err(held(None));
        }
        // Taking the lock again through the same open file description succeeds (it is
        // already ours); through any other it would not.
        flock(&fd, FlockOperation::NonBlockingLockExclusive).map_err(|_| held(None))?;
        Ok(PinLock { dir: fd })
    }

    /// Whether the locked directory is still the one at `pin_dir` (someone may have removed
    /// and re-created it).
    pub(crate) fn is_current(&self, pin_dir: &Path) -> bool {
        let (Ok(ours), Ok(there)) = (rustix::fs::fstat(&self.dir), std::fs::metadata(pin_dir))
        else {
            return false;
        };
        ours.st_ino == there.ino() && ours.st_dev == there.dev()
    }

    /// A copy of the locked descriptor, to hand to a successor.
    pub(crate) fn share(&self) -> io::Result<OwnedFd> {
        self.dir.as_fd().try_clone_to_owned()
    }
}

/// The pid holding a `flock` on inode `ino`, from `/proc/locks` (also how `iamlet doctor`
/// finds the agent).
pub(crate) fn holder_pid(ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    parse_locks(&locks, ino)
}

/// `/proc/locks` lines look like `1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`.
fn parse_locks(text: &str, ino: u64) -> Option<u32> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, dev_ino) = (f.get(1)?, f.get(4)?, f.get(5)?);
        let line_ino: u64 = dev_ino.rsplit(':').next()?.parse().ok()?;
        (*kind == "FLOCK" && line_ino == ino)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = std::env::temp_dir().join(format!("iamlet-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let first = PinLock::acquire(&dir).expect("first");
        match PinLock::acquire(&dir) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
        // The holder's descriptor, handed over, carries the lock.
        let shared = first.share().expect("share");
        let inherited = PinLock::inherit(shared, &dir).expect("inherit");
        drop(first);
        assert!(
            PinLock::acquire(&dir).is_err(),
            "the inherited copy still holds it"
        );
        drop(inherited);
        let again = PinLock::acquire(&dir).expect("released when the last copy closes");
        drop(again);
        // A descriptor of another directory is refused.
        let other = File::open(std::env::temp_dir()).expect("tmp");
        assert!(PinLock::inherit(other.into(), &dir).is_err());
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn proc_locks_lines() {
        let text = "1: POSIX  ADVISORY  WRITE 10 00:19:77 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4242 00:2a:5678 0 EOF\n";
        assert_eq!(parse_locks(text, 5678), Some(4242));
        assert_eq!(parse_locks(text, 77), None);
        assert_eq!(parse_locks("garbage", 1), None);
    }
}
