//! The accept loop with a real socket: the request-head deadline (see `activity`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// Answers every request with 200 `ok`, `/slow` after [`SLOW`]; with `FAST`, through the
/// fast path (`heads`).
pub(super) struct Ok200<const FAST: bool>;

/// How long `/slow` takes to answer.
pub(super) const SLOW: Duration = Duration::from_millis(300);

async fn ok(path: &str) -> Resp {
    if path == "/slow" {
        tokio::time::sleep(SLOW).await;
    }
    response(200, "text/plain", "ok")
}

impl<const FAST: bool> ConnHandler for Ok200<FAST> {
    type Conn = ();
    type Key = ();
    const ANSWERS_HEADS: bool = FAST;

    async fn on_connect(&self, _peer: SocketAddr) {}

    fn admission_key(&self, _conn: &()) -> Option<()> {
        None
    }

    fn on_refused(&self, _peer: SocketAddr, _refusal: Refusal) {}

    async fn handle(&self, _conn: &(), req: Request<Incoming>) -> Resp {
        ok(req.uri().path()).await
    }

    fn handle_head<'a>(
        &'a self,
        _conn: &'a (),
        head: RequestHead<'a>,
    ) -> Option<impl Future<Output = Resp> + Send + 'a> {
        Some(ok(head.path))
    }
}

/// Both ways of serving: hyper only, and the fast path first.
const BOTH: [bool; 2] = [false, true];

const HEAD_TIMEOUT: Duration = Duration::from_millis(300);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// A server with a head timeout of [`HEAD_TIMEOUT`], through the fast path or not; its
/// address and its control.
async fn start(fast: bool) -> (SocketAddr, AcceptControl) {
    let limits = ServerLimits {
        header_read_timeout: HEAD_TIMEOUT,
        ..ServerLimits::default()
    };
    start_with(Workers::default(), fast, limits).await
}

/// A server with `limits`, its connections spread over `workers` too.
pub(super) async fn start_with(
    workers: Workers,
    fast: bool,
    limits: ServerLimits,
) -> (SocketAddr, AcceptControl) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let control = AcceptControl::default();
    let gate = (control.gate(), workers);
    let held = Arc::new(AtomicUsize::new(0));
    if fast {
        tokio::spawn(serve(
            "test",
            listener,
            Arc::new(Ok200::<true>),
            limits,
            gate,
            held,
        ));
    } else {
        tokio::spawn(serve(
            "test",
            listener,
            Arc::new(Ok200::<false>),
            limits,
            gate,
            held,
        ));
    }
    (addr, control)
}

/// Reads one answer (`ok` is the end of its body).
async fn read_answer(client: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.ends_with(b"ok") {
        let n = client.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before its answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the server closed the connection (read gives end of file) within `within`.
async fn closed_within(client: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, client.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
    for fast in BOTH {
        let (addr, _control) = start(fast).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(REQUEST).await.expect("send");
        assert!(read_answer(&mut client).await.starts_with("HTTP/1.1 200"));
        assert!(closed_within(&mut client, Duration::from_secs(10)).await);
    }
}

#[tokio::test]
async fn a_head_sent_too_slowly_is_closed_unanswered() {
    for fast in BOTH {
        let (addr, _control) = start(fast).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        // A header line every 100 ms: the head is never done within 300 ms.
        client.write_all(b"GET / HTTP/1.1\r\n").await.expect("send");
        let mut closed = false;
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if client
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                closed = true;
                break;
            }
            if closed_within(&mut client, Duration::from_millis(1)).await {
                closed = true;
                break;
            }
        }
        assert!(closed, "ten seconds of a head and still open");
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_its_answers_is_closed() {
    for fast in BOTH {
        // Far more pipelined requests than the socket buffers hold answers for; the client
        // reads nothing for a second (over three head timeouts).
        const SENT: usize = 100_000;
        let (addr, _control) = start(fast).await;
        let client = TcpStream::connect(addr).await.expect("connect");
        let (mut reader, mut writer) = client.into_split();
        let sender = tokio::spawn(async move {
            let requests = REQUEST.repeat(SENT);
            let _ = writer.write_all(&requests).await;
            writer
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut answers = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut answers));
        // Closed: read_to_end ends (at the end of file or a reset) before every answer came.
        let _ = read.await.expect("the connection was closed");
        let answered = answers.windows(8).filter(|w| w == b"HTTP/1.1").count();
        assert!(
            answered < SENT,
            "all {SENT} answered: the server waited for the client"
        );
        sender.abort();
    }
}

#[tokio::test]
async fn a_connection_that_keeps_asking_stays_open() {
    for fast in BOTH {
        let (addr, _control) = start(fast).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        // Ten requests 100 ms apart: a second in all, three head timeouts.
        for _ in 0..10 {
            client.write_all(REQUEST).await.expect("send");
            assert!(read_answer(&mut client).await.starts_with("HTTP/1.1 200"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn connections_handed_to_another_runtime_are_served_there() {
    for fast in BOTH {
        // A second runtime on a thread of its own, as the proxy's other threads are.
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let handle = other.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            other.block_on(async {
                let _ = stopped.await;
            });
        });
        let (addr, _control) = start_with(
            Workers::new(vec![handle]),
            fast,
            ServerLimits {
                header_read_timeout: HEAD_TIMEOUT,
                ..ServerLimits::default()
            },
        )
        .await;
        // Every other connection goes to the other runtime; each is served, twice.
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        for _ in 0..2 {
            for client in &mut clients {
                client.write_all(REQUEST).await.expect("send");
                assert!(read_answer(client).await.starts_with("HTTP/1.1 200"));
            }
        }
        drop(clients);
        let _ = stop.send(());
        thread.join().expect("the other runtime's thread");
    }
}
