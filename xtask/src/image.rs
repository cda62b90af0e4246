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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::run as sh;

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

/// The image's root filesystem being filled, and what went into it.
struct Rootfs {
    /// Its directory on this machine.
    dir: PathBuf,
    /// Each shipped file (path in the image) and the Debian package it came from
    /// (`None`: made here).
    files: BTreeMap<PathBuf, Option<String>>,
    /// The Debian packages shipped from, and their versions.
    packages: BTreeMap<String, String>,
}

impl Rootfs {
    fn new(dir: PathBuf) -> Self {
        Rootfs {
            dir,
            files: BTreeMap::new(),
            packages: BTreeMap::new(),
        }
    }

    /// `path` (absolute, in the image) as a path on this machine.
    fn host(&self, path: &Path) -> PathBuf {
        self.dir.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Puts in the agent, the programs it runs, their libraries, the CA bundle and the
    /// files that name the user.
    fn populate(&mut self, agent: &Path, meta: &Metadata) -> Result<()> {
        let agent_dest = self.host(Path::new(AGENT_PATH));
        self.make_dirs(Path::new(AGENT_PATH).parent().unwrap_or(Path::new("/")))?;
        std::fs::copy(agent, &agent_dest)
            .with_context(|| format!("copying {} into the image", agent.display()))?;
        set_mode(&agent_dest, 0o755)?;
        self.files.insert(PathBuf::from(AGENT_PATH), None);
        let mut programs = vec![agent.to_path_buf()];
        for program in HOST_PROGRAMS {
            self.ship_from_package(Path::new(program))?;
            programs.push(PathBuf::from(program));
        }
        for program in &programs {
            for library in shared_libraries(program)? {
                self.ship_from_package(&library)?;
            }
        }
        let bundle = self.copy_from_host(Path::new(CA_BUNDLE))?;
        self.record(&bundle, "ca-certificates")?;
        self.write(
            "/etc/passwd",
            &format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 {USER_NAME}:x:{IMAGE_UID}:{IMAGE_UID}:{USER_NAME}:/nonexistent:/usr/sbin/nologin\n"
            ),
        )?;
        self.write(
            "/etc/group",
            &format!("root:x:0:\n{USER_NAME}:x:{IMAGE_UID}:\n"),
        )?;
        self.write(
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n",
        )?;
        self.make_dirs(Path::new("/tmp"))?;
        set_mode(&self.host(Path::new("/tmp")), 0o1777)?;
        for package in self.packages.keys().cloned().collect::<Vec<_>>() {
            let copyright = PathBuf::from(format!("/usr/share/doc/{package}/copyright"));
            let copied = self.copy_from_host(&copyright)?;
            self.files.insert(copied, Some(package));
        }
        let mut contents = format!(
            "# Files of the iamlet {TAG} image (revision {}) and the Debian package each came \
             from; `-` = made by cargo xtask image.\n",
            meta.revision
        );
        self.files.insert(PathBuf::from(CONTENTS_PATH), None);
        for (path, package) in &self.files {
            let origin = match package {
                Some(name) => format!("{name}\t{}", self.packages[name]),
                None => "-\t-".to_owned(),
            };
            let _ = writeln!(contents, "{}\t{origin}", path.display());
        }
        self.write(CONTENTS_PATH, &contents)
    }

    /// Writes a file made here (mode 0644).
    fn write(&mut self, path: &str, text: &str) -> Result<()> {
        let path = Path::new(path);
        self.make_dirs(path.parent().unwrap_or(Path::new("/")))?;
        let dest = self.host(path);
        std::fs::write(&dest, text).with_context(|| format!("writing {}", dest.display()))?;
        set_mode(&dest, 0o644)?;
        self.files.insert(path.to_path_buf(), None);
        Ok(())
    }

    /// Creates `dir` (in the image) and its parents, mode 0755.
    fn make_dirs(&self, dir: &Path) -> Result<()> {
        let mut at = PathBuf::from("/");
        for component in dir.components().skip(1) {
            at.push(component);
            let host = self.host(&at);
            if std::fs::symlink_metadata(&host).is_err() {
                std::fs::create_dir(&host)
                    .with_context(|| format!("creating {}", host.display()))?;
                set_mode(&host, 0o755)?;
            }
        }
        Ok(())
    }

    /// Copies `path` from this machine to the same path in the image, reproducing every
    /// symlink on the way (Debian 12's `/lib -> usr/lib`, `/lib64 -> usr/lib64`,
    /// `/usr/lib64/ld-linux-x86-64.so.2 -> /lib/...`, `libblkid.so.1 -> libblkid.so.1.1.0`):
    /// the path resolves in the image as here. Returns the real path of the file copied.
    fn copy_from_host(&self, path: &Path) -> Result<PathBuf> {
        self.copy_resolving(path, 0)
    }

    fn copy_resolving(&self, path: &Path, depth: usize) -> Result<PathBuf> {
        ensure!(depth < 16, "too many symlinks resolving {}", path.display());
        ensure!(path.is_absolute(), "{} is not absolute", path.display());
        let mut real = PathBuf::from("/");
        let components: Vec<Component> = path.components().skip(1).collect();
        for (i, component) in components.iter().enumerate() {
            let last = i + 1 == components.len();
            let here = real.join(component);
            let meta = std::fs::symlink_metadata(&here)
                .with_context(|| format!("reading {}", here.display()))?;
            let dest = self.host(&here);
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&here)
                    .with_context(|| format!("reading {}", here.display()))?;
                if std::fs::symlink_metadata(&dest).is_err() {
                    symlink(&target, &dest)
                        .with_context(|| format!("creating the symlink {}", dest.display()))?;
                }
                real = self.copy_resolving(&normalise(&real.join(&target)), depth + 1)?;
            } else if meta.is_dir() {
                if std::fs::symlink_metadata(&dest).is_err() {
                    std::fs::create_dir(&dest)
                        .with_context(|| format!("creating {}", dest.display()))?;
                    set_mode(&dest, 0o755)?;
                }
                real = here;
            } else if last && meta.is_file() {
                std::fs::copy(&here, &dest)
                    .with_context(|| format!("copying {} to {}", here.display(), dest.display()))?;
                // What the package installed, with "other" allowed to read (and run).
                let mode = meta.permissions().mode() & 0o755 | 0o444;
                set_mode(&dest, mode)?;
                real = here;
            } else {
                bail!(
                    "{} is neither a directory, a file nor a symlink",
                    here.display()
                );
            }
        }
        Ok(real)
    }

    /// Copies `path` into the image and records the file as coming from the Debian package
    /// that installed `path`.
    fn ship_from_package(&mut self, path: &Path) -> Result<()> {
        let package = debian_package(path)?;
        let copied = self.copy_from_host(path)?;
        self.record(&copied, &package)
    }

    /// Records the shipped file `path` as coming from `package`, and that package's version.
    fn record(&mut self, path: &Path, package: &str) -> Result<()> {
        let name = package.split(':').next().unwrap_or(package).to_owned();
        if !self.packages.contains_key(&name) {
            let version = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
                .with_context(|| format!("the version of Debian package {package}"))?;
            ensure!(
                !version.is_empty(),
                "Debian package {package} is not installed"
            );
            self.packages.insert(name.clone(), version);
        }
        self.files.insert(path.to_path_buf(), Some(name));
        Ok(())
    }

    /// Sets owners and timestamps on everything: the image's user, except `/` and `/tmp`.
    fn finish(&self, meta: &Metadata) -> Result<()> {
        sh(Command::new("chown")
            .args([
                "-R",
                "--no-dereference",
                &format!("{IMAGE_UID}:{IMAGE_UID}"),
            ])
            .arg(&self.dir))?;
        for root_owned in [self.dir.clone(), self.host(Path::new("/tmp"))] {
            std::os::unix::fs::lchown(&root_owned, Some(0), Some(0))
                .with_context(|| format!("chown root {}", root_owned.display()))?;
        }
        // chown clears set-id bits; none are shipped. Timestamps last, deepest first.
        sh(Command::new("find")
            .arg(&self.dir)
            .args(["-depth", "-exec", "touch", "--no-dereference"])
            .arg(format!("--date=@{}", meta.epoch))
            .args(["{}", "+"]))
    }

    /// Bytes of all regular files in the root filesystem.
    fn size(&self) -> Result<u64> {
        let text = output(
            Command::new("du")
                .args(["--summarize", "--bytes", "--apparent-size"])
                .arg(&self.dir),
        )?;
        text.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("du gave {text:?}"))
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// `path` with `.` and `..` resolved lexically (its prefix is already free of symlinks).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The shared libraries and the loader `ldd` names for `program`, at the paths it names.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(program))?;
    parse_ldd(&text).with_context(|| format!("ldd {}", program.display()))
}

/// The absolute paths in `ldd` output (`name => /path (0x...)` and `/path (0x...)`); the
/// vDSO has none. A library `ldd` cannot find is an error.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = line.split_once("=>").map_or(line, |(_, t)| t.trim());
        if target.starts_with("not found") {
            bail!("a library is missing: {line}");
        }
        if let Some(path) = target
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            paths.push(PathBuf::from(path));
        }
    }
    ensure!(!paths.is_empty(), "no library in {text:?}");
    Ok(paths)
}

/// The Debian package (`name:arch` or `name`) that installed `path`, asked by the path given
/// and, failing that, by its real path.
fn debian_package(path: &Path) -> Result<String> {
    let real =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    for candidate in [path, real.as_path()] {
        if let Ok(text) = output(Command::new("dpkg-query").arg("--search").arg(candidate)) {
            if let Some((package, _)) = text.lines().next().and_then(|l| l.split_once(": ")) {
                return Ok(package.trim().to_owned());
            }
        }
    }
    bail!(
        "no Debian package owns {} (nor {}): the image takes files from Debian packages only",
        path.display(),
        real.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_are_read_and_the_vdso_skipped() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_missing_library_is_an_error() {
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn relative_symlink_targets_are_resolved() {
        assert_eq!(
            normalise(Path::new(
                "/usr/lib64/../lib/x86_64-linux-gnu/./ld-linux-x86-64.so.2"
            )),
            PathBuf::from("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        );
    }
}
