//! The fast path under the drain: what hyper does with a connection told to finish, the fast
//! path does too. (Its bytes are compared with hyper's in `imds::tests::wire`; the head
//! deadline and the rest of the accept loop in `server::tests`, both ways.)

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::tests::start_with;
use crate::server::{AcceptControl, ServerLimits, Workers};

/// A server answering through the fast path (`/slow` after 300 ms), with the default limits:
/// its connections end by the drain, not by the head deadline.
async fn start() -> (std::net::SocketAddr, AcceptControl) {
    start_with(Workers::default(), true, ServerLimits::default()).await
}

/// Everything the server sends until it closes (within 5 s).
async fn until_closed(client: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
        .await
        .expect("closed within 5 s")
        .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

const GET: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

#[tokio::test]
async fn a_connection_between_requests_is_closed_at_once_by_the_drain() {
    let (addr, control) = start().await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(GET).await.expect("send");
    let mut answer = [0u8; 256];
    let n = client.read(&mut answer).await.expect("answer");
    assert!(answer[..n].ends_with(b"\r\n\r\nok"));
    control.stop();
    assert_eq!(until_closed(&mut client).await, "");
}

#[tokio::test]
async fn a_request_being_answered_when_the_drain_begins_is_answered_then_closed() {
    let (addr, control) = start().await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET /slow HTTP/1.1\r\n\r\n")
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    control.stop();
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer:?}");
}

#[tokio::test]
async fn a_connection_accepted_before_the_drain_gets_its_first_request_answered() {
    let (addr, control) = start().await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    control.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(GET).await.expect("send");
    // Answered at once, before the drain tells the connection to finish: no `connection:
    // close` (as hyper), but closed right after.
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer:?}");
}

#[tokio::test]
async fn a_client_that_closes_its_sending_side_gets_every_answer() {
    let (addr, _control) = start().await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(&GET.repeat(3)).await.expect("send");
    client.shutdown().await.expect("half-close");
    let answers = until_closed(&mut client).await;
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 3, "{answers:?}");
}
