//! Traffic helpers run inside fake pods and hosts: a tiny HTTP/1.1 client and UDP probe with
//! an explicit socket family (so a test can force an `AF_INET6` socket onto a v4-mapped
//! address), and fake upstream servers for the node namespace.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::node::TestNode;
use crate::process::{run_with_timeout, ChildGuard};

/// Socket family a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET`.
    V4,
    /// `AF_INET6`.
    V6,
    /// `AF_INET6` with `IPV6_V6ONLY` off, connecting to a v4-mapped address.
    Mapped,
}

/// `argv`: family, host, port, method, a JSON list of extra header lines, then the paths. Sends
/// the request for each path on its own connection, from one process (starting Python is what
/// costs: 0.6 s under emulation), and prints one JSON line per answer.
const HTTP_CLIENT: &str = r#"
import socket, sys
import json
fam, host, port, method = sys.argv[1:5]
extra = "".join(h + "\r\n" for h in json.loads(sys.argv[5]))
af = socket.AF_INET if fam == "v4" else socket.AF_INET6
for path in sys.argv[6:]:
    s = socket.socket(af, socket.SOCK_STREAM)
    if fam == "mapped":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.settimeout(5)
    s.connect((host, int(port)))
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    print(json.dumps({
        "status": int(lines[0].split(" ")[1]),
        "headers": [l.split(":", 1)[0].strip().lower() + ":" + l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l],
        "body": body.decode(errors="replace"),
    }))
"#;

const UDP_PROBE: &str = r#"
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3]
af = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(af, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(payload.encode(), (host, port))
print(s.recvfrom(65536)[0].decode())
"#;

/// An HTTP answer: status code, headers and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Headers as `name:value`, names lower-cased.
    pub headers: Vec<String>,
    /// Body text.
    pub body: String,
}

impl HttpAnswer {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find_map(|h| h.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("status {} body is not JSON: {:?}", self.status, self.body))
    }
}

/// Runs an HTTP request with `cmd` (a pod's, host's or node's `command("python3")`).
pub fn http(
    cmd: Command,
    family: Family,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
) -> Result<HttpAnswer> {
    http_with(cmd, family, host, port, method, path, &[])
}

/// Like [`http`], with extra request headers (`("Name", "value")`).
pub fn http_with(
    cmd: Command,
    family: Family,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpAnswer> {
    let mut answers = requests(cmd, family, host, port, method, &[path], headers)?;
    answers.pop().context("no answer")
}

/// Sends `method` for each of `paths` with `cmd` (as [`http`] does, each on its own connection)
/// from one process, and gives the answers in order.
pub fn http_each(
    cmd: Command,
    family: Family,
    host: &str,
    port: u16,
    method: &str,
    paths: &[&str],
) -> Result<Vec<HttpAnswer>> {
    requests(cmd, family, host, port, method, paths, &[])
}

/// Runs [`HTTP_CLIENT`] with `cmd` for `paths`, each request with `headers`.
fn requests(
    mut cmd: Command,
    family: Family,
    host: &str,
    port: u16,
    method: &str,
    paths: &[&str],
    headers: &[(&str, &str)],
) -> Result<Vec<HttpAnswer>> {
    #[derive(serde::Deserialize)]
    struct Line {
        status: u16,
        headers: Vec<String>,
        body: String,
    }
    let fam = match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
        Family::Mapped => "mapped",
    };
    let headers: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    cmd.args(["-c", HTTP_CLIENT, fam, host, &port.to_string(), method])
        .arg(serde_json::to_string(&headers)?)
        .args(paths);
    // Each request may take its socket timeout (5 s).
    let requests = u32::try_from(paths.len()).unwrap_or(u32::MAX);
    let timeout =
        Duration::from_secs(15).saturating_add(Duration::from_secs(5).saturating_mul(requests));
    let out = run_with_timeout(&mut cmd, timeout)?;
    if !out.success() {
        bail!("HTTP client failed: {out}");
    }
    let answers = out
        .stdout
        .lines()
        .map(|l| {
            let a: Line =
                serde_json::from_str(l).with_context(|| format!("HTTP client line {l:?}"))?;
            Ok(HttpAnswer {
                status: a.status,
                headers: a.headers,
                body: a.body,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if answers.len() != paths.len() {
        bail!(
            "{} answers to {} requests: {out}",
            answers.len(),
            paths.len()
        );
    }
    Ok(answers)
}

/// Sends one UDP datagram with `cmd` and returns the reply text.
pub fn udp_probe(mut cmd: Command, host: &str, port: u16, payload: &str) -> Result<String> {
    cmd.args(["-c", UDP_PROBE, host, &port.to_string(), payload]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10))?.ensure_success()?;
    Ok(out.stdout.trim().to_string())
}

const FAKE_UPSTREAM: &str = r#"
import socket, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        host, port = self.server.server_address[:2]
        body = f"upstream {host} {port} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6

def udp_echo(host, port):
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(af, socket.SOCK_DGRAM)
    s.bind((host, port))
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(b"upstream-udp " + data, peer)

for spec in sys.argv[1:]:
    kind, rest = spec.split(":", 1)
    host, port = rest.rsplit(":", 1)
    host = host.strip("[]")
    if kind == "udp":
        threading.Thread(target=udp_echo, args=(host, int(port)), daemon=True).start()
    else:
        cls = V6Server if ":" in host else ThreadingHTTPServer
        srv = cls((host, int(port)), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// Fake servers where their addresses live (the metadata addresses in the node's cloud
/// namespace, the others in the node namespace): HTTP on the `tcp` addresses answering
/// `upstream <addr> <port> <path>`, UDP echo (`upstream-udp <payload>`) on the `udp` ones.
#[derive(Debug)]
pub struct FakeUpstream {
    _children: Vec<ChildGuard>,
}

impl FakeUpstream {
    /// Starts them and waits until every TCP address listens.
    pub fn start(node: &TestNode, tcp: &[SocketAddr], udp: &[SocketAddr]) -> Result<Self> {
        let mut children = Vec::new();
        for cloud in [false, true] {
            let here = |a: &&SocketAddr| crate::node::is_cloud_address(a.ip()) == cloud;
            let (tcp_here, udp_here): (Vec<_>, Vec<_>) = (
                tcp.iter().filter(here).collect(),
                udp.iter().filter(here).collect(),
            );
            if tcp_here.is_empty() && udp_here.is_empty() {
                continue;
            }
            let mut cmd = if cloud {
                node.cloud_command("python3")
            } else {
                node.command("python3")
            };
            cmd.args(["-c", FAKE_UPSTREAM]);
            for a in &tcp_here {
                cmd.arg(format!("tcp:{a}"));
            }
            for a in &udp_here {
                cmd.arg(format!("udp:{a}"));
            }
            cmd.stdout(std::process::Stdio::null());
            children.push(ChildGuard::spawn(&mut cmd)?);
        }
        for a in tcp {
            node.wait_listening(*a, Duration::from_secs(10))?;
        }
        // UDP sockets are bound by then too (bound before the ready line, threads start first).
        std::thread::sleep(Duration::from_millis(100));
        Ok(FakeUpstream {
            _children: children,
        })
    }
}
