//! nginx serving the bytes iamlet served, on the same node address and veth: `bench imds`'s
//! reference server.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use iamlet_tests::{ChildGuard, TestNode, NODE_PROXY_V4};

use crate::bench_pod::{creds_path, TempDir, ROLES_PATH, TOKEN_PATH};
use crate::imds::NGINX_PORT;
use crate::wrk::{on_cpus, Placement};

/// nginx (master + workers) in the node namespace; asked to quit on drop, killed if it does
/// not (the node namespace's removal kills any worker left).
pub(crate) struct Nginx {
    pub(crate) master: ChildGuard,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.master.id().to_string();
        let _ = Command::new("kill")
            .args(["-QUIT", &pid])
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(
            self.master.wait_timeout(Duration::from_secs(5)),
            Ok(Some(_))
        ) {
            eprintln!("nginx {pid} did not quit; killing it");
        }
    }
}

/// Text for a double-quoted nginx string (`return 200 "..."`).
fn nginx_quoted(s: &str) -> Result<String> {
    ensure!(
        s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '$'),
        "token {s:?} has characters the nginx config would need to escape"
    );
    Ok(format!("\"{s}\""))
}

pub(crate) fn start_nginx(
    node: &TestNode,
    dir: &TempDir,
    token: &str,
    placement: Placement,
) -> Result<Nginx> {
    let d = dir.0.display();
    for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.path(&format!("tmp/{t}")))?;
    }
    let conf = format!(
        r"worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 65s;
    open_file_cache max=16 inactive=1h;
    open_file_cache_valid 1h;
    types {{ }}
    default_type text/plain;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen {NODE_PROXY_V4}:{NGINX_PORT};
        root {d}/www;
        location = {TOKEN_PATH} {{ return 200 {token}; }}
        location = {ROLES_PATH} {{ try_files /roles =404; }}
        location = {creds} {{ try_files /creds =404; }}
        location / {{ return 404; }}
    }}
}}
",
        token = nginx_quoted(token)?,
        // One worker per CPU it may use.
        workers = if placement.server_cpus().is_some() {
            "1"
        } else {
            "auto"
        },
        creds = creds_path(),
    );
    let conf_path = dir.path("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = on_cpus(placement.server_cpus(), "nginx", |p| node.command(p));
    cmd.arg("-p")
        .arg(&dir.0)
        .arg("-e")
        .arg(dir.path("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdin(std::process::Stdio::null());
    let mut nginx = Nginx {
        master: ChildGuard::spawn(&mut cmd).context("starting nginx (apt-get install nginx)")?,
    };
    let addr = SocketAddr::new(NODE_PROXY_V4.into(), NGINX_PORT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = node.wait_listening(addr, Duration::from_millis(100)) {
        let exited = nginx.master.try_wait()?;
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path("error.log")).unwrap_or_default();
            return Err(e.context(format!(
                "nginx did not start ({exited:?}); its error log:\n{log}"
            )));
        }
    }
    Ok(nginx)
}
