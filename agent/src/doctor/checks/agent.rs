//! The agent itself: the process holding the pin directory's lock (and its flags), its admin
//! server's `/live` and `/ready`, and its metadata listeners.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::config::Args;
use crate::datapath::pin_lock;
use crate::doctor::report::Check;
use crate::inspect::client::{AdminClient, ClientError};

/// The running agent, found by the lock it holds on its pin directory.
#[derive(Debug)]
pub(crate) struct AgentProcess {
    /// Its pid (as this process sees pids).
    pub(crate) pid: u32,
    /// Its executable, if readable.
    pub(crate) exe: Option<PathBuf>,
    /// Its flags, parsed from its command line, or why they could not be.
    pub(crate) args: Result<Args, String>,
}

/// The agent holding the lock on `pin_dir`, if one does.
pub(crate) fn find_agent(pin_dir: &Path) -> Option<AgentProcess> {
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(pin_dir).ok()?);
    let pid = pin_lock::holder_pid(ino).filter(|pid| *pid != 0)?;
    if !holds_open(pid, pin_dir) {
        // `/proc/locks` names inodes only: a lock on another file system's inode.
        return None;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let args = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| format!("cannot read /proc/{pid}/cmdline: {e}"))
        .and_then(|raw| parse_cmdline(&raw));
    Some(AgentProcess { pid, exe, args })
}

/// Whether process `pid` has `dir` open (the agent holds its locked pin directory open);
/// `true` when its descriptors cannot be read (then the lock alone decides).
fn holds_open(pid: u32, dir: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == dir))
}

/// The agent's flags from its NUL-separated command line.
fn parse_cmdline(raw: &[u8]) -> Result<Args, String> {
    let argv: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    if argv.is_empty() {
        return Err("its command line is empty".to_owned());
    }
    Args::try_parse_from(&argv).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default().to_owned();
        format!("its command line does not parse as this version's flags ({first})")
    })
}

/// The agent process check: one holds the pin directory.
pub(crate) fn check_agent(agent: Option<&AgentProcess>, pin_dir: &Path, attached: bool) -> Check {
    const NAME: &str = "agent";
    let Some(agent) = agent else {
        let mut finding = format!("no agent holds {}", pin_dir.display());
        if attached {
            finding.push_str(": its programs stay attached, so pods' metadata connects are refused (fail closed) until an agent runs again");
        }
        return Check::fail(
            NAME,
            finding,
            "start the agent (kubectl -n kube-system get pods -l app.kubernetes.io/name=iamlet -o wide; a stopped agent's log says why), or pass doctor the --bpffs-dir the agent uses",
        );
    };
    let exe = agent
        .exe
        .as_ref()
        .map(|e| format!(" ({})", e.display()))
        .unwrap_or_default();
    Check::ok(
        NAME,
        format!("pid {}{exe} holds {}", agent.pid, pin_dir.display()),
    )
}

/// The readiness check: `GET /live` and `GET /ready` on the admin server at `admin`.
pub(crate) fn check_ready(admin: &str, timeout: Duration) -> Check {
    const NAME: &str = "ready";
    let client = match AdminClient::new(admin, timeout) {
        Ok(client) => client,
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "pass --admin the agent's --admin-listen address (HOST:PORT)",
            )
        }
    };
    let live = client.get("/live");
    let ready = client.get("/ready");
    match (live, ready) {
        (Ok(_), Ok(_)) => Check::ok(NAME, format!("GET http://{admin}/ready: 200, /live: 200")),
        (Ok(_), Err(ClientError::Status { status, body, .. })) => Check::fail(
            NAME,
            format!("not ready: GET http://{admin}/ready answered {status} {body:?} (/live: 200): the agent is starting or stopping, or its datapath is missing and cannot be put back"),
            "see the agent's log (errors of the datapath check, iamlet_datapath_repairs_total); the kubelet keeps an unready agent's pod out of rotation",
        ),
        (Err(ClientError::Connect { source, .. }), _) => Check::fail(
            NAME,
            format!("not ready: nothing answers at {admin} ({source})"),
            "start the agent, or pass --admin its --admin-listen address (the chart: HOST_IP:9809, in IAMLET_ADMIN_LISTEN)",
        ),
        (Err(e), _) | (Ok(_), Err(e)) => Check::fail(
            NAME,
            format!("not ready: {e}"),
            "see the agent's log; is something else listening at the --admin address?",
        ),
    }
}

/// The listener check: the metadata proxy at `addr` accepts a TCP connection (the address
/// pods' connects are redirected to).
pub(crate) fn check_listener(
    name: &str,
    flag: &str,
    addr: Option<SocketAddr>,
    timeout: Duration,
) -> Check {
    let example = if flag.ends_with("v6") {
        "[HOST_IPV6]:8181"
    } else {
        "HOST_IP:8181"
    };
    let Some(addr) = addr else {
        return Check::skip(
            name,
            format!("no {flag} given (pass the agent's, e.g. {flag} {example}, to check it)"),
        );
    };
    let started = Instant::now();
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => {
            drop(stream);
            Check::ok(
                name,
                format!("{addr} accepts connections ({} ms)", started.elapsed().as_millis()),
            )
        }
        Err(e) => Check::fail(
            name,
            format!("{addr} does not accept connections ({e}): pods' metadata connects, redirected there, fail"),
            format!("start the agent, and make sure it listens on the node's address that pods reach ({flag} {example})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    #[test]
    fn reads_the_agents_flags_from_its_command_line() {
        let argv = [
            "/usr/bin/iamlet",
            "--listen-v4",
            "198.18.255.1:8181",
            "--cgroup",
            "kubepods.slice",
            "--bpffs-dir",
            "/sys/fs/bpf/x",
        ];
        let raw: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
        let args = parse_cmdline(&raw).expect("parses");
        assert_eq!(
            args.listen_v4.map(|a| a.to_string()).as_deref(),
            Some("198.18.255.1:8181")
        );
        assert_eq!(args.cgroup.as_deref(), Some(Path::new("kubepods.slice")));
        assert_eq!(args.bpffs_dir, Path::new("/sys/fs/bpf/x"));
        let err = parse_cmdline(b"iamlet\0--no-such-flag\0").expect_err("unknown flag");
        assert!(err.contains("does not parse"), "{err}");
        assert!(parse_cmdline(b"").is_err());
    }

    #[test]
    fn a_closed_listener_and_no_admin_server_are_problems() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let listener = check_listener(
            "listener v4",
            "--listen-v4",
            Some(addr),
            Duration::from_secs(1),
        );
        assert_eq!(listener.status, Status::Fail, "{listener:?}");
        let ready = check_ready(&addr.to_string(), Duration::from_secs(1));
        assert_eq!(ready.status, Status::Fail, "{ready:?}");
        assert!(
            ready
                .finding
                .starts_with("not ready: nothing answers at 127.0.0.1:"),
            "{ready:?}"
        );
        let none = check_listener("listener v6", "--listen-v6", None, Duration::from_secs(1));
        assert_eq!(none.status, Status::Skip);
        let up = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let open = check_listener(
            "listener v4",
            "--listen-v4",
            up.local_addr().ok(),
            Duration::from_secs(1),
        );
        assert_eq!(open.status, Status::Ok, "{open:?}");
    }
}
