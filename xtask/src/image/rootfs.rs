//! The image's root filesystem: the agent, what it needs from this machine's Debian
//! packages (found with `ldd` and `dpkg-query`), the files that name its user, owners and
//! timestamps; and the list of what went in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::{
    output, Metadata, AGENT_PATH, CA_BUNDLE, CONTENTS_PATH, HOST_PROGRAMS, IMAGE_UID, TAG,
    USER_NAME,
};
use crate::run as sh;

/// The image's root filesystem being filled, and what went into it.
pub(super) struct Rootfs {
    /// Its directory on this machine.
    dir: PathBuf,
    /// Each shipped file (path in the image) and the Debian package it came from
    /// (`None`: made here).
    files: BTreeMap<PathBuf, Option<String>>,
    /// The Debian packages shipped from, and their versions.
    pub(super) packages: BTreeMap<String, String>,
}

impl Rootfs {
    pub(super) fn new(dir: PathBuf) -> Self {
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
    pub(super) fn populate(&mut self, agent: &Path, meta: &Metadata) -> Result<()> {
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
             from; `-` = built or written by cargo xtask image.\n",
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
    pub(super) fn finish(&self, meta: &Metadata) -> Result<()> {
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
    pub(super) fn size(&self) -> Result<u64> {
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
