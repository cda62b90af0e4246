//! Asking the kernel's fair scheduler for a shorter time slice for the calling thread
//! (`sched_setattr(2)`).
//!
//! Since Linux 6.12 the fair scheduler (EEVDF) takes a `SCHED_OTHER` thread's `sched_runtime`
//! as the slice it asks for (0.1 to 100 ms; the default is the base slice, 0.75 ms times
//! 1 + log2 of the CPUs, up to 3 ms). A shorter slice gives the thread an earlier deadline when
//! it wakes, so it runs sooner, and for no longer: what a thread that does a few microseconds of
//! work per wake-up wants. Older kernels take the call and ignore the field.

use std::time::Duration;

/// `struct sched_attr` of `sched_setattr(2)` (its first version, 48 bytes, plus the
/// utilisation clamps of the second, 56).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// `SCHED_OTHER` (`SCHED_NORMAL`).
const SCHED_OTHER: u32 = 0;

/// What became of the request for a shorter slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceOutcome {
    /// The thread asks for the slice now (a kernel before 6.12 keeps it and ignores it).
    Set,
    /// The thread is not under `SCHED_OTHER` (someone chose another policy): left alone.
    OtherPolicy,
}

/// Asks the scheduler for `slice` as the calling thread's time slice, keeping its policy and
/// nice value. Only a `SCHED_OTHER` thread is changed.
///
/// # Errors
/// The `sched_getattr` or `sched_setattr` error (for example `ENOSYS` under a sandbox that
/// refuses them).
pub fn request_slice(slice: Duration) -> std::io::Result<SliceOutcome> {
    let size = u32::try_from(std::mem::size_of::<SchedAttr>()).unwrap_or(u32::MAX);
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a live, writable `struct sched_attr` of `size` bytes; pid 0 is the
    // calling thread, and the kernel writes at most `size` bytes into it.
    let got = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            std::ptr::from_mut(&mut attr),
            size,
            0,
        )
    };
    if got != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.policy != SCHED_OTHER {
        return Ok(SliceOutcome::OtherPolicy);
    }
    attr.size = size;
    attr.flags = 0;
    attr.runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a valid `struct sched_attr` whose `size` says how many bytes it has;
    // the kernel only reads it. pid 0 is the calling thread.
    let set = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, std::ptr::from_ref(&attr), 0) };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SliceOutcome::Set)
}

/// The calling thread's requested slice and nice value (`sched_getattr(2)`), for tests.
///
/// # Errors
/// The `sched_getattr` error.
pub fn current_slice_and_nice() -> std::io::Result<(Duration, i32)> {
    let size = u32::try_from(std::mem::size_of::<SchedAttr>()).unwrap_or(u32::MAX);
    let mut attr = SchedAttr::default();
    // SAFETY: as in `request_slice`.
    let got = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            std::ptr::from_mut(&mut attr),
            size,
            0,
        )
    };
    if got != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((Duration::from_nanos(attr.runtime), attr.nice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_is_asked_for_and_the_nice_value_kept() {
        std::thread::spawn(|| {
            // SAFETY: setpriority on the calling thread (who 0 with PRIO_PROCESS is the
            // calling thread on Linux) only changes its nice value; raising it needs no
            // privilege.
            let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 3) };
            assert_eq!(niced, 0);
            let outcome = request_slice(Duration::from_micros(200)).expect("sched_setattr");
            assert_eq!(outcome, SliceOutcome::Set);
            let (slice, nice) = current_slice_and_nice().expect("sched_getattr");
            assert_eq!(nice, 3, "the nice value is kept");
            // Kernels from 6.12 report the slice asked for; older ones 0 (their fair
            // scheduler has no slice of a thread's own).
            assert!(
                slice == Duration::from_micros(200) || slice.is_zero(),
                "{slice:?}"
            );
        })
        .join()
        .expect("the test thread");
    }
}
