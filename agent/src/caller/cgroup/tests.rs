//! Unit tests of `cgroup`.

use super::*;

#[test]
fn own_cgroup_from_proc() {
    let root = Path::new("/sys/fs/cgroup");
    let text = "12:cpu:/x\n0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope\n";
    assert_eq!(
        parse_own_cgroup(root, text),
        Some(root.join("kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope"))
    );
    assert_eq!(parse_own_cgroup(root, "0::/\n"), Some(root.to_path_buf()));
    assert_eq!(parse_own_cgroup(root, "1:name=systemd:/\n"), None);
}
use std::sync::Arc;

/// A fresh, unique directory under the system temp dir, removed on drop.
struct TempTree(PathBuf);

impl TempTree {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("iamlet-cgroup-{tag}-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path.canonicalize().unwrap())
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn mount(text: &str) -> Option<PathBuf> {
    find_cgroup2_mount(text).ok()
}

#[test]
fn mounts() {
    let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw,mode=755 0 0\n\
                  cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                  cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n\
                  cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\n";
    assert_eq!(mount(hybrid), Some("/sys/fs/cgroup/unified".into()));
    let pure = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
    assert_eq!(mount(pure), Some("/sys/fs/cgroup".into()));
    let several = "cgroup2 /run/x cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
    assert_eq!(mount(several), Some("/sys/fs/cgroup".into()));
    let two = "cgroup2 /a cgroup2 rw 0 0\ncgroup2 /b cgroup2 rw 0 0\n";
    assert_eq!(mount(two), Some("/a".into()));
    let escaped = "cgroup2 /mnt/my\\040cgroups\\134x cgroup2 rw 0 0\n";
    assert_eq!(mount(escaped), Some("/mnt/my cgroups\\x".into()));
    assert_eq!(decode_mount_field("a\\04"), PathBuf::from("a\\04"));
    assert_eq!(decode_mount_field("a\\09x"), PathBuf::from("a\\09x"));
    let none = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n";
    let err = find_cgroup2_mount(none);
    assert!(matches!(err, Err(Error::NoCgroup2Mount { .. })), "{err:?}");
    assert_eq!(mount(""), None);
}

#[test]
fn pods_cgroup_autodetect() {
    let t = TempTree::new("autodetect");
    let err = autodetect_pods_cgroup(&t.0).unwrap_err().to_string();
    assert!(err.contains("kubepods.slice or kubepods"), "{err}");
    fs::create_dir(t.0.join("kubepods")).unwrap();
    assert_eq!(autodetect_pods_cgroup(&t.0).unwrap(), t.0.join("kubepods"));
    fs::create_dir(t.0.join("kubepods.slice")).unwrap();
    assert_eq!(
        autodetect_pods_cgroup(&t.0).unwrap(),
        t.0.join("kubepods.slice")
    );
}

#[test]
fn validate_candidates() {
    let t = TempTree::new("validate");
    let root = t.0.join("root");
    fs::create_dir_all(root.join("kubepods.slice/inner")).unwrap();
    fs::create_dir_all(t.0.join("outside")).unwrap();
    fs::write(root.join("cgroup.procs"), "").unwrap();
    let v = |c: &Path| validate_attach_cgroup(&root, c);
    let p = |c: &str| validate_attach_cgroup(&root, Path::new(c));

    assert!(matches!(v(&root), Err(Error::IsRoot { .. })));
    assert!(matches!(p("."), Err(Error::IsRoot { .. })));
    assert!(matches!(p("/"), Err(Error::IsRoot { .. })));
    assert!(matches!(
        v(&t.0.join("outside")),
        Err(Error::OutsideRoot { .. })
    ));
    assert!(matches!(p("../outside"), Err(Error::OutsideRoot { .. })));
    assert!(matches!(p("missing"), Err(Error::Io { op: "resolve", .. })));
    assert!(matches!(
        p("/no-such-cgroup"),
        Err(Error::Io { op: "resolve", .. })
    ));
    assert!(matches!(
        p("cgroup.procs"),
        Err(Error::NotADirectory { .. })
    ));
    let want = root.join("kubepods.slice");
    assert_eq!(p("kubepods.slice").unwrap(), want);
    assert_eq!(p("kubepods.slice/inner/..").unwrap(), want);
    assert_eq!(v(&want).unwrap(), want);
    // Written as in /proc/<pid>/cgroup: relative to the root.
    assert_eq!(p("/kubepods.slice").unwrap(), want);
}

#[test]
fn cgroup_id_is_inode() {
    let t = TempTree::new("id");
    assert_eq!(cgroup_id(&t.0).unwrap(), fs::metadata(&t.0).unwrap().ino());
    let err = cgroup_id(&t.0.join("nope"));
    assert!(matches!(err, Err(Error::Io { op: "stat", .. })));
}

#[test]
fn index_scans_rescans_and_forgets() {
    let t = TempTree::new("index");
    let base = t.0.join("kubepods.slice");
    let pod = base.join("kubepods-besteffort.slice/kubepods-besteffort-podx.slice");
    fs::create_dir_all(&pod).unwrap();
    fs::create_dir_all(t.0.join("system.slice/other.service")).unwrap();
    fs::write(pod.join("cgroup.procs"), "").unwrap();
    std::os::unix::fs::symlink(t.0.join("system.slice"), base.join("link")).unwrap();
    let id = |p: &Path| cgroup_id(p).unwrap();

    let index = CgroupIndex::new(&t.0.join("system.slice/.."), &base).unwrap();
    assert_eq!(
        index.len(),
        3,
        "base, qos and pod slice; no files, no symlinks"
    );
    assert_eq!(index.path_of(id(&base)).as_deref(), Some("/kubepods.slice"));
    let pod_path = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice";
    assert_eq!(index.path_of(id(&pod)).as_deref(), Some(pod_path));
    assert_eq!(index.rescans(), 0);

    // Outside the scanned subtree: a miss, even after the rescan.
    assert_eq!(
        index.path_of(id(&t.0.join("system.slice/other.service"))),
        None
    );
    assert_eq!(index.rescans(), 1);

    // A new cgroup is found by the rescan on miss.
    let ctr = pod.join("cri-containerd-abc.scope");
    fs::create_dir(&ctr).unwrap();
    let want = format!("{pod_path}/cri-containerd-abc.scope");
    assert_eq!(index.path_of(id(&ctr)), Some(want));
    assert_eq!((index.rescans(), index.len()), (2, 4));

    // A removed cgroup disappears at the next rescan.
    let gone = id(&ctr);
    fs::remove_dir(&ctr).unwrap();
    assert_eq!(index.path_of(gone).map(|_| ()), Some(()), "still cached");
    index.refresh();
    assert_eq!((index.rescans(), index.len()), (3, 3));
    assert_eq!(index.path_of(gone), None);
}

#[test]
fn index_finds_new_cgroups_at_once_and_single_flights() {
    let t = TempTree::new("singleflight");
    let base = t.0.join("kubepods");
    fs::create_dir_all(base.join("burstable")).unwrap();
    let new = || Arc::new(CgroupIndex::new(&t.0, &base).unwrap());

    // An id a fresh walk did not find is not walked for again (ids are never reused).
    let index = new();
    assert_eq!(index.path_of(u64::MAX), None);
    assert_eq!(index.path_of(u64::MAX), None);
    assert_eq!(index.rescans(), 1);
    // A cgroup created right after a walk is still found by the next lookup: no rate limit
    // turns a container that asks at once into an unknown caller.
    for i in 0..5 {
        let dir = base.join(format!("burstable/pod{i}"));
        fs::create_dir(&dir).unwrap();
        assert!(index.path_of(cgroup_id(&dir).unwrap()).is_some(), "pod{i}");
    }
    assert_eq!(index.rescans(), 6);
    index.refresh();
    assert_eq!(index.rescans(), 7);

    // Concurrent misses share one walk: hold the scan lock (as a running rescan would)
    // while they all miss, then release it.
    // (Whether a thread reaches the lock before or after it is released, the id is missing
    // from a rescan that started after its lookup, so one rescan answers all 32.)
    let index = new();
    let guard = index.scan.lock().unwrap();
    let ready = Arc::new(std::sync::Barrier::new(33));
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let index = Arc::clone(&index);
            let ready = Arc::clone(&ready);
            std::thread::spawn(move || {
                ready.wait();
                index.path_of(u64::MAX - 1)
            })
        })
        .collect();
    ready.wait();
    for _ in 0..1000 {
        std::thread::yield_now();
    }
    drop(guard);
    for thread in threads {
        assert_eq!(thread.join().unwrap(), None);
    }
    assert_eq!(index.rescans(), 1);
}

#[test]
fn index_rejects_missing_base_and_renders() {
    let t = TempTree::new("missing");
    let err = CgroupIndex::new(&t.0, &t.0.join("nope"));
    assert!(matches!(err, Err(Error::Io { op: "resolve", .. })));
    let err = CgroupIndex::new(&t.0.join("."), &std::env::temp_dir().join(".."));
    assert!(matches!(err, Err(Error::OutsideRoot { .. })), "{err:?}");
    let root = Path::new("/sys/fs/cgroup");
    assert_eq!(render_relative(root, root).as_deref(), Some("/"));
    let sub = Path::new("/sys/fs/cgroup/a/b");
    assert_eq!(render_relative(root, sub).as_deref(), Some("/a/b"));
    assert_eq!(render_relative(root, Path::new("/elsewhere")), None);
}
