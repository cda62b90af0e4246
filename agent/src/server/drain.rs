//! The drain of one server: when it stops accepting, every open connection finishes what it
//! has and closes, and the server waits for them (bounded by the caller).
//!
//! hyper's own graceful shutdown closes a connection at once when no request is in it, and a
//! connection just accepted has none yet: its client, which connected while the server still
//! accepted (during an upgrade's handover, say), would find it closed unanswered. So a
//! connection that has not begun its first request is left to begin it (the head deadline of
//! `activity` still bounds that) before it is told to finish.

use std::pin::Pin;
use std::time::Duration;

use std::future::Future;

use hyper::server::conn::http1;
use tokio::sync::{mpsc, watch};

use super::activity::ConnActivity;

/// How a connection served under a drain ended.
#[derive(Debug)]
pub(crate) enum ConnEnd<E> {
    /// hyper ended it: the client closed, or it finished after the drain began.
    Closed(Result<(), E>),
    /// The client did not send a request's head in time (see `activity`); it was closed.
    HeadTimedOut,
}

/// A connection that can be told to finish what it has and close: hyper's, or the fast
/// path's (`heads`).
pub(crate) trait Graceful: Future<Output = Result<(), Self::Error>> {
    /// Why it ended, when it ended badly.
    type Error;
    /// Finish the request in progress, if any, and close; close at once if none is.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = hyper::Error;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

/// A server's drain: the signal its connections watch, and the count of those still open.
#[derive(Debug)]
pub(crate) struct Drain {
    stop: watch::Sender<bool>,
    open: mpsc::Sender<()>,
    closed: mpsc::Receiver<()>,
}

/// What each connection holds: the signal, and its place in the count.
#[derive(Debug, Clone)]
pub(crate) struct DrainWatch {
    stop: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
}

impl Drain {
    /// A drain with no connection yet.
    pub(crate) fn new() -> Self {
        let (open, closed) = mpsc::channel(1);
        Drain {
            stop: watch::channel(false).0,
            open,
            closed,
        }
    }

    /// For one more connection.
    pub(crate) fn watch(&self) -> DrainWatch {
        DrainWatch {
            stop: self.stop.subscribe(),
            _open: self.open.clone(),
        }
    }

    /// Tells every connection to finish, and waits until all have closed.
    pub(crate) async fn run(self) {
        let Drain {
            stop,
            open,
            mut closed,
        } = self;
        drop(open);
        stop.send_replace(true);
        // Nothing is ever sent: this ends when the last connection drops its sender.
        let _ = closed.recv().await;
    }
}

impl DrainWatch {
    /// Serves `conn` until it ends, closing it if its client does not send a request's head
    /// within `head_timeout`; once the server drains, lets it begin its first request (if it
    /// has not) and then tells it to finish.
    pub(crate) async fn serve<C: Graceful>(
        mut self,
        conn: C,
        activity: &ConnActivity,
        head_timeout: Duration,
    ) -> ConnEnd<C::Error> {
        let mut conn = std::pin::pin!(conn);
        let timed_out = activity.head_timed_out(head_timeout);
        let mut timed_out = std::pin::pin!(timed_out);
        tokio::select! {
            biased;
            result = conn.as_mut() => return ConnEnd::Closed(result),
            () = timed_out.as_mut() => return ConnEnd::HeadTimedOut,
            _ = self.stop.wait_for(|stop| *stop) => {}
        }
        tokio::select! {
            biased;
            result = conn.as_mut() => return ConnEnd::Closed(result),
            () = timed_out.as_mut() => return ConnEnd::HeadTimedOut,
            () = activity.first_request() => {}
        }
        Pin::as_mut(&mut conn).graceful_shutdown();
        tokio::select! {
            biased;
            result = conn.as_mut() => ConnEnd::Closed(result),
            () = timed_out => ConnEnd::HeadTimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What hyper alone did: a connection accepted before the drain, with its request sent
    /// after, was closed unanswered (`read_to_end` gave nothing).
    #[tokio::test]
    async fn a_connection_accepted_before_the_drain_gets_its_first_request_answered() {
        use std::convert::Infallible;

        use bytes::Bytes;
        use http_body_util::Full;
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioIo, TokioTimer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let drain = Drain::new();
        let watch = drain.watch();
        let activity = std::sync::Arc::new(ConnActivity::new());
        let marker = activity.clone();
        let service = service_fn(move |_req| {
            marker.request_began();
            let marker = marker.clone();
            async move {
                marker.request_answered();
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("ok"))))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), service);
        let served =
            tokio::spawn(
                async move { watch.serve(conn, &activity, Duration::from_secs(10)).await },
            );
        let drained = tokio::spawn(drain.run());
        // The drain has begun before the request is sent.
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        // read_to_end returned: the connection was closed after its answer.
        let end = served.await.expect("task");
        assert!(matches!(end, ConnEnd::Closed(Ok(()))), "{end:?}");
        drained.await.expect("the drain");
    }

    #[tokio::test]
    async fn the_drain_ends_when_the_last_connection_closes() {
        let drain = Drain::new();
        let held = drain.watch();
        let mut stop = held.stop.clone();
        let run = tokio::spawn(drain.run());
        stop.wait_for(|s| *s).await.expect("the stop signal");
        tokio::task::yield_now().await;
        assert!(!run.is_finished(), "a connection is still open");
        drop(held);
        run.await.expect("the drain");
    }
}
