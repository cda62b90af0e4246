//! The CLIs' side of the admin server: one HTTP/1.1 request to the agent on this node, over a
//! plain TCP connection with timeouts (the admin server speaks HTTP/1.1 on loopback or the host
//! IP; nothing here needs a client library).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest answer read.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// Why the agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The address does not resolve.
    #[error("{addr:?} is not an address of the agent's admin server (HOST:PORT): {source}")]
    Address {
        /// As given.
        addr: String,
        /// Why it did not resolve.
        #[source]
        source: std::io::Error,
    },
    /// Nothing answered.
    #[error("no iamlet agent answers at {addr}: {source}. Is the agent running on this node? If its admin server listens elsewhere (the Helm chart uses the host IP), pass --admin HOST_IP:9809 or set IAMLET_ADMIN_LISTEN")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// What connect said.
        #[source]
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("talking to the agent at {addr}: {source}")]
    Io {
        /// Where.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not HTTP.
    #[error("the agent at {addr} sent an answer that is not HTTP/1.1")]
    NotHttp {
        /// Where.
        addr: SocketAddr,
    },
    /// The agent refused.
    #[error("the agent at {addr} answered {status}: {body}")]
    Status {
        /// Where.
        addr: SocketAddr,
        /// The status code.
        status: u16,
        /// Its text.
        body: String,
    },
}

/// The admin server of the agent at `addr` (`HOST:PORT`).
#[derive(Debug)]
pub(crate) struct AdminClient {
    addr: SocketAddr,
    timeout: Duration,
}

impl AdminClient {
    /// A client for `addr`, each exchange bounded by `timeout`.
    pub(crate) fn new(addr: &str, timeout: Duration) -> Result<Self, ClientError> {
        let resolved = addr
            .to_socket_addrs()
            .and_then(|mut all| {
                all.next().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")
                })
            })
            .map_err(|source| ClientError::Address {
                addr: addr.to_owned(),
                source,
            })?;
        Ok(AdminClient {
            addr: resolved,
            timeout,
        })
    }

    /// `GET path`: the body of a 200 answer.
    pub(crate) fn get(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        self.exchange("GET", path, &[])
    }

    /// `PUT path` with `body`: the body of a 200 answer.
    pub(crate) fn put(&self, path: &str, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.exchange("PUT", path, body)
    }

    fn exchange(&self, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        let addr = self.addr;
        let io = |source| ClientError::Io { addr, source };
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|source| ClientError::Connect { addr, source })?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: iamlet-cli/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(io)?;
        stream.write_all(body).map_err(io)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut raw)
            .map_err(io)?;
        let (status, body) = parse_response(&raw).ok_or(ClientError::NotHttp { addr })?;
        if status != 200 {
            return Err(ClientError::Status {
                addr,
                status,
                body: String::from_utf8_lossy(body).trim().to_owned(),
            });
        }
        Ok(body.to_vec())
    }
}

/// The status and body of a whole HTTP/1.1 answer (read until the server closed; a
/// `Content-Length` shorter than what came is honoured).
fn parse_response(raw: &[u8]) -> Option<(u16, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let mut body = &raw[end + 4..];
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.trim().parse().ok()?;
            body = body.get(..len)?;
        }
    }
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n";
        assert_eq!(parse_response(raw), Some((200, &b"ok\n"[..])));
        let raw = b"HTTP/1.1 403 Forbidden\r\n\r\nno";
        assert_eq!(parse_response(raw), Some((403, &b"no"[..])));
        assert_eq!(parse_response(b"SSH-2.0-x\r\n\r\n"), None);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n"),
            None,
            "no end of head"
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"),
            None,
            "cut short"
        );
    }

    #[test]
    fn says_what_to_do_when_no_agent_answers() {
        // A port nothing listens on: bind one, learn it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let client = AdminClient::new(&format!("127.0.0.1:{port}"), Duration::from_secs(1))
            .expect("address");
        let err = client.get("/debug/pods").expect_err("nothing listens");
        let text = err.to_string();
        assert!(
            text.contains("no iamlet agent answers at 127.0.0.1:"),
            "{text}"
        );
        assert!(text.contains("--admin"), "{text}");
        let err = AdminClient::new("not an address", Duration::from_secs(1)).expect_err("bad");
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }
}
