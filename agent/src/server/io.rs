//! The connection I/O under hyper: a budget on request bytes not yet answered, over all
//! connections, and a plain answer to an HTTP/2 preface.
//!
//! * **Request-byte budget**: bytes a connection has read since its last response started
//!   count against one budget shared by every connection of a server (hyper bounds each
//!   connection's buffer; this bounds their sum, so many half-sent requests cannot grow the
//!   heap without limit). A read that would go beyond the budget ends that connection.
//! * **HTTP/2 prior knowledge**: iamlet speaks HTTP/1.1 only (like the real metadata service).
//!   A connection that opens with the HTTP/2 preface gets `505 HTTP Version Not Supported`
//!   and is closed, instead of being dropped without a word.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The first line of the HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// The answer to an HTTP/2 preface.
const H2_ANSWER: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\n\
content-type: text/plain\r\ncontent-length: 44\r\nconnection: close\r\n\r\n\
HTTP/2 is not supported here; use HTTP/1.1.\n";

/// Request bytes read but not yet answered, over all connections of a server.
#[derive(Debug)]
pub(crate) struct RequestBudget {
    used: AtomicUsize,
    limit: usize,
}

impl RequestBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(RequestBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    #[cfg(test)]
    /// Bytes in use now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A TCP connection as hyper sees it (see the module doc).
#[derive(Debug)]
pub(crate) struct MeteredStream {
    stream: TcpStream,
    budget: Arc<RequestBudget>,
    /// Bytes of this connection counted in the budget.
    pending: usize,
    /// Bytes of the HTTP/2 preface matched so far; `None` once the connection is known to
    /// be something else.
    preface: Option<usize>,
}

impl MeteredStream {
    /// Wraps an accepted stream.
    pub(crate) fn new(stream: TcpStream, budget: Arc<RequestBudget>) -> Self {
        MeteredStream {
            stream,
            budget,
            pending: 0,
            preface: Some(0),
        }
    }

    fn release(&mut self) {
        if self.pending > 0 {
            self.budget.used.fetch_sub(self.pending, Ordering::Relaxed);
            self.pending = 0;
        }
    }

    /// Follows the preface over the bytes just read; true once all of its first line came.
    fn saw_h2_preface(&mut self, new: &[u8]) -> bool {
        let Some(matched) = self.preface else {
            return false;
        };
        let want = &H2_PREFACE[matched..];
        let n = new.len().min(want.len());
        if new[..n] != want[..n] {
            self.preface = None;
            return false;
        }
        self.preface = Some(matched + n);
        matched + n == H2_PREFACE.len()
    }

    /// Answers an HTTP/2 client and reads what it already sent, so closing sends a FIN and
    /// the answer is not lost to a reset.
    fn refuse_h2(&mut self) {
        let mut sink = [0u8; 1024];
        while matches!(self.stream.try_read(&mut sink), Ok(n) if n > 0) {}
        // A fresh connection's send buffer is empty: the whole answer fits at once.
        let _ = self.stream.try_write(H2_ANSWER);
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        self.release();
    }
}

impl AsyncRead for MeteredStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let n = buf.filled().len() - before;
        if n == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.preface.is_some() && this.saw_h2_preface(&buf.filled()[before..]) {
            this.refuse_h2();
            // End of stream as far as hyper knows: it closes the connection.
            buf.set_filled(before);
            return Poll::Ready(Ok(()));
        }
        let used = this.budget.used.fetch_add(n, Ordering::Relaxed) + n;
        this.pending += n;
        if used > this.budget.limit {
            this.release();
            return Poll::Ready(Err(io::Error::other(
                "request bytes over the server's budget; closing",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MeteredStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // A response is going out: the request it answers has been read and parsed.
        this.release();
        super::busy_poll::responded();
        Pin::new(&mut this.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.release();
        super::busy_poll::responded();
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(budget: Arc<RequestBudget>) -> (MeteredStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (MeteredStream::new(server, budget), client)
    }

    #[tokio::test]
    async fn answers_an_h2_preface_with_505() {
        let (mut server, mut client) = pair(RequestBudget::new(1 << 20)).await;
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        assert_eq!(
            server.read(&mut buf).await.expect("read"),
            0,
            "EOF to hyper"
        );
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("answer");
        assert!(answer.starts_with(b"HTTP/1.1 505 "), "{answer:?}");
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }

    #[tokio::test]
    async fn http1_passes_and_the_budget_is_released_by_the_answer() {
        let budget = RequestBudget::new(64);
        let (mut server, mut client) = pair(budget.clone()).await;
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        assert_eq!(budget.used(), n);
        server
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("answer");
        assert_eq!(budget.used(), 0);
        // A connection sending more than the budget without an answer is cut off.
        client.write_all(&[b'x'; 100]).await.expect("write");
        let mut total = 0;
        let err = loop {
            match server.read(&mut buf).await {
                Ok(0) => panic!("EOF before the budget ran out"),
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert!(total <= 64, "{total}");
        assert!(err.to_string().contains("budget"), "{err}");
        assert_eq!(budget.used(), 0);
        drop(server);
    }
}
