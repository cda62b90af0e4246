//! A stand-in for the real EC2 metadata service in the node namespace, for passthrough and
//! leak tests: IMDSv2 only (GETs without its token get 401), the instance identity basics, and
//! the *node's* credentials on every path that could carry credentials, so a test can prove
//! they never reach a pod.
//!
//! It is as lenient as a careless upstream can be: it percent-decodes paths twice, turns
//! backslashes into slashes, drops `;` parameters, resolves dot segments and ignores letter
//! case, so a path that means one thing to iamlet and another upstream shows up as a leak.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;

use crate::node::{TestNode, IMDS_V4, IMDS_V6};
use crate::process::ChildGuard;

/// The node role's access key id the stand-in hands out.
pub const NODE_ACCESS_KEY: &str = "ASIANODEROLEKEY00000";
/// The node role's secret the stand-in hands out.
pub const NODE_SECRET: &str = "NODE-ROLE-SECRET-must-never-reach-a-pod";
/// The account of the node's instance profile (its `iam/info`).
pub const NODE_ACCOUNT: &str = "111122223333";
/// The instance id the stand-in reports.
pub const INSTANCE_ID: &str = "i-0fake0000000node1";

const SCRIPT: &str = r#"
import json, posixpath, re, socket, sys, threading, urllib.parse
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

TOKEN = "node-upstream-token"
KEY, SECRET, INSTANCE, NODE_ACCOUNT = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[6]
CREDS = json.dumps({"Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z", "Type": "AWS-HMAC",
                    "AccessKeyId": KEY, "SecretAccessKey": SECRET, "Token": "node-session",
                    "Expiration": "2099-01-01T00:00:00Z"})

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, code, body, extra=None):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
    def do_PUT(self):
        if self.path.endswith("/api/token"):
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            return self.reply(200, TOKEN, {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
        self.reply(404, "")
    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            return self.reply(401, "")
        p = urllib.parse.unquote(urllib.parse.unquote(self.path.split("?")[0]))
        p = re.sub(r";[^/]*", "", p.replace("\\", "/"))
        p = posixpath.normpath(p).lower() + ("/" if p.endswith("/") else "")
        if p.endswith("/meta-data/iam/info"):
            return self.reply(200, json.dumps({"Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z",
                "InstanceProfileArn": "arn:aws:iam::" + NODE_ACCOUNT + ":instance-profile/node-role",
                "InstanceProfileId": "AIPANODE0000000000000"}))
        if "iam" in p or "identity-credentials" in p or "user-data" in p:
            if p.rstrip("/").endswith("security-credentials"):
                return self.reply(200, "node-role")
            return self.reply(200, CREDS)
        if p.endswith("/meta-data/instance-id"):
            return self.reply(200, INSTANCE)
        if p.endswith("/meta-data/placement/region"):
            return self.reply(200, "eu-west-1")
        if p.endswith("/dynamic/instance-identity/document"):
            return self.reply(200, json.dumps({"instanceId": INSTANCE, "region": "eu-west-1"}))
        self.reply(404, "")
    def log_message(self, *a):
        pass

class V6(ThreadingHTTPServer):
    address_family = socket.AF_INET6

for cls, host in ((ThreadingHTTPServer, sys.argv[4]), (V6, sys.argv[5])):
    srv = cls((host, 80), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
threading.Event().wait()
"#;

/// The running stand-in (killed on drop).
#[derive(Debug)]
pub struct FakeImds {
    _child: ChildGuard,
}

impl FakeImds {
    /// Starts it on 169.254.169.254:80 and [`fd00:ec2::254`]:80 in the node's cloud namespace.
    pub fn start(node: &TestNode) -> Result<Self> {
        let mut cmd = node.cloud_command("python3");
        cmd.args(["-c", SCRIPT, NODE_ACCESS_KEY, NODE_SECRET, INSTANCE_ID])
            .arg(IMDS_V4.to_string())
            .arg(IMDS_V6.to_string())
            .arg(NODE_ACCOUNT);
        let child = ChildGuard::spawn(&mut cmd)?;
        for addr in [
            SocketAddr::new(IMDS_V4.into(), 80),
            SocketAddr::new(IMDS_V6.into(), 80),
        ] {
            node.wait_listening(addr, Duration::from_secs(10))?;
        }
        Ok(FakeImds { _child: child })
    }
}
