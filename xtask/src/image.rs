//! `cargo xtask image`: an OCI image archive of the release agent, built on this machine
//! without a container engine (Debian's `umoci` and `skopeo`; nothing is pulled).
//!
//! The image holds the release `iamlet` at [`AGENT_PATH`] and exactly what it needs at run
//! time, taken from this machine's Debian packages:
//!
//! * the shared libraries `ldd` names for it (and the dynamic loader), at the paths `ldd`
//!   names, with Debian's merged-`/usr` symlinks reproduced (`/lib -> usr/lib`, ...);
//! * `mount` and its libraries: the agent runs `mount -t bpf bpf /sys/fs/bpf` when the node
//!   has no bpffs there (`datapath/bpffs.rs`);
//! * Debian's CA bundle at `/etc/ssl/certs/ca-certificates.crt`, which rustls' native roots
//!   read for the STS and Kubernetes API connections;
//! * `/etc/passwd`, `/etc/group` (root and the image's user [`USER_NAME`], uid/gid
//!   [`IMAGE_UID`]), `/etc/nsswitch.conf` (files, then DNS), an empty `/tmp`;
//! * each shipped package's `copyright` file under `/usr/share/doc`, and [`CONTENTS_PATH`]:
//!   one line per shipped file with its Debian package and version.
//!
//! Files are owned by [`IMAGE_UID`]:[`IMAGE_UID`]; `/` and `/tmp` (mode 1777) stay root's,
//! as a runtime expects of mount points. Every mode lets "other" read (and run what is
//! runnable), so the chart's uid 0 without `CAP_DAC_OVERRIDE` can use them. The image runs
//! as [`IMAGE_UID`] with `iamlet` as its entrypoint; its labels carry the title, version,
//! full source revision, creation time, licence and, when known, the source URL.
//!
//! Every timestamp is `SOURCE_DATE_EPOCH`, else the commit time of `HEAD`, so building the
//! same commit again gives the same image digest and the same archive bytes. The archive is
//! `target/image/iamlet-<version>.tar`, named `iamlet:<version>` inside ([`REPOSITORY`]), which
//! is the Helm chart's default image (`tests/tests/integration/image.rs` checks both).

mod rootfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::run as sh;
use rootfs::Rootfs;

/// The repository part of the image's name inside the archive (the chart's default
/// `image.repository`).
pub(crate) const REPOSITORY: &str = "iamlet";
/// The image's tag: the workspace version (the chart's `appVersion`).
pub(crate) const TAG: &str = env!("CARGO_PKG_VERSION");
/// Where the agent sits in the image (the chart's values say so too).
const AGENT_PATH: &str = "/usr/local/bin/iamlet";
/// The image's user and group id: not root, and outside the range distributions give users.
pub(crate) const IMAGE_UID: u32 = 65532;
/// That user's (and group's) name.
const USER_NAME: &str = "iamlet";
/// Programs besides the agent, by the path their Debian package installs them at: the agent
/// runs `mount -t bpf bpf /sys/fs/bpf` when the node has no bpffs mounted there.
const HOST_PROGRAMS: &[&str] = &["/bin/mount"];
/// Debian's CA bundle (made by `update-ca-certificates` from package `ca-certificates`), where
/// rustls-native-certs (through openssl-probe) looks first.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The list of shipped files and their Debian packages, in the image.
const CONTENTS_PATH: &str = "/usr/share/iamlet/image-contents.tsv";
/// `PATH` in the image: the agent finds `mount` through it.
const IMAGE_PATH_ENV: &str = "PATH=/usr/local/bin:/usr/bin:/bin";

/// Where the archive of this version is written.
pub(crate) fn archive_path(root: &Path) -> PathBuf {
    root.join(format!("target/image/{REPOSITORY}-{TAG}.tar"))
}

/// What `cargo xtask image` was asked for.
pub(crate) struct Options {
    /// `org.opencontainers.image.source`; `None`: the URL of git's `origin`, if any.
    pub(crate) source: Option<String>,
}

/// Builds the release agent and its image archive; returns the archive's path.
pub(crate) fn build(root: &Path, options: &Options) -> Result<PathBuf> {
    for tool in ["umoci", "skopeo", "ldd", "dpkg-query"] {
        ensure!(
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "`{tool}` is missing: run `cargo xtask setup` (it installs umoci and skopeo)"
        );
    }
    crate::build_ebpf(root)?;
    sh(crate::cargo(root).args(["build", "--locked", "--release", "--package", "iamlet"]))?;
    let agent = root.join("target/release/iamlet");
    let meta = Metadata::read(root, options)?;
    let work = root.join("target/image/work");
    remove_dir(&work)?;
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    sh(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    sh(Command::new("umoci").args(["new", "--image", &image("base")]))?;
    sh(Command::new("umoci")
        .args(["unpack", "--image", &image("base")])
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let mut tree = Rootfs::new(rootfs.clone());
    tree.populate(&agent, &meta)?;
    tree.finish(&meta)?;
    sh(Command::new("umoci")
        .args(["repack", "--image", &image("base")])
        .args(["--history.created", &meta.created])
        .args(["--history.created_by", "cargo xtask image"])
        .args([
            "--history.comment",
            "iamlet, its shared libraries, mount and the CA bundle from Debian packages",
        ])
        .arg(&bundle))?;
    let mut config = Command::new("umoci");
    config
        .args(["config", "--image", &image("base"), "--tag", TAG])
        .args(["--no-history", "--created", &meta.created])
        .args(["--os", "linux", "--architecture", &meta.architecture])
        .args(["--config.user", &format!("{IMAGE_UID}:{IMAGE_UID}")])
        .args(["--config.entrypoint", AGENT_PATH])
        .args(["--config.env", IMAGE_PATH_ENV])
        .args(["--config.workingdir", "/"])
        .args(["--config.stopsignal", "SIGTERM"]);
    for (key, value) in meta.labels(&tree.packages) {
        let pair = format!("{key}={value}");
        config
            .args(["--config.label", &pair])
            .args(["--manifest.annotation", &pair]);
    }
    sh(&mut config)?;
    sh(Command::new("umoci").args(["rm", "--image", &image("base")]))?;
    sh(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;
    // The image under its full name (what `skopeo copy oci-archive:...` reads back), in a
    // layout of its own; an oci-archive is a tar of such a layout, written here with fixed
    // order, times, owners and modes, so that the same commit gives the same archive bytes.
    let named = work.join("named");
    sh(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--preserve-digests",
        &format!("oci:{}", image(TAG)),
        &format!("oci:{}:{REPOSITORY}:{TAG}", named.display()),
    ]))?;
    let archive = archive_path(root);
    remove_file(&archive)?;
    sh(Command::new("tar")
        .arg("--create")
        .arg("--file")
        .arg(&archive)
        .args(["--format=ustar", "--sort=name", "--numeric-owner"])
        .args(["--owner=0", "--group=0", "--mode=u=rwX,go=rX"])
        .arg(format!("--mtime=@{}", meta.epoch))
        .arg("--directory")
        .arg(&named)
        .args(["blobs", "index.json", "oci-layout"]))?;
    let digest = manifest_digest(&named)?;
    let unpacked = tree.size()?;
    remove_dir(&work)?;
    let size = std::fs::metadata(&archive)
        .with_context(|| format!("reading {}", archive.display()))?
        .len();
    eprintln!(
        "image: {} ({REPOSITORY}:{TAG}, manifest {digest}, revision {}): archive {} bytes ({:.1} MiB), \
         {} bytes unpacked ({:.1} MiB); packages: {}",
        archive.display(),
        meta.revision,
        size,
        mib(size),
        unpacked,
        mib(unpacked),
        package_list(&tree.packages),
    );
    eprintln!(
        "push: skopeo copy oci-archive:{}:{REPOSITORY}:{TAG} docker://REGISTRY/{REPOSITORY}:{TAG}",
        archive.display()
    );
    Ok(archive)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The shipped Debian packages as `name=version`, space-separated.
fn package_list(packages: &BTreeMap<String, String>) -> String {
    packages
        .iter()
        .map(|(name, version)| format!("{name}={version}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The digest of the manifest of the one image in the OCI layout `layout`.
fn manifest_digest(layout: &Path) -> Result<String> {
    let path = layout.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    index["manifests"][0]["digest"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{} names no manifest", path.display()))
}

/// Facts about the build that go into the image's timestamps and labels.
struct Metadata {
    /// Full commit id of `HEAD`.
    revision: String,
    /// Seconds since the epoch every timestamp is set to.
    epoch: u64,
    /// The same, in RFC 3339.
    created: String,
    /// The OCI architecture name of this machine.
    architecture: String,
    /// Where the source is, if known.
    source: Option<String>,
}

impl Metadata {
    fn read(root: &Path, options: &Options) -> Result<Self> {
        let revision = git(root, &["rev-parse", "HEAD"])?;
        if !git(root, &["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
            eprintln!(
                "image: warning: the work tree has uncommitted changes; the image is labelled \
                 with {revision} all the same"
            );
        }
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(value) => value
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not whole seconds"))?,
            Err(_) => git(root, &["log", "-1", "--format=%ct", "HEAD"])?
                .parse()
                .context("git log gave no commit time")?,
        };
        let created = output(Command::new("date").args([
            "--utc",
            &format!("--date=@{epoch}"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ]))?;
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => bail!("no OCI architecture name known for {other}"),
        }
        .to_owned();
        let source = match &options.source {
            Some(url) => Some(url.clone()),
            None => git(root, &["remote", "get-url", "origin"]).ok(),
        };
        if source.is_none() {
            eprintln!(
                "image: no `origin` remote and no --source: the image has no \
                 org.opencontainers.image.source label"
            );
        }
        Ok(Metadata {
            revision,
            epoch,
            created,
            architecture,
            source,
        })
    }

    /// The image's labels (also set as manifest annotations).
    fn labels(&self, packages: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
        let mut labels = vec![
            ("org.opencontainers.image.title", REPOSITORY.to_owned()),
            (
                "org.opencontainers.image.description",
                format!(
                    "iamlet node agent on files from Debian packages ({})",
                    package_list(packages)
                ),
            ),
            ("org.opencontainers.image.version", TAG.to_owned()),
            ("org.opencontainers.image.revision", self.revision.clone()),
            ("org.opencontainers.image.created", self.created.clone()),
            (
                "org.opencontainers.image.licenses",
                env!("CARGO_PKG_LICENSE").to_owned(),
            ),
        ];
        if let Some(source) = &self.source {
            labels.push(("org.opencontainers.image.source", source.clone()));
        }
        labels
    }
}

/// A git command's trimmed output in `root`.
fn git(root: &Path, args: &[&str]) -> Result<String> {
    output(Command::new("git").current_dir(root).args(args))
}

/// A command's trimmed stdout; an error with its stderr when it fails.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn remove_file(file: &Path) -> Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", file.display()))
        }
        _ => Ok(()),
    }
}
