//! The runtimes a server's connections are spread over: each accepted connection goes, in
//! turn, to the accept loop's own runtime or to one of the others, and stays there.
//!
//! The proxy serves on current-thread runtimes (see `proxy_thread`): one per CPU the agent
//! may use, up to a few. With one, nothing changes hands; with more, a connection handed to
//! another runtime costs two `epoll_ctl` calls (it leaves the accept loop's reactor and joins
//! the other's), once per connection, and its requests then cost what they cost on one
//! thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

/// The other runtimes of a server (none: all its connections stay on the accept loop's).
#[derive(Clone, Debug, Default)]
pub(crate) struct Workers {
    others: Arc<[Handle]>,
    next: Arc<AtomicUsize>,
}

impl Workers {
    /// Connections spread over the accept loop's runtime and `others`.
    pub(crate) fn new(others: Vec<Handle>) -> Self {
        Workers {
            others: others.into(),
            next: Arc::default(),
        }
    }

    /// Where the next connection goes: `None` for the accept loop's own runtime.
    pub(crate) fn next(&self) -> Option<&Handle> {
        if self.others.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % (self.others.len() + 1);
        turn.checked_sub(1).and_then(|i| self.others.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_others_every_connection_stays() {
        let workers = Workers::default();
        assert!((0..5).all(|_| workers.next().is_none()));
    }

    #[tokio::test]
    async fn connections_take_turns_over_every_runtime() {
        let others = vec![Handle::current(), Handle::current()];
        let workers = Workers::new(others);
        let turns: Vec<bool> = (0..6).map(|_| workers.next().is_some()).collect();
        assert_eq!(turns, [false, true, true, false, true, true]);
    }
}
