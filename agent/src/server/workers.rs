//! The runtimes a server's connections are spread over: each accepted connection goes to the
//! accept loop's own runtime or to one of the others, and stays there.
//!
//! **Which one: by the client's CPU.** The kernel says on which CPU it handled the client's
//! handshake (`SO_INCOMING_CPU`); over a veth or loopback that is the CPU the client ran on
//! when it connected. Every connection made from one CPU goes to the same runtime: the first
//! CPU seen to the accept loop's, the next new one to the next runtime, and so on around, so
//! the CPUs clients use are shared out evenly whatever their numbers (pods pinned to every
//! other CPU included). A client thread's connections then share one serving thread, and the
//! two wake only each other: the scheduler keeps such a pair on one CPU, where a request and
//! its answer cost a switch between them and nothing more. Handed out in turn instead, a
//! client thread's connections were served by every thread, each serving thread woke every
//! client thread, and with the CPUs shared the threads kept moving between CPUs and left CPUs
//! idle while they waited for each other (README, "Where the tail comes from"). When the
//! kernel does not say, connections go in turn.
//!
//! The proxy serves on current-thread runtimes (see `proxy_thread`): one per CPU the agent
//! may use, up to a few. With one, nothing changes hands; with more, a connection handed to
//! another runtime costs two `epoll_ctl` calls (it leaves the accept loop's reactor and joins
//! the other's), once per connection, and its requests then cost what they cost on one
//! thread.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

/// The client CPUs remembered by number; a connection from a CPU numbered higher goes to its
/// number modulo the runtimes.
const CPUS_REMEMBERED: usize = 1024;

/// Which runtime (0: the accept loop's) each client CPU's connections go to.
#[derive(Debug)]
struct CpuPlacement {
    runtimes: usize,
    /// Per CPU: 0 not seen yet, else its runtime's index + 1.
    assigned: Box<[AtomicU8]>,
    /// The runtime the next CPU seen for the first time gets.
    next_new: AtomicUsize,
    /// The runtime the next connection from an unknown CPU gets.
    next_unknown: AtomicUsize,
}

impl CpuPlacement {
    /// Placement over `runtimes` (at most 255: `--proxy-threads` stops at 64).
    fn new(runtimes: usize) -> Self {
        let remembered = if runtimes > 1 && u8::try_from(runtimes).is_ok() {
            CPUS_REMEMBERED
        } else {
            0
        };
        CpuPlacement {
            runtimes: runtimes.max(1),
            assigned: (0..remembered).map(|_| AtomicU8::new(0)).collect(),
            next_new: AtomicUsize::new(0),
            next_unknown: AtomicUsize::new(0),
        }
    }

    /// The runtime for a connection from `cpu` (`None`: not known).
    fn runtime(&self, cpu: Option<u32>) -> usize {
        let Some(cpu) = cpu.and_then(|cpu| usize::try_from(cpu).ok()) else {
            return self.next_unknown.fetch_add(1, Ordering::Relaxed) % self.runtimes;
        };
        let Some(slot) = self.assigned.get(cpu) else {
            return cpu % self.runtimes;
        };
        match slot.load(Ordering::Relaxed) {
            0 => {
                let runtime = self.next_new.fetch_add(1, Ordering::Relaxed) % self.runtimes;
                // `new` keeps the table empty unless every index fits.
                let mark = u8::try_from(runtime + 1).unwrap_or(u8::MAX);
                // Two accept loops (v4, v6) may meet a new CPU at once: the first one's
                // choice stands.
                match slot.compare_exchange(0, mark, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => runtime,
                    Err(theirs) => usize::from(theirs) - 1,
                }
            }
            mark => usize::from(mark) - 1,
        }
    }
}

/// The other runtimes of a server (none: all its connections stay on the accept loop's).
#[derive(Clone, Debug)]
pub(crate) struct Workers {
    others: Arc<[Handle]>,
    placement: Arc<CpuPlacement>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers::new(Vec::new())
    }
}

impl Workers {
    /// Connections spread over the accept loop's runtime and `others`.
    pub(crate) fn new(others: Vec<Handle>) -> Self {
        let placement = Arc::new(CpuPlacement::new(others.len() + 1));
        Workers {
            others: others.into(),
            placement,
        }
    }

    /// Where `stream`, just accepted, goes: `None` for the accept loop's own runtime.
    pub(crate) fn for_connection(&self, stream: &tokio::net::TcpStream) -> Option<&Handle> {
        if self.others.is_empty() {
            return None;
        }
        // The CPU the kernel handled the client's handshake on: where the client ran. A
        // socket no packet has reached on a CPU says -1.
        let cpu = rustix::net::sockopt::socket_incoming_cpu(stream)
            .ok()
            .filter(|&cpu| i32::try_from(cpu).is_ok());
        self.for_client_cpu(cpu)
    }

    /// Where a connection goes whose handshake the kernel handled on `cpu` (`None`: not
    /// known): `None` for the accept loop's own runtime.
    fn for_client_cpu(&self, cpu: Option<u32>) -> Option<&Handle> {
        if self.others.is_empty() {
            return None;
        }
        self.placement
            .runtime(cpu)
            .checked_sub(1)
            .and_then(|i| self.others.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_others_every_connection_stays() {
        let workers = Workers::default();
        assert!((0..5).all(|_| workers.for_client_cpu(None).is_none()));
        assert!((0..5).all(|cpu| workers.for_client_cpu(Some(cpu)).is_none()));
    }

    fn placed(placement: &CpuPlacement, cpus: &[Option<u32>]) -> Vec<usize> {
        cpus.iter().map(|&cpu| placement.runtime(cpu)).collect()
    }

    #[test]
    fn each_new_cpu_gets_the_next_runtime_and_keeps_it() {
        let placement = CpuPlacement::new(3);
        let cpus = [1, 0, 1, 5, 7, 0, 5, 2, 7].map(Some);
        assert_eq!(placed(&placement, &cpus), [0, 1, 0, 2, 0, 1, 2, 1, 0]);
    }

    #[test]
    fn cpus_of_one_parity_are_still_shared_out() {
        // Pods pinned to even CPUs: a CPU number modulo 2 would put them all on one thread.
        let placement = CpuPlacement::new(2);
        let cpus = [0, 2, 4, 6, 0, 2, 4, 6].map(Some);
        assert_eq!(placed(&placement, &cpus), [0, 1, 0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn without_a_cpu_connections_take_turns() {
        let placement = CpuPlacement::new(3);
        assert_eq!(placed(&placement, &[None; 6]), [0, 1, 2, 0, 1, 2]);
        // A CPU beyond the table goes by its number.
        let beyond = u32::try_from(CPUS_REMEMBERED).expect("fits") + 4;
        let expected = usize::try_from(beyond % 3).expect("fits");
        assert_eq!(placed(&placement, &[Some(beyond)]), [expected]);
    }

    #[test]
    fn connections_reach_the_runtime_chosen() {
        let runtimes: Vec<tokio::runtime::Runtime> = (0..2)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime")
            })
            .collect();
        let workers = Workers::new(runtimes.iter().map(|r| r.handle().clone()).collect());
        let which = |cpu| {
            workers.for_client_cpu(Some(cpu)).map_or(0, |h| {
                1 + runtimes
                    .iter()
                    .position(|r| r.handle().id() == h.id())
                    .expect("one of the others")
            })
        };
        assert_eq!([3, 8, 9, 3, 9].map(which), [0, 1, 2, 0, 2]);
    }
}
