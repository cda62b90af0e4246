//! Pod identity from a cgroup path.
//!
//! The kubelet places every pod in a cgroup named after the pod's UID, below a QoS-class level,
//! below its pods cgroup. The two cgroup drivers spell this differently:
//!
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/`
//!   with the UID's dashes turned into underscores (a dash separates slice levels), and
//!   containers in `cri-containerd-<id>.scope`, `crio-<id>.scope` or `docker-<id>.scope`;
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<id>`, with cri-o using `crio-<id>`.
//!
//! Guaranteed pods have no QoS level (`kubepods-pod<uid>.slice`, `/kubepods/pod<uid>`). The
//! whole hierarchy may sit below a prefix, e.g. `/kubelet.slice/kubelet-kubepods.slice/` in
//! kind or k3s, or a container's cgroup in docker-in-docker setups.

/// Kubernetes QoS class of a pod, as encoded in its cgroup path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Qos {
    /// Requests equal limits for every container; no QoS level in the path.
    Guaranteed,
    /// `burstable` level.
    Burstable,
    /// `besteffort` level.
    BestEffort,
}

impl Qos {
    /// The class as Kubernetes names it (`Guaranteed`, `Burstable`, `BestEffort`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

impl std::fmt::Display for Qos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a cgroup path says about the pod a process runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodCgroup {
    /// The pod's UID: a canonical lowercase UUID (`8-4-4-4-12` with dashes), or for static pods
    /// the 32-hex config hash the kubelet uses instead, lowercase.
    pub pod_uid: String,
    /// The pod's QoS class.
    pub qos: Qos,
    /// The container's id (64 lowercase hex digits), when the path names a container's cgroup
    /// rather than the pod's own (or cri-o's `conmon` monitor).
    pub container_id: Option<String>,
    /// The container runtime, when the cgroup name tells it: `containerd`, `cri-o` or
    /// `docker`. A bare-hex cgroupfs container leaf does not tell it.
    pub runtime: Option<String>,
}

/// Parses a cgroup path (relative to the cgroup2 root, as in `/proc/<pid>/cgroup`) into the pod
/// it belongs to, for both kubelet cgroup drivers and below any prefix.
///
/// Returns `None` for anything that is not inside a pod's cgroup. When several pod cgroups are
/// nested (a cluster running inside a pod), the outermost one is returned: that is the pod as
/// seen from the host whose cgroup tree the path comes from.
pub(crate) fn parse_pod_cgroup(path: &str) -> Option<PodCgroup> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, component) in components.iter().enumerate() {
        let parents = &components[..i];
        let found = parse_systemd_pod(component, parents)
            .map(|(uid, qos)| (uid, qos, Driver::Systemd))
            .or_else(|| {
                parse_cgroupfs_pod(component, parents).map(|(u, q)| (u, q, Driver::Cgroupfs))
            });
        if let Some((pod_uid, qos, driver)) = found {
            let (container_id, runtime) = components
                .get(i + 1)
                .map_or((None, None), |leaf| parse_container(leaf, driver));
            return Some(PodCgroup {
                pod_uid,
                qos,
                container_id,
                runtime: runtime.map(str::to_owned),
            });
        }
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    Systemd,
    Cgroupfs,
}

/// `kubepods[-burstable|-besteffort]-pod<uid_with_underscores>.slice`, possibly with a slice
/// prefix (`kubelet-kubepods-...`); its parent must be the QoS slice its name derives from.
fn parse_systemd_pod(component: &str, parents: &[&str]) -> Option<(String, Qos)> {
    let name = component.strip_suffix(".slice")?;
    let (qos_slice, raw_uid) = name.rsplit_once("-pod")?;
    let (kubepods, qos) = if let Some(base) = qos_slice.strip_suffix("-burstable") {
        (base, Qos::Burstable)
    } else if let Some(base) = qos_slice.strip_suffix("-besteffort") {
        (base, Qos::BestEffort)
    } else {
        (qos_slice, Qos::Guaranteed)
    };
    if kubepods != "kubepods" && !kubepods.ends_with("-kubepods") {
        return None;
    }
    let parent = parents.last()?;
    if parent.strip_suffix(".slice") != Some(qos_slice) {
        return None;
    }
    let uid = normalize_uid(raw_uid, '_')?;
    Some((uid, qos))
}

/// `pod<uid>` below `kubepods/`, `kubepods/burstable/` or `kubepods/besteffort/`.
fn parse_cgroupfs_pod(component: &str, parents: &[&str]) -> Option<(String, Qos)> {
    let raw_uid = component.strip_prefix("pod")?;
    let qos = match parents {
        [.., "kubepods", "burstable"] => Qos::Burstable,
        [.., "kubepods", "besteffort"] => Qos::BestEffort,
        [.., "kubepods"] => Qos::Guaranteed,
        _ => return None,
    };
    let uid = normalize_uid(raw_uid, '-')?;
    Some((uid, qos))
}

/// The canonical lowercase UID from a UUID whose four separators are `separator`, or from a
/// 32-hex static-pod hash. `None` for anything else.
fn normalize_uid(raw: &str, separator: char) -> Option<String> {
    let bytes = raw.as_bytes();
    if bytes.len() == 32 && bytes.iter().all(u8::is_ascii_hexdigit) {
        return Some(raw.to_ascii_lowercase());
    }
    if bytes.len() != 36 {
        return None;
    }
    let mut uid = String::with_capacity(36);
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if char::from(b) != separator {
                return None;
            }
            uid.push('-');
        } else if b.is_ascii_hexdigit() {
            uid.push(char::from(b.to_ascii_lowercase()));
        } else {
            return None;
        }
    }
    Some(uid)
}

/// A 64-hex container id, lowercased.
fn container_hex(raw: &str) -> Option<String> {
    (raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| raw.to_ascii_lowercase())
}

/// `(container_id, runtime)` of the cgroup directly below a pod's.
fn parse_container(leaf: &str, driver: Driver) -> (Option<String>, Option<&'static str>) {
    let name = match driver {
        Driver::Systemd => match leaf.strip_suffix(".scope") {
            Some(name) => name,
            None => return (None, None),
        },
        Driver::Cgroupfs => leaf,
    };
    if let Some(id) = name.strip_prefix("crio-conmon-") {
        // cri-o's per-container monitor: inside the pod, but not a container.
        return match container_hex(id) {
            Some(_) => (None, Some("cri-o")),
            None => (None, None),
        };
    }
    let prefixed = [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
    ];
    for (prefix, runtime) in prefixed {
        if let Some(id) = name.strip_prefix(prefix) {
            return match container_hex(id) {
                Some(id) => (Some(id), Some(runtime)),
                None => (None, None),
            };
        }
    }
    if driver == Driver::Cgroupfs {
        if let Some(id) = container_hex(name) {
            return (Some(id), None);
        }
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1d4a6c37-5b2e-4c8e-9a6f-0e5e2d7c9b11";
    const UID_US: &str = "1d4a6c37_5b2e_4c8e_9a6f_0e5e2d7c9b11";
    const HASH: &str = "6e0d2a5b1f9c4b8d9e7f3a2c1b0d4e5f";
    const CID: &str = "3f1c9e7a2b4d6f8091a3c5e7f9b1d3e5a7c9e1f3b5d7f9a1c3e5a7b9d1f3e5a7";

    type Expected = Option<(
        &'static str,
        Qos,
        Option<&'static str>,
        Option<&'static str>,
    )>;

    fn cases() -> Vec<(String, Expected)> {
        use Qos::*;
        let c = Some(CID);
        vec![
            // systemd driver, containerd, every QoS class.
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"),
             Some((UID, Burstable, c, Some("containerd")))),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"),
             Some((UID, BestEffort, c, Some("containerd")))),
            (format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope"),
             Some((UID, Guaranteed, c, Some("containerd")))),
            // systemd driver, cri-o and its conmon, docker.
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-{CID}.scope"),
             Some((UID, Burstable, c, Some("cri-o")))),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-conmon-{CID}.scope"),
             Some((UID, Burstable, None, Some("cri-o")))),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/docker-{CID}.scope"),
             Some((UID, BestEffort, c, Some("docker")))),
            // cri-o's nested `container` cgroup below the scope still names the container.
            (format!("/kubepods.slice/kubepods-pod{UID_US}.slice/crio-{CID}.scope/container"),
             Some((UID, Guaranteed, c, Some("cri-o")))),
            // The pod slice itself (hostNetwork processes, pause-less setups).
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice"),
             Some((UID, BestEffort, None, None))),
            // Static pod: config hash instead of a UUID.
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{HASH}.slice/cri-containerd-{CID}.scope"),
             Some((HASH, Burstable, c, Some("containerd")))),
            // kind / k3s prefix under systemd.
            (format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"),
             Some((UID, BestEffort, c, Some("containerd")))),
            (format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_US}.slice"),
             Some((UID, Guaranteed, None, None))),
            // Upper case is normalised.
            (format!("/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{}.scope", UID_US.to_uppercase(), CID.to_uppercase()),
             Some((UID, Guaranteed, c, Some("containerd")))),
            // cgroupfs driver, every QoS class, containerd/docker and cri-o leaves.
            (format!("/kubepods/burstable/pod{UID}/{CID}"), Some((UID, Burstable, c, None))),
            (format!("/kubepods/pod{UID}/{CID}"), Some((UID, Guaranteed, c, None))),
            (format!("/kubepods/besteffort/pod{UID}"), Some((UID, BestEffort, None, None))),
            (format!("/kubepods/besteffort/pod{UID}/crio-{CID}"), Some((UID, BestEffort, c, Some("cri-o")))),
            (format!("/kubepods/burstable/pod{UID}/crio-conmon-{CID}"), Some((UID, Burstable, None, Some("cri-o")))),
            (format!("/kubepods/burstable/pod{HASH}/{CID}"), Some((HASH, Burstable, c, None))),
            // docker-in-docker prefix, trailing slash.
            (format!("/docker/{CID}/kubepods/besteffort/pod{UID}/{CID}/"), Some((UID, BestEffort, c, None))),
            // Unknown leaf: still the pod, no container.
            (format!("/kubepods/burstable/pod{UID}/not-a-container"), Some((UID, Burstable, None, None))),
            (format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-short.scope"), Some((UID, Guaranteed, None, None))),
            // Negatives.
            ("/".to_owned(), None),
            (String::new(), None),
            ("/system.slice/containerd.service".to_owned(), None),
            (format!("/system.slice/docker-{CID}.scope"), None),
            ("/user.slice/user-1000.slice/session-3.scope".to_owned(), None),
            ("/kubepods.slice/kubepods-burstable.slice".to_owned(), None),
            ("/kubepods/burstable".to_owned(), None),
            (format!("/system.slice/pod{UID}"), None),
            (format!("/pods/pod{UID}/{CID}"), None),
            (format!("/kubepods/guaranteed/pod{UID}"), None),
            (format!("/kubepods/burstable/extra/pod{UID}"), None),
            // Wrong separators for the driver.
            (format!("/kubepods.slice/kubepods-pod{UID}.slice"), None),
            (format!("/kubepods/pod{UID_US}"), None),
            // Malformed UIDs and hashes.
            (format!("/kubepods/pod{}", &UID[..35]), None),
            (format!("/kubepods/pod{UID}0"), None),
            (format!("/kubepods/pod{}", UID.replace('a', "g")), None),
            (format!("/kubepods/pod{}", &HASH[..31]), None),
            ("/kubepods/pod1d4a6c375-b2e-4c8e-9a6f-0e5e2d7c9b11".to_owned(), None),
            // Pod slice not under the QoS slice its name claims.
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{UID_US}.slice"), None),
            (format!("/kubepods.slice/kubepods-pod{UID_US}"), None),
            (format!("/other.slice/other-pod{UID_US}.slice"), None),
        ]
    }

    #[test]
    fn table() {
        let cases = cases();
        assert!(cases.len() >= 20);
        for (path, expected) in cases {
            let got = parse_pod_cgroup(&path);
            let want = expected.map(|(uid, qos, cid, rt)| PodCgroup {
                pod_uid: uid.to_owned(),
                qos,
                container_id: cid.map(str::to_owned),
                runtime: rt.map(str::to_owned),
            });
            assert_eq!(got, want, "path {path}");
        }
    }

    #[test]
    fn nested_takes_outermost() {
        let inner = "a1b2c3d4-0000-4000-8000-000000000001";
        let path =
            format!("/kubepods/burstable/pod{UID}/{CID}/kubepods/besteffort/pod{inner}/{CID}");
        let got = parse_pod_cgroup(&path).unwrap();
        assert_eq!(got.pod_uid, UID);
        assert_eq!(got.qos, Qos::Burstable);
    }

    #[test]
    fn non_pod_cgroups_are_none_and_qos_prints_as_kubernetes_does() {
        assert_eq!(parse_pod_cgroup("/system.slice/sshd.service"), None);
        assert_eq!(Qos::BestEffort.to_string(), "BestEffort");
    }
}
