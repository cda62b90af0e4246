//! The kernels of the matrix: Debian's generic amd64 kernels of the releases whose kernel
//! lines EKS nodes run (Amazon Linux 2: 5.10; Amazon Linux 2023 and Bottlerocket: 6.1 and
//! 6.12), pinned to one package version each and checked against its SHA-256.
//!
//! They are fetched with `apt-get download` under a private apt state in `target/vm/apt` (own
//! sources list, lists and cache), so the machine's apt configuration is never read for
//! sources nor changed, and unpacked with `dpkg-deb -x` into `target/vm/kernels/<release>`.
//! Not the `-cloud` flavour: it lacks 9p, which the VM's root file system needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{run as sh, sha256};

/// One pinned kernel package.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kernel {
    /// The name on the command line (`--kernel 5.10`).
    pub(crate) name: &'static str,
    /// Debian release that ships it.
    pub(crate) suite: &'static str,
    /// Package name.
    package: &'static str,
    /// Exact package version.
    version: &'static str,
    /// SHA-256 of the `.deb`.
    sha256: &'static str,
    /// `uname -r` of the kernel, the name of its module directory.
    pub(crate) release: &'static str,
    /// Where its package keeps the module tree (trixie moved it under `usr/`).
    modules_under_usr: bool,
}

/// The matrix, oldest first. Bump a version here (and its SHA-256) when the mirror drops it.
pub(crate) const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
        package: "linux-image-5.10.0-32-amd64-unsigned",
        version: "5.10.223-1",
        sha256: "53a0ada535b8b35b3ee80ead5ab88036591963941c42dff6881bdb741deebead",
        release: "5.10.0-32-amd64",
        modules_under_usr: false,
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        package: "linux-image-6.1.0-50-amd64-unsigned",
        version: "6.1.176-1",
        sha256: "439422e41d2dbb840b60b81e3bf5e5955bfa56b7a8c268aec83c9ff882d421e6",
        release: "6.1.0-50-amd64",
        modules_under_usr: false,
    },
    Kernel {
        name: "6.12",
        suite: "trixie",
        package: "linux-image-6.12.117+deb13-amd64-unsigned",
        version: "6.12.117-1",
        sha256: "3b80d047f4d70d5f85d834f370b0e4b1bf689ee958c69018a570319b77f49301",
        release: "6.12.117+deb13-amd64",
        modules_under_usr: true,
    },
];

/// The kernels `--kernel` names: one of [`KERNELS`] by name, or `all`.
pub(crate) fn select(name: &str) -> Result<Vec<Kernel>> {
    if name == "all" {
        return Ok(KERNELS.to_vec());
    }
    let Some(k) = KERNELS.iter().find(|k| k.name == name) else {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        bail!(
            "no kernel {name:?} in the matrix (kernels: {}, all)",
            names.join(", ")
        )
    };
    Ok(vec![*k])
}

impl Kernel {
    /// The directory the package is unpacked into.
    pub(crate) fn dir(&self, root: &Path) -> PathBuf {
        root.join("target/vm/kernels").join(self.release)
    }

    /// The kernel image to boot.
    pub(crate) fn image(&self, root: &Path) -> PathBuf {
        self.dir(root)
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    fn deb_name(&self) -> String {
        // apt-get download names the file after the package with the epoch's colon escaped.
        format!(
            "{}_{}_amd64.deb",
            self.package,
            self.version.replace(':', "%3a")
        )
    }

    /// Fetches, checks and unpacks the kernel unless that was done already.
    pub(crate) fn ensure(&self, root: &Path) -> Result<()> {
        let dir = self.dir(root);
        let done = dir.join(".iamlet-unpacked");
        if std::fs::read_to_string(&done).is_ok_and(|s| s.trim() == self.sha256) {
            return Ok(());
        }
        let debs = root.join("target/vm/debs");
        std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        let deb = debs.join(self.deb_name());
        if sha256(&deb).as_deref() != Some(self.sha256) {
            eprintln!(
                "vm-test: fetching {} {} from Debian {}",
                self.package, self.version, self.suite
            );
            let apt = PrivateApt::new(root)?;
            apt.update()?;
            apt.download(&format!("{}={}", self.package, self.version), &debs)
                .with_context(|| {
                    format!(
                        "{} {} is no longer on the mirror? Pin the current version in xtask/src/vm/kernels.rs",
                        self.package, self.version
                    )
                })?;
            let got = sha256(&deb).unwrap_or_default();
            if got != self.sha256 {
                bail!(
                    "{} has SHA-256 {got}, expected {} (xtask/src/vm/kernels.rs)",
                    deb.display(),
                    self.sha256
                );
            }
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        // virtme-ng looks for the modules at <dir>/lib/modules/<release>.
        let base = if self.modules_under_usr {
            std::os::unix::fs::symlink("usr/lib", dir.join("lib"))
                .with_context(|| format!("linking {}/lib", dir.display()))?;
            dir.join("usr")
        } else {
            dir.clone()
        };
        sh(Command::new("depmod")
            .arg("-b")
            .arg(&base)
            .arg(self.release))?;
        if !self.image(root).is_file() {
            bail!("{} has no {}", deb.display(), self.image(root).display());
        }
        std::fs::write(&done, self.sha256).with_context(|| format!("writing {}", done.display()))
    }
}

/// apt with its own sources, lists and cache under `target/vm/apt`.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(root: &Path) -> Result<PrivateApt> {
        let dir = root.join("target/vm/apt");
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/apt.conf.d",
        ] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mut sources = String::new();
        let mut suites: Vec<&str> = KERNELS.iter().map(|k| k.suite).collect();
        suites.dedup();
        for suite in suites {
            sources.push_str(&format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"
            ));
        }
        let list = dir.join("etc/sources.list");
        std::fs::write(&list, sources).with_context(|| format!("writing {}", list.display()))?;
        Ok(PrivateApt { dir })
    }

    fn apt_get(&self) -> Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = Command::new("apt-get");
        for (key, value) in [
            ("Dir::State", d("")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::State::status", "/var/lib/dpkg/status".to_owned()),
            ("Dir::Cache", d("cache")),
            ("Dir::Etc::SourceList", d("etc/sources.list")),
            ("Dir::Etc::SourceParts", d("etc/sources.list.d")),
            ("Dir::Etc::Preferences", d("etc/preferences")),
            ("Dir::Etc::PreferencesParts", d("etc/preferences.d")),
            ("Dir::Etc::Parts", d("etc/apt.conf.d")),
            ("APT::Architectures", "amd64".to_owned()),
            ("Acquire::Languages", "none".to_owned()),
            // Files are written by root into target/, where the _apt user cannot.
            ("APT::Sandbox::User", "root".to_owned()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    fn update(&self) -> Result<()> {
        sh(self.apt_get().args(["-q", "update"]))
    }

    fn download(&self, spec: &str, into: &Path) -> Result<()> {
        sh(self
            .apt_get()
            .args(["-q", "download", spec])
            .current_dir(into))
    }
}
