//! The handover exchange between two in-process sides over a real unix socket, with real
//! listening TCP sockets passed along.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

#[derive(Clone, Default)]
struct Recorder {
    offered: Arc<AtomicUsize>,
    withdrawn: Arc<AtomicUsize>,
    stopped: Arc<AtomicUsize>,
}

impl Retire for Recorder {
    fn offered(&self) {
        self.offered.fetch_add(1, Ordering::SeqCst);
    }

    fn withdrawn(&self) {
        self.withdrawn.fetch_add(1, Ordering::SeqCst);
    }

    async fn stop_accepting(&self) {
        self.stopped.fetch_add(1, Ordering::SeqCst);
    }
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "iamlet-handover-{}-{name}.sock",
        std::process::id()
    ))
}

fn listener() -> (SocketAddr, std::net::TcpListener, OwnedFd) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let fd = l.as_fd().try_clone_to_owned().expect("dup");
    (addr, l, fd)
}

#[tokio::test]
async fn a_successor_takes_the_sockets_and_the_predecessor_stops() {
    let path = socket_path("full");
    let (a1, _keep1, fd1) = listener();
    let (a2, _keep2, fd2) = listener();
    let offer = Offer {
        listeners: vec![(a1, fd1), (a2, fd2)],
        cgroup_id: 4242,
        token_key: [7; 32],
        pin_lock: std::fs::File::open(std::env::temp_dir())
            .expect("a directory")
            .into(),
    };
    let retire = Recorder::default();
    let socket = bind(&path).expect("bind handover socket");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(serve(path.clone(), socket, offer, retire.clone(), stop_rx));

    let mut p = connect(&path)
        .await
        .expect("connect")
        .expect("a predecessor");
    assert_eq!(p.cgroup_id(), 4242);
    assert_eq!(p.token_key(), [7; 32]);
    assert_eq!(p.pid(), std::process::id());
    let lock = p.take_pin_lock().expect("the pin directory rides along");
    let stat = rustix::fs::fstat(&lock).expect("fstat");
    let tmp = std::fs::metadata(std::env::temp_dir()).expect("stat");
    assert_eq!(stat.st_ino, std::os::unix::fs::MetadataExt::ino(&tmp));
    assert!(p.take_pin_lock().is_none(), "taken once");
    assert_eq!(retire.offered.load(Ordering::SeqCst), 1);
    let inherited = p.take_listener(a1).expect("listener 1");
    assert!(p.take_listener(a1).is_none(), "taken once");
    assert!(p.take_listener(a2).is_some());
    assert!(p
        .take_listener("127.0.0.1:1".parse().expect("addr"))
        .is_none());

    // The inherited socket is the same listening socket: a client of a1 is accepted by it.
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(a1).expect("connect a1");
        c.write_all(b"ping").expect("write");
    });
    let (mut conn, _) = inherited.accept().expect("accept on the inherited socket");
    let mut got = [0u8; 4];
    conn.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"ping");
    client.join().expect("client");

    p.stop_accepting().await.expect("stop");
    assert!(server.await.expect("server task"), "handover completed");
    assert_eq!(retire.stopped.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn no_agent_or_a_stale_socket_means_no_predecessor() {
    let path = socket_path("none");
    let _ = std::fs::remove_file(&path);
    assert!(connect(&path).await.expect("no socket").is_none());
    // A socket file nobody listens on (the agent was killed).
    drop(bind(&path).expect("bind"));
    assert!(path.exists());
    assert!(connect(&path).await.expect("stale socket").is_none());
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_successor_that_dies_midway_leaves_the_predecessor_offering() {
    let path = socket_path("retry");
    let (a1, _keep, fd1) = listener();
    let offer = Offer {
        listeners: vec![(a1, fd1)],
        cgroup_id: 0,
        token_key: [0xab; 32],
        pin_lock: std::fs::File::open(std::env::temp_dir())
            .expect("a directory")
            .into(),
    };
    let retire = Recorder::default();
    let socket = bind(&path).expect("bind");
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(serve(path.clone(), socket, offer, retire.clone(), stop_rx));

    let first = connect(&path).await.expect("connect").expect("predecessor");
    drop(first);
    // It still serves: a second successor gets the socket again.
    let mut second = connect(&path).await.expect("connect").expect("predecessor");
    assert!(second.take_listener(a1).is_some());
    assert_eq!(retire.offered.load(Ordering::SeqCst), 2);
    assert_eq!(
        retire.withdrawn.load(Ordering::SeqCst),
        1,
        "the first one went away"
    );
    assert_eq!(retire.stopped.load(Ordering::SeqCst), 0);
    drop(second);
    stop_tx.send(true).expect("stop");
    assert!(
        !server.await.expect("server task"),
        "shut down without a handover"
    );
    let _ = std::fs::remove_file(&path);
}
