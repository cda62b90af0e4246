//! Upgrade handover between two agents on one node (a DaemonSet rollout with `maxSurge: 1`
//! runs the new agent next to the old one), so that no pod's metadata request is lost or
//! refused during the switch.
//!
//! The running agent serves a unix socket (`--handover-socket`, mode 0600, same user only).
//! A starting agent connects to it and:
//!
//! 1. receives the running agent's listening sockets and its locked pin directory
//!    (`SCM_RIGHTS`, see `datapath::pin_lock`) with a hello
//!    (`{version, pid, cgroup_id, listeners, token_key}`, length-prefixed JSON; the token key
//!    keeps the IMDSv2 tokens SDKs cache valid). From now on both
//!    processes hold the same sockets: the kernel's accept queue is shared, so no connection
//!    is refused or reset while the two overlap;
//! 2. loads its programs, waits (bounded) for its pod list and prefetches while the
//!    predecessor still serves, then serves those sockets too, looking connections up in its
//!    own peers map and in the predecessor's;
//! 3. sends `stop`: the predecessor stops accepting, answers `stopped` once none of its
//!    accept loops runs, and drains what it already accepted;
//! 4. swaps its programs into the pinned links (atomic) and serves the socket itself.
//!
//! The predecessor leaves every pin to the successor from step 1 on and waits for SIGTERM.
//! If the successor dies before step 3, the predecessor keeps serving and offers again.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Version of the exchange; a successor refuses any other. 2: the pin directory's lock rides
/// after the listening sockets.
pub(crate) const PROTOCOL_VERSION: u32 = 2;
/// Most listening sockets one hello carries.
const MAX_LISTENERS: usize = 4;
/// Descriptors one hello carries: the listening sockets and the pin directory's lock.
const MAX_FDS: usize = MAX_LISTENERS + 1;
/// Largest hello accepted.
const MAX_HELLO: usize = 16 * 1024;
/// Bound on each step of the exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a predecessor waits for `stop` after handing its sockets over.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Errors of the handover, with the socket's path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("handover socket {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("handover socket {}: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },
}

/// What the running agent tells its successor.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    version: u32,
    pid: u32,
    /// The running agent's cgroup id (0 when it is not inside the attached cgroup): its
    /// successor exempts it so its passthrough keeps reaching the real metadata service.
    cgroup_id: u64,
    /// Local addresses of the sockets passed along, in order.
    listeners: Vec<SocketAddr>,
    /// The IMDSv2 token key (hex), so that tokens SDKs cache (boto3: 6 h) stay valid.
    token_key: String,
}

/// A running agent that offered its sockets to this one.
#[derive(Debug)]
pub(crate) struct Predecessor {
    path: PathBuf,
    stream: UnixStream,
    pid: u32,
    cgroup_id: u64,
    token_key: [u8; 32],
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    pin_lock: Option<OwnedFd>,
}

impl Predecessor {
    /// Its locked pin directory (taken once).
    pub(crate) fn take_pin_lock(&mut self) -> Option<OwnedFd> {
        self.pin_lock.take()
    }

    /// Its IMDSv2 token key.
    pub(crate) fn token_key(&self) -> [u8; 32] {
        self.token_key
    }

    /// Its pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Its cgroup id (0: not inside the attached cgroup).
    pub(crate) fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    /// Takes its listening socket bound to `addr`, if it passed one.
    pub(crate) fn take_listener(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let i = self.listeners.iter().position(|(a, _)| *a == addr)?;
        Some(self.listeners.swap_remove(i).1)
    }

    /// Asks it to stop accepting, and returns once it has (or has exited).
    pub(crate) async fn stop_accepting(self) -> Result<(), Error> {
        let path = self.path.clone();
        let io_err = |what| {
            let path = path.clone();
            move |source| Error::Io { path, what, source }
        };
        let mut stream = self.stream;
        stream
            .write_all(b"stop\n")
            .await
            .map_err(io_err("sending stop"))?;
        let mut line = String::new();
        let read = tokio::time::timeout(
            STEP_TIMEOUT,
            BufReader::new(&mut stream).read_line(&mut line),
        )
        .await
        .map_err(|_| Error::Protocol {
            path: path.clone(),
            reason: format!("no answer to stop within {STEP_TIMEOUT:?}"),
        })?
        .map_err(io_err("reading the answer to stop"))?;
        match (read, line.trim_end()) {
            // It exited meanwhile: its accept loops are gone too.
            (0, _) | (_, "stopped") => Ok(()),
            (_, other) => Err(Error::Protocol {
                path,
                reason: format!("unexpected answer to stop: {other:?}"),
            }),
        }
    }
}

/// Connects to the running agent's handover socket and takes its sockets. `Ok(None)` when no
/// agent serves it (no socket, or a stale one).
pub(crate) async fn connect(path: &Path) -> Result<Option<Predecessor>, Error> {
    let io_err = |what| {
        let path = path.to_owned();
        move |source| Error::Io { path, what, source }
    };
    let stream = match tokio::time::timeout(STEP_TIMEOUT, UnixStream::connect(path)).await {
        Err(_) => {
            return Err(Error::Protocol {
                path: path.to_owned(),
                reason: "connect timed out".into(),
            })
        }
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Ok(Err(e)) => return Err(io_err("connect")(e)),
        Ok(Ok(s)) => s,
    };
    same_user(&stream, path)?;
    let (hello, fds) = tokio::time::timeout(STEP_TIMEOUT, read_hello(&stream))
        .await
        .map_err(|_| Error::Protocol {
            path: path.to_owned(),
            reason: format!("no hello within {STEP_TIMEOUT:?}"),
        })?
        .map_err(io_err("reading the hello"))?;
    let bad = |reason: String| Error::Protocol {
        path: path.to_owned(),
        reason,
    };
    let hello: Hello = serde_json::from_slice(&hello).map_err(|e| bad(format!("hello: {e}")))?;
    if hello.version != PROTOCOL_VERSION {
        return Err(bad(format!(
            "protocol version {} (this agent speaks {PROTOCOL_VERSION})",
            hello.version
        )));
    }
    let token_key =
        from_hex(&hello.token_key).ok_or_else(|| bad("token_key is not 32 hex bytes".into()))?;
    if fds.len() != hello.listeners.len() + 1 {
        return Err(bad(format!(
            "{} descriptors for {} announced listeners and the pin directory's lock",
            fds.len(),
            hello.listeners.len()
        )));
    }
    let mut fds = fds;
    let pin_lock = fds.pop();
    let mut listeners = Vec::new();
    for (addr, fd) in hello.listeners.iter().zip(fds) {
        let listener = std::net::TcpListener::from(fd);
        let actual = listener
            .local_addr()
            .map_err(|e| bad(format!("socket for {addr}: {e}")))?;
        let listening = rustix::net::sockopt::socket_acceptconn(&listener).unwrap_or(false);
        if actual != *addr || !listening {
            return Err(bad(format!(
                "socket announced as a listener on {addr} is {actual} (listening: {listening})"
            )));
        }
        listeners.push((*addr, listener));
    }
    Ok(Some(Predecessor {
        path: path.to_owned(),
        stream,
        pid: hello.pid,
        cgroup_id: hello.cgroup_id,
        token_key,
        listeners,
        pin_lock,
    }))
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Refuses a peer that is not this process's user.
fn same_user(stream: &UnixStream, path: &Path) -> Result<(), Error> {
    let cred = stream.peer_cred().map_err(|source| Error::Io {
        path: path.to_owned(),
        what: "reading the peer's credentials",
        source,
    })?;
    let own = rustix::process::geteuid().as_raw();
    if cred.uid() != own {
        return Err(Error::Protocol {
            path: path.to_owned(),
            reason: format!("peer runs as uid {}, not {own}", cred.uid()),
        });
    }
    Ok(())
}

/// Reads a length-prefixed hello; the sockets ride on its first bytes.
async fn read_hello(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4 + MAX_HELLO];
    let mut fds = Vec::new();
    let first = stream
        .async_io(Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            Ok(msg.bytes)
        })
        .await?;
    let mut have = first;
    while have < 4 {
        let n = read_some(stream, &mut buf[have..]).await?;
        have += n;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_HELLO {
        return Err(std::io::Error::other(format!("hello of {len} bytes")));
    }
    while have < 4 + len {
        let n = read_some(stream, &mut buf[have..4 + len]).await?;
        have += n;
    }
    buf.truncate(4 + len);
    buf.drain(..4);
    Ok((buf, fds))
}

async fn read_some(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the running agent does when a successor takes over.
pub(crate) trait Retire: Send + Sync + 'static {
    /// The successor holds the sockets and will adopt the links: exit must leave the pins.
    fn offered(&self);
    /// The successor went away before asking this agent to stop (it touched no link or pin
    /// yet): this agent is on its own again.
    fn withdrawn(&self);
    /// Stops every accept loop; resolves once none runs.
    fn stop_accepting(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// The sockets and identity this agent offers to a successor.
#[derive(Debug)]
pub(crate) struct Offer {
    /// Listening sockets with their local addresses.
    pub listeners: Vec<(SocketAddr, OwnedFd)>,
    /// This agent's cgroup id, 0 when it is not inside the attached cgroup.
    pub cgroup_id: u64,
    /// The IMDSv2 token key.
    pub token_key: [u8; 32],
    /// The locked pin directory (shared with the successor, see `datapath::pin_lock`).
    pub pin_lock: OwnedFd,
}

/// Binds the handover socket at `path` (replacing a predecessor's or a stale one), 0600.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, Error> {
    let io_err = |what| {
        let path = path.to_owned();
        move |source| Error::Io { path, what, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating its directory"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing the old socket")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod 0600"))?;
    Ok(listener)
}

/// Offers `offer` to successors until one completes the handover or `shutdown` turns true.
/// Returns true when a successor took over.
pub(crate) async fn serve<R: Retire>(
    path: PathBuf,
    listener: UnixListener,
    offer: Offer,
    retire: R,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => return false,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "handover accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match offer_to(&path, stream, &offer, &retire, &mut shutdown).await {
            Ok(true) => {
                tracing::info!("handed over to the successor; waiting for SIGTERM");
                return true;
            }
            Ok(false) => return false,
            Err(e) => {
                retire.withdrawn();
                tracing::warn!(error = %e, "handover to a successor failed; still serving");
            }
        }
    }
}

/// One successor: hello with the sockets, then wait for `stop`. `Ok(false)`: shut down first.
async fn offer_to<R: Retire>(
    path: &Path,
    mut stream: UnixStream,
    offer: &Offer,
    retire: &R,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, Error> {
    let io_err = |what| {
        let path = path.to_owned();
        move |source| Error::Io { path, what, source }
    };
    same_user(&stream, path)?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
        cgroup_id: offer.cgroup_id,
        listeners: offer.listeners.iter().map(|(a, _)| *a).collect(),
        token_key: to_hex(&offer.token_key),
    };
    let json = serde_json::to_vec(&hello).map_err(|e| Error::Protocol {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let len = u32::try_from(json.len()).map_err(|_| Error::Protocol {
        path: path.to_owned(),
        reason: format!("hello of {} bytes", json.len()),
    })?;
    let mut message = len.to_be_bytes().to_vec();
    message.extend_from_slice(&json);
    let fds: Vec<_> = offer
        .listeners
        .iter()
        .map(|(_, fd)| fd.as_fd())
        .chain([offer.pin_lock.as_fd()])
        .collect();
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(std::io::Error::other("too many sockets for one message"));
            }
            rustix::net::sendmsg(
                &stream,
                &[IoSlice::new(&message)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(std::io::Error::from)
        })
        .await
        .map_err(io_err("sending the hello"))?;
    if sent < message.len() {
        stream
            .write_all(&message[sent..])
            .await
            .map_err(io_err("sending the hello"))?;
    }
    retire.offered();
    tracing::info!(listeners = ?hello.listeners, "a successor took this agent's sockets");

    let mut line = Vec::new();
    let mut reader = BufReader::new(&mut stream);
    let read = tokio::select! {
        read = tokio::time::timeout(STOP_WAIT, reader.read_until(b'\n', &mut line)) => read,
        _ = shutdown.wait_for(|s| *s) => return Ok(false),
    };
    match read {
        Ok(Ok(_)) if line == b"stop\n" => {}
        Ok(Ok(_)) => {
            return Err(Error::Protocol {
                path: path.to_owned(),
                reason: format!(
                    "successor went away or said {:?} instead of stop",
                    String::from_utf8_lossy(&line)
                ),
            })
        }
        Ok(Err(e)) => return Err(io_err("waiting for stop")(e)),
        Err(_) => {
            return Err(Error::Protocol {
                path: path.to_owned(),
                reason: format!("no stop within {STOP_WAIT:?}"),
            })
        }
    }
    retire.stop_accepting().await;
    stream
        .write_all(b"stopped\n")
        .await
        .map_err(io_err("answering stop"))?;
    // Nothing more is said: wait (bounded) for the successor to close the connection.
    let _ = tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut [0u8; 1])).await;
    Ok(true)
}

#[cfg(test)]
mod tests;
