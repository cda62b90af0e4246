//! The fast path against hyper, byte for byte: the same requests, sent the same way to the
//! metadata API served by each, get the same bytes back (the `date` value and the minted
//! tokens aside, which depend on the second they were made in).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::server::admission::Refusal;
use crate::server::{
    serve, AcceptControl, ConnHandler, RequestHead, RequestHeaders, ServerLimits, Workers,
};

/// One pod's metadata API; with `FAST` its connections go through the fast path.
struct Pod<const FAST: bool> {
    imds: Imds,
    caller: Caller,
    /// Requests answered from their heads.
    heads: Arc<AtomicUsize>,
}

impl<const FAST: bool> ConnHandler for Pod<FAST> {
    type Conn = Session;
    type Key = ();
    const ANSWERS_HEADS: bool = FAST;

    async fn on_connect(&self, _peer: SocketAddr) -> Session {
        Session::new(&self.caller)
    }

    fn admission_key(&self, _conn: &Session) -> Option<()> {
        None
    }

    fn on_refused(&self, _peer: SocketAddr, _refusal: Refusal) {}

    async fn handle(&self, session: &Session, req: Request<Incoming>) -> Resp {
        let request = (
            req.method(),
            req.uri().path(),
            req.headers() as &dyn RequestHeaders,
        );
        self.imds
            .handle(&self.caller, session, request, clock::now())
            .await
            .resp
    }

    fn handle_head<'a>(
        &'a self,
        session: &'a Session,
        head: RequestHead<'a>,
    ) -> Option<impl std::future::Future<Output = Resp> + Send + 'a> {
        self.heads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(async move {
            let request = (head.method, head.path, head.headers as _);
            self.imds
                .handle(&self.caller, session, request, clock::now())
                .await
                .resp
        })
    }
}

/// Serves `handler` on a port of its own.
async fn start<H: ConnHandler>(handler: H) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let control = AcceptControl::default();
    let limits = ServerLimits {
        header_read_timeout: IDLE_CLOSE,
        ..ServerLimits::default()
    };
    tokio::spawn(async move {
        serve(
            "wire",
            listener,
            Arc::new(handler),
            limits,
            (control.gate(), Workers::default()),
            Arc::new(AtomicUsize::new(0)),
        )
        .await;
    });
    addr
}

/// The servers' head deadline: each case ends with the server closing the connection this
/// long after its last answer. (Not a half-close of the client's: hyper may then close
/// before answering the last request, where the fast path answers it; see `heads`.)
const IDLE_CLOSE: Duration = Duration::from_millis(200);

/// Sends `pieces` on a new connection (a pause between them), and reads until the server
/// closes (or resets) the connection.
async fn exchange(addr: SocketAddr, pieces: &[&[u8]]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A server that has closed (a refused head) reads no more.
        if stream.write_all(piece).await.is_err() {
            break;
        }
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await;
        let Ok(read) = read else {
            panic!("no end after 5 s; got {:?}", String::from_utf8_lossy(&got));
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    got
}

/// The responses in `raw`, each with its `date` value and any minted token taken out.
fn normalized(raw: &[u8]) -> Vec<String> {
    let mut responses = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            responses.push(format!("(cut) {}", String::from_utf8_lossy(rest)));
            break;
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let body = &rest[end + 4..(end + 4 + len).min(rest.len())];
        let token = head.starts_with("HTTP/1.1 200") && head.contains(TTL_HEADER);
        let head: Vec<String> = head
            .lines()
            .map(|l| match l.strip_prefix("date: ") {
                Some(date) => {
                    assert!(date.len() == 29 && date.ends_with(" GMT"), "{date:?}");
                    "date: (date)".to_owned()
                }
                None => l.to_owned(),
            })
            .collect();
        let body = if token {
            format!("(a token of {} bytes)", body.len())
        } else {
            without_last_updated(&String::from_utf8_lossy(body))
        };
        responses.push(format!("{}\r\n\r\n{body}", head.join("\r\n")));
        rest = &rest[(end + 4 + len).min(rest.len())..];
    }
    responses
}

/// `text` with the value of any `"LastUpdated"` (`iam/info`'s is the time of the answer)
/// taken out.
fn without_last_updated(text: &str) -> String {
    const KEY: &str = "\"LastUpdated\": \"";
    match text.split_once(KEY) {
        Some((before, rest)) => {
            let after = rest.split_once('"').map_or("", |(_, after)| after);
            format!("{before}{KEY}(time)\"{}", without_last_updated(after))
        }
        None => text.to_owned(),
    }
}

/// Sends each case to both servers and compares what came back; returns how many requests
/// the fast path answered itself.
async fn same_bytes(settings: ImdsSettings, cases: &[(&str, Vec<Vec<u8>>)]) -> usize {
    let caller = caller(POD_A, Some("uid-a"));
    let heads = Arc::new(AtomicUsize::new(0));
    let fast = start(Pod::<true> {
        imds: imds_with(settings.clone(), None),
        caller: caller.clone(),
        heads: heads.clone(),
    })
    .await;
    let hyper = start(Pod::<false> {
        imds: imds_with(settings, None),
        caller,
        heads: Arc::default(),
    })
    .await;
    for (name, pieces) in cases {
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (by_hyper, by_fast) = tokio::join!(exchange(hyper, &pieces), exchange(fast, &pieces));
        let (by_hyper, by_fast) = (normalized(&by_hyper), normalized(&by_fast));
        assert_eq!(by_fast, by_hyper, "case {name:?}");
    }
    heads.load(std::sync::atomic::Ordering::Relaxed)
}

/// A case of one piece.
fn one(text: &str) -> Vec<Vec<u8>> {
    vec![text.as_bytes().to_vec()]
}

/// A case of `text` cut at `cuts` (offsets, in order).
fn pieces(text: &str, cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(&[text.len()]) {
        pieces.push(text.as_bytes()[from..cut].to_vec());
        from = cut;
    }
    pieces
}

/// A token the servers' key mints for pod A.
fn token_for_a() -> String {
    let session = Session::new(&caller(POD_A, Some("uid-a")));
    TokenKey::from_bytes([9; 32]).mint(session.binding(), unix_now(), 300)
}

const CREDS: &str = "/latest/meta-data/iam/security-credentials/role-a";

#[tokio::test]
async fn sdk_requests_get_hypers_bytes() {
    let token = token_for_a();
    let sdk = format!(
        "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
         X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n\
         GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\
         x-aws-ec2-metadata-token: {token}\r\nConnection: keep-alive\r\n\r\n\
         GET {CREDS} HTTP/1.1\r\nHost: 169.254.169.254\r\nX-AWS-EC2-METADATA-TOKEN: {token}\r\n\r\n"
    );
    let cases = [
        ("the SDK flow, pipelined", one(&sdk)),
        ("the SDK flow, in pieces", pieces(&sdk, &[1, 2, 17, 40, 120, 121, 200, 350])),
        ("credentials, IMDSv1", one(&format!("GET {CREDS} HTTP/1.1\r\n\r\n"))),
        ("a TTL of 60", one("PUT /latest/api/token HTTP/1.1\r\nx-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")),
        ("a TTL with spaces", one("PUT /latest/api/token HTTP/1.1\r\nx-aws-ec2-metadata-token-ttl-seconds:   60  \r\n\r\n")),
        ("a TTL of 0060", one("PUT /latest/api/token HTTP/1.1\r\nx-aws-ec2-metadata-token-ttl-seconds: 0060\r\n\r\n")),
        ("a TTL too long", one("PUT /latest/api/token HTTP/1.1\r\nx-aws-ec2-metadata-token-ttl-seconds: 21601\r\n\r\n")),
        ("no TTL", one("PUT /latest/api/token HTTP/1.1\r\n\r\n")),
        ("a forwarded token PUT", one("PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nx-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")),
        ("a bad token", one(&format!("GET {CREDS} HTTP/1.1\r\nx-aws-ec2-metadata-token: AAAA\r\n\r\n"))),
        ("a token of bytes beyond ASCII", vec![format!("GET {CREDS} HTTP/1.1\r\nx-aws-ec2-metadata-token: ").into_bytes(), b"\xc3\xa9t\xe9\r\n\r\n".to_vec()]),
        ("two tokens, the first good", one(&format!("GET {CREDS} HTTP/1.1\r\nx-aws-ec2-metadata-token: {token}\r\nx-aws-ec2-metadata-token: AAAA\r\n\r\n"))),
        ("another role", one("GET /latest/meta-data/iam/security-credentials/role-b HTTP/1.1\r\n\r\n")),
        ("extended credentials", one("GET /latest/meta-data/iam/security-credentials-extended/role-a HTTP/1.1\r\n\r\n")),
        ("info", one("GET /latest/meta-data/iam/info HTTP/1.1\r\n\r\n")),
        ("iam listing", one("GET /latest/meta-data/iam/ HTTP/1.1\r\n\r\n")),
        ("whoami", one("GET /iamlet/whoami HTTP/1.1\r\n\r\n")),
        ("identity credentials", one("GET /latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance HTTP/1.1\r\n\r\n")),
        ("another path", one("GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n")),
        ("GET of the token", one("GET /latest/api/token HTTP/1.1\r\n\r\n")),
        ("PUT of credentials", one(&format!("PUT {CREDS} HTTP/1.1\r\n\r\n"))),
        ("connection: close", one(&format!("GET {CREDS} HTTP/1.1\r\nConnection: close\r\n\r\nGET {CREDS} HTTP/1.1\r\n\r\n"))),
        ("keep-alive, then close", one(&format!("GET {CREDS} HTTP/1.1\r\nConnection: keep-alive\r\nConnection: CLOSE\r\n\r\n"))),
        ("odd paths", one("GET //latest//meta-data/iam/security-credentials HTTP/1.1\r\n\r\nGET /latest/meta-data/iam/security-credentials/./role-a HTTP/1.1\r\n\r\nGET /latest/meta-data/iam/security-credentials/../../iam/info HTTP/1.1\r\n\r\nGET /2021-01-03/meta-data/iam/security-credentials/role-a/ HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET /1.0/api/token HTTP/1.1\r\n\r\n")),
    ];
    // Every request of every case was the fast path's.
    assert_eq!(same_bytes(settings(), &cases).await, 33);
}

#[tokio::test]
async fn what_the_fast_path_leaves_to_hyper_gets_hypers_bytes() {
    let long = "x".repeat(20_000);
    let many = "x-h: v\r\n".repeat(101);
    let get = format!("GET {CREDS} HTTP/1.1\r\n\r\n");
    let cases = [
        ("HEAD", one(&format!("HEAD {CREDS} HTTP/1.1\r\n\r\n"))),
        ("HTTP/1.0", one(&format!("GET {CREDS} HTTP/1.0\r\n\r\n"))),
        ("HTTP/1.0, keep-alive", one(&format!("GET {CREDS} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n{get}"))),
        ("connection: close and more", one(&format!("GET {CREDS} HTTP/1.1\r\nConnection: close, x\r\n\r\n{get}"))),
        ("a query", one(&format!("GET {CREDS}?x=1 HTTP/1.1\r\n\r\n"))),
        ("percent-encoding", one("GET /latest/meta-data/iam/security-credentials/role%2Da HTTP/1.1\r\n\r\n")),
        ("absolute form", one(&format!("GET http://169.254.169.254{CREDS} HTTP/1.1\r\n\r\n"))),
        ("a body", one("PUT /latest/api/token HTTP/1.1\r\nx-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 5\r\n\r\nhello")),
        ("a chunked body", one("PUT /latest/api/token HTTP/1.1\r\nx-aws-ec2-metadata-token-ttl-seconds: 60\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("expect", one("PUT /latest/api/token HTTP/1.1\r\nx-aws-ec2-metadata-token-ttl-seconds: 60\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")),
        ("POST", one("POST /latest/api/token HTTP/1.1\r\nContent-Length: 0\r\n\r\n")),
        ("a bad header", one(&format!("GET {CREDS} HTTP/1.1\r\nBad Header: x\r\n\r\n"))),
        ("a bad request line", one("GET /a b HTTP/1.1\r\n\r\n")),
        ("a head too large", one(&format!("GET {CREDS} HTTP/1.1\r\nx-long: {long}\r\n\r\n"))),
        ("too many headers", one(&format!("GET {CREDS} HTTP/1.1\r\n{many}\r\n"))),
        ("a head cut short", one("GET /latest/meta-data/iam/info HTTP/1.1\r\nHost: x")),
        ("HTTP/2", one("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")),
        ("simple, then not, then simple", one(&format!("{get}GET {CREDS} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n{get}"))),
    ];
    // Only the first of the last case: the rest of that connection was hyper's.
    assert_eq!(same_bytes(settings(), &cases).await, 1);
}

#[tokio::test]
async fn refusals_that_close_get_hypers_bytes() {
    let get = format!("GET {CREDS} HTTP/1.1\r\n\r\n");
    let limited = ImdsSettings {
        rate_limit: 0.001,
        rate_burst: 1.0,
        require_imdsv2: true,
        ..settings()
    };
    let token = token_for_a();
    let with_token = format!("GET {CREDS} HTTP/1.1\r\nx-aws-ec2-metadata-token: {token}\r\n\r\n");
    let cases = [
        ("IMDSv1 refused", one(&get)),
        ("over the rate: 429 and close", one(&with_token.repeat(3))),
    ];
    // The 429 closed the connection: its two other requests were not read.
    assert_eq!(same_bytes(limited, &cases).await, 2);
}
