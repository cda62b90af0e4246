//! A busy node for `bench imds --busy-cpus N`: N threads that only spin, at the default nice
//! value, while wrk runs, as pods that keep the node's CPUs busy. The servers and wrk then
//! wait for a CPU each time they wake; how long is up to the kernel's scheduler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Spinning threads; they stop when this is dropped.
pub(crate) struct BusyCpus {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCpus {
    /// Starts `count` spinning threads.
    pub(crate) fn start(count: usize) -> BusyCpus {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        BusyCpus { stop, threads }
    }
}

impl Drop for BusyCpus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinners_stop_when_dropped() {
        let busy = BusyCpus::start(2);
        assert_eq!(busy.threads.len(), 2);
        drop(busy);
    }
}
