//! The fast path: a connection whose requests are plain bodiless `GET`s and `PUT`s (every
//! SDK's) is answered here, from each request's head, without hyper's per-request machinery
//! (its request and response header maps, its dispatcher and service future). The first
//! request that is anything else (see `parse` for exactly what qualifies), and every one after
//! it on that connection, is hyper's: the connection is handed over with the bytes already
//! read, and hyper serves it to the end as it serves every connection of the admin server.
//!
//! The wire stays hyper's: a request is taken here only where hyper would read it the same
//! way, and answers are written as hyper writes them (see `encode`). `tests` holds both to
//! it, byte for byte, on the same requests. One difference is deliberate: a client that closes
//! its sending side after its requests (a half-close) gets all of them answered; hyper,
//! without `half_close`, may close on the end of file before answering the last. The rest of what a connection is held to stays as
//! it was: the request-byte budget and the HTTP/2 answer (`io`, under both), the head deadline
//! and the drain (`activity`, `drain`: requests mark their start and answer the same way).

mod encode;
mod parse;
mod rewind;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BufMut;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::drain::Graceful;
use super::io::MeteredStream;
use super::{hyper_service, ConnHandler, ServedConn};
pub(crate) use parse::RequestHead;
use parse::{HeadIndex, Parsed};
use rewind::Rewind;

/// The read buffer a connection starts with (an SDK's request head is 200-400 bytes).
const FIRST_BUFFER: usize = 4096;

/// The write buffer a connection starts with (a credentials answer is 1-2 KiB).
const FIRST_OUT: usize = 2048;

/// How a connection served by the fast path ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadsError {
    /// Reading or writing the connection failed.
    #[error("connection I/O: {0}")]
    Io(#[source] io::Error),
    /// hyper, serving the connection after the fast path, ended it with an error.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// What the fast path and its owner share: whether the connection is to finish (the drain),
/// and whether the fast path waits for a new request with nothing of one read.
#[derive(Debug, Default)]
struct Finish {
    asked: AtomicBool,
    idle: AtomicBool,
}

/// How the fast path left a connection.
enum FastEnd {
    /// It is closed (the client closed it, or it was told to finish), or it failed.
    Closed(io::Result<()>),
    /// hyper is to serve it from here, beginning with these bytes.
    ToHyper(Rewind<MeteredStream>),
}

type FastFuture = Pin<Box<dyn Future<Output = FastEnd> + Send>>;
type HyperConn =
    Pin<Box<dyn Graceful<Error = hyper::Error, Output = Result<(), hyper::Error>> + Send>>;

enum Stage {
    Fast(FastFuture),
    Hyper(HyperConn),
    Done,
}

/// A connection served by the fast path until hyper takes it over (see the module doc).
pub(crate) struct HeadsFirst<H: ConnHandler> {
    stage: Stage,
    finish: Arc<Finish>,
    served: Arc<ServedConn<H>>,
    builder: http1::Builder,
}

impl<H: ConnHandler> HeadsFirst<H> {
    /// Serves `io` for `served`, heads of at most `max_head` bytes; hyper, when it takes over,
    /// as `builder` says.
    pub(super) fn new(
        served: Arc<ServedConn<H>>,
        io: MeteredStream,
        builder: http1::Builder,
        max_head: usize,
    ) -> Self {
        let finish = Arc::new(Finish::default());
        let fast = Box::pin(answer_heads(served.clone(), io, finish.clone(), max_head));
        HeadsFirst {
            stage: Stage::Fast(fast),
            finish,
            served,
            builder,
        }
    }
}

impl<H: ConnHandler> Future for HeadsFirst<H> {
    type Output = Result<(), HeadsError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Fast(fast) => match fast.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(FastEnd::Closed(result)) => {
                        this.stage = Stage::Done;
                        return Poll::Ready(result.map_err(HeadsError::Io));
                    }
                    Poll::Ready(FastEnd::ToHyper(io)) => {
                        // If the drain had begun, hyper is not told: it answers the request
                        // it is given, and the drain's grace bounds what follows.
                        let service = hyper_service(this.served.clone());
                        let conn = this.builder.serve_connection(TokioIo::new(io), service);
                        this.stage = Stage::Hyper(Box::pin(conn));
                    }
                },
                Stage::Hyper(conn) => return conn.as_mut().poll(cx).map_err(HeadsError::from),
                Stage::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<H: ConnHandler> Graceful for HeadsFirst<H> {
    type Error = HeadsError;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        match &mut this.stage {
            Stage::Fast(_) => {
                this.finish.asked.store(true, Ordering::Relaxed);
                // Waiting for a request of which nothing came: closed at once, as hyper closes
                // an idle connection. Otherwise the request being read or answered is answered
                // with `connection: close`.
                if this.finish.idle.load(Ordering::Relaxed) {
                    this.stage = Stage::Done;
                }
            }
            Stage::Hyper(conn) => conn.as_mut().graceful_shutdown(),
            Stage::Done => {}
        }
    }
}

/// Answers the connection's requests until it closes or one is not for the fast path.
async fn answer_heads<H: ConnHandler>(
    served: Arc<ServedConn<H>>,
    mut io: MeteredStream,
    finish: Arc<Finish>,
    max_head: usize,
) -> FastEnd {
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_BUFFER.min(max_head));
    // Made with the first answer: a connection that never asks holds the read buffer only.
    let mut out: Vec<u8> = Vec::new();
    let mut index = HeadIndex::default();
    loop {
        let parsed = if buf.is_empty() {
            Parsed::Partial
        } else {
            index.parse(&buf)
        };
        let len = match parsed {
            Parsed::Simple(len) => len,
            Parsed::Other => return FastEnd::ToHyper(Rewind::new(buf, io)),
            Parsed::Partial => {
                if buf.len() >= max_head {
                    // hyper answers 431.
                    return FastEnd::ToHyper(Rewind::new(buf, io));
                }
                if buf.len() == buf.capacity() {
                    buf.reserve(buf.len().min(max_head - buf.len()));
                }
                finish.idle.store(buf.is_empty(), Ordering::Relaxed);
                let room = max_head - buf.len();
                let read = io.read_buf(&mut (&mut buf).limit(room)).await;
                finish.idle.store(false, Ordering::Relaxed);
                match read {
                    Ok(0) if buf.is_empty() => return FastEnd::Closed(Ok(())),
                    // A head cut short by the client's close: hyper's to report.
                    Ok(0) => return FastEnd::ToHyper(Rewind::new(buf, io)),
                    Ok(_) => continue,
                    Err(e) => return FastEnd::Closed(Err(e)),
                }
            }
        };
        let resp = {
            let (method, path, headers) = index.head(&buf);
            let head = RequestHead {
                method,
                path,
                headers: &headers,
            };
            let answer = served.handler.handle_head(&served.state, head);
            match answer {
                Some(answer) => {
                    served.activity.request_began();
                    Some(answer.await)
                }
                None => None,
            }
        };
        let Some(resp) = resp else {
            return FastEnd::ToHyper(Rewind::new(buf, io));
        };
        served.activity.request_answered();
        let keep_alive = !(index.close() || finish.asked.load(Ordering::Relaxed));
        out.reserve(FIRST_OUT);
        let close = encode::encode(resp, keep_alive, &mut out);
        buf.drain(..len);
        if let Err(e) = io.write_all(&out).await {
            return FastEnd::Closed(Err(e));
        }
        out.clear();
        // Told to finish while the answer was going out: it went out as it was, and the
        // connection ends after it (as hyper ends it).
        if close || finish.asked.load(Ordering::Relaxed) {
            return FastEnd::Closed(io.shutdown().await);
        }
    }
}
