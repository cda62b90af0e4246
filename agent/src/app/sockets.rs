//! The agent's sockets: its listeners (inherited from a predecessor or bound anew, with a deep
//! backlog), the copies it hands to a successor, and the open-file limit they need.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::Error;
use crate::handover::Predecessor;

/// The listener on `addr`: the running agent's socket when it handed it over, else a new one.
pub(super) async fn listen(
    addr: SocketAddr,
    predecessor: Option<&mut Predecessor>,
) -> Result<TcpListener, Error> {
    let listen_err = |source| Error::Listen { addr, source };
    if let Some(inherited) = predecessor.and_then(|p| p.take_listener(addr)) {
        tracing::info!(%addr, "listening on the socket the running agent handed over");
        inherited.set_nonblocking(true).map_err(listen_err)?;
        return TcpListener::from_std(inherited).map_err(listen_err);
    }
    bind_listener(addr).map_err(listen_err)
}

/// Backlog of the listening sockets: room for bursts of pods starting at once while the
/// accept loop (which never waits for anything but the kernel) drains it. The kernel caps
/// it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A copy of a listening socket, to hand over to a successor.
pub(super) fn offered(listener: &TcpListener) -> Result<(SocketAddr, std::os::fd::OwnedFd), Error> {
    use std::os::fd::AsFd;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| Error::Listen { addr, source })?;
    Ok((addr, fd))
}

/// Raises the soft open-file limit to the hard one: every pod connection is a descriptor,
/// and a soft limit of 1024 would make accept fail under a burst long before the
/// connection limits apply.
pub(super) fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let from = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!(?from, to = ?limit.current, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
}
